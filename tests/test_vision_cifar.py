"""CIFAR datamodules offline: a clear, immediate error that says where the files go."""

import time

import pytest

from tx_suite.data.cifar import CIFAR10DataModule, CIFAR100DataModule


@pytest.mark.parametrize("cls, folder", [(CIFAR10DataModule, "cifar-10-batches-py"), (CIFAR100DataModule, "cifar-100-python")])
def test_missing_files_error_names_folder_and_url(tmp_path, cls, folder):
    dm = cls(data_dir=str(tmp_path))
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    assert time.monotonic() - start < 5
    msg = str(err.value)
    assert str(tmp_path / folder) in msg and "https://www.cs.toronto.edu/~kriz/" in msg
    assert "download: true" in msg


def test_class_lists():
    assert CIFAR10DataModule().num_classes == 10
    names = CIFAR100DataModule.classes
    assert len(names) == 100 and names == sorted(names)  # torchvision's fine labels are alphabetical

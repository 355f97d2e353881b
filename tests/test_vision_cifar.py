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


@pytest.mark.parametrize("policy", ["cifar10", "rand-m9-mstd0.5-inc1", "original-mstd0.5", "augmix-m3-w2-d1"])
def test_cifar_train_transform_runs_on_real_rgb_images(policy):
    """The CIFAR-10 config's augmentation (crop, flip, policy, erasing) on MNIST digits as 32x32 RGB."""
    import torch
    from PIL import Image

    from tx_suite.data.mnist import MNISTDataModule

    dm = MNISTDataModule()
    dm.setup("test")
    cifar = CIFAR10DataModule(augment={"random_crop_padding": 4, "hflip": 0.5, "auto_augment": policy,
                                       "random_erasing": 0.25})
    tf, ev = cifar.train_transform(), cifar.eval_transform()
    torch.manual_seed(0)
    for i in range(4):
        img = Image.fromarray(dm.test_set.data[i].numpy(), mode="L").resize((32, 32)).convert("RGB")
        x = tf(img)
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and torch.isfinite(x).all()
        ref = ev(img)  # eval: plain per-channel normalisation
        assert torch.allclose(ref[:, 0, 0], -torch.tensor(cifar.mean) / torch.tensor(cifar.std), atol=1e-5)


def test_unknown_policy_is_named():
    with pytest.raises(ValueError, match="unknown auto_augment 'autoaug'"):
        CIFAR10DataModule(augment={"auto_augment": "autoaug"}).train_transform()

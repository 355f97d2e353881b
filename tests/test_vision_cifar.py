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


def _fake_cifar(root):
    """A 20-image CIFAR-10-format archive in ``root`` and a datamodule class whose MD5 list is its own
    (torchvision's constants are for the real 170 MB files, which tests cannot download)."""
    import hashlib
    import pickle
    import tarfile

    import numpy as np
    from torchvision.datasets import CIFAR10

    src = root / "src" / "fake-batches-py"
    src.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = ["data_batch_1", "test_batch"]
    for name in names:
        batch = {"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}
        (src / name).write_bytes(pickle.dumps(batch))
    (src / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR10DataModule.classes}))
    archive = root / "fake-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname=src.name)
    md5 = {n: hashlib.md5((src / n).read_bytes()).hexdigest() for n in [*names, "batches.meta"]}

    class FakeCIFAR(CIFAR10):
        base_folder, filename = src.name, archive.name
        url = "https://www.cs.toronto.edu/~kriz/fake-python.tar.gz"
        tgz_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
        train_list, test_list = [["data_batch_1", md5["data_batch_1"]]], [["test_batch", md5["test_batch"]]]
        meta = {"filename": "batches.meta", "key": "label_names", "md5": md5["batches.meta"]}

    class FakeDataModule(CIFAR10DataModule):
        dataset_cls = FakeCIFAR

    return FakeDataModule, root / src.name


def test_archive_in_data_dir_is_extracted_offline_and_a_corrupt_folder_is_named(tmp_path, monkeypatch):
    import socket

    def offline(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    dm_cls, folder = _fake_cifar(tmp_path)
    dm = dm_cls(data_dir=str(tmp_path), val_size=2, batch_size=4)
    dm.setup("fit")  # no download flag and no network: the archive next to the folder is enough
    assert len(dm.train_set) == 8 and (folder / "data_batch_1").is_file()

    (folder / "data_batch_1").write_bytes(b"truncated")
    (tmp_path / "fake-python.tar.gz").rename(tmp_path / "moved.tar.gz")  # only the corrupt folder is left
    with pytest.raises(FileNotFoundError) as err:
        dm_cls(data_dir=str(tmp_path), val_size=2, batch_size=4).setup("fit")
    msg = str(err.value)
    assert "incomplete or corrupt" in msg and str(folder) in msg and "download=True" not in msg
    (tmp_path / "moved.tar.gz").rename(tmp_path / "fake-python.tar.gz")  # archive back: re-extracted over it
    dm = dm_cls(data_dir=str(tmp_path), val_size=2, batch_size=4)
    dm.setup("fit")
    assert len(dm.train_set) == 8



def test_a_corrupt_test_batch_is_found_and_download_offline_fails_fast(tmp_path, monkeypatch):
    import socket

    def offline(*a, **k):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", offline)
    dm_cls, folder = _fake_cifar(tmp_path)
    dm_cls(data_dir=str(tmp_path), val_size=2, batch_size=4).setup("fit")
    (folder / "test_batch").write_bytes(b"truncated")  # every file's MD5 is checked, the test set's too
    (tmp_path / "fake-python.tar.gz").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete or corrupt"):
        dm_cls(data_dir=str(tmp_path), val_size=2, batch_size=4).prepare_data()
    # and the class-name file: without it the folder passed, and setup failed in torchvision
    # ("use download=True") even with download set
    dm_cls2, folder2 = _fake_cifar(tmp_path / "meta")
    dm_cls2(data_dir=str(tmp_path / "meta"), val_size=2, batch_size=4).setup("fit")
    (folder2 / "batches.meta").unlink()
    (tmp_path / "meta" / "fake-python.tar.gz").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete or corrupt"):
        dm_cls2(data_dir=str(tmp_path / "meta"), val_size=2, batch_size=4).prepare_data()
    # download: true without a network: a ConnectionError that says so, before torchvision tries
    with pytest.raises(ConnectionError, match="cannot reach www.cs.toronto.edu.*are you offline"):
        dm_cls(data_dir=str(tmp_path), download=True, val_size=2, batch_size=4).prepare_data()

@pytest.mark.parametrize("policy", ["rand-m10-inc1", "rand-m0", "v0"])
def test_posterize_to_zero_bits_gives_a_black_image(policy):
    """timm's Posterize levels reach 0 bits (inc1 at magnitude 10, or mstd drawing 10); Pillow 13
    refuses 0 and the data worker died at random mid-epoch (1 image in ~300 for rand-m9-mstd0.5-inc1)."""
    from PIL import Image

    from tx_suite.data.vision_transforms import _policy

    tf = _policy(policy, 32, (0.5, 0.5, 0.5))
    ops = getattr(tf, "ops", None) or [op for sub in tf.policy for op in sub]
    posterize = [op for op in ops if op.name.startswith("Posterize")]
    img = Image.new("RGB", (32, 32), (200, 100, 50))
    zero_bits = [op for op in posterize if op.level_fn(op.magnitude, op.hparams)[0] == 0]
    assert zero_bits  # the case exists in this policy
    for op in zero_bits:
        op.prob = 1.0
        assert op(img).getextrema() == ((0, 0), (0, 0), (0, 0))

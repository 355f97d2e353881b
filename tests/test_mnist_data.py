"""MNIST datamodule on the bundled files: extraction, checksums, split, transforms."""

import shutil
import types

import pytest
import torch
from PIL import Image

from tx_suite.data.checksums import ChecksumError
from tx_suite.data.mnist import MNIST_FILES, MNISTDataModule, extract_mnist
from tx_suite.data.vision_datamodule import resolve_data_dir

DATA = resolve_data_dir("data")


@pytest.fixture(scope="module")
def dm(tmp_path_factory):
    dm = MNISTDataModule(cache_dir=str(tmp_path_factory.mktemp("cache")), val_size=5000, seed=0, batch_size=32)
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    return dm


def test_split_sizes_and_disjoint(dm):
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55000, 5000, 10000)
    train, val = set(dm.train_set.indices), set(dm.val_set.indices)
    assert not train & val and len(train | val) == 60000


def test_split_is_seeded(dm):
    same = MNISTDataModule(val_size=5000, seed=0).split_indices(60000)[1]
    other = MNISTDataModule(val_size=5000, seed=1).split_indices(60000)[1]
    assert same.tolist() == dm.val_set.indices
    assert same.tolist() != other.tolist()


def test_batches_are_normalised_digits(dm):
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (64, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.long
    # first official test labels (t10k-labels-idx1-ubyte)
    assert y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    # normalised with the training mean / std: background is (0 - 0.1307) / 0.3081
    assert x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-4)
    # the label counts of the bundled train set equal the official ones (data/README.md)
    counts = torch.bincount(dm.train_set.dataset.targets, minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_train_augmentation_is_random_eval_is_not(dm):
    aug = MNISTDataModule(augment={"affine_degrees": 15, "affine_translate": 0.1})
    tf, ev = aug.train_transform(), aug.eval_transform()
    pil = Image.fromarray(dm.test_set.data[0].numpy(), mode="L")
    assert not torch.equal(tf(pil), tf(pil))
    assert torch.equal(ev(pil), ev(pil))


def test_unknown_augment_key_is_rejected():
    with pytest.raises(ValueError, match="unknown augment key.*'rotate'"):
        MNISTDataModule(augment={"rotate": 10})


@pytest.mark.parametrize("limit", [0, -5])
def test_a_limit_train_below_one_is_refused(limit):
    # 0 trained on the whole split and -5 on all but the last 5 images, silently
    with pytest.raises(ValueError, match=f"limit_train must be >= 1 .*got {limit}"):
        MNISTDataModule(limit_train=limit)


def test_corrupt_archive_is_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        shutil.copy(DATA / "MNIST" / "raw" / name, raw / name)
    bad = raw / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(bad.read_bytes())
    data[100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        extract_mnist(tmp_path, tmp_path / "cache")
    bad.unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte.gz"):
        MNISTDataModule(data_dir=str(tmp_path)).setup("test")


def test_extraction_is_cached(tmp_path):
    root = extract_mnist(DATA, tmp_path)
    target = root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte"
    assert target.stat().st_size == 10008  # 8-byte IDX header + 10,000 labels
    stamp = target.stat().st_mtime_ns
    extract_mnist(DATA, tmp_path)
    assert target.stat().st_mtime_ns == stamp
    # A damaged extracted file was reused (its stamp held only the archive's sum), and a stamp
    # of non-text bytes raised UnicodeDecodeError on every run: both are extracted again.
    whole = target.read_bytes()
    target.write_bytes(whole[:5000])
    extract_mnist(DATA, tmp_path)
    assert target.read_bytes() == whole
    target.with_name(target.name + ".src-sha256").write_bytes(b"\xff\xfe\x00")
    extract_mnist(DATA, tmp_path)
    assert target.read_bytes() == whole and target.stat().st_mtime_ns != stamp


def test_an_interrupted_extraction_leaves_no_partial_or_temporary_file(tmp_path, monkeypatch):
    import tx_suite.data.mnist as mnist

    def disk_full(fin, fout):
        fout.write(fin.read(100))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mnist.shutil, "copyfileobj", disk_full)
    with pytest.raises(OSError, match="No space left"):
        extract_mnist(DATA, tmp_path)
    assert list((tmp_path / "MNIST" / "raw").iterdir()) == []  # neither a truncated IDX file nor a .tmp
    monkeypatch.undo()
    root = extract_mnist(DATA, tmp_path)
    assert (root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").stat().st_size == 10008


def test_augment_values_of_the_wrong_kind_name_their_key():
    from tx_suite.data.vision_transforms import check_augment

    good = {"random_crop_padding": 4, "hflip": 0.5, "affine_scale": [0.9, 1.1], "auto_augment": "cifar10",
            "random_erasing": 0.25, "affine_degrees": None}
    assert check_augment(good) == good
    for bad, message in [({"hflip": "yes_please"}, "augment.hflip must be a probability in [0, 1], got 'yes_please'"),
                         ({"hflip": True}, "augment.hflip must be a probability"),  # 1.0 would flip every image
                         ({"affine_scale": 0.9}, "augment.affine_scale must be a pair [min, max], got 0.9"),
                         ({"random_crop_padding": -1}, "augment.random_crop_padding must be a whole number of pixels"),
                         # below: torchvision's or timm's error at setup, not naming the key (a bare
                         # AssertionError, a traceback, for the timm strings)
                         ({"random_crop_padding": 2.5}, "augment.random_crop_padding must be a whole number"),
                         ({"affine_degrees": -10}, "augment.affine_degrees must be a number of degrees >= 0"),
                         ({"affine_shear": -5}, "augment.affine_shear must be a number of degrees >= 0"),
                         ({"random_crop_padding": float("inf")}, "augment.random_crop_padding must be a whole"),
                         ({"affine_degrees": float("inf")}, "augment.affine_degrees must be a number of degrees"),
                         ({"auto_augment": "randaugment"}, "augment.auto_augment 'randaugment': timm cannot parse"),
                         ({"auto_augment": "rand-m9-x3"}, "augment.auto_augment 'rand-m9-x3': timm cannot parse")]:
        with pytest.raises(ValueError) as err:
            check_augment(bad)
        assert str(err.value).startswith(message), err.value


def test_a_training_set_smaller_than_a_batch_is_refused_at_fit_setup():
    """The training loader drops its incomplete last batch: 50 images in batches of 64 would be
    no training step at all (Lightning: "No training batches", exit 0, no checkpoint)."""
    small = MNISTDataModule(val_size=1000, batch_size=64, limit_train=50)
    with pytest.raises(ValueError, match=r"data.limit_train=50 leaves 50 training images, fewer than "
                                         r"data.batch_size=64.*raise data.limit_train or lower data.batch_size"):
        small.setup("fit")
    small.setup("validate")  # no training loop: nothing to refuse
    MNISTDataModule(val_size=1000, batch_size=64, limit_train=64).setup("fit")  # one full batch
    two_ranks = MNISTDataModule(val_size=1000, batch_size=64, limit_train=100)
    two_ranks.trainer = types.SimpleNamespace(world_size=2)  # each DDP rank gets 50 of the 100 images
    with pytest.raises(ValueError, match="fewer than data.batch_size=64 on each of 2 processes"):
        two_ranks.setup("fit")


def test_no_validation_split_turns_the_loop_off_for_the_fit_only():
    """val_size 0 sets the trainer's limit_val_batches to 0 for the fit (no sanity check, no
    warning about an empty loader list) and gives the old value back at teardown."""
    dm = MNISTDataModule(val_size=0, batch_size=64, limit_train=64)
    dm.trainer = types.SimpleNamespace(world_size=1, limit_val_batches=0.25)
    dm.setup("validate")
    assert dm.trainer.limit_val_batches == 0.25  # only a fit is changed
    dm.setup("fit")
    assert dm.trainer.limit_val_batches == 0 and dm.val_dataloader() == []
    dm.teardown("fit")
    assert dm.trainer.limit_val_batches == 0.25
    held_out = MNISTDataModule(val_size=100, batch_size=64, limit_train=64)
    held_out.trainer = types.SimpleNamespace(world_size=1, limit_val_batches=0.25)
    held_out.setup("fit")
    assert held_out.trainer.limit_val_batches == 0.25


def test_validation_is_never_augmented_and_limit_train_stays_in_the_train_split(dm):
    """With augmentation on, the held-out images still go through the eval transform (the same
    tensors every time, those of the un-augmented module), and ``limit_train`` takes its images
    from the training side of the split only."""
    aug = MNISTDataModule(cache_dir=str(dm.cache_dir), val_size=5000, seed=0, batch_size=32, limit_train=100,
                          augment={"affine_degrees": 15, "affine_translate": 0.1})
    aug.setup("fit")
    assert aug.val_set.indices == dm.val_set.indices
    for i in (0, 1, 2):
        assert torch.equal(aug.val_set[i][0], dm.val_set[i][0]) and torch.equal(aug.val_set[i][0], aug.val_set[i][0])
    assert len(aug.train_set) == 100 and set(aug.train_set.indices) <= set(dm.train_set.indices)
    # Augmented training images are normalised too: the (zero-filled) background is (0 - mean) / std.
    x = aug.train_set[0][0]
    assert not torch.equal(x, aug.train_set[0][0])
    assert x.min().item() == pytest.approx(-0.1307 / 0.3081, abs=1e-4)


@pytest.mark.parametrize("setting", [{"eval_batch_size": 0}, {"img_size": 0}, {"batch_size": 0}, {"num_workers": -1}])
def test_a_size_below_its_minimum_is_named(setting):
    """eval_batch_size 0 and img_size 0 were silently replaced by the defaults (`or`)."""
    from tx_suite.data.mnist import MNISTDataModule

    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"{name} must be >= "):
        MNISTDataModule(**setting)

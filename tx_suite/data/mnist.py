"""MNIST from the bundled ``data/MNIST/raw/*.gz``, read by ``torchvision.datasets.MNIST``.

torchvision reads the *uncompressed* IDX files from ``<root>/MNIST/raw`` and would try to
download if they were missing. The bundled training ``.gz`` files are not the official archives
byte for byte (see ``data/README.md``: same uncompressed content, different gzip wrapper), so
torchvision's MD5 check of the archives cannot be used. Instead the archives are checked
against the SHA-256 table of :mod:`tx_suite.data.checksums` and extracted once into
``data/cache/mnist/MNIST/raw``; torchvision then opens that folder with ``download=False``.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

from torch.utils.data import Dataset
from torchvision.datasets import MNIST

from tx_suite.data.checksums import sha256, verify
from tx_suite.data.vision_datamodule import ImageClassificationDataModule
from tx_suite.utils.atomic_write import atomic_open

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


def extract_mnist(data_dir: str | Path, cache_dir: str | Path) -> Path:
    """Verify the bundled MNIST archives and extract them for torchvision; return its ``root``.

    Each ``<data_dir>/MNIST/raw/<name>.gz`` is checked against its SHA-256 and decompressed to
    ``<cache_dir>/MNIST/raw/<name>``, next to a ``<name>.src-sha256`` stamp holding the archive's
    sum and the extracted file's; a file whose stamp matches both is not extracted again. Writes go through a temporary file and
    an atomic rename, so concurrent runs never see half a file.

    Returns:
        ``cache_dir``: pass it as ``root`` to ``torchvision.datasets.MNIST(..., download=False)``.

    Raises:
        FileNotFoundError: an archive is missing (the message names it).
        tx_suite.data.checksums.ChecksumError: an archive is corrupt (the message names it).
    """
    cache_dir = Path(cache_dir)
    raw = cache_dir / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in MNIST_FILES:
        src = verify(data_dir, f"MNIST/raw/{name}")
        digest = sha256(src)
        dst = raw / name[: -len(".gz")]
        stamp = dst.with_name(dst.name + ".src-sha256")
        # The stamp holds the sums of the archive and of the extracted file: a damaged extracted
        # file (or an unreadable stamp) is extracted again rather than trusted.
        if (dst.is_file() and stamp.is_file()
                and stamp.read_bytes().decode("ascii", "replace").strip() == f"{digest} {sha256(dst)}"):
            continue
        with gzip.open(src, "rb") as fin, atomic_open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        with atomic_open(stamp, "w", encoding="ascii") as f:
            f.write(f"{digest} {sha256(dst)}")
    return cache_dir


class MNISTDataModule(ImageClassificationDataModule):
    """MNIST digits: 60,000 train (minus ``val_size`` held out) and 10,000 test, 28x28 grayscale.

    Batches are ``(B, 1, 28, 28)`` float normalised with the training set's mean 0.1307 and std
    0.3081, and ``(B,)`` long labels 0..9. See :class:`ImageClassificationDataModule` for the
    arguments; ``cache_dir`` (default ``<data_dir>/cache/mnist``) receives the extracted files.

    Raises (on setup):
        FileNotFoundError, ChecksumError: a bundled archive is missing or corrupt (named).
    """

    classes = [str(d) for d in range(10)]
    in_chans = 1
    native_size = 28
    mean = (0.1307,)
    std = (0.3081,)

    def __init__(self, cache_dir: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cache_dir = Path(cache_dir) if cache_dir else self.data_dir / "cache" / "mnist"
        self._root: Path | None = None

    def prepare_data(self) -> None:
        self._root = extract_mnist(self.data_dir, self.cache_dir)

    def _dataset(self, train: bool, transform) -> Dataset:
        if self._root is None:  # setup() without prepare_data(), e.g. called directly
            self.prepare_data()
        return MNIST(str(self._root), train=train, transform=transform, download=False)

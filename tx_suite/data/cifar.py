"""CIFAR-10 and CIFAR-100 through ``torchvision.datasets`` (Krizhevsky 2009).

Not bundled (170 MB each). With ``download: true`` and a network they are fetched by torchvision
(which checks their MD5); otherwise the loader looks for the extracted python-pickle folder in
``data_dir`` (every file's MD5 checked) or the archive next to it (extracted offline) and, if
neither is there, raises at once with the URL and the folder to put it in.
A missing network fails within seconds (a short connect probe, then a socket timeout for the
transfer), never hangs.
"""

from __future__ import annotations

import socket
from contextlib import contextmanager
from urllib.parse import urlparse

from torch.utils.data import Dataset
from torchvision.datasets import CIFAR10, CIFAR100
from torchvision.datasets.utils import check_integrity

from tx_suite.data.vision_datamodule import ImageClassificationDataModule

#: seconds allowed to open the connection / between two reads of the transfer
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0


@contextmanager
def _socket_timeout(seconds: float):
    # torchvision's urlopen has no timeout argument; the process-wide default is its only knob.
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _probe(url: str) -> None:
    """Raise ConnectionError within ``CONNECT_TIMEOUT_S`` if ``url``'s host cannot be reached."""
    host = urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConnectionError(f"cannot reach {host} to download {url} ({e}); are you offline?") from e


class CIFAR10DataModule(ImageClassificationDataModule):
    """CIFAR-10: 50,000 train (minus ``val_size`` held out) and 10,000 test RGB images, 32x32.

    Batches are ``(B, 3, 32, 32)`` float normalised with the training set's per-channel mean and
    std, and ``(B,)`` long labels. Files: ``<data_dir>/cifar-10-batches-py/`` (the extracted
    ``cifar-10-python.tar.gz``). See :class:`ImageClassificationDataModule` for the other
    arguments.

    Args:
        download: fetch the archive when it is missing (needs a network; opt-in).

    Raises (on prepare/setup):
        FileNotFoundError: the files are missing or corrupt and ``download`` is false (names URL and
            folder).
        ConnectionError: ``download`` is true but the host cannot be reached.
    """

    dataset_cls = CIFAR10
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    in_chans = 3
    native_size = 32
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)

    def __init__(self, download: bool = False, **kwargs) -> None:
        kwargs.setdefault("val_size", 5000)
        super().__init__(**kwargs)
        self.download = download

    @property
    def folder(self):
        return self.data_dir / self.dataset_cls.base_folder

    def _folder_intact(self) -> bool:
        """Every batch file and the metadata file (class names) present with its MD5 (torchvision's
        lists; reads all 170 MB)."""
        cls = self.dataset_cls
        files = cls.train_list + cls.test_list + [[cls.meta["filename"], cls.meta["md5"]]]
        return all(check_integrity(str(self.folder / name), md5) for name, md5 in files)

    def prepare_data(self) -> None:
        cls = self.dataset_cls
        if self.folder.is_dir() and self._folder_intact():
            return
        archive = self.data_dir / cls.filename
        # torchvision extracts an archive already in data_dir (checking its MD5) without a network
        have_archive = check_integrity(str(archive), cls.tgz_md5)
        if not self.download and not have_archive:
            state = "is incomplete or corrupt (an MD5 does not match)" if self.folder.is_dir() else "not found"
            raise FileNotFoundError(
                f"{cls.__name__} {state}: expected {self.folder}/. Download {cls.url} and extract it "
                f"into {self.data_dir}/ (tar xzf {cls.filename} -C {self.data_dir}), "
                "or set `download: true` in the data config when online"
            )
        if not have_archive:
            _probe(cls.url)
        with _socket_timeout(READ_TIMEOUT_S):
            cls(str(self.data_dir), train=True, download=True)

    def _dataset(self, train: bool, transform) -> Dataset:
        self.prepare_data()
        return self.dataset_cls(str(self.data_dir), train=train, transform=transform, download=False)


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100: as :class:`CIFAR10DataModule`, 100 fine classes, ``<data_dir>/cifar-100-python/``."""

    dataset_cls = CIFAR100
    # torchvision's order of the fine labels (alphabetical), label i = classes[i]
    classes = (
        "apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly "
        "camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile "
        "cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo keyboard lamp "
        "lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree "
        "orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine possum "
        "rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail snake spider "
        "squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train "
        "trout tulip turtle wardrobe whale willow_tree wolf woman worm"
    ).split()
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)

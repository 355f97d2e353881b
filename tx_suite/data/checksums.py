"""SHA-256 verification of the bundled datasets (table copied from ``data/README.md``)."""

from __future__ import annotations

import hashlib
from pathlib import Path

#: Path relative to the data root -> expected SHA-256 hex digest.
SHA256: dict[str, str] = {
    "MNIST/raw/t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "MNIST/raw/t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "MNIST/raw/train-images-idx3-ubyte.gz": "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
    "MNIST/raw/train-labels-idx1-ubyte.gz": "51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a",
    "emoji/LICENSE-emoji-data": "ee9953a79bf2132b59b1342b217f1c377b3d03d9e7713006f6c3b89eb159f1db",
    "emoji/categories.json": "05b7c3b10440d2c111064c72f047f22d242675feabf208e89df4494c36ca1ad7",
    "emoji/emoji.json": "1d602e65be88772bf8cc368ce16b855d719eeddbafe128d471b80203f494d29f",
    "emoji/sheet-google-32.png": "b417e9f6cd4bbc10656bbfd5e13b6e9a2545b55e6a4cf7312d75be1faaa34952",
    "emoji/sheet-twitter-32.png": "2767ef2e87cbfb6cc12ac46596c339549afaf0ae8771cf51100c8853f6bde632",
    "multi30k/task1/raw/test_2016_flickr.cs.gz": "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1",
    "multi30k/task1/raw/test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "multi30k/task1/raw/test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "multi30k/task1/raw/test_2016_flickr.fr.gz": "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90",
    "multi30k/task1/raw/test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "multi30k/task1/raw/test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "multi30k/task1/raw/test_2017_flickr.fr.gz": "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496",
    "multi30k/task1/raw/train.cs.gz": "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077",
    "multi30k/task1/raw/train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "multi30k/task1/raw/train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "multi30k/task1/raw/train.fr.gz": "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c",
    "multi30k/task1/raw/val.cs.gz": "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc",
    "multi30k/task1/raw/val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "multi30k/task1/raw/val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "multi30k/task1/raw/val.fr.gz": "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9",
}


class ChecksumError(ValueError):
    """A bundled data file does not match its recorded SHA-256 sum."""


def sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file, read in ``chunk_size``-byte chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            h.update(block)
    return h.hexdigest()


#: Repository root (``tx_suite/data/`` -> two levels up); ``data/`` is looked up here when a
#: relative data root does not exist below the working directory.
_REPO_ROOT = Path(__file__).resolve().parents[2]


def resolve_data_dir(data_dir: str | Path) -> Path:
    """``data_dir`` as given if it exists (or is absolute), else relative to the repository root
    (so the default ``"data"`` works from any working directory)."""
    path = Path(data_dir)
    if path.is_absolute() or path.exists():
        return path
    return _REPO_ROOT / path


def verify(root: str | Path, relpath: str) -> Path:
    """Check ``root/relpath`` (``root`` as :func:`resolve_data_dir` finds it) against :data:`SHA256`
    and return its path.

    Files without a recorded sum (for example test sets fetched later) are returned unchecked.

    Raises:
        FileNotFoundError: the file does not exist.
        ChecksumError: the file exists but its SHA-256 differs; the message names the file.
    """
    root = resolve_data_dir(root)
    path = root / relpath
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    expected = SHA256.get(relpath)
    if expected is not None:
        actual = sha256(path)
        if actual != expected:
            bundled = root.resolve() == _REPO_ROOT / "data"
            fix = "restore it with `git checkout -- data/`" if bundled else "replace it with an intact copy, e.g. from the repository's data/"
            raise ChecksumError(
                f"corrupt data file {path}: SHA-256 {actual[:12]}... != expected {expected[:12]}... ({fix})"
            )
    return path

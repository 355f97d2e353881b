"""Multi30k task 1 files: locate, verify, fetch (only when missing and allowed) and read.

Multi30k (Elliott et al. 2016, "Multi30K: Multilingual English-German Image Descriptions";
fr: Elliott et al. 2017, cs: Barrault et al. 2018) ships line-aligned gzip files
``<split>.<lang>.gz``. The bundled copy lives in ``data/multi30k/task1/raw`` and is checked
against the SHA-256 table of :mod:`tx_suite.data.checksums`. Other official splits are fetched
from the canonical repository into ``data/cache/multi30k/task1/raw`` on first use when online.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

from tx_suite.data.checksums import SHA256, resolve_data_dir, verify
from tx_suite.utils.atomic_write import atomic_open

LANGUAGES = ("en", "de", "fr", "cs")
#: Splits shipped in ``data/`` (cs has no test_2017_flickr).
BUNDLED_SPLITS = ("train", "val", "test_2016_flickr", "test_2017_flickr")
#: Official task-1 splits of the multi30k/dataset repository.
OFFICIAL_SPLITS = BUNDLED_SPLITS + ("test_2017_mscoco", "test_2018_flickr")
URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{split}.{lang}.gz"
RELDIR = "multi30k/task1/raw"
#: Seconds before a download attempt gives up (covers DNS resolution too, see _fetch).
DOWNLOAD_TIMEOUT = 10.0


class Multi30kError(FileNotFoundError):
    """A Multi30k file is not available (missing and offline, not found) or cannot be read."""


def _bundled(data_dir: Path, lang: str) -> str:
    if not (data_dir / RELDIR).is_dir():
        # A wrong --data.init_args.data_dir, not a missing split: say where the bundled copy is.
        return f"none, {data_dir} has no {RELDIR}/ (the repository's copy is under {default_data_dir()})"
    names = [s for s in BUNDLED_SPLITS if (data_dir / RELDIR / f"{s}.{lang}.gz").is_file()]
    return ", ".join(names) or "none"


def default_data_dir() -> Path:
    """``$TX_SUITE_DATA`` if set, else the repository's ``data/`` next to the package."""
    env = os.environ.get("TX_SUITE_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "data"


def check_names(split: str, lang: str) -> None:
    """Raise ``ValueError`` naming the valid choices if ``split`` or ``lang`` is not a Multi30k name."""
    if lang not in LANGUAGES:
        raise ValueError(f"unknown Multi30k language {lang!r}; choose one of {', '.join(LANGUAGES)}")
    # Accept the listed splits and any future official test set named like them (test_YYYY_source).
    if split not in OFFICIAL_SPLITS and not re.fullmatch(r"test_\d{4}_[a-z0-9]+", split):
        raise ValueError(f"unknown Multi30k split {split!r}; official splits: {', '.join(OFFICIAL_SPLITS)}")


def _fetch(url: str, dest: Path, timeout: float, expected_sha256: str | None = None) -> None:
    """Download ``url`` to ``dest`` atomically, giving up after ``timeout`` seconds in total.

    With ``expected_sha256`` the downloaded bytes are checked before anything is written, so a
    bad download is never trained on, not even once.

    ``urlopen(timeout=...)`` does not bound DNS resolution, so the request runs in a daemon thread
    and the caller stops waiting after ``timeout`` seconds whatever the thread is doing.

    Raises:
        Multi30kError: HTTP error (404: a split/language pair that does not exist), network
            error, timeout, a response that is not gzip or does not match ``expected_sha256``.
    """
    result: dict[str, object] = {}

    def work() -> None:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                result["data"] = r.read()
        except BaseException as e:  # reported to the caller below
            result["error"] = e

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        raise Multi30kError(f"timed out after {timeout:.0f} s downloading {url}")
    err = result.get("error")
    if isinstance(err, urllib.error.HTTPError):
        if err.code == 404:
            raise Multi30kError(f"{url} answered HTTP 404: this split/language pair does not exist")
        raise Multi30kError(f"{url} answered HTTP {err.code} {err.reason}")
    if err is not None:
        raise Multi30kError(f"cannot download {url}: {getattr(err, 'reason', err)}")
    data = result["data"]
    assert isinstance(data, bytes)
    try:
        gzip.decompress(data)
    except OSError as e:
        raise Multi30kError(f"{url} did not return a gzip file ({e})") from e
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise Multi30kError(f"{url} returned a file whose SHA-256 {actual[:12]}... differs from the recorded "
                            f"{expected_sha256[:12]}... (not saved)")
    with atomic_open(dest, "wb") as f:
        f.write(data)


def split_path(split: str, lang: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None,
               download: bool = True, timeout: float = DOWNLOAD_TIMEOUT) -> Path:
    """Path of ``<split>.<lang>.gz``, verified against its recorded SHA-256 sum.

    Looks in ``data_dir/multi30k/task1/raw`` (bundled), then ``cache_dir/multi30k/task1/raw``
    (fetched earlier), then downloads from :data:`URL` into the cache when ``download`` is true.

    Args:
        split: ``train``, ``val``, ``test_2016_flickr``, ``test_2017_flickr`` or another official
            split (``test_2017_mscoco``, ``test_2018_flickr``).
        lang: one of :data:`LANGUAGES`.
        data_dir: data root (default :func:`default_data_dir`).
        cache_dir: where fetched files go (default ``data_dir/cache``).
        download: allow fetching a missing split from the canonical location.
        timeout: seconds before a download gives up.

    Raises:
        ValueError: unknown split or language name.
        tx_suite.data.checksums.ChecksumError: a bundled file is corrupt (the message names it).
        Multi30kError: the file is missing and cannot be fetched (offline, not allowed, 404).
    """
    check_names(split, lang)
    data_dir = resolve_data_dir(data_dir) if data_dir is not None else default_data_dir()
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir / "cache"
    rel = f"{RELDIR}/{split}.{lang}.gz"
    for root in (data_dir, cache_dir):
        if (root / rel).is_file():
            return verify(root, rel)
    url = URL.format(split=split, lang=lang)
    if not download:
        raise Multi30kError(f"Multi30k {split}.{lang} is not bundled ({data_dir / rel} missing) and download=False; "
                            f"bundled {lang} splits: {_bundled(data_dir, lang)}")
    try:
        _fetch(url, cache_dir / rel, timeout, SHA256.get(rel))
    except Multi30kError as e:
        raise Multi30kError(f"Multi30k {split}.{lang} is not bundled and could not be fetched ({e}). "
                            f"Bundled {lang} splits: {_bundled(data_dir, lang)}; when offline use one of those.") from None
    return cache_dir / rel


def read_lines(path: str | Path) -> list[str]:
    """Lines of a gzip text file, without line terminators.

    Splits on ``\\n`` only: ``str.splitlines`` would also split on rare separators such as U+2028
    inside a sentence and break the line alignment between languages.

    Raises:
        Multi30kError: the file is truncated, not gzip or not UTF-8 (names it).
    """
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, EOFError, UnicodeDecodeError) as e:  # truncated or not gzip/UTF-8 (no checksum caught it)
        raise Multi30kError(f"cannot read {path} ({type(e).__name__}: {e}); delete it, it is fetched again "
                            "when online") from None
    if text.endswith("\n"):
        text = text[:-1]
    return [line.rstrip("\r") for line in text.split("\n")] if text else []


def read_split(split: str, lang: str, **kwargs) -> list[str]:
    """Sentences of one split and language (keyword arguments as :func:`split_path`)."""
    return read_lines(split_path(split, lang, **kwargs))


def read_pair(split: str, src_lang: str, tgt_lang: str, **kwargs) -> tuple[list[str], list[str]]:
    """Aligned (source, target) sentences of one split.

    Raises:
        ValueError: the two files have different line counts (not aligned), or ``src_lang == tgt_lang``.
        (and the errors of :func:`split_path`)
    """
    if src_lang == tgt_lang:
        raise ValueError(f"source and target language are both {src_lang!r}")
    src = read_split(split, src_lang, **kwargs)
    tgt = read_split(split, tgt_lang, **kwargs)
    if len(src) != len(tgt):
        raise ValueError(f"Multi30k {split}: {src_lang} has {len(src)} lines but {tgt_lang} has {len(tgt)}")
    return src, tgt

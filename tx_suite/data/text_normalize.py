"""Clean user-supplied text before the model sees it: translation sources (``tx-suite translate``)
and captions (``tx-suite generate``); split input files into lines.

The joint BPE model round-trips text exactly (byte fallback, explicit spaces), so invisible or
unusual characters reach the encoder as tokens it never saw in training: a UTF-8 byte-order mark
at the start of a file, a tab, a zero-width space, or German umlauts in decomposed (NFD) form
each turn into byte tokens and can change the whole translation. Inputs are brought to the form
nearly all of Multi30k's text has: NFC, single spaces. (The datamodule itself feeds Multi30k as it
is: 129 of its 29,000 German training lines, 1 English training line and 1 German val line have
double or leading spaces, a no-break space or a zero-width space, which this function would change;
test_2016_flickr has none.)
"""

from __future__ import annotations

import codecs
import functools
import re
import unicodedata

#: Control (Cc) and format (Cf) characters other than whitespace: NUL, BEL, ..., byte-order mark,
#: zero-width (non-)joiners and spaces, word joiner, soft hyphen, bidi marks and overrides (U+200E,
#: U+202A..U+202E, U+2066..U+2069). None is visible in a sentence, yet each is a byte token the
#: model never saw in training and can change the whole translation.
@functools.cache
def _invisible() -> re.Pattern:
    # Built on first use from this Python's Unicode tables (a 0.2 s scan, kept out of imports).
    return re.compile("[" + "".join(
        re.escape(chr(c)) for c in range(0x110000)
        if unicodedata.category(chr(c)) in ("Cc", "Cf") and not chr(c).isspace()
    ) + "]")

_SPACES = re.compile(r"\s+")  # str patterns match Unicode whitespace: tabs, NBSP, ideographic space
_SURROGATES = re.compile("[\ud800-\udfff]")


def _replace_surrogates(text: str) -> str:
    """Undecodable bytes as U+FFFD, as a file read with ``errors="replace"`` gives them.

    Python hands bytes that are not UTF-8 in command-line arguments (and ``sys.stdin`` under some
    locales) over as lone surrogates, which no tokenizer can encode."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte
        return _SURROGATES.sub("\ufffd", text)


def normalize_source(text: str) -> str:
    """``text`` in NFC, without control and invisible format characters, with every run of whitespace (tabs,
    no-break spaces, ...) as one space and no leading or trailing space, and undecodable bytes (lone
    surrogates) as U+FFFD. ``""`` stays ``""``."""
    if _SURROGATES.search(text):
        text = _replace_surrogates(text)
    # Invisible characters go first: one between a letter and its combining accent ("e", ZWSP,
    # U+0301) blocks composition, and removed after NFC it left the decomposed form behind.
    text = unicodedata.normalize("NFC", _invisible().sub("", text))
    return _SPACES.sub(" ", text).strip()


#: Byte-order marks of the encodings read besides UTF-8 (UTF-32 first: its LE mark starts with UTF-16's).
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def input_encoding(data: bytes) -> str:
    """``utf-16``/``utf-32`` when ``data`` starts with that byte-order mark (Windows Notepad's
    "Unicode" files), else ``utf-8`` (whose own BOM :func:`normalize_source` removes)."""
    return next((encoding for bom, encoding in _BOMS if data.startswith(bom)), "utf-8")


def has_undecodable_bytes(data: bytes) -> bool:
    """True if ``data`` is not valid text in :func:`input_encoding` (Latin-1, a truncated file):
    :func:`split_lines` then replaces those bytes with U+FFFD, and the caller should say so."""
    try:
        data.decode(input_encoding(data))
    except UnicodeDecodeError:
        return True
    return False


def split_lines(data: bytes) -> list[str]:
    """Lines of ``data`` (UTF-8, or UTF-16/32 with a byte-order mark; bad bytes replaced), split on
    ``\\n`` only (``str.splitlines`` would also split on form feeds, U+2028 and others, and line n
    out would not be line n in); ``\\r\\n`` endings are stripped, and a final newline ends the
    last line. (Read as UTF-8, a UTF-16 file's NUL bytes vanished in :func:`normalize_source`, its
    umlauts became U+FFFD, and its final ``\\n\\x00`` added a line.)"""
    text = data.decode(input_encoding(data), errors="replace")
    if text.endswith("\n"):
        text = text[:-1]
    return [line.removesuffix("\r") for line in text.split("\n")] if text or data else []


def one_line(text: str) -> str:
    """``text`` with its line breaks as spaces: a decoded hypothesis (byte fallback can produce
    a newline) must stay one line of a one-sentence-per-line file."""
    return text.replace("\r", " ").replace("\n", " ")

"""Clean user-supplied source sentences before translation (``tx-suite translate``).

The joint BPE model round-trips any text exactly (byte fallback, explicit spaces), so invisible or
unusual characters reach the encoder as tokens it never saw in training: a UTF-8 byte-order mark
at the start of a file, a tab, a zero-width space, or German umlauts in decomposed (NFD) form
each turn into byte tokens and can change the whole translation. Multi30k's text is NFC with
single spaces, so inputs are brought to that form.
"""

from __future__ import annotations

import re
import unicodedata

#: Format characters with no visible effect in a sentence: byte-order mark / zero-width no-break
#: space, zero-width space, (non-)joiners, word joiner, soft hyphen.
_INVISIBLE = re.compile("[\ufeff\u200b\u200c\u200d\u2060\u00ad]")
_SPACES = re.compile(r"\s+")  # str patterns match Unicode whitespace: tabs, NBSP, ideographic space


def normalize_source(text: str) -> str:
    """``text`` in NFC, without invisible format characters, with every run of whitespace (tabs,
    no-break spaces, ...) as one space and no leading or trailing space. ``""`` stays ``""``."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFC", text))
    return _SPACES.sub(" ", text).strip()

"""Attributes, caption templates and the seen / held-out split of Captioned MNIST scenes.

A scene is one MNIST digit drawn in a ``colour`` at a ``size`` and a ``position`` on a black
32 x 32 canvas. Captions are written from several templates with synonyms, e.g.
``"a small red seven in the top left"`` or ``"top-left: tiny red 7"``.

Compositional generalisation (as in the held-out attribute pairs of CLEVR-CoGenT, Johnson et al.
2017, Sec. 6): some ``(digit, colour)`` pairs never occur in training scenes; the test set of
compositional generalisation is made of exactly those pairs (at every size and position).
Everything here is pure Python so that the split logic can be tested without images.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from collections.abc import Iterable, Sequence

DIGIT_WORDS: tuple[str, ...] = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
)
#: Colour name -> RGB in [0, 1]. Blue is lightened so that it stays visible on black.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.2, 0.4, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "cyan": (0.0, 1.0, 1.0),
    "magenta": (1.0, 0.0, 1.0),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
#: Size name -> side in pixels of the resized 28 x 28 MNIST image (its digit fills ~20/28 of it).
SIZES: dict[str, int] = {"small": 14, "large": 20}
SIZE_NAMES: tuple[str, ...] = tuple(SIZES)
#: Position name -> (fx, fy): the top-left corner of the digit is at ``f * (canvas - side)``.
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.0, 0.0),
    "top right": (1.0, 0.0),
    "bottom left": (0.0, 1.0),
    "bottom right": (1.0, 1.0),
    "center": (0.5, 0.5),
}
POSITION_NAMES: tuple[str, ...] = tuple(POSITIONS)

SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "tiny", "little"),
    "large": ("large", "big", "huge"),
}
POSITION_SYNONYMS: dict[str, tuple[str, ...]] = {
    "top left": ("top left", "upper left"),
    "top right": ("top right", "upper right"),
    "bottom left": ("bottom left", "lower left"),
    "bottom right": ("bottom right", "lower right"),
    "center": ("center", "middle", "centre"),
}

#: Caption templates. Fields: {size} {colour} {digit_word} {digit} {position} {position_tag}.
TEMPLATES: tuple[str, ...] = (
    "a {size} {colour} {digit_word} in the {position}",
    "{position_tag}: {size} {colour} {digit}",
    "the number {digit} in {colour}, {size}, at the {position}",
    "{size} {colour} {digit_word}, {position}",
    "a {colour} {digit_word} that is {size}, placed in the {position}",
)

#: Default held-out (digit, colour) pairs: each digit loses one colour, each colour one or two
#: digits, so every single attribute value is still seen in training.
DEFAULT_HELDOUT_PAIRS: tuple[tuple[int, str], ...] = tuple(
    (d, COLOUR_NAMES[d % len(COLOUR_NAMES)]) for d in range(10)
)


@dataclass(frozen=True)
class Attributes:
    """The four attributes of one scene, as indices into the tuples above."""

    digit: int
    colour: int
    size: int
    position: int

    @property
    def names(self) -> tuple[int, str, str, str]:
        return (self.digit, COLOUR_NAMES[self.colour], SIZE_NAMES[self.size],
                POSITION_NAMES[self.position])


def all_combinations() -> list[Attributes]:
    """Every (digit, colour, size, position) combination: 10 * 6 * 2 * 5 = 600."""
    return [Attributes(*c) for c in itertools.product(
        range(10), range(len(COLOURS)), range(len(SIZES)), range(len(POSITIONS)))]


def parse_pairs(pairs: Iterable[Sequence]) -> frozenset[tuple[int, int]]:
    """Normalise held-out pairs to ``{(digit, colour_index)}``.

    Accepts ``[7, "red"]``, ``[7, 0]`` or strings ``"7-red"`` (the form a YAML config writes).

    Raises:
        ValueError: an unknown digit or colour, naming the bad entry.
    """
    out = set()
    for entry in pairs:
        pair = entry.replace(":", "-").split("-", 1) if isinstance(entry, str) else entry
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"held-out pair {entry!r} is not (digit, colour), e.g. [7, red] or '7-red'")
        digit, colour = (v.strip() if isinstance(v, str) else v for v in pair)
        if isinstance(digit, bool) or not (isinstance(digit, int) or (isinstance(digit, str) and digit.isdigit())):
            raise ValueError(f"held-out pair {entry!r}: the digit must be 0..9, got {digit!r}")
        digit = int(digit)
        if not 0 <= digit <= 9:
            raise ValueError(f"held-out pair {entry!r}: the digit must be 0..9, got {digit!r}")
        if isinstance(colour, str) and not colour.isdigit():
            if colour not in COLOURS:
                raise ValueError(f"held-out pair {entry!r}: unknown colour, expected one of {COLOUR_NAMES}")
            colour = COLOUR_NAMES.index(colour)
        if isinstance(colour, bool) or not isinstance(colour, (int, str)):
            raise ValueError(f"held-out pair {entry!r}: the colour must be a name or an index, got {colour!r}")
        colour = int(colour)
        if not 0 <= colour < len(COLOURS):
            raise ValueError(f"held-out pair {entry!r}: colour index out of range")
        out.add((digit, colour))
    return frozenset(out)


def split_combinations(heldout_pairs: Iterable[Sequence] = DEFAULT_HELDOUT_PAIRS,
                       ) -> tuple[list[Attributes], list[Attributes]]:
    """Split all combinations into ``(seen, heldout)`` by their (digit, colour) pair.

    Raises:
        ValueError: bad pairs (see :func:`parse_pairs`), or a split that leaves some digit or
            colour with no seen combination at all (then nothing could be generalised to).
    """
    held = parse_pairs(heldout_pairs)
    seen = [a for a in all_combinations() if (a.digit, a.colour) not in held]
    heldout = [a for a in all_combinations() if (a.digit, a.colour) in held]
    if {a.digit for a in seen} != set(range(10)) or {a.colour for a in seen} != set(range(len(COLOURS))):
        raise ValueError("held-out pairs remove every seen example of some digit or colour")
    return seen, heldout


def caption(attrs: Attributes, template: int = 0, synonym: int = 0, numeral: bool = False) -> str:
    """Write the caption of ``attrs`` with ``TEMPLATES[template]``.

    ``synonym`` picks among size and position synonyms (taken modulo their count) and ``numeral``
    writes the digit in the ``{digit_word}`` slot as a numeral ("7") instead of a word ("seven").
    """
    size_name = SIZE_NAMES[attrs.size]
    pos_name = POSITION_NAMES[attrs.position]
    sizes, positions = SIZE_SYNONYMS[size_name], POSITION_SYNONYMS[pos_name]
    position = positions[synonym % len(positions)]
    return TEMPLATES[template % len(TEMPLATES)].format(
        size=sizes[synonym % len(sizes)],
        colour=COLOUR_NAMES[attrs.colour],
        digit_word=str(attrs.digit) if numeral else DIGIT_WORDS[attrs.digit],
        digit=str(attrs.digit),
        position=position,
        position_tag=position.replace(" ", "-"),
    )


def all_captions(attrs: Attributes) -> list[str]:
    """Every distinct caption the templates and synonyms can write for ``attrs``."""
    n_syn = 6  # lcm of the synonym counts (3 and 2)
    return sorted({caption(attrs, t, s, n) for t in range(len(TEMPLATES))
                   for s in range(n_syn) for n in (False, True)})


def caption_vocabulary() -> list[str]:
    """All words and punctuation marks any caption can contain (sorted)."""
    words: set[str] = set()
    for attrs in all_combinations():
        for text in all_captions(attrs):
            words.update(_WORD_RE.findall(text))
    return sorted(words)


def parse_caption(text: str) -> Attributes:
    """Read the attributes back from a caption written by :func:`caption` (any template).

    Used to check captions independently of the scene records, and to label free-text captions
    given to ``tx-suite generate`` so that the judge can score the images.

    Raises:
        ValueError: the caption does not name exactly one digit, colour, size and position.
    """
    words = _WORD_RE.findall(text.lower().replace("-", " "))
    joined = " " + " ".join(words) + " "

    def one(kind: str, table: dict[int, tuple[str, ...]]) -> int:
        found = {k for k, names in table.items() for n in names if f" {n} " in joined}
        if len(found) != 1:
            raise ValueError(f"caption {text!r} names {len(found)} {kind}s, expected exactly one")
        return found.pop()

    digit = one("digit", {d: (w, str(d)) for d, w in enumerate(DIGIT_WORDS)})
    colour = one("colour", {i: (c,) for i, c in enumerate(COLOUR_NAMES)})
    size = one("size", {i: SIZE_SYNONYMS[s] for i, s in enumerate(SIZE_NAMES)})
    position = one("position", {i: POSITION_SYNONYMS[p] for i, p in enumerate(POSITION_NAMES)})
    return Attributes(digit, colour, size, position)


_WORD_RE = re.compile(r"\w+|[^\w\s]")

"""Caption tokenizer: a thin wrapper around a HuggingFace ``tokenizers`` model.

Captions are short, so they are cut or right-padded to a fixed ``max_len``: the text part of the
joint DALL-E sequence then has a fixed length and the image always starts at the same position
(Ramesh et al. 2021, Sec. 2.2, pad the caption to 256 tokens in the same way).

Two vocabularies: ``word_level`` (a closed word list, as Captioned MNIST's templates give) and
``train`` (word-level or BPE learned from training captions, as for emoji names, where words of
held-out names may be unknown and map to ``[UNK]``).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

PAD, UNK, BOI = "[PAD]", "[UNK]", "[BOI]"
SPECIALS = (PAD, UNK, BOI)  # ids 0, 1, 2 in every vocabulary built here


def _configure(tok: Tokenizer) -> Tokenizer:
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    # Whitespace() splits into \w+ and runs of punctuation: "top-left:" -> top, -, left, :
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


class CaptionTokenizer:
    """Fixed-length caption encoder.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` whose vocabulary starts with ``[PAD] [UNK] [BOI]``.
        max_len: captions are truncated or right-padded with ``pad_id`` to this many tokens.

    Raises:
        ValueError: the tokenizer lacks the special tokens or ``max_len < 1``.
    """

    def __init__(self, tokenizer: Tokenizer, max_len: int = 16):
        if max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        ids = [tokenizer.token_to_id(s) for s in SPECIALS]
        if ids != [0, 1, 2]:
            raise ValueError(f"caption tokenizer must map {SPECIALS} to ids 0, 1, 2, got {ids}")
        self.tokenizer = tokenizer
        self.max_len = max_len
        self.pad_id, self.unk_id, self.boi_id = ids

    @classmethod
    def word_level(cls, vocabulary: Iterable[str], max_len: int = 16) -> "CaptionTokenizer":
        """A word-level tokenizer over a closed, sorted vocabulary (deterministic ids)."""
        words = [w for w in sorted(set(vocabulary)) if w not in SPECIALS]
        vocab = {w: i for i, w in enumerate(list(SPECIALS) + words)}
        tok = _configure(Tokenizer(models.WordLevel(vocab, unk_token=UNK)))
        tok.add_special_tokens(list(SPECIALS))  # so that decode(skip_special_tokens=True) drops them
        return cls(tok, max_len)

    @classmethod
    def train(cls, texts: Iterable[str], kind: str = "word", vocab_size: int = 1000,
              min_frequency: int = 1, max_len: int = 16) -> "CaptionTokenizer":
        """Learn a ``"word"`` (WordLevel) or ``"bpe"`` vocabulary of at most ``vocab_size``
        entries (specials included) from ``texts``.

        Raises:
            ValueError: unknown ``kind``.
        """
        if kind == "word":
            model = models.WordLevel(unk_token=UNK)
            trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                                special_tokens=list(SPECIALS), show_progress=False)
        elif kind == "bpe":
            model = models.BPE(unk_token=UNK)
            trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                          special_tokens=list(SPECIALS), show_progress=False)
        else:
            raise ValueError(f"tokenizer kind must be 'word' or 'bpe', got {kind!r}")
        tok = _configure(Tokenizer(model))
        tok.train_from_iterator(list(texts), trainer=trainer)
        return cls(tok, max_len)

    @classmethod
    def from_str(cls, json_str: str, max_len: int) -> "CaptionTokenizer":
        """Rebuild from :meth:`to_str` output (as stored in a text-to-image checkpoint)."""
        return cls(Tokenizer.from_str(json_str), max_len)

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Captions -> ``(B, max_len)`` long ids, truncated and right-padded with ``pad_id``.

        ``[PAD]`` or ``[BOI]`` typed in a caption is an unknown word (``unk_id``), not the special
        token: a caption ``"[PAD]"`` would otherwise be the all-padding empty caption, the
        unconditional input of classifier-free guidance."""
        out = torch.full((len(texts), self.max_len), self.pad_id, dtype=torch.long)
        for i, enc in enumerate(self.tokenizer.encode_batch(list(texts))):
            ids = [self.unk_id if t in (self.pad_id, self.boi_id) else t for t in enc.ids[: self.max_len]]
            out[i, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        """``(B, T)`` ids -> captions (special tokens dropped)."""
        return self.tokenizer.decode_batch(ids.tolist(), skip_special_tokens=True)

    def n_truncated(self, texts: Sequence[str]) -> int:
        """How many of ``texts`` have more than ``max_len`` tokens (:meth:`encode` cuts them)."""
        return sum(len(e.ids) > self.max_len for e in self.tokenizer.encode_batch(list(texts)))

    def unknown_rate(self, texts: Sequence[str]) -> float:
        """Fraction of (untruncated) tokens of ``texts`` that are ``[UNK]``."""
        encs = self.tokenizer.encode_batch(list(texts))
        total = sum(len(e.ids) for e in encs)
        return sum(e.ids.count(self.unk_id) for e in encs) / max(total, 1)

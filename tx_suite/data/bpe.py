"""Joint byte-pair-encoding tokenizer for translation, built on HF ``tokenizers``.

Subword units follow Sennrich et al. 2016, "Neural Machine Translation of Rare Words with Subword
Units" (BPE), learned jointly on source and target text of the training split. Words are marked
with a SentencePiece-style meta-space (``▁``, Kudo & Richardson 2018), so spaces are explicit
tokens and :meth:`BPETokenizer.decode` restores the input exactly. Characters never seen in
training fall back to their UTF-8 bytes (``<0xNN>`` tokens), so unknown characters never crash and
still round-trip.

Special ids are fixed: ``pad_id=0, bos_id=1, eos_id=2, unk_id=3``; byte tokens follow (4..259).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tx_suite.utils.atomic_write import atomic_open

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
#: The decoder's first input by name: ``<s>``, or ``</s>`` as fairseq's ``prev_output_tokens``.
DECODER_STARTS = {"bos": BOS_ID, "eos": EOS_ID}
N_BYTES = 256
#: Bump when the tokenizer recipe changes, so cached models keyed on the old recipe are not reused.
RECIPE_VERSION = 1
# The encoder prepends one space so that the first word gets the same "▁word" token as the others;
# decode() removes exactly that character again.
_PREFIX = " "


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Metaspace first (spaces become explicit "▁"), then split off punctuation and digits; the
    # split is lossless because every space is already a token character.
    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(prepend_scheme="never"),
        pre_tokenizers.Punctuation(),
        pre_tokenizers.Digits(),
    ])


def _decoder() -> decoders.Decoder:
    return decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace(prepend_scheme="never")])


class BPETokenizer:
    """A trained joint BPE model with fixed special ids and exact detokenization.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` built by :meth:`train` (or loaded from its JSON).

    Raises:
        ValueError: the tokenizer does not have the fixed special/byte tokens at ids 0..259.
    """

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    unk_id = UNK_ID

    def __init__(self, tokenizer: Tokenizer):
        for i, tok in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(tok) != i:
                raise ValueError(f"not a tx-suite BPE tokenizer: {tok!r} is not at id {i}")
        if tokenizer.token_to_id("<0xFF>") != len(SPECIAL_TOKENS) + N_BYTES - 1:
            raise ValueError("not a tx-suite BPE tokenizer: byte-fallback tokens missing")
        self._tok = tokenizer

    # ------------------------------------------------------------------ construction
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2) -> BPETokenizer:
        """Learn a BPE model on ``texts`` (source and target sentences together for a joint model).

        Args:
            texts: training sentences, one string each.
            vocab_size: total vocabulary size, including the 4 special and 256 byte tokens. The
                result may be smaller when the text does not support that many merges.
            min_frequency: minimum pair count for a merge.

        Raises:
            ValueError: ``vocab_size`` leaves no room for learned tokens.
        """
        reserved = len(SPECIAL_TOKENS) + N_BYTES
        if vocab_size <= reserved:
            raise ValueError(f"vocab_size must be > {reserved} (4 special + 256 byte tokens), got {vocab_size}")
        tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS[UNK_ID]))
        tok.pre_tokenizer = _pre_tokenizer()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - N_BYTES, min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        )
        tok.train_from_iterator((_PREFIX + t for t in texts), trainer)
        # The trainer cannot add byte-fallback tokens as ordinary vocabulary (special tokens would
        # also be matched inside raw text), so rebuild the model with them at fixed ids 4..259.
        learned = json.loads(tok.to_str())["model"]
        vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
        for b in range(N_BYTES):
            vocab[f"<0x{b:02X}>"] = len(vocab)
        for t, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1]):
            vocab.setdefault(t, len(vocab))
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
        out = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=True,
                                   unk_token=SPECIAL_TOKENS[UNK_ID]))
        out.pre_tokenizer = _pre_tokenizer()
        out.decoder = _decoder()
        return cls(out)

    @classmethod
    def from_str(cls, json_str: str) -> BPETokenizer:
        """Load from the JSON produced by :meth:`to_str` (as stored in checkpoints)."""
        return cls(Tokenizer.from_str(json_str))

    @classmethod
    def from_file(cls, path: str | Path) -> BPETokenizer:
        return cls(Tokenizer.from_file(str(path)))

    def to_str(self) -> str:
        return self._tok.to_str()

    def save(self, path: str | Path) -> None:
        """Write the tokenizer JSON atomically: a crash or a failed write never leaves a half-written
        cache file, nor a temporary one unless the process is killed mid-write."""
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write(self.to_str())

    @classmethod
    def load_or_train(cls, texts: Sequence[str], cache_dir: str | Path, vocab_size: int = 8000,
                      min_frequency: int = 2) -> BPETokenizer:
        """Return the cached model for these settings and texts, training and caching it if needed.

        The cache file is ``cache_dir/bpe/bpe-v{vocab_size}-m{min_frequency}-{hash}.json`` where the
        hash covers the recipe version, the settings and the training text itself.
        """
        path = Path(cache_dir) / "bpe" / f"bpe-v{vocab_size}-m{min_frequency}-{cache_key(texts, vocab_size, min_frequency)}.json"
        if path.is_file():
            try:
                return cls.from_file(path)
            except Exception:  # a damaged cache entry is rebuilt, not fatal
                pass
        tok = cls.train(texts, vocab_size=vocab_size, min_frequency=min_frequency)
        tok.save(path)
        return tok

    # ------------------------------------------------------------------ use
    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without BOS/EOS (those are added by the batch collator)."""
        return self._tok.encode(_PREFIX + text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch([_PREFIX + t for t in texts], add_special_tokens=False)]

    def _clean(self, ids: Iterable[int]) -> list[int]:
        out = []
        for i in ids:
            i = int(i)
            if i == EOS_ID:
                break  # everything after the first EOS is padding or beam leftovers
            if i not in (PAD_ID, BOS_ID):
                out.append(i)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Detokenize ids (a list or 1-D tensor) up to the first EOS, skipping PAD and BOS.

        ``decode(encode(s)) == s`` for every string ``s`` without U+2581 ``▁``, the meta-space
        that marks word starts (an ``▁`` in the input decodes as a space).
        """
        text = self._tok.decode(self._clean(ids), skip_special_tokens=False)
        return text[len(_PREFIX):] if text.startswith(_PREFIX) else text

    def decode_batch(self, batch: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def same_as(self, other: BPETokenizer) -> bool:
        """True if both map every token to the same id (the same model for encoding purposes)."""
        return self._tok.get_vocab() == other._tok.get_vocab()

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(int(i))

    def tokens(self, ids: Iterable[int]) -> list[str]:
        """Token strings (e.g. ``"▁Männer"``) for labelling attention maps."""
        return [self.id_to_token(i) for i in ids]


def cache_key(texts: Sequence[str], vocab_size: int, min_frequency: int) -> str:
    """12-hex-digit key over the recipe, settings and the training text."""
    h = hashlib.sha256(json.dumps([RECIPE_VERSION, vocab_size, min_frequency]).encode())
    for t in texts:
        data = t.encode("utf-8")
        if b"\n" in data:
            # Texts are newline-separated here, so ["a\nb"] would hash as ["a", "b"]. Such a text is
            # hashed escaped behind a 0xFF byte, which UTF-8 never contains: no plain text can
            # match it, and the keys of newline-free texts (every cached model so far) stay as they were.
            data = b"\xff" + json.dumps(t).encode("ascii")
        h.update(data)
        h.update(b"\n")
    return h.hexdigest()[:12]

"""Tokenized parallel sentences and the padded batch format of the translation task.

A batch is a dict::

    src                   (B, S) long   source ids followed by EOS, right-padded with pad_id
    src_key_padding_mask  (B, S) bool   True = padding
    tgt_in                (B, T) long   BOS + target ids (decoder input, teacher forcing)
    tgt_out               (B, T) long   target ids + EOS (what the decoder must predict)
    tgt_key_padding_mask  (B, T) bool   True = padding (same for tgt_in and tgt_out)
    index                 (B,)   long   position of each pair in the split
    src_text, tgt_text    list[str]     the raw sentences (references for BLEU)

Appending EOS to the source follows fairseq's translation task.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from tx_suite.data.bpe import BOS_ID, EOS_ID, PAD_ID, BPETokenizer


class TranslationDataset(Dataset):
    """Parallel sentences, tokenized once up front.

    Args:
        src_text, tgt_text: aligned sentences (same length).
        tokenizer: the joint BPE model.
        max_len: if given, drop pairs whose source or target exceeds ``max_len`` tokens (EOS/BOS
            included); used for training only, so evaluation always sees every sentence.

    Raises:
        ValueError: ``src_text`` and ``tgt_text`` differ in length.
    """

    def __init__(self, src_text: Sequence[str], tgt_text: Sequence[str], tokenizer: BPETokenizer,
                 max_len: int | None = None):
        if len(src_text) != len(tgt_text):
            raise ValueError(f"{len(src_text)} source but {len(tgt_text)} target sentences")
        src_ids = tokenizer.encode_batch(list(src_text))
        tgt_ids = tokenizer.encode_batch(list(tgt_text))
        keep = [i for i in range(len(src_ids))
                if max_len is None or (len(src_ids[i]) + 1 <= max_len and len(tgt_ids[i]) + 1 <= max_len)]
        self.n_dropped = len(src_ids) - len(keep)
        self.index = keep
        self.src_text = [src_text[i] for i in keep]
        self.tgt_text = [tgt_text[i] for i in keep]
        self.src_ids = [torch.tensor(src_ids[i], dtype=torch.long) for i in keep]
        self.tgt_ids = [torch.tensor(tgt_ids[i], dtype=torch.long) for i in keep]

    def __len__(self) -> int:
        return len(self.src_ids)

    def sizes(self) -> list[int]:
        """Padded cost of each pair: the longer of source (+EOS) and target (+BOS or EOS)."""
        return [max(len(s), len(t)) + 1 for s, t in zip(self.src_ids, self.tgt_ids)]

    def __getitem__(self, i: int) -> dict:
        return {"src": self.src_ids[i], "tgt": self.tgt_ids[i], "index": self.index[i],
                "src_text": self.src_text[i], "tgt_text": self.tgt_text[i]}


def pad_batch(seqs: Sequence[torch.Tensor], pad_id: int = PAD_ID) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D long tensors to ``(B, T)``; returns ``(ids, key_padding_mask)`` (True = pad)."""
    ids = torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=pad_id)
    lengths = torch.tensor([len(s) for s in seqs])
    mask = torch.arange(ids.size(1))[None, :] >= lengths[:, None]  # (B, T)
    return ids, mask


def encode_source(tokenizer: BPETokenizer, texts: Sequence[str], max_len: int | None = None) -> list[torch.Tensor]:
    """Source ids with EOS appended, truncated to ``max_len`` tokens (EOS kept) when given."""
    out = []
    for ids in tokenizer.encode_batch(list(texts)):
        if max_len is not None and len(ids) + 1 > max_len:
            ids = ids[: max_len - 1]
        out.append(torch.tensor(ids + [EOS_ID], dtype=torch.long))
    return out


def collate_translation(items: Sequence[dict]) -> dict:
    """Stack dataset items into the padded batch described in the module docstring."""
    eos = torch.tensor([EOS_ID])
    bos = torch.tensor([BOS_ID])
    src, src_mask = pad_batch([torch.cat([it["src"], eos]) for it in items])
    tgt_in, tgt_mask = pad_batch([torch.cat([bos, it["tgt"]]) for it in items])
    tgt_out, _ = pad_batch([torch.cat([it["tgt"], eos]) for it in items])
    return {
        "src": src, "src_key_padding_mask": src_mask,
        "tgt_in": tgt_in, "tgt_out": tgt_out, "tgt_key_padding_mask": tgt_mask,
        "index": torch.tensor([it["index"] for it in items], dtype=torch.long),
        "src_text": [it["src_text"] for it in items], "tgt_text": [it["tgt_text"] for it in items],
    }

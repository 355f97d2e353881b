"""Greedy autoregressive decoding for encoder-decoder models, with or without a KV cache."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from tx_suite.core import DecoderCache


class Seq2SeqModel(Protocol):
    """What the decoders need (implemented by :class:`tx_suite.models.seq2seq.Seq2SeqTransformer`)."""

    def encode(self, src: Tensor, src_key_padding_mask: Tensor | None = None) -> Tensor: ...

    def decode(self, tgt: Tensor, memory: Tensor, memory_key_padding_mask: Tensor | None = None,
               cache: DecoderCache | None = None) -> Tensor: ...

    def new_cache(self) -> DecoderCache: ...


#: Largest output budget, in tokens: the decoders allocate an output buffer that wide.
MAX_BUDGET = 1 << 16


def output_limits(model: Seq2SeqModel, src_key_padding_mask: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """:func:`max_lengths`, at least 1, and at most the model's ``max_positions`` attribute if it has
    one that is not None (a learned position table; fairseq caps at ``max_decoder_positions`` alike): the decoder embeds positions
    ``0 .. limit - 1``, and one past its table raised IndexError for the whole batch mid-decoding."""
    limit = max_lengths(src_key_padding_mask, max_len_a, max_len_b).clamp(min=1)
    cap = getattr(model, "max_positions", None)
    return limit if cap is None else limit.clamp(max=cap)


def max_lengths(src_key_padding_mask: Tensor, max_len_a: float, max_len_b: int) -> Tensor:
    """Per-sentence output budget ``floor(a * source_length) + b`` tokens, EOS included (as
    fairseq's ``--max-len-a/--max-len-b``), at most :data:`MAX_BUDGET`. ``(B, S)`` mask -> ``(B,)`` long."""
    src_len = (~src_key_padding_mask).sum(1)
    # In float64, clamped before the cast: a huge a or b must not wrap around int64.
    budget = (src_len.double() * max_len_a).floor() + float(max_len_b)
    return budget.clamp(-MAX_BUDGET, MAX_BUDGET).long()


def step_logits(model: Seq2SeqModel, tokens: Tensor, memory: Tensor, memory_key_padding_mask: Tensor,
                cache: DecoderCache | None, forbidden: tuple[int, ...] = ()) -> Tensor:
    """Next-token logits ``(N, V)`` (float32) given the prefix ``tokens`` ``(N, t)``.

    With a cache only the last token is fed (its keys/values are appended); without one the whole
    prefix is decoded again, which is what the cache saves. ``forbidden`` ids (PAD, BOS) get
    ``-inf`` so they are never produced.
    """
    inp = tokens[:, -1:] if cache is not None else tokens
    logits = model.decode(inp, memory, memory_key_padding_mask, cache=cache)[:, -1].float()
    if forbidden:
        logits[:, list(forbidden)] = float("-inf")
    return logits


def never_produced(bos_id: int, eos_id: int, pad_id: int) -> tuple[int, ...]:
    """Ids a decoder must not output: PAD, and the start token unless it is EOS (fairseq's start)."""
    return (pad_id,) if bos_id == eos_id else (pad_id, bos_id)


@torch.no_grad()
def greedy_search(model: Seq2SeqModel, src: Tensor, src_key_padding_mask: Tensor, bos_id: int, eos_id: int,
                  pad_id: int, max_len_a: float = 1.2, max_len_b: int = 10, use_cache: bool = True) -> Tensor:
    """Pick the most probable next token until EOS or the length budget.

    Finished sentences leave the batch (their cache rows are dropped with ``cache.reorder``), so
    the work shrinks as the batch empties.

    Args:
        model: see :class:`Seq2SeqModel`, in eval mode.
        src: ``(B, S)`` source ids; ``src_key_padding_mask`` ``(B, S)`` bool, True = padding.
        bos_id, eos_id, pad_id: special ids; ``bos_id`` is the decoder's first input and may be
            ``eos_id`` (fairseq starts the decoder with EOS); see :func:`never_produced`.
        max_len_a, max_len_b: output budget ``a * source_length + b`` tokens (EOS included);
            a sentence reaching it ends with a forced EOS.
        use_cache: incremental decoding with the core's KV cache (False recomputes every prefix).

    Returns:
        ``(B, T)`` long: output ids without BOS, each ending with EOS, right-padded with ``pad_id``.
    """
    b = src.size(0)
    device = src.device
    memory = model.encode(src, src_key_padding_mask)
    mem_mask = src_key_padding_mask
    limit = output_limits(model, src_key_padding_mask, max_len_a, max_len_b)
    cache = model.new_cache() if use_cache else None
    active = torch.arange(b, device=device)  # batch rows still decoding
    tokens = torch.full((b, 1), bos_id, dtype=torch.long, device=device)
    out = torch.full((b, int(limit.max())), pad_id, dtype=torch.long, device=device)
    forbidden = never_produced(bos_id, eos_id, pad_id)
    for t in range(int(limit.max())):
        logits = step_logits(model, tokens, memory, mem_mask, cache, forbidden)
        nxt = logits.argmax(-1)
        nxt = torch.where(limit[active] <= t + 1, torch.full_like(nxt, eos_id), nxt)  # budget spent
        out[active, t] = nxt
        done = nxt == eos_id
        if done.all():
            break
        if done.any():
            keep = (~done).nonzero().squeeze(1)
            active, tokens, nxt = active[keep], tokens[keep], nxt[keep]
            memory, mem_mask = memory[keep], mem_mask[keep]
            if cache is not None:
                cache.reorder(keep)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
    lengths = (out != pad_id).sum(1)
    return out[:, : int(lengths.max())]

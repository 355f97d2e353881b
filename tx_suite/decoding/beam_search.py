"""Batched beam search for encoder-decoder models (as fairseq's ``SequenceGenerator``).

Each source sentence keeps ``beam_size`` (K) live hypotheses. At every step the ``2K`` best
one-token extensions of all its beams are ranked; EOS extensions among the top K are finished
hypotheses, and the best K non-EOS extensions continue (taking 2K candidates guarantees K of
them). A sentence is done when it has K finished hypotheses; the one with the best
length-normalized score ``log P(y|x) / |y|^alpha`` is returned (fairseq's ``--lenpen``; alpha = 0
ranks by total log-probability, alpha = 1 by mean log-probability per token, larger values favour
longer outputs). Finished sentences leave the batch, as in :func:`greedy_search`.

This is not the GNMT penalty ``((5 + |y|) / 6)^alpha`` (Wu et al. 2016, Sec. 7) that Vaswani et al.
2017 (Sec. 6.1) used with alpha = 0.6, beam 4 and a length limit of input + 50, so an alpha
from one does not carry over to the other. The defaults here are beam 5, alpha 1 and a budget
of ``1.2 * |x| + 10`` tokens. Unlike fairseq's default ``min_len=1``, EOS may be the first token
(an empty translation), here and in :func:`~tx_suite.decoding.greedy.greedy_search`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tx_suite.decoding.greedy import Seq2SeqModel, never_produced, output_limits, step_logits


@torch.no_grad()
def beam_search(model: Seq2SeqModel, src: Tensor, src_key_padding_mask: Tensor, bos_id: int, eos_id: int,
                pad_id: int, beam_size: int = 5, length_penalty: float = 1.0, max_len_a: float = 1.2,
                max_len_b: int = 10, use_cache: bool = True) -> Tensor:
    """Translate a batch with beam search.

    Args:
        model: see :class:`tx_suite.decoding.greedy.Seq2SeqModel`, in eval mode.
        src: ``(B, S)`` source ids; ``src_key_padding_mask`` ``(B, S)`` bool, True = padding.
        bos_id, eos_id, pad_id: special ids; ``bos_id`` is the decoder's first input and may be
            ``eos_id``, as fairseq's (:func:`~tx_suite.decoding.greedy.never_produced`).
        beam_size: hypotheses kept per sentence (1 = greedy search).
        length_penalty: exponent ``alpha`` of the length normalization above.
        max_len_a, max_len_b: output budget ``a * source_length + b`` tokens, EOS included.
        use_cache: incremental decoding with the core's KV cache (reordered with
            ``cache.reorder`` as beams are selected); False recomputes every prefix.

    Returns:
        ``(B, T)`` long: best hypothesis per sentence without BOS, ending with EOS, right-padded.

    Raises:
        ValueError: ``beam_size < 1``.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    k = beam_size
    b, device = src.size(0), src.device
    limit = output_limits(model, src_key_padding_mask, max_len_a, max_len_b)
    memory = model.encode(src, src_key_padding_mask).repeat_interleave(k, dim=0)  # (B, S, D) -> (B*K, S, D)
    mem_mask = src_key_padding_mask.repeat_interleave(k, dim=0)
    cache = model.new_cache() if use_cache else None
    active = torch.arange(b, device=device)  # source sentences still decoding
    tokens = torch.full((b * k, 1), bos_id, dtype=torch.long, device=device)
    # Only beam 0 is live at the start, so the first step does not pick K copies of one token.
    scores = torch.full((b, k), float("-inf"), device=device)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]

    forbidden = never_produced(bos_id, eos_id, pad_id)
    for t in range(int(limit.max())):
        n = active.numel()
        lprobs = torch.log_softmax(step_logits(model, tokens, memory, mem_mask, cache, forbidden), -1)
        vocab = lprobs.size(-1)
        lprobs = lprobs.view(n, k, vocab)
        out_of_budget = limit[active] <= t + 1
        if out_of_budget.any():  # only EOS may follow
            eos_col = lprobs[out_of_budget, :, eos_id].clone()
            lprobs[out_of_budget] = float("-inf")
            lprobs[out_of_budget, :, eos_id] = eos_col
        cand = (scores[:, :, None] + lprobs).view(n, k * vocab)
        cand_scores, cand_idx = cand.topk(2 * k, dim=1)  # (n, 2K), best first
        cand_beam, cand_tok = cand_idx // vocab, cand_idx % vocab
        is_eos = (cand_tok == eos_id) & torch.isfinite(cand_scores)

        # Finish EOS candidates ranked among the top K (fairseq's rule).
        rows, cols = (is_eos[:, :k]).nonzero(as_tuple=True)
        if rows.numel():
            norm = cand_scores[rows, cols] / float(t + 1) ** length_penalty
            prefixes = tokens.view(n, k, -1)[rows, cand_beam[rows, cols], 1:].tolist()
            for r, s, p in zip(rows.tolist(), norm.tolist(), prefixes):
                hyps = finished[int(active[r])]
                if len(hyps) < k:
                    hyps.append((s, p + [eos_id]))
        n_finished = torch.tensor([len(finished[s]) for s in active.tolist()], device=device)
        done = (n_finished >= k) | out_of_budget
        if done.all():
            break

        # Continue with the K best non-EOS candidates of each sentence.
        masked = cand_scores.masked_fill(cand_tok == eos_id, float("-inf"))
        next_scores, pick = masked.topk(k, dim=1)  # (n, K)
        next_beam = cand_beam.gather(1, pick)
        next_tok = cand_tok.gather(1, pick)
        keep = (~done).nonzero().squeeze(1)  # (n',)
        origin = (keep[:, None] * k + next_beam[keep]).reshape(-1)  # rows of `tokens` to extend, (n'*K,)
        tokens = torch.cat([tokens[origin], next_tok[keep].reshape(-1, 1)], dim=1)
        scores = next_scores[keep]
        if cache is not None:
            # Cross-attention rows of one sentence are identical; they need reordering only when
            # finished sentences leave the batch.
            cache.reorder(origin, include_cross=keep.numel() < n)
        if keep.numel() < n:
            rows_kept = (keep[:, None] * k + torch.arange(k, device=device)).reshape(-1)
            memory, mem_mask = memory[rows_kept], mem_mask[rows_kept]
            active = active[keep]

    best = [max(h, key=lambda x: x[0])[1] for h in finished]
    out = torch.full((b, max(len(h) for h in best)), pad_id, dtype=torch.long, device=device)
    for i, h in enumerate(best):
        out[i, : len(h)] = torch.tensor(h, device=device)
    return out

"""Scaled dot-product attention (Vaswani et al. 2017, §3.2.1, Eq. 1)."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import causal_mask, check_attn_mask_dtype, merge_masks


def scaled_dot_product_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    need_weights: bool = False,
    scale: float | None = None,
) -> tuple[Tensor, Tensor | None]:
    """``Attention(Q, K, V) = softmax(Q K^T / sqrt(d_k)) V`` (Vaswani et al. 2017, Eq. 1).

    Without ``need_weights`` this calls ``torch.nn.functional.scaled_dot_product_attention``
    (fused kernels); with it, the same formula is computed explicitly so the attention weights can
    be returned, giving the same output (up to float rounding).

    Args:
        q: queries ``(B, H, Tq, Dk)``.
        k: keys ``(B, H, Tk, Dk)``.
        v: values ``(B, H, Tk, Dv)``.
        attn_mask: bool (True = may attend) or float (added to the scores), broadcastable to
            ``(B, H, Tq, Tk)``.
        dropout_p: dropout probability on the attention weights (pass 0.0 in eval mode).
        is_causal: apply a bottom-right aligned causal mask (see :func:`causal_mask`), combined
            with ``attn_mask`` if both are given.
        need_weights: also return the attention weights.
        scale: score scale, default ``1 / sqrt(Dk)`` (§3.2.1: "to counteract" large dot products).

    Returns:
        ``(out, weights)``: ``out`` is ``(B, H, Tq, Dv)``; ``weights`` is ``(B, H, Tq, Tk)`` (after
        dropout, as applied to ``v``) or None. Rows whose keys are all masked give zero output
        and zero weights, as torch's kernels do.

    Raises:
        TypeError: ``attn_mask`` is neither bool nor floating point (a 0/1 integer mask is
            ambiguous: keep-flags or additive scores?). Both paths refuse it.
        ValueError: ``is_causal`` with fewer keys than queries (``Tk < Tq``).
    """
    check_attn_mask_dtype(attn_mask)
    q_len, k_len = q.size(-2), k.size(-2)
    if is_causal and q_len > 1:
        if attn_mask is None and q_len == k_len and not need_weights:
            # Square causal with no other mask: let the kernel build the mask itself (faster).
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True, scale=scale), None
        attn_mask = merge_masks(attn_mask, causal_mask(q_len, k_len, device=q.device))
    # (a single new query is the last position, so causality masks nothing for it)

    if not need_weights:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
        return out, None

    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    # Scores and softmax in float32 for half-precision inputs, as the fused kernels accumulate:
    # in float16 q.k overflows before scaling (|q|, |k| ~ 40 at Dk = 64 is already inf), and a
    # large finite mask value (-1e9) would round to -inf and turn a row the kernels treat as
    # uniform into a "dead" one. Autocast is off so it cannot cast the float32 matmul back down.
    work = torch.float32 if q.dtype in (torch.float16, torch.bfloat16) else q.dtype
    device = q.device.type
    # (meta tensors, e.g. a model sized before allocation, have no autocast to switch off)
    with torch.autocast(device, enabled=False) if torch.amp.is_autocast_available(device) else nullcontext():
        scores = (q.to(work) @ k.to(work).transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            else:
                scores = scores + attn_mask.to(work)
        # A fully masked row is softmax(-inf, ..., -inf) = NaN; torch's kernels return zeros there.
        # Filling before the softmax (not nan_to_num after it) also keeps NaN out of the backward pass.
        dead = torch.isneginf(scores).all(dim=-1, keepdim=True)  # (B, H, Tq, 1)
        weights = torch.softmax(scores.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
    # Back to the inputs' precision so ``weights @ v`` runs (and autocasts) as before.
    weights = weights.to(q.dtype)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights

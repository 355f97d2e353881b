"""Attention-mask helpers.

Conventions (see ``docs/ARCHITECTURE.md``): a boolean ``attn_mask`` is True where a query *may*
attend to a key (as in ``F.scaled_dot_product_attention``); a float ``attn_mask`` is added to the
scores; a ``key_padding_mask`` is True at *padding* positions (as in ``torch.nn.Transformer``).
"""

from __future__ import annotations

import torch
from torch import Tensor


def causal_mask(q_len: int, k_len: int | None = None, device: torch.device | None = None) -> Tensor:
    """Boolean causal mask, True = may attend, bottom-right aligned.

    Query ``i`` sits at absolute position ``k_len - q_len + i`` and may attend to keys at positions
    ``<=`` its own (Vaswani et al. 2017, §3.2.3: "masking out ... all values ... which correspond to
    illegal connections"). Bottom-right alignment is what incremental decoding needs: with ``k_len``
    cached keys and ``q_len`` new queries, the new queries are the last ``q_len`` positions.

    Args:
        q_len: number of queries ``Tq``.
        k_len: number of keys ``Tk`` (default ``q_len``); must be ``>= q_len``.

    Returns:
        ``(Tq, Tk)`` bool tensor.

    Raises:
        ValueError: ``k_len < q_len``.
    """
    k_len = q_len if k_len is None else k_len
    if k_len < q_len:
        raise ValueError(f"causal_mask needs k_len >= q_len, got q_len={q_len}, k_len={k_len}")
    return torch.ones(q_len, k_len, dtype=torch.bool, device=device).tril(diagonal=k_len - q_len)


def check_key_padding_mask(key_padding_mask: Tensor | None) -> None:
    """Raise TypeError unless ``key_padding_mask`` is None or bool: a 0/1 integer or float mask is
    ambiguous (HF's attention_mask has 1 = real token, ours True = padding)."""
    if key_padding_mask is not None and key_padding_mask.dtype != torch.bool:
        raise TypeError(f"key_padding_mask must be bool (True = padding), got {key_padding_mask.dtype}")


def padding_to_attn_mask(key_padding_mask: Tensor) -> Tensor:
    """``(B, Tk)`` key padding mask (True = pad) -> ``(B, 1, 1, Tk)`` bool attn mask (True = attend).

    Raises:
        TypeError: ``key_padding_mask`` is not bool (a 0/1 integer mask is ambiguous).
    """
    check_key_padding_mask(key_padding_mask)
    return ~key_padding_mask[:, None, None, :]


def check_attn_mask_dtype(attn_mask: Tensor | None) -> None:
    """Refuse an ``attn_mask`` that is neither bool nor floating point.

    Raises:
        TypeError: an integer mask (0/1 is ambiguous: keep-flags or additive scores?).
    """
    if attn_mask is not None and attn_mask.dtype != torch.bool and not attn_mask.is_floating_point():
        raise TypeError(f"attn_mask must be bool (True = may attend) or float (added to the scores), "
                        f"got {attn_mask.dtype}")


def to_additive(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """Boolean mask (True = attend) -> float mask with 0 / -inf; float masks pass through."""
    if mask.dtype != torch.bool:
        return mask.to(dtype)
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def merge_masks(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    """Combine two attention masks (either may be None): AND for bool, sum for float.

    Shapes must broadcast to ``(B, H, Tq, Tk)``.

    Raises:
        TypeError: either mask is an integer tensor (checked here, before merging hides it).
    """
    check_attn_mask_dtype(a)
    check_attn_mask_dtype(b)
    if a is None:
        return b
    if b is None:
        return a
    if a.dtype == torch.bool and b.dtype == torch.bool:
        return a & b
    dtype = a.dtype if a.dtype != torch.bool else b.dtype
    return to_additive(a, dtype) + to_additive(b, dtype)


def build_attn_mask(
    q_len: int,
    k_len: int,
    key_padding_mask: Tensor | None = None,
    attn_mask: Tensor | None = None,
    is_causal: bool = False,
    device: torch.device | None = None,
) -> tuple[Tensor | None, bool]:
    """Fold a key padding mask and causality into one mask, once per stack instead of per layer.

    Returns ``(attn_mask, is_causal)`` to pass on: when only causality is asked for, the mask stays
    None and ``is_causal`` True, so the attention kernel can apply it without a materialised mask.
    """
    if key_padding_mask is not None:
        attn_mask = merge_masks(attn_mask, padding_to_attn_mask(key_padding_mask))
    if is_causal and attn_mask is not None:
        return merge_masks(attn_mask, causal_mask(q_len, k_len, device=device)), False
    return attn_mask, is_causal

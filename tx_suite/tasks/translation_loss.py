"""Label-smoothed cross-entropy for translation, with a one-pass backward."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tx_suite.data.bpe import PAD_ID


class _LabelSmoothedCE(torch.autograd.Function):
    """Per-token label-smoothed loss and NLL of ``logits`` ``(N, V)`` against ``target`` ``(N,)``.

    The backward pass writes d loss / d logits = softmax(logits) - q in one tensor, where
    q = (1 - eps) * one_hot(y) + eps / V is the smoothed target (Szegedy et al. 2016, §7). Autograd
    through ``log_softmax``, ``gather`` and ``mean`` gives the same gradient but allocates and
    zero-fills several ``(N, V)`` tensors (V = 8000 here). With the row selection of
    ``TranslationTask._loss`` a CPU training step of the tiny Multi30k model is 1.17x faster than
    ``F.cross_entropy`` on all ``(B, T, V)`` logits (``benchmarks/translation_step.py``). The NLL
    output is for logging and carries no gradient.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, target: Tensor, epsilon: float) -> tuple[Tensor, Tensor]:
        # Half-precision logits are scored in float32; float64 stays float64 (gradcheck).
        wide = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
        lprobs = F.log_softmax(wide, dim=-1)
        nll = -lprobs.gather(-1, target[:, None]).squeeze(-1)
        loss = (1.0 - epsilon) * nll - epsilon * lprobs.mean(-1)
        ctx.save_for_backward(lprobs, target)
        ctx.epsilon, ctx.dtype = epsilon, logits.dtype
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor) -> tuple[Tensor, None, None]:
        lprobs, target = ctx.saved_tensors
        eps, n_vocab = ctx.epsilon, lprobs.shape[-1]
        grad = lprobs.exp().sub_(eps / n_vocab)
        grad.scatter_add_(-1, target[:, None], grad.new_full((target.shape[0], 1), eps - 1.0))
        return grad.mul_(grad_loss[:, None]).to(ctx.dtype), None, None


def label_smoothed_nll_loss(logits: Tensor, target: Tensor, epsilon: float,
                            ignore_index: int = PAD_ID) -> tuple[Tensor, Tensor, int]:
    """Summed label-smoothed cross-entropy and summed NLL over non-ignored target tokens.

    Label smoothing (Szegedy et al. 2016, §7; Vaswani et al. 2017, §5.4, eps_ls = 0.1) trains
    against ``(1 - eps) * one_hot(y) + eps / V``, i.e.
    ``loss = (1 - eps) * (-log p_y) + eps * mean_v(-log p_v)`` (as ``F.cross_entropy(label_smoothing=eps)``
    and older fairseq's ``label_smoothed_cross_entropy``; equal values and gradients,
    ``tests/test_translation_model.py``; fairseq now spreads ``eps`` over the ``V - 1`` other tokens).

    Args:
        logits: ``(..., V)``, e.g. ``(B, T, V)`` or only the non-padding rows ``(N, V)``.
        target: ``(...)`` long, the same leading shape.
        epsilon: the smoothing ``eps`` in [0, 1) (0.1 in Vaswani et al. 2017, §5.4).
        ignore_index: target id left out of both sums and of ``n_tokens`` (padding).

    Returns:
        ``(loss_sum, nll_sum, n_tokens)``: scalar tensors in nats, summed over the kept tokens, and
        their count; the NLL gives the perplexity ``exp(nll_sum / n_tokens)``.
    """
    keep = (target != ignore_index).reshape(-1)
    # Masking the per-token losses, not indexing the (..., V) logits, which would copy them.
    loss, nll = _LabelSmoothedCE.apply(logits.reshape(-1, logits.shape[-1]), target.reshape(-1) * keep, epsilon)
    return (loss * keep).sum(), (nll * keep).sum(), int(keep.sum())


__all__ = ["label_smoothed_nll_loss"]

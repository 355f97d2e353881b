"""Label-smoothed cross-entropy for translation: with a one-pass backward, and fused with the output
projection over row chunks."""

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
    zero-fills several ``(N, V)`` tensors (V = 8000 here). On the non-padding rows only, a CPU
    training step of the tiny Multi30k model was 1.17x faster than ``F.cross_entropy`` on all
    ``(B, T, V)`` logits (``benchmarks/translation_step.py``); ``TranslationTask`` now uses the
    fused :func:`linear_label_smoothed_nll_loss`, which never builds the ``(N, V)`` logits. The NLL
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


class _LinearLabelSmoothedCE(torch.autograd.Function):
    """Summed label-smoothed loss and NLL of ``hidden @ weight.T`` against ``target``, row chunk by
    row chunk, with both gradients computed in the forward pass.

    The ``(N, V)`` logits never exist whole: per chunk of ``chunk_rows`` rows this projects, scores
    in float32, forms d loss / d logits = softmax - q (as :class:`_LabelSmoothedCE`) and multiplies
    it straight into d loss / d hidden ``(N, D)`` and d loss / d weight ``(V, D)`` (the fused linear
    cross-entropy of Hsu et al. 2024, "Liger Kernel", §3.3, on any device). The backward pass only
    scales them by the incoming gradient of the summed loss, which is exact because the loss is
    returned as one sum. Under autocast the matrix products run in the autocast dtype, as
    ``nn.Linear`` would, and the weight gradient is accumulated in float32.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float, ignore_index: int,
                chunk_rows: int, grad_enabled: bool) -> tuple[Tensor, Tensor]:
        device = hidden.device.type
        compute = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        wide = torch.float64 if compute == torch.float64 else torch.float32
        # needs_input_grad follows requires_grad only: under no_grad/inference_mode (validation) a
        # parameter weight would still ask for its gradient. Grad mode is off inside forward, so
        # the caller passes it in.
        need_h, need_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        n_vocab = weight.shape[0]
        with torch.autocast(device, enabled=False):
            h, w = hidden.to(compute), weight.to(compute)
            loss, nll = hidden.new_zeros((), dtype=wide), hidden.new_zeros((), dtype=wide)
            grad_h = torch.empty_like(h) if need_h else None
            grad_w = torch.zeros(weight.shape, dtype=wide, device=weight.device) if need_w else None
            for i in range(0, h.shape[0], chunk_rows):
                h_c, t_c = h[i:i + chunk_rows], target[i:i + chunk_rows]
                keep = (t_c != ignore_index).to(wide)
                t_c = t_c * (t_c != ignore_index)  # any valid index; the row is masked out below
                logits = (h_c @ w.t()).to(wide)  # (C, V)
                lse = torch.logsumexp(logits, dim=-1)  # (C,)
                nll_c = lse - logits.gather(-1, t_c[:, None]).squeeze(-1)
                smooth_c = lse - logits.mean(-1)  # mean over v of -log p_v
                loss += (((1.0 - epsilon) * nll_c + epsilon * smooth_c) * keep).sum()
                nll += (nll_c * keep).sum()
                if not (need_h or need_w):
                    continue
                # In place: the logits become softmax - eps / V, then - (1 - eps) at the target.
                grad = logits.sub_(lse[:, None]).exp_().sub_(epsilon / n_vocab)
                grad.scatter_add_(-1, t_c[:, None], grad.new_full((t_c.shape[0], 1), epsilon - 1.0))
                grad = grad.mul_(keep[:, None]).to(compute)
                if need_h:
                    grad_h[i:i + chunk_rows] = grad @ w  # (C, V) @ (V, D)
                if need_w:
                    grad_w += (grad.t() @ h_c).to(wide)  # (V, C) @ (C, D)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = hidden.dtype, weight.dtype
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss: Tensor, _grad_nll: Tensor):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        return (None if grad_h is None else (grad_h * grad_loss).to(h_dtype),
                None if grad_w is None else (grad_w * grad_loss).to(w_dtype), None, None, None, None, None)


def linear_label_smoothed_nll_loss(hidden: Tensor, weight: Tensor, target: Tensor, epsilon: float,
                                   ignore_index: int = PAD_ID, chunk_rows: int = 256) -> tuple[Tensor, Tensor, int]:
    """:func:`label_smoothed_nll_loss` of the logits ``hidden @ weight.T`` (a bias-free output
    projection such as ``Seq2SeqTransformer.lm_head``), without materialising them.

    Equal in value and gradients to ``label_smoothed_nll_loss(F.linear(hidden, weight), target,
    epsilon)`` up to float rounding (``tests/test_translation_model.py``). On a 2-core CPU a tiny
    en->de training step (vocabulary 8000) is faster with it, because a chunk's float32 logits
    (``chunk_rows x V``, 8 MB at 256 x 8000) are reused from cache and from the heap, where the whole
    ``(N, V)`` tensors (~200 MB each at 8192 tokens) were fresh memory every step
    (``benchmarks/translation_step.py``, RESULTS.md).

    Args:
        hidden: ``(..., D)`` decoder outputs, e.g. only the non-padding rows ``(N, D)``.
        weight: ``(V, D)`` output projection.
        target: ``(...)`` long, the leading shape of ``hidden``.
        epsilon: the smoothing ``eps`` in [0, 1) (0.1 in Vaswani et al. 2017, §5.4).
        ignore_index: target id left out of both sums and of ``n_tokens`` (padding).
        chunk_rows: rows projected and scored at a time.

    Returns:
        ``(loss_sum, nll_sum, n_tokens)`` as :func:`label_smoothed_nll_loss`. Only ``loss_sum``
        carries a gradient, and only once (no double backward).

    Raises:
        ValueError: ``chunk_rows`` < 1, or ``hidden`` and ``target`` disagree in shape.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if hidden.shape[:-1] != target.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and target {tuple(target.shape)} disagree")
    flat_target = target.reshape(-1)
    loss, nll = _LinearLabelSmoothedCE.apply(hidden.reshape(-1, hidden.shape[-1]), weight, flat_target, epsilon,
                                             ignore_index, chunk_rows, torch.is_grad_enabled())
    return loss, nll, int((flat_target != ignore_index).sum())


__all__ = ["label_smoothed_nll_loss", "linear_label_smoothed_nll_loss"]

"""Ancestral sampling of image tokens: temperature, top-k, top-p, classifier-free guidance.

Plain torch. The model is anything with the interface of
:class:`~tx_suite.models.text_to_image.TextToImageTransformer`: ``new_cache()``,
``prefill(text, cache)``, ``step(codes, cache)``, ``next_image_logits(text, codes)`` and
``num_image_tokens``. With ``use_cache=True`` each step feeds one token through the decoder's KV
cache (O(T) work per step); without it every step recomputes the whole prefix (O(T^2)), which is
the reference the cached path must reproduce exactly for a fixed seed.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Protocol, Sequence, Union

import torch
from torch import Tensor


#: One generator for the whole batch, or one per caption (its draws then do not depend on the others).
Generators = Optional[Union[torch.Generator, Sequence[torch.Generator]]]


class ImageTokenModel(Protocol):
    num_image_tokens: int

    def new_cache(self): ...
    def prefill(self, text: Tensor, cache) -> Tensor: ...
    def step(self, codes: Tensor, cache) -> Tensor: ...
    def next_image_logits(self, text: Tensor, codes: Tensor) -> Tensor: ...


def check_sampling(temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
                   cfg_scale: float = 1.0) -> None:
    """Raise ValueError for settings that :func:`sample_next`, :func:`filter_logits` and
    :func:`sample_image_tokens` cannot use (they call this too); for checks before any sampling."""
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not math.isfinite(cfg_scale):
        raise ValueError(f"cfg_scale must be a finite number, got {cfg_scale}")


def filter_logits(logits: Tensor, top_k: int | None = None, top_p: float | None = None) -> Tensor:
    """Mask logits outside the top-k (Fan et al. 2018) and/or the nucleus of cumulative
    probability ``top_p`` (Holtzman et al. 2020, Sec. 3.1) to ``-inf``.

    ``logits`` ``(B, K)`` -> ``(B, K)``. The most likely token always survives, and so does every
    token tied with the k-th largest logit (so ``top_k`` can keep more than k).

    Raises:
        ValueError: ``top_k < 1`` or ``top_p`` outside (0, 1].
    """
    check_sampling(top_k=top_k, top_p=top_p)
    if top_k is not None:
        if top_k < logits.size(-1):
            kth = logits.topk(top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if top_p < 1.0:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cum = sorted_logits.softmax(-1).cumsum(-1)
            # Drop a token when the tokens before it already reach top_p.
            drop_sorted = (cum - sorted_logits.softmax(-1)) >= top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            logits = logits.masked_fill(drop, float("-inf"))
    return logits


def guided_logits(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance on logits: ``uncond + scale * (cond - uncond)``.

    Ho and Salimans 2022, Eq. 6 (on scores), applied to next-token logits as in Make-A-Scene
    (Gafni et al. 2022) and Parti (Yu et al. 2022, Sec. 2.4). ``cond``, ``uncond``: ``(B, K)``
    logits of the same rows with and without the caption -> ``(B, K)``. ``scale = 1`` is plain
    conditional sampling; ``scale > 1`` trades diversity for caption fidelity.

    Masked logits (``-inf``) stay masked where the conditional logit is ``-inf``, and a token only
    the unconditional pass masks keeps its conditional logit: the formula would give NaN there
    (``-inf - -inf``, ``0 * -inf``), which sampling cannot draw from.
    """
    guided = uncond + scale * (cond - uncond)
    return torch.where(torch.isneginf(cond) | torch.isneginf(uncond), cond, guided)


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None,
                uniform: Tensor | None = None) -> Tensor:
    """Draw one token per row: ``(B, K)`` logits -> ``(B,)`` long.

    ``temperature = 0`` is greedy (argmax). ``uniform`` ``(B,)`` in [0, 1), if given, replaces
    ``generator``: each row draws by inverting its CDF (the token whose cumulative-probability
    interval holds ``u``), one kernel for the batch with randomness chosen by the caller
    (:func:`sample_image_tokens` draws it per caption up front).

    Raises:
        ValueError: a negative or non-finite temperature (and see :func:`filter_logits`).
    """
    check_sampling(temperature=temperature, top_k=top_k, top_p=top_p)  # also for greedy: bad flags are errors
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float()
    if temperature < torch.finfo(torch.float32).tiny:
        # Below float32's normal range the division itself cannot be trusted: where denormals are
        # flushed (torch.set_flush_denormal, or after torch.compile on torch 2.5) the temperature
        # reads as 0 and a 0 logit gives 0 / 0 = NaN. Take the limit: the row's maxima, ties shared.
        peak = logits.amax(-1, keepdim=True)
        scaled = torch.zeros_like(logits).masked_fill(logits < peak, float("-inf"))
    else:
        scaled = logits / temperature
        # A tiny temperature overflows logits to +inf, or, in a row whose logits are all negative,
        # every one to -inf (a NaN softmax either way). Such rows are shifted by their maximum
        # first, which sends the others to -inf (the argmax, as temperature -> 0); the other rows
        # keep the plain division, so earlier seeds draw the same tokens bit for bit.
        overflow = ~torch.isfinite(scaled.amax(-1, keepdim=True))
        scaled = torch.where(overflow, (logits - logits.amax(-1, keepdim=True)) / temperature, scaled)
    probs = filter_logits(scaled, top_k, top_p).softmax(-1)
    if uniform is not None:
        cdf = probs.cumsum(-1)  # (B, K)
        # right=True: the first token whose cdf exceeds u * total, so zero-probability tokens
        # (filtered, or a plateau of the cdf) are never drawn, also for u = 0.
        x = uniform.to(cdf)[:, None] * cdf[:, -1:]
        token = torch.searchsorted(cdf, x, right=True).squeeze(-1)
        # u * total may round up to total: then the last token that has any probability.
        last = probs.size(-1) - 1 - (probs > 0).flip(-1).int().argmax(-1)
        return torch.minimum(token, last)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def sample_image_tokens(model: ImageTokenModel, text: Tensor, *, temperature: float = 1.0,
                        top_k: int | None = None, top_p: float | None = None,
                        cfg_scale: float = 1.0, null_text: Tensor | None = None,
                        use_cache: bool = True, generator: Generators = None) -> Tensor:
    """Sample a full grid of image tokens for each caption.

    Args:
        model: see the module docstring (put it in eval mode first).
        text: ``(B, L)`` caption tokens.
        temperature, top_k, top_p: see :func:`sample_next`.
        cfg_scale: classifier-free guidance scale (1 = off). Needs ``null_text``.
        null_text: ``(L,)`` or ``(B, L)`` tokens of the empty caption the model was trained
            with under caption dropout (all padding).
        use_cache: incremental decoding with the decoder's KV cache.
        generator: torch RNG for reproducible samples, or ``B`` of them, one per caption (its
            draws then do not depend on the other captions of the batch).

    Returns:
        ``(B, N)`` long codes in raster order.

    Raises:
        ValueError: ``cfg_scale != 1`` without ``null_text``, or not finite; not ``B`` generators.
    """
    check_sampling(cfg_scale=cfg_scale)
    guided = cfg_scale != 1.0
    if guided:
        if null_text is None:
            raise ValueError("classifier-free guidance (cfg_scale != 1) needs null_text")
        # One batch of 2B rows: conditional first, unconditional second.
        text = torch.cat([text, null_text.expand_as(text)], dim=0)
    b = text.size(0) // (2 if guided else 1)
    n = model.num_image_tokens
    uniforms = None
    if generator is not None and not isinstance(generator, torch.Generator):
        if len(generator) != b:
            raise ValueError(f"{len(generator)} generators for {b} captions")
        # Each caption's randomness drawn up front from its own generator (B calls, not B per
        # token); the steps then sample the whole batch at once by inverse CDF.
        uniforms = torch.stack([torch.rand(n, generator=g, device=g.device) for g in generator]).to(text.device)

    def pick(logits: Tensor, i: int) -> Tensor:
        if guided:
            logits = guided_logits(logits[:b], logits[b:], cfg_scale)
        if uniforms is None:
            token = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        else:
            token = sample_next(logits, temperature, top_k, top_p, uniform=uniforms[:, i])
        return torch.cat([token, token]) if guided else token

    codes = text.new_zeros(text.size(0), 0)
    if use_cache:
        cache = model.new_cache()
        logits = model.prefill(text, cache)
    else:
        logits = model.next_image_logits(text, codes)
    for i in range(n):
        codes = torch.cat([codes, pick(logits, i)[:, None]], dim=1)
        if i == n - 1:
            break
        logits = model.step(codes[:, -1:], cache) if use_cache else model.next_image_logits(text, codes)
    return codes[:b]


@torch.no_grad()
def rerank(candidates: Tensor, scores: Tensor, n_candidates: int, keep: int = 1) -> Tensor:
    """Keep the ``keep`` best of each caption's ``n_candidates`` (DALL-E's CLIP re-ranking,
    Ramesh et al. 2021, Sec. 2.6, with any scorer).

    Args:
        candidates: ``(B * n_candidates, ...)``, the candidates of caption ``i`` at rows
            ``i * n_candidates .. (i + 1) * n_candidates - 1``.
        scores: ``(B * n_candidates,)``, higher is better.
        n_candidates: candidates per caption; the row count must be a multiple of it.
        keep: how many to keep per caption, ``1 .. n_candidates``.

    Returns:
        ``(B * keep, ...)``, best first within each caption.
    """
    s = scores.view(-1, n_candidates)  # (B * n,) -> (B, n)
    best = s.topk(keep, dim=1).indices + torch.arange(s.size(0), device=s.device)[:, None] * n_candidates
    return candidates[best.flatten()]


Scorer = Callable[[Tensor, list[str]], Tensor]

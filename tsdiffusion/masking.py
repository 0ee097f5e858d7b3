"""Training-time conditioning masks: which observed values the model may see (CSDI, Tashiro et al. 2021, sec. 4.3).

A strategy maps a batch to ``cond_mask`` (B, L, K), 1 where a value is given to the model; the loss is taken
on ``observed_mask * (1 - cond_mask)``. Randomness comes from the global torch RNG (``seed_everything``)
or an explicit generator. The DataModule owns the *evaluation* protocol (``target_mask``); these masks are
only for training.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from tsdiffusion.batch import TSBatch

MaskStrategy = Literal["random", "historical", "mix", "block", "random_block", "forecast", "none"]


def random_mask(observed_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """CSDI's random strategy: per window, a ratio r ~ U(0, 1) of the observed values is hidden.

    observed_mask: (B, L, K) -> cond_mask (B, L, K). The round(r * n_observed) hidden values are the ones with
    the smallest uniform scores, so every subset of that size is equally likely.
    """
    B = observed_mask.shape[0]
    flat = rearrange(observed_mask, "b l k -> b (l k)")
    scores = torch.rand(flat.shape, device=flat.device, generator=generator)
    scores = torch.where(flat > 0, scores, torch.full_like(scores, 2.0))  # unobserved last
    ratio = torch.rand(B, 1, device=flat.device, generator=generator)
    n_hidden = (flat.sum(-1, keepdim=True) * ratio).round()
    rank = scores.argsort(-1).argsort(-1)
    cond = flat * (rank >= n_hidden).to(flat.dtype)
    return cond.view_as(observed_mask)


def historical_mask(observed_mask: Tensor, pattern_mask: Tensor | None = None) -> Tensor:
    """CSDI's historical strategy: hide what is missing in another window of the batch.

    Window i is conditioned on ``observed_mask[i] * pattern_mask[i - 1]`` (the previous window's missingness
    pattern; ``pattern_mask`` defaults to ``observed_mask``), so training targets follow real missing patterns.
    """
    pattern = observed_mask if pattern_mask is None else pattern_mask
    return observed_mask * pattern.roll(1, dims=0)


def _coin(observed_mask: Tensor, generator: torch.Generator | None) -> Tensor:
    """(B, 1, 1) bool, True with probability 1/2 per window: which of two strategies a window takes."""
    return torch.rand(observed_mask.shape[0], 1, 1, device=observed_mask.device, generator=generator) < 0.5


def mix_mask(observed_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """CSDI's mix strategy: for each window, random (probability 1/2) or historical."""
    return torch.where(
        _coin(observed_mask, generator), random_mask(observed_mask, generator), historical_mask(observed_mask)
    )


def block_mask(
    observed_mask: Tensor, max_length: int | None = None, generator: torch.Generator | None = None
) -> Tensor:
    """Contiguous gaps: per window, each series is hit with probability q ~ U(0, 1) (one q per window), and a
    hit series loses one block of ``U{1..max_length}`` consecutive steps (default ``max_length`` L // 2) from a
    uniform start, cut at the window's end. Trains a model for outages (block-missing evaluation, e.g.
    ``FrameDataModule(missing_pattern="block")``), where point-wise random masks leave a neighbour on either
    side of almost every hidden value.

    observed_mask: (B, L, K) -> cond_mask (B, L, K).
    """
    B, L, K = observed_mask.shape
    max_length = max(1, L // 2) if max_length is None else max_length
    if not 1 <= max_length <= L:
        raise ValueError(f"block_mask: max_length must be in [1, L={L}], got {max_length}")
    device = observed_mask.device
    q = torch.rand(B, 1, 1, device=device, generator=generator)
    hit = torch.rand(B, 1, K, device=device, generator=generator) < q
    start = torch.randint(0, L, (B, 1, K), device=device, generator=generator)
    length = torch.randint(1, max_length + 1, (B, 1, K), device=device, generator=generator)
    t = torch.arange(L, device=device).view(1, L, 1)
    hidden = hit & (t >= start) & (t < start + length)
    return observed_mask * (~hidden).to(observed_mask.dtype)


def random_block_mask(observed_mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """For each window, CSDI's random strategy or :func:`block_mask`, with probability 1/2 each."""
    return torch.where(
        _coin(observed_mask, generator),
        random_mask(observed_mask, generator),
        block_mask(observed_mask, None, generator),
    )


def forecast_mask(batch: TSBatch) -> Tensor:
    """Condition on everything observed outside the evaluation targets (the forecast horizon)."""
    return batch["observed_mask"] * (1 - batch["target_mask"])


def horizon_start(cond_mask: Tensor) -> int:
    """The first step after the last one where any value is conditioned on. cond_mask: (B, L, K)."""
    seen = torch.nonzero(cond_mask.amax(dim=(0, 2)) > 0).flatten()
    return int(seen[-1]) + 1 if len(seen) else 0


def make_cond_mask(strategy: MaskStrategy, batch: TSBatch, generator: torch.Generator | None = None) -> Tensor:
    """Dispatch a strategy by name. ``none`` conditions on nothing (unconditional generation)."""
    observed_mask = batch["observed_mask"]
    if strategy == "random":
        return random_mask(observed_mask, generator)
    if strategy == "historical":
        return historical_mask(observed_mask)
    if strategy == "mix":
        return mix_mask(observed_mask, generator)
    if strategy == "block":
        return block_mask(observed_mask, None, generator)
    if strategy == "random_block":
        return random_block_mask(observed_mask, generator)
    if strategy == "forecast":
        return forecast_mask(batch)
    if strategy == "none":
        return torch.zeros_like(observed_mask)
    raise ValueError(
        f"unknown mask strategy {strategy!r}: expected random, historical, mix, block, random_block, forecast or none"
    )

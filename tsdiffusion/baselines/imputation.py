"""Imputation baselines: deterministic fills of the hidden values, repeated S times, so the probabilistic
metrics reduce to point errors (CRPS of a point forecast is its absolute error)."""

from __future__ import annotations

from typing import Literal

import torch
from einops import repeat
from torch import Tensor

from tsdiffusion.baselines.base import SamplingBaseline
from tsdiffusion.batch import TSBatch


def interpolate(x: Tensor, mask: Tensor) -> Tensor:
    """Linear interpolation along L between the points where ``mask`` is 1, constant beyond the first and last
    of them; a series with no such point is 0. x, mask: (B, L, K) -> (B, L, K)."""
    B, L, K = x.shape
    steps = torch.arange(L, device=x.device).view(1, L, 1).expand(B, L, K)
    seen = mask > 0
    prev = torch.where(seen, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    flipped = torch.where(seen, steps, torch.full_like(steps, L)).flip(1)
    nxt = (-(-flipped).cummax(dim=1).values).flip(1)
    lo, hi = prev.clamp(min=0), nxt.clamp(max=L - 1)
    x_lo, x_hi = x.gather(1, lo), x.gather(1, hi)
    x_lo = torch.where(prev >= 0, x_lo, x_hi)
    x_hi = torch.where(nxt < L, x_hi, x_lo)
    w = torch.where(hi > lo, (steps - lo).to(x.dtype) / (hi - lo).clamp(min=1).to(x.dtype), torch.zeros_like(x))
    out = x_lo + w * (x_hi - x_lo)
    return torch.where(seen.any(dim=1, keepdim=True), out, torch.zeros_like(x))


class InterpolationImputer(SamplingBaseline):
    """Fill each series' hidden values from its conditioning values: ``linear`` interpolation in time, or the
    series' ``mean`` over the window (0 in normalised units when nothing is given).

    Args:
        method: ``linear`` or ``mean``.
    """

    def __init__(self, method: Literal["linear", "mean"] = "linear") -> None:
        self.method = method

    def sample(
        self, batch: TSBatch, cond_mask: Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, S, L, K): S copies of the fill, the conditioning values kept where ``cond_mask`` is 1."""
        x = batch["observed"] * cond_mask
        if self.method == "linear":
            fill = interpolate(x, cond_mask)
        else:
            fill = (x.sum(1, keepdim=True) / cond_mask.sum(1, keepdim=True).clamp(min=1)).expand_as(x)
        fill = torch.where(cond_mask > 0, x, fill)
        return repeat(fill, "b l k -> b s l k", s=num_samples)


def carry_forward(x: Tensor, mask: Tensor) -> Tensor:
    """Last observation carried forward along L (the next observation carried backward before the first one;
    0 for a series with none). x, mask: (B, L, K) -> (B, L, K)."""
    B, L, K = x.shape
    steps = torch.arange(L, device=x.device).view(1, L, 1).expand(B, L, K)
    seen = mask > 0
    prev = torch.where(seen, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    first = torch.where(seen, steps, torch.full_like(steps, L)).amin(dim=1, keepdim=True).expand(B, L, K)
    idx = torch.where(prev >= 0, prev, first).clamp(max=L - 1)
    out = x.gather(1, idx)
    return torch.where(seen.any(dim=1, keepdim=True), out, torch.zeros_like(x))


class LOCFImputer(SamplingBaseline):
    """Last observation carried forward: each hidden value is the series' latest conditioning value before it
    (the first one after it at the start of the window; 0 in normalised units when the series has none)."""

    def sample(
        self, batch: TSBatch, cond_mask: Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, S, L, K): S copies of the fill, the conditioning values kept where ``cond_mask`` is 1."""
        x = batch["observed"] * cond_mask
        fill = torch.where(cond_mask > 0, x, carry_forward(x, cond_mask))
        return repeat(fill, "b l k -> b s l k", s=num_samples)


class MeanImputer(SamplingBaseline):
    """Per-variable mean fill.

    Args:
        over: ``data``: the data set's per-variable mean, i.e. 0 in normalised units (the data modules
            standardise each variable by the mean and std of its training values, e.g.
            :class:`tsdiffusion.data.PhysioNetDataModule`); ``window``: the mean of the series' conditioning
            values in the window (0 when it has none).
    """

    def __init__(self, over: Literal["data", "window"] = "data") -> None:
        if over not in ("data", "window"):
            raise ValueError(f"MeanImputer: over must be 'data' or 'window', got {over!r}")
        self.over = over

    def sample(
        self, batch: TSBatch, cond_mask: Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, S, L, K): S copies of the fill, the conditioning values kept where ``cond_mask`` is 1."""
        x = batch["observed"] * cond_mask
        if self.over == "data":
            fill = torch.zeros_like(x)
        else:
            fill = (x.sum(1, keepdim=True) / cond_mask.sum(1, keepdim=True).clamp(min=1)).expand_as(x)
        fill = torch.where(cond_mask > 0, x, fill)
        return repeat(fill, "b l k -> b s l k", s=num_samples)

"""Imputation baselines: deterministic fills of the hidden values, repeated S times, so the probabilistic
metrics reduce to point errors (CRPS of a point forecast is its absolute error)."""

from __future__ import annotations

from typing import Literal

import torch
from einops import repeat
from torch import Tensor

from tsdiffusion.baselines.base import SamplingBaseline
from tsdiffusion.batch import TSBatch
from tsdiffusion.fill import carry_forward, interpolate


class _Fill(SamplingBaseline):
    """A deterministic fill: its point estimate is its (only) sample."""

    def point(self, batch: TSBatch, cond_mask: Tensor) -> Tensor:
        """(B, L, K) the fill, the conditioning values kept where ``cond_mask`` is 1."""
        return self.sample(batch, cond_mask, 1)[:, 0]


class InterpolationImputer(_Fill):
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


class LOCFImputer(_Fill):
    """Last observation carried forward: each hidden value is the series' latest conditioning value before it
    (the first one after it at the start of the window; 0 in normalised units when the series has none)."""

    def sample(
        self, batch: TSBatch, cond_mask: Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """(B, S, L, K): S copies of the fill, the conditioning values kept where ``cond_mask`` is 1."""
        x = batch["observed"] * cond_mask
        fill = torch.where(cond_mask > 0, x, carry_forward(x, cond_mask))
        return repeat(fill, "b l k -> b s l k", s=num_samples)


class MeanImputer(_Fill):
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

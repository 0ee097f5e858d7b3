"""Imputation baselines: deterministic fills of the hidden values, repeated S times, so the probabilistic
metrics reduce to point errors (CRPS of a point forecast is its absolute error)."""

from __future__ import annotations

from typing import Literal

import torch
from einops import repeat
from torch import Tensor

from tsdiffusion.baselines.base import SamplingBaseline
from tsdiffusion.batch import TSBatch
from tsdiffusion.fill import carry_forward, interpolate, window_mean
from tsdiffusion.streams import Source, randn


class _Fill(SamplingBaseline):
    """A fill (deterministic, or with Gaussian noise around it): its point estimate is the fill itself."""

    noise_std: float = 0.0

    def point(self, batch: TSBatch, cond_mask: Tensor) -> Tensor:
        """(B, L, K) the fill, the conditioning values kept where ``cond_mask`` is 1."""
        return self.fill(batch, cond_mask)

    def fill(self, batch: TSBatch, cond_mask: Tensor) -> Tensor:
        """(B, L, K) the fill of the hidden values, the conditioning values kept where ``cond_mask`` is 1."""
        raise NotImplementedError

    def sample(self, batch: TSBatch, cond_mask: Tensor, num_samples: int, generator: Source = None) -> Tensor:
        """(B, S, L, K): S copies of the fill (plus ``noise_std`` Gaussian noise at the hidden positions), the
        conditioning values kept where ``cond_mask`` is 1."""
        fill = repeat(self.fill(batch, cond_mask), "b l k -> b s l k", s=num_samples)
        if not self.noise_std:
            return fill
        B, S, L, K = fill.shape
        noise = randn((B * S, L, K), generator, device=fill.device, dtype=fill.dtype).view(B, S, L, K)
        return fill + self.noise_std * noise * (1 - cond_mask).unsqueeze(1)


class InterpolationImputer(_Fill):
    """Fill each series' hidden values from its conditioning values: ``linear`` interpolation in time, or the
    series' ``mean`` over the window (0 in normalised units when nothing is given).

    Args:
        method: ``linear`` or ``mean``.
        noise_std: 0 (default): the point fill, S identical samples. > 0: a probabilistic baseline, the fill plus
            independent Gaussian noise of this standard deviation (normalised units) at every hidden value;
            choose it on validation data (CRPS rewards a calibrated spread, so this is the fair reference for a
            probabilistic model that has learned nothing beyond interpolation).
    """

    def __init__(self, method: Literal["linear", "mean"] = "linear", noise_std: float = 0.0) -> None:
        if noise_std < 0:
            raise ValueError(f"InterpolationImputer: noise_std must be >= 0, got {noise_std}")
        self.method, self.noise_std = method, float(noise_std)

    def fill(self, batch: TSBatch, cond_mask: Tensor) -> Tensor:
        x = batch["observed"] * cond_mask
        fill = interpolate(x, cond_mask) if self.method == "linear" else window_mean(x, cond_mask)
        return torch.where(cond_mask > 0, x, fill)


class LOCFImputer(_Fill):
    """Last observation carried forward: each hidden value is the series' latest conditioning value before it
    (the first one after it at the start of the window; 0 in normalised units when the series has none)."""

    def fill(self, batch: TSBatch, cond_mask: Tensor) -> Tensor:
        x = batch["observed"] * cond_mask
        return torch.where(cond_mask > 0, x, carry_forward(x, cond_mask))


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

    def fill(self, batch: TSBatch, cond_mask: Tensor) -> Tensor:
        x = batch["observed"] * cond_mask
        fill = torch.zeros_like(x) if self.over == "data" else window_mean(x, cond_mask)
        return torch.where(cond_mask > 0, x, fill)


class SeasonalImputer(_Fill):
    """Seasonal fill for gaps in periodic series: each hidden value is the mean of the series' conditioning
    values one ``period`` before and after it (``t - period`` and ``t + period``, whichever are given); where
    neither is, the nearest multiples (``t +- 2 period``, ...); where no multiple inside the window is given,
    linear interpolation in time. The imputation counterpart of seasonal naive forecasting (e.g. ``period=24``
    for hourly data with a daily cycle): the fair classical reference for block-missing (outage) targets,
    where interpolation draws a straight line across a cycle.

    Args:
        period: season length in steps, >= 1.
        noise_std: as :class:`InterpolationImputer` (0: the point fill; > 0: plus Gaussian noise of this std).
    """

    def __init__(self, period: int, noise_std: float = 0.0) -> None:
        if period < 1:
            raise ValueError(f"SeasonalImputer: period must be >= 1, got {period}")
        if noise_std < 0:
            raise ValueError(f"SeasonalImputer: noise_std must be >= 0, got {noise_std}")
        self.period, self.noise_std = int(period), float(noise_std)

    def fill(self, batch: TSBatch, cond_mask: Tensor) -> Tensor:
        x = batch["observed"] * cond_mask
        out, done = interpolate(x, cond_mask), torch.zeros_like(cond_mask, dtype=torch.bool)
        L = x.shape[1]
        for lag in range(self.period, L, self.period):  # nearest multiples first
            total, count = torch.zeros_like(x), torch.zeros_like(x)
            total[:, lag:] += x[:, :-lag]  # t - lag
            count[:, lag:] += cond_mask[:, :-lag]
            total[:, :-lag] += x[:, lag:]  # t + lag
            count[:, :-lag] += cond_mask[:, lag:]
            use = (count > 0) & ~done
            out = torch.where(use, total / count.clamp(min=1), out)
            done |= use
        return torch.where(cond_mask > 0, x, out)

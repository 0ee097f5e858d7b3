"""Forecasting baselines with bootstrapped residuals, scored by the same metrics as the diffusion models.

Seasonal naive predicts ``y_{T+h} = y_{T+h-m}``; the random walk is the case ``m = 1``. Their predictive
distribution is simulated with bootstrapped residuals (Hyndman & Athanasopoulos, *Forecasting: Principles
and Practice*, 3rd ed., §5.5): each path continues ``y_{T+h} = y_{T+h-m} + e_h`` where ``e_h`` is an in-sample
residual ``r_t = y_t - y_{t-m}`` of the context drawn with replacement, so errors accumulate beyond one season.
One residual time step ``t`` is drawn for all K series at once, keeping their cross-correlation (what
CRPS-sum and the energy score reward).

Use :func:`bootstrap_forecast` as a function, or :class:`SeasonalNaive` / :class:`RandomWalk` as the
``baseline`` of a :class:`tsdiffusion.tasks.ForecastingTask` from a config
(``tsdiffusion test --config experiments/forecasting/<data>/seasonal_naive*.yaml``), scored by the task's
metrics and fan chart exactly as a trained model.
"""

from __future__ import annotations

import torch
from einops import repeat
from torch import Tensor

from tsdiffusion.baselines.base import SamplingBaseline
from tsdiffusion.batch import TSBatch
from tsdiffusion.masking import horizon_start
from tsdiffusion.streams import Source, draw_indices


def seasonal_residuals(context: Tensor, season: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """In-sample residuals ``r_t = y_t - y_{t-m}`` of a context (B, C, K) -> residuals (B, C - m, K), 0 where
    y_t or y_{t-m} is missing, and a (B, C - m) weight: 1 where every series has its residual (a window
    without any such step draws from all of its steps)."""
    if context.shape[1] <= season:
        raise ValueError(f"a context of {context.shape[1]} steps has no residual for season {season}")
    r = context[:, season:] - context[:, :-season]
    if mask is None:
        return r, torch.ones_like(r[..., 0])
    both = mask[:, season:] * mask[:, :-season]
    weight = both.amin(dim=-1)
    weight = torch.where(weight.sum(-1, keepdim=True) > 0, weight, torch.ones_like(weight))
    return r * both, weight


def bootstrap_forecast(
    context: Tensor,
    horizon: int,
    season: int,
    num_samples: int,
    *,
    mask: Tensor | None = None,
    residual_window: int | None = None,
    generator: Source = None,
) -> Tensor:
    """Seasonal-naive sample paths with bootstrapped residuals (random walk for ``season=1``).

    context: (B, C, K) with C > season; mask: (B, C, K) 1 where observed (default: all).
    residual_window: draw residuals from the last this many steps only (default: the whole context).
    Returns (B, S, H, K): ``x_{C+h} = x_{C+h-m} + r_{j}`` with j drawn uniformly among the residual steps.
    """
    B, C, K = context.shape
    r, weight = seasonal_residuals(context, season, mask)
    if residual_window is not None:
        r, weight = r[:, -residual_window:], weight[:, -residual_window:]
    idx = draw_indices(weight, num_samples, horizon, generator)  # (B, S*H)
    draws = torch.gather(r, 1, repeat(idx, "b n -> b n k", k=K)).view(B, num_samples, horizon, K)
    steps: list[Tensor] = []
    for h in range(horizon):
        base = context[:, None, C - season + h] if h < season else steps[h - season]
        steps.append(base + draws[:, :, h])
    return torch.stack(steps, dim=2)


class SeasonalNaive(SamplingBaseline):
    """Seasonal naive with bootstrapped residuals: a forecast baseline for :class:`ForecastingTask`.

    Bootstrapping in normalised units is the same as in original units: the scaling is affine per series
    and window.

    Args:
        season_length: m, in steps (hourly weekly: 168, daily: 24; business days weekly: 5).
        residual_window: bootstrap from the last this many residuals of the context (None: all).
    """

    def __init__(self, season_length: int = 168, residual_window: int | None = None) -> None:
        if season_length < 1:
            raise ValueError(f"season_length must be >= 1, got {season_length}")
        self.season, self.residual_window = season_length, residual_window

    def sample(self, batch: TSBatch, cond_mask: Tensor, num_samples: int, generator: Source = None) -> Tensor:
        """Bootstrap paths (B, S, L, K) in normalised units; the conditioning values are kept before the horizon
        (the first step after the last conditioned one)."""
        x = batch["observed"] * cond_mask
        start = horizon_start(cond_mask)
        paths = bootstrap_forecast(
            x[:, :start], x.shape[1] - start, self.season, num_samples, mask=cond_mask[:, :start],
            residual_window=self.residual_window, generator=generator,
        )  # fmt: skip
        history = repeat(x[:, :start], "b c k -> b s c k", s=num_samples)
        return torch.cat([history, paths], dim=2)


class RandomWalk(SeasonalNaive):
    """The random walk with bootstrapped residuals: :class:`SeasonalNaive` with season 1.

    Args:
        residual_window: bootstrap from the last this many residuals of the context (None: all).
    """

    def __init__(self, residual_window: int | None = None) -> None:
        super().__init__(1, residual_window)

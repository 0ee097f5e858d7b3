"""Forecasting baselines with bootstrapped residuals, scored by the same metrics as the diffusion models.

Seasonal naive predicts ``y_{T+h} = y_{T+h-m}``; the random walk is the case ``m = 1``. Their predictive
distribution is simulated with bootstrapped residuals (Hyndman & Athanasopoulos, *Forecasting: Principles
and Practice*, 3rd ed., §5.5): each path continues ``y_{T+h} = y_{T+h-m} + e_h`` where ``e_h`` is an in-sample
residual ``r_t = y_t - y_{t-m}`` of the context drawn with replacement, so errors accumulate beyond one season.
One residual time step ``t`` is drawn for all K series at once, keeping their cross-correlation (what
CRPS-sum and the energy score reward).

Use :func:`bootstrap_forecast` as a function, or :class:`BaselineForecastTask` from a config
(``tsdiffusion test --config experiments/forecasting/<data>/seasonal_naive*.yaml``): a LightningModule with no
trainable parameters whose ``test_step`` is the one of :class:`tsdiffusion.tasks.base.DiffusionTask`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from einops import repeat
from torch import Tensor, nn

from tsdiffusion.batch import TSBatch
from tsdiffusion.metrics import DEFAULT_METRICS, MetricName
from tsdiffusion.tasks.base import DiffusionTask
from tsdiffusion.tasks.forecasting import _FanChartMixin, horizon_start

BaselineMethod = Literal["seasonal_naive", "random_walk"]


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
    generator: torch.Generator | None = None,
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
    idx = torch.multinomial(weight, num_samples * horizon, replacement=True, generator=generator)  # (B, S*H)
    draws = torch.gather(r, 1, repeat(idx, "b n -> b n k", k=K)).view(B, num_samples, horizon, K)
    steps: list[Tensor] = []
    for h in range(horizon):
        base = context[:, None, C - season + h] if h < season else steps[h - season]
        steps.append(base + draws[:, :, h])
    return torch.stack(steps, dim=2)


class BaselineForecaster(nn.Module):
    """The baseline's settings in the denoiser slot of a task (no parameters; never called as a denoiser).

    Args:
        num_features: K (linked from the data by the CLI; unused).
        method: ``seasonal_naive`` (season ``season_length``) or ``random_walk`` (season 1).
        season_length: m, in steps (hourly weekly: 168, daily: 24; business days weekly: 5).
        residual_window: bootstrap from the last this many residuals of the context (None: all).
    """

    def __init__(
        self,
        num_features: int,
        method: BaselineMethod = "seasonal_naive",
        season_length: int = 168,
        residual_window: int | None = None,
    ) -> None:
        super().__init__()
        self.num_features, self.method = num_features, method
        self.season = 1 if method == "random_walk" else season_length
        self.residual_window = residual_window

    def forward(self, x_t: Tensor, t: Tensor, cond: dict) -> Tensor:
        raise RuntimeError("BaselineForecaster is not a denoiser: use BaselineForecastTask.sample")


class BaselineForecastTask(_FanChartMixin, DiffusionTask):
    """Seasonal naive / random walk with bootstrapped residuals as a test-only LightningModule.

    ``test`` scores ``num_samples`` bootstrap paths of the DataModule's test windows with
    :class:`tsdiffusion.metrics.ProbabilisticMetrics` in original units, as the diffusion tasks.
    Bootstrapping in normalised units is the same as in original units: the scaling is affine per series
    and window.

    Args:
        denoiser: a :class:`BaselineForecaster` (the method and its season).
        num_samples, sample_seed, metrics: as :class:`DiffusionTask`.
        plot_series: series in the fan chart saved after ``test`` (0: none).
    """

    metric_units = "original"

    def __init__(
        self,
        denoiser: BaselineForecaster,
        num_samples: int = 100,
        sample_seed: int = 0,
        metrics: Sequence[MetricName] = DEFAULT_METRICS,
        plot_series: int = 4,
    ):
        super().__init__(denoiser, num_samples=num_samples, sample_seed=sample_seed, metrics=metrics)
        self.save_hyperparameters(ignore=["denoiser", "process"])

    def training_step(self, batch: TSBatch, batch_idx: int) -> Tensor:
        raise RuntimeError("BaselineForecastTask has nothing to train: run `tsdiffusion test --config ...`")

    def validation_step(self, batch: TSBatch, batch_idx: int) -> None:
        return None

    def configure_optimizers(self):
        return None

    @torch.no_grad()
    def sample(self, batch: TSBatch, cond_mask: Tensor, num_samples: int | None = None,
               generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        """Bootstrap paths (B, S, L, K) in normalised units, the conditioning values kept before the horizon."""
        S, f = num_samples or self.hparams.num_samples, self.denoiser
        x = batch["observed"] * cond_mask
        start = horizon_start(cond_mask)
        paths = bootstrap_forecast(
            x[:, :start], x.shape[1] - start, f.season, S, mask=cond_mask[:, :start],
            residual_window=f.residual_window, generator=generator,
        )  # fmt: skip
        history = repeat(x[:, :start], "b c k -> b s c k", s=S)
        return torch.cat([history, paths], dim=2)

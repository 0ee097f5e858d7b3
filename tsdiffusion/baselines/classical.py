"""A classical probabilistic forecaster: exponential smoothing (ETS) state-space models per series and window,
fitted by maximum likelihood with statsmodels (``pip install tsdiffusion[classical]``).

ETS with additive errors (Hyndman, Koehler, Ord & Snyder, *Forecasting with Exponential Smoothing*, 2008;
Hyndman & Athanasopoulos, *Forecasting: Principles and Practice*, 3rd ed., ch. 8): level, optional (damped)
additive trend and optional additive season. Sample paths are simulated from the fitted model
(``ETSResults.simulate``: Gaussian errors with the fitted variance fed through the state equations), so they
follow its predictive distribution, errors accumulating over the horizon; parameter uncertainty is not sampled.
Each series of each window is fitted on its own context (missing values linearly interpolated first); the
series are independent given their contexts. Fitting is affine-equivariant, so normalised units are fine.
"""

from __future__ import annotations

import warnings
from typing import Literal

import numpy as np
import torch
from einops import repeat
from torch import Tensor

from tsdiffusion.baselines.base import SamplingBaseline
from tsdiffusion.baselines.imputation import interpolate
from tsdiffusion.batch import TSBatch
from tsdiffusion.masking import horizon_start
from tsdiffusion.streams import Source, draw_seeds


def ets_paths(
    y: np.ndarray,
    horizon: int,
    num_samples: int,
    *,
    trend: Literal["add"] | None = None,
    damped_trend: bool = False,
    seasonal_periods: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Simulated paths (S, H) of an ETS model with additive errors fitted to one series ``y`` (C,).

    A (numerically) constant series gets constant paths: it has no error variance to estimate.
    """
    y = np.asarray(y, dtype=np.float64)
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return np.full((num_samples, horizon), y[-1])
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    model = ETSModel(
        y, error="add", trend=trend, damped_trend=damped_trend and trend is not None,
        seasonal="add" if seasonal_periods else None, seasonal_periods=seasonal_periods,
    )  # fmt: skip
    with warnings.catch_warnings():  # convergence chatter of the optimiser on short or flat contexts
        warnings.simplefilter("ignore")
        fit = model.fit(disp=False)
        sims = fit.simulate(horizon, repetitions=num_samples, anchor="end", rng=np.random.default_rng(seed))
    return np.asarray(sims, dtype=np.float64).reshape(horizon, num_samples).T


class ETSForecaster(SamplingBaseline):
    """ETS per series and window (statsmodels ``ETSModel``), sample paths from its predictive distribution.

    Args:
        trend: ``add`` (additive trend) or None (level only: simple exponential smoothing).
        damped_trend: damp the additive trend (Gardner & McKenzie 1985); ignored without a trend.
        seasonal_periods: m of an additive season (e.g. 24 hourly, 5 business-daily); None: no season.
        context_length: fit on the last this many context steps (None: the whole context).
    """

    def __init__(
        self,
        trend: Literal["add"] | None = "add",
        damped_trend: bool = True,
        seasonal_periods: int | None = None,
        context_length: int | None = None,
    ) -> None:
        if seasonal_periods is not None and seasonal_periods < 2:
            raise ValueError(f"seasonal_periods must be >= 2 or None, got {seasonal_periods}")
        self.trend, self.damped_trend = trend, damped_trend
        self.seasonal_periods, self.context_length = seasonal_periods, context_length

    def sample(self, batch: TSBatch, cond_mask: Tensor, num_samples: int, generator: Source = None) -> Tensor:
        """Paths (B, S, L, K) in normalised units; the conditioning values are kept before the horizon."""
        x = batch["observed"] * cond_mask
        B, L, K = x.shape
        start = horizon_start(cond_mask)
        context = interpolate(x[:, :start], cond_mask[:, :start])
        if self.context_length is not None:
            context = context[:, -self.context_length :]
        seeds = draw_seeds(B, K, num_samples, generator).tolist()
        ctx = context.detach().cpu().double().numpy()
        paths = np.empty((B, num_samples, L - start, K))
        for b in range(B):
            for k in range(K):
                paths[b, :, :, k] = ets_paths(
                    ctx[b, :, k], L - start, num_samples, trend=self.trend, damped_trend=self.damped_trend,
                    seasonal_periods=self.seasonal_periods, seed=seeds[b][k],
                )  # fmt: skip
        future = torch.from_numpy(paths).to(device=x.device, dtype=x.dtype)
        history = repeat(x[:, :start], "b c k -> b s c k", s=num_samples)
        return torch.cat([history, future], dim=2)

"""Synthetic benchmarks whose best possible score is known: a seasonal linear-Gaussian state-space model.

:func:`seasonal_ssm` builds, from one seed, K series (default 8) driven by a D = 6 dimensional state: two
AR(1) factors (phi 0.95 and 0.7) and two damped stochastic harmonics of the period (default 24, rho 0.98),
loaded on the series by a random matrix C (cross-series correlation), plus independent observation noise
and a deterministic seasonal mean per series (level + two harmonics of the period), each series on its own
scale. :class:`SyntheticDataModule` cuts it into

* ``protocol="forecast"``: one long path, GluonTS's protocol (``GluonTSDataModule``): train windows in the
  train part (its last ``num_val_windows * H`` steps held back), validation windows ending at the end of the
  train part (stride H), and ``num_test_windows`` rolling test windows after it, window i ending ``(i + 1) H``
  steps after the train part; the last H steps of a window are scored;
* ``protocol="impute"``: independent items of ``window_length`` steps (all starting at phase 0, as PhysioNet's
  records start at admission), split 70/10/20 (train/val/test) at random; in every item ``holdout_ratio`` of
  the observed values are held out at random (CSDI's protocol) or in blocks of ``block_length`` steps of one
  series; the held-out values are scored.

Values are normalised explicitly with the per-series mean / std of the observed train values (``loc`` /
``scale`` in every batch), so ``observed * scale + loc`` is in original units. :meth:`SyntheticDataModule.
optimal` gives the Bayes-optimal law of every test window's targets given its conditioning values (Kalman
smoother, :mod:`tsdiffusion.oracle`) and its exact scores; :meth:`SyntheticDataModule.record_info`
puts them in the result record so a report can show the ratio to the optimum. These are synthetic data:
never present their numbers as benchmark results on real data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy.linalg import block_diag
from torch.utils.data import DataLoader, RandomSampler

from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.data.time_features import time_features
from tsdiffusion.data.windows import fixed_block_holdout_mask, holdout_mask
from tsdiffusion.errors import ConfigError
from tsdiffusion.oracle import LinearGaussianSSM, Posterior, optimal_scores, posterior, sampled_scores

Protocol = Literal["forecast", "impute"]
Units = Literal["original", "normalised"]

#: The metrics whose exact optimum is computed (names of :mod:`tsdiffusion.metrics`).
OPTIMAL_METRICS = (
    "crps", "crps_sum", "crps_fair", "ncrps_fair", "energy_score", "coverage_50", "coverage_90",
    "mse_mean", "mae_median", "rmse_median", "nmae_median", "nrmse_mean",
)  # fmt: skip


@dataclass(frozen=True)
class SeasonalSSM:
    """A :class:`LinearGaussianSSM` plus the deterministic seasonal mean of every series.

    level, amp1, amp2, phase1, phase2: (K,); mean_t,k = level_k + amp1_k cos(2π t / period + phase1_k)
    + amp2_k cos(4π t / period + phase2_k), t the absolute step.
    """

    ssm: LinearGaussianSSM
    period: int
    level: np.ndarray
    amp1: np.ndarray
    amp2: np.ndarray
    phase1: np.ndarray
    phase2: np.ndarray

    def mean(self, steps: np.ndarray) -> np.ndarray:
        """(L,) absolute steps -> (L, K) deterministic mean."""
        w = 2 * math.pi * np.asarray(steps, dtype=np.float64)[:, None] / self.period
        return self.level + self.amp1 * np.cos(w + self.phase1) + self.amp2 * np.cos(2 * w + self.phase2)

    def simulate(self, start: int, length: int, rng: np.random.Generator) -> np.ndarray:
        """A stationary path of steps [start, start + length) -> (length, K)."""
        return self.mean(np.arange(start, start + length)) + self.ssm.simulate(length, rng)


def _rotation(angle: float, rho: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return rho * np.array([[c, -s], [s, c]])


def seasonal_ssm(num_series: int = 8, period: int = 24, seed: int = 0) -> SeasonalSSM:
    """The default model (module docstring), every random choice drawn from ``default_rng(seed)``.

    State: AR(1) factors with phi (0.95, 0.7) and unit stationary variance; harmonics 1 and 2 of ``period``
    as rotations damped by 0.98 with stationary variance 0.5 per coordinate. Loadings C ~ N(0, 1/2), noise
    variances U(0.1, 0.4), then series k scaled by U(0.5, 3): loadings, noise and its mean (level U(2, 8),
    amplitudes U(0.5, 2) and U(0, 1), phases U(0, 2π)).
    """
    rng = np.random.default_rng(seed)
    phi, rho = np.array([0.95, 0.7]), 0.98
    A = block_diag(np.diag(phi), *(_rotation(2 * math.pi * j / period, rho) for j in (1, 2)))
    Q = np.diag(np.concatenate([1 - phi**2, np.full(4, 0.5 * (1 - rho**2))]))
    K, D = num_series, A.shape[0]
    C = rng.normal(0.0, math.sqrt(0.5), (K, D))
    R = rng.uniform(0.1, 0.4, K)
    scale = rng.uniform(0.5, 3.0, K)
    level, amp1, amp2 = rng.uniform(2, 8, K), rng.uniform(0.5, 2, K), rng.uniform(0, 1, K)
    phase1, phase2 = rng.uniform(0, 2 * math.pi, K), rng.uniform(0, 2 * math.pi, K)
    ssm = LinearGaussianSSM(A, Q, C * scale[:, None], R * scale**2)
    return SeasonalSSM(ssm, period, level * scale, amp1 * scale, amp2 * scale, phase1, phase2)


# ----------------------------------------------------------------------------- the DataModule


@dataclass(frozen=True)
class _Split:
    """Raw windows of one split: values (W, L, K) original units with NaN where missing, target (W, L, K)
    bool, start (W,) absolute step of each window's first step."""

    values: np.ndarray
    target: np.ndarray
    start: np.ndarray


class SyntheticDataModule(TSDataModule):
    """Forecasting or imputation windows of :func:`seasonal_ssm` with the exact optimal scores of the test set.

    Args:
        protocol: ``"forecast"`` (GluonTS windows) or ``"impute"`` (PhysioNet-style hold-out); module docstring.
        num_series, period, seed: the model (:func:`seasonal_ssm`); ``seed`` also draws the paths and masks.
        context_length, prediction_length, max_lag: forecast windows of ``max_lag + context_length +
            prediction_length`` steps (``max_lag``: history for TimeGrad's lags).
        train_length: steps of the forecast train part (the validation tail included).
        num_val_windows, num_test_windows: forecast validation / rolling test windows (stride H).
        num_train_windows: random forecast train windows per epoch (None: every window once).
        window_length, num_items: imputation items of ``window_length`` steps, split 70/10/20.
        holdout, holdout_ratio, block_length: imputation targets, at random or in blocks of one series.
        natural_missing: share of entries missing from the data itself (both protocols; never scored, never
            conditioned on: the optimum handles them per entry).
        metric_units: units of the optimal scores in :meth:`record_info`; ``None``: those the tasks score in,
            ``"original"`` for forecasting (ForecastingTask, TimeGradTask), ``"normalised"`` for imputation
            (ImputationTask).
        optimal_samples: S of the Monte Carlo "optimum at S samples" (the exact law scored by the project's
            metric classes from S draws, as a model is): 0 skips it.
        batch_size, eval_batch_size, num_workers: as :class:`TSDataModule`.
    """

    def __init__(
        self,
        protocol: Protocol = "forecast",
        num_series: int = 8,
        period: int = 24,
        seed: int = 0,
        context_length: int = 72,
        prediction_length: int = 24,
        max_lag: int = 0,
        train_length: int = 4800,
        num_val_windows: int = 2,
        num_test_windows: int = 14,
        num_train_windows: int | None = 1600,
        window_length: int = 48,
        num_items: int = 600,
        holdout: Literal["random", "block"] = "random",
        holdout_ratio: float = 0.1,
        block_length: int = 6,
        natural_missing: float = 0.0,
        metric_units: Units | None = None,
        optimal_samples: int = 100,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        if protocol not in ("forecast", "impute"):
            raise ConfigError(f"SyntheticDataModule: protocol must be 'forecast' or 'impute', got {protocol!r}")
        if not 0 <= natural_missing < 1 or not 0 < holdout_ratio < 1:
            raise ConfigError(
                f"SyntheticDataModule: natural_missing must be in [0, 1) and holdout_ratio in (0, 1), got "
                f"{natural_missing} and {holdout_ratio}"
            )
        self.protocol, self.period, self.seed = protocol, period, seed
        self._num_series = num_series
        self.context_length, self.prediction_length, self.max_lag = context_length, prediction_length, max_lag
        self.train_length, self.num_val_windows, self.num_test_windows = train_length, num_val_windows, num_test_windows
        self.num_train_windows = num_train_windows
        self.window_length, self.num_items = window_length, num_items
        self.holdout, self.holdout_ratio, self.block_length = holdout, holdout_ratio, block_length
        self.natural_missing = natural_missing
        self.metric_units: Units = metric_units or ("original" if protocol == "forecast" else "normalised")
        self.optimal_samples = optimal_samples
        self.name = f"synthetic_{protocol}" + (f"_{holdout}" if protocol == "impute" else "")
        self.model = seasonal_ssm(num_series, period, seed)
        self._posteriors: dict[tuple[str, str], list[Posterior]] = {}
        needed = self.seq_len + num_val_windows * prediction_length
        if protocol == "forecast" and train_length < needed:
            raise ConfigError(f"SyntheticDataModule: train_length={train_length} < one window + validation = {needed}")

    # -- sizes --------------------------------------------------------------------------------
    @property
    def seq_len(self) -> int:
        """L: ``max_lag + context_length + prediction_length`` (forecast) or ``window_length`` (impute)."""
        if self.protocol == "forecast":
            return self.max_lag + self.context_length + self.prediction_length
        return self.window_length

    @property
    def num_features(self) -> int:
        return self._num_series

    @property
    def num_time_features(self) -> int:
        """F: hourly calendar features (4), a step being an hour."""
        return 4

    # -- raw data -----------------------------------------------------------------------------
    @cached_property
    def splits(self) -> dict[str, _Split]:
        """Raw windows of every split (original units, NaN where missing)."""
        rng = np.random.default_rng([self.seed, 1])
        return self._forecast_splits(rng) if self.protocol == "forecast" else self._impute_splits(rng)

    def _missing(self, values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.natural_missing > 0:
            values = np.where(rng.random(values.shape) < self.natural_missing, np.nan, values)
        return values

    def _forecast_splits(self, rng: np.random.Generator) -> dict[str, _Split]:
        L, H, T = self.seq_len, self.prediction_length, self.train_length
        path = self._missing(self.model.simulate(0, T + self.num_test_windows * H, rng), rng)
        ends = {
            "train": np.arange(L, T - self.num_val_windows * H + 1),
            "val": T - H * np.arange(self.num_val_windows)[::-1],
            "test": T + H * np.arange(1, self.num_test_windows + 1),
        }
        out = {}
        for split, e in ends.items():
            steps = e[:, None] - L + np.arange(L)[None]
            values = path[steps]
            target = np.zeros(values.shape, dtype=bool)
            target[:, L - H :] = True
            out[split] = _Split(values, target & np.isfinite(values), e - L)
        return out

    def _impute_splits(self, rng: np.random.Generator) -> dict[str, _Split]:
        N, L = self.num_items, self.window_length
        values = self._missing(np.stack([self.model.simulate(0, L, rng) for _ in range(N)]), rng)
        observed = np.isfinite(values)
        if self.holdout == "random":
            target = holdout_mask(observed, self.holdout_ratio, rng)
        else:
            target = fixed_block_holdout_mask(observed, self.holdout_ratio, self.block_length, rng)
        order = rng.permutation(N)
        n_test, n_val = round(0.2 * N), round(0.1 * N)
        parts = {"test": order[:n_test], "val": order[n_test : n_test + n_val], "train": order[n_test + n_val :]}
        return {s: _Split(values[i], target[i], np.zeros(len(i), dtype=np.int64)) for s, i in parts.items()}

    @cached_property
    def loc_scale(self) -> tuple[np.ndarray, np.ndarray]:
        """(K,) mean and std of each series over the observed train values (original units)."""
        train = self.splits["train"].values.reshape(-1, self.num_features)
        return np.nanmean(train, 0), np.nanstd(train, 0)

    # -- windows ------------------------------------------------------------------------------
    def build(self) -> dict[str, WindowDataset]:
        return {s: WindowDataset(self._fields(sp), source=f"{self.name} {s}") for s, sp in self.splits.items()}

    def _fields(self, sp: _Split) -> dict[str, np.ndarray]:
        W, L, K = sp.values.shape
        loc, scale = self.loc_scale
        mask = np.isfinite(sp.values)
        steps = sp.start[:, None] + np.arange(L)[None]
        index = pd.date_range("2026-01-01", periods=int(steps.max()) + 1, freq="h")
        return {
            "observed": np.where(mask, (np.nan_to_num(sp.values) - loc) / scale, 0.0),
            "observed_mask": mask,
            "target_mask": sp.target & mask,
            "timepoints": np.tile(np.arange(L, dtype=np.float32), (W, 1)),
            "feature_ids": np.tile(np.arange(K), (W, 1)),
            "time_features": time_features(index, "h")[steps],
            "loc": np.tile(loc.reshape(1, 1, K), (W, 1, 1)),
            "scale": np.tile(scale.reshape(1, 1, K), (W, 1, 1)),
        }

    def train_dataloader(self) -> DataLoader:
        if self.protocol == "impute" or self.num_train_windows is None:
            return super().train_dataloader()
        self._ensure()
        data = self.datasets["train"]
        return DataLoader(
            data, batch_size=self.batch_size, num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
            sampler=RandomSampler(data, replacement=False, num_samples=min(self.num_train_windows, len(data))),
        )  # fmt: skip

    # -- the optimum --------------------------------------------------------------------------
    def posteriors(self, split: str = "test", units: Units | None = None) -> list[Posterior]:
        """The optimal law of every window's targets given its conditioning values (observed, not target)."""
        sp, units = self.splits[split], units or self.metric_units
        if (split, units) in self._posteriors:
            return self._posteriors[(split, units)]
        out = []
        for values, target, start in zip(sp.values, sp.target, sp.start):
            observed = np.isfinite(values)
            mean = self.model.mean(np.arange(start, start + len(values)))
            p = posterior(self.model.ssm, np.nan_to_num(values), observed & ~target, target & observed, mean)
            out.append(p.affine(*self.loc_scale) if units == "normalised" else p)
        self._posteriors[(split, units)] = out
        return out

    def optimal(self, split: str = "test", units: Units | None = None) -> dict[str, float]:
        """Exact scores of the optimal law on the split's targets (see :func:`optimal_scores`)."""
        return optimal_scores(self.posteriors(split, units), self.num_features)

    def optimal_sampled(
        self, num_samples: int, repeats: int = 10, split: str = "test", units: Units | None = None
    ) -> dict[str, dict[str, float]]:
        """Monte Carlo: the exact law scored by the project's metric classes from ``num_samples`` draws per
        window (what a perfect sampling model scores), ``repeats`` times -> {metric: {"mean", "se"}}."""
        posts, sp = self.posteriors(split, units), self.splits[split]
        rng = np.random.default_rng([self.seed, 2])
        targets = sp.target & np.isfinite(sp.values)
        return sampled_scores(posts, self._truth(split, units), targets, OPTIMAL_METRICS, num_samples, repeats, rng)

    def _truth(self, split: str, units: Units | None) -> np.ndarray:
        values = np.nan_to_num(self.splits[split].values)
        if (units or self.metric_units) == "normalised":
            loc, scale = self.loc_scale
            values = (values - loc) / scale
        return values

    def record_info(self) -> dict[str, Any]:
        """The data settings and the optimum of the test set, in ``metric_units`` (see :mod:`tsdiffusion.records`).

        ``optimal``: exact scores; ``optimal_sampled``: {"num_samples", "repeats", "metrics": {name: {"mean",
        "se"}}}, the optimum as the metric classes score it from S draws (absent when ``optimal_samples`` is 0).
        """
        info: dict[str, Any] = {
            "protocol": self.protocol, "num_series": self.num_features, "period": self.period, "seed": self.seed,
            "seq_len": self.seq_len, "windows": {s: len(sp.values) for s, sp in self.splits.items()},
            "natural_missing": self.natural_missing, "optimal_units": self.metric_units,
            "optimal": self.optimal(),
            "optimal_method": "Kalman/RTS posterior; quantile CRPS with exact Gaussian quantiles; energy score by "
                              "1-D quadrature (tsdiffusion.oracle)",
        }  # fmt: skip
        if self.protocol == "impute":
            info.update(holdout=self.holdout, holdout_ratio=self.holdout_ratio, block_length=self.block_length)
        if self.optimal_samples:
            repeats = 10
            info["optimal_sampled"] = {
                "num_samples": self.optimal_samples, "repeats": repeats,
                "metrics": self.optimal_sampled(self.optimal_samples, repeats),
            }  # fmt: skip
        return info

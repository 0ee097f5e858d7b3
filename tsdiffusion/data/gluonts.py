"""GluonTS multivariate benchmarks (electricity, traffic, exchange rate, solar) as forecasting windows.

The reader is :mod:`tsdiffusion.data.sources.gluonts` (both published layouts; TimeGrad's grouping of the
rolling test windows). Windows of ``L = max_lag + context_length + prediction_length`` steps are cut as
follows: train windows lie inside ``[0, T_train - num_val_windows * H)``; validation window ``j`` ends
``(num_val_windows - 1 - j) * H`` steps before the end of the train part (CSDI's layout); test window ``i``
ends at the end of test series ``i``. Train targets never overlap test horizons.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.data.sources.gluonts import (  # noqa: F401  (the reader's names, re-exported)
    KNOWN_DATASETS,
    GluonTSData,
    GluonTSFormatError,
    GluonTSInfo,
    embedded_path,
    load_gluonts,
    read_gluonts,
    source_path,
    to_dataframe,
)
from tsdiffusion.data.time_features import TimeFeatureKind
from tsdiffusion.data.time_features import time_features as calendar_features
from tsdiffusion.data.windows import (
    context_loc_scale,
    cut_window,
    mean_abs_scale,
    series_stats,
)
from tsdiffusion.errors import ConfigError

Scaling = Literal["standard", "mean", "context", "none"]


class ContextTooLongError(ConfigError):
    """The window (lag history + context + horizon) does not fit in the series."""


@dataclass(frozen=True)
class WindowSpec:
    """How a window is cut and scaled: ``L = max_lag + context_length + prediction_length``."""

    context_length: int
    prediction_length: int
    max_lag: int
    scaling: Scaling
    loc: np.ndarray  # (K,) train mean for scaling="standard", else 0
    scale: np.ndarray  # (K,) train std for scaling="standard", else 1

    @property
    def length(self) -> int:
        return self.max_lag + self.context_length + self.prediction_length

    def loc_scale(self, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K,) loc and scale for one raw window (L, K)."""
        context = window[self.max_lag : self.max_lag + self.context_length]
        if self.scaling == "mean":
            return self.loc, mean_abs_scale(context)
        if self.scaling == "context":
            return context_loc_scale(context)
        return self.loc, self.scale


def make_window(values: np.ndarray, end: int, spec: WindowSpec, time_feats: np.ndarray) -> dict[str, np.ndarray]:
    """One window ending (exclusive) at step ``end`` of ``values`` (T, K), scaled as ``spec`` says and scored on
    its last H steps (:func:`tsdiffusion.data.windows.cut_window`). time_feats: (>= end, F)."""
    loc, scale = spec.loc_scale(values[end - spec.length : end])
    return cut_window(values, end, spec.length, spec.prediction_length, loc, scale, time_feats)


def stack_windows(windows: Sequence[Mapping[str, np.ndarray]], spec: WindowSpec, K: int, F: int) -> dict[str, Any]:
    """Items -> arrays with a leading item axis N (an empty split keeps its shapes)."""
    if windows:
        return {k: np.stack([w[k] for w in windows]) for k in windows[0]}
    L = spec.length
    shapes = {"observed": (L, K), "observed_mask": (L, K), "target_mask": (L, K), "timepoints": (L,),
              "feature_ids": (K,), "time_features": (L, F), "loc": (1, K), "scale": (1, K)}  # fmt: skip
    return {k: np.zeros((0, *s), dtype=np.float32) for k, s in shapes.items()}


class TrainWindowDataset(Dataset):
    """Every window of the train part, item ``i`` ending at step ``i + L``: ``len = T_avail - L + 1``.

    Which windows an epoch sees is chosen by :class:`RandomWindowSampler` (random windows, as TimeGrad
    and CSDI train).
    """

    def __init__(self, values: np.ndarray, spec: WindowSpec, time_feats: np.ndarray):
        self.values, self.spec, self.time_feats = values, spec, time_feats

    def __len__(self) -> int:
        return len(self.values) - self.spec.length + 1

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"window {i} out of range for {len(self)} train windows")
        item = make_window(self.values, i + self.spec.length, self.spec, self.time_feats)
        return {k: torch.from_numpy(v) for k, v in item.items()}


class RandomWindowSampler(Sampler[int]):
    """``num_samples`` window indices per epoch, without replacement while they last.

    ``num_samples=None`` visits every window once per epoch (CSDI). The generator, when given, makes the
    sequence reproducible on its own; otherwise it follows torch's global seed (``seed_everything``).
    """

    def __init__(self, num_windows: int, num_samples: int | None = None, generator: torch.Generator | None = None):
        self.num_windows, self.num_samples, self.generator = num_windows, num_samples, generator

    def __len__(self) -> int:
        return self.num_samples or self.num_windows

    def __iter__(self) -> Iterator[int]:
        sampler = RandomSampler(range(self.num_windows), num_samples=len(self), generator=self.generator)
        return iter(sampler)


# -- the DataModule -----------------------------------------------------------------------------


class GluonTSDataModule(TSDataModule):
    """Forecasting windows of a GluonTS multivariate benchmark, in original units via ``loc``/``scale``.

    Each item is a :class:`tsdiffusion.batch.TSBatch` window of ``L = max_lag + context_length +
    prediction_length`` steps: ``observed`` (L, K) normalised, 0 where missing; ``observed_mask`` (L, K);
    ``target_mask`` (L, K), 1 on the last H steps where observed; ``timepoints`` (L,); ``feature_ids``
    (K,); ``time_features`` (L, F); ``loc``/``scale`` (1, K) with ``observed * scale + loc`` in
    original units.

    Args:
        name: ``electricity_nips``, ``traffic_nips``, ``exchange_rate_nips``, ``solar_nips``, or any
            name when ``path`` is given.
        path: a ``.tar.gz`` or folder in GluonTS or raw GP-copula layout; ``"embedded"`` for the
            package copy of exchange_rate_nips; ``None`` downloads the canonical file into ``cache_dir``.
        context_length: conditioning steps before the horizon (default: ``prediction_length``, as
            TimeGrad; CSDI uses 168).
        prediction_length: H, the horizon (default: the metadata's, or the published one).
        max_lag: extra steps carried before the context for lagged inputs (TimeGrad's
            ``max(lags_seq)``: 168 hourly, 2 business-daily); ``"mean"`` scaling ignores them.
        num_train_windows: random train windows per epoch (TimeGrad: 100 batches x 64); ``None``
            visits every train window once per epoch (CSDI).
        num_val_windows: validation windows, stride H, at the end of the train part (CSDI: 5); the
            last ``num_val_windows * H`` train steps are never a train target.
        scaling: ``"standard"``: mean/std of each series over the train part (CSDI); ``"mean"``:
            mean |x| of each series over the window's context (TimeGrad); ``"context"``: mean and std of
            each series over the window's context (instance normalisation, as RevIN, Kim et al. 2022; not
            a setting of either paper: it puts the horizon's changes, not the level, on the unit scale the
            noise schedule is built for); ``"none"``.
        time_features: ``"gluonts"`` (default): GluonTS's calendar features in [-0.5, 0.5] (business-daily: 3,
            hourly: 4); ``"fourier"``: pytorch-ts TimeGrad's defaults, cos/sin of the calendar fields
            (business-daily: day of week and day of year, 4 values; hourly: hour and day of week, 4 values).
        seed: seeds the train window sampler on its own; ``None`` follows torch's global seed.
        cache_dir: where downloads are kept (default ``$TSDIFFUSION_CACHE`` or ``~/.cache/tsdiffusion``).
        batch_size, eval_batch_size, num_workers: as :class:`TSDataModule`.
    """

    def __init__(
        self,
        name: str = "exchange_rate_nips",
        path: str | None = None,
        context_length: int | None = None,
        prediction_length: int | None = None,
        max_lag: int = 0,
        num_train_windows: int | None = 6400,
        num_val_windows: int = 5,
        scaling: Scaling = "standard",
        time_features: TimeFeatureKind = "gluonts",
        seed: int | None = None,
        cache_dir: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        _check_args(name, path, context_length, prediction_length, max_lag, num_train_windows, num_val_windows)
        if scaling not in ("standard", "mean", "context", "none"):
            raise ConfigError(f"scaling must be 'standard', 'mean', 'context' or 'none', got {scaling!r}")
        self.name, self.path, self.cache_dir = name, path, cache_dir
        self._context_length, self._prediction_length = context_length, prediction_length
        if time_features not in ("gluonts", "fourier"):
            raise ValueError(f"time_features must be 'gluonts' or 'fourier', got {time_features!r}")
        self.max_lag, self.scaling, self.seed = max_lag, scaling, seed
        self.time_feature_kind = time_features
        self.num_train_windows, self.num_val_windows = num_train_windows, num_val_windows
        self.data: GluonTSData | None = None
        self._tf: np.ndarray | None = None
        self._generator = torch.Generator().manual_seed(seed) if seed is not None else None

    # -- sizes --------------------------------------------------------------------------------
    @property
    def prediction_length(self) -> int:
        """H, the horizon."""
        return self._prediction_length or self._load().prediction_length

    @property
    def context_length(self) -> int:
        return self._context_length or self.prediction_length

    @property
    def seq_len(self) -> int:
        """L = max_lag + context_length + prediction_length."""
        return self.max_lag + self.context_length + self.prediction_length

    @property
    def num_features(self) -> int:
        """K, the number of series."""
        return self._load().num_series

    @property
    def freq(self) -> str:
        """The pandas frequency string of the data (e.g. ``"h"``, ``"B"``)."""
        return self._load().freq

    @property
    def num_time_features(self) -> int:
        """F, the calendar features per step."""
        return int(self._time_features().shape[1])

    # -- loading ------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        source_path(self.name, self.path, cache_dir=self.cache_dir)

    def _load(self) -> GluonTSData:
        if self.data is None:
            self.data = load_gluonts(
                self.name, self.path, cache_dir=self.cache_dir, prediction_length=self._prediction_length
            )
            _warn_if_unexpected(self.data)
        return self.data

    def _time_features(self) -> np.ndarray:
        if self._tf is None:
            data = self._load()
            self._tf = calendar_features(data.index(), data.freq, self.time_feature_kind)
        return self._tf

    def window_spec(self) -> WindowSpec:
        """How windows are cut and scaled; ``"standard"`` uses statistics of the whole train part."""
        data = self._load()
        K = data.num_series
        loc, scale = series_stats(data.train) if self.scaling == "standard" else (np.zeros(K), np.ones(K))
        return WindowSpec(self.context_length, self.prediction_length, self.max_lag, self.scaling, loc, scale)

    def build(self) -> dict[str, Dataset]:
        data, spec, tf = self._load(), self.window_spec(), self._time_features()
        _check_fits(data, spec, self.num_val_windows)
        H, T, K, F = spec.prediction_length, data.train_length, data.num_series, tf.shape[1]
        val_ends = [T - (self.num_val_windows - 1 - j) * H for j in range(self.num_val_windows)]
        val = [make_window(data.train, e, spec, tf) for e in val_ends]
        test = [make_window(w, len(w), spec, tf) for w in data.test]
        train_part = data.train[: T - self.num_val_windows * H]
        return {
            "train": TrainWindowDataset(train_part, spec, tf),
            "val": WindowDataset(stack_windows(val, spec, K, F), source=f"{self.name} val"),
            "test": WindowDataset(stack_windows(test, spec, K, F), source=f"{self.name} test"),
        }

    def train_dataloader(self) -> DataLoader:
        self._ensure()
        sampler = RandomWindowSampler(len(self.datasets["train"]), self.num_train_windows, self._generator)
        return self._loader("train", sampler=sampler)

    def _loader(self, split: str, shuffle: bool = False, **kwargs: Any) -> DataLoader:
        """Every loader batches with :func:`collate_windows` (the training split is drawn by
        :class:`RandomWindowSampler`)."""
        return super()._loader(split, shuffle, **{"collate_fn": collate_windows, **kwargs})


def collate_windows(items: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
    """Stack items along a new batch axis B with numpy.

    Same result as ``default_collate`` for these dicts, but ``torch.stack`` runs its copy on the
    intra-op thread pool, which stalls (~250 ms for 16 x 360 x 203 floats) on a busy 2-core machine.
    """
    return {k: torch.from_numpy(np.stack([item[k].numpy() for item in items])) for k in items[0]}


def _check_args(
    name: str,
    path: str | None,
    context_length: int | None,
    prediction_length: int | None,
    max_lag: int,
    num_train_windows: int | None,
    num_val_windows: int,
) -> None:
    if path is None and name not in KNOWN_DATASETS:
        raise ConfigError(f"unknown data set {name!r}: use one of {sorted(KNOWN_DATASETS)} or pass `path`")
    limits = (
        ("context_length", context_length, 1),
        ("prediction_length", prediction_length, 1),
        ("num_train_windows", num_train_windows, 1),
        ("max_lag", max_lag, 0),
        ("num_val_windows", num_val_windows, 0),
    )
    for arg, value, low in limits:
        if value is not None and value < low:
            raise ConfigError(f"{arg} must be >= {low}, got {value}")


def _check_fits(data: GluonTSData, spec: WindowSpec, num_val_windows: int) -> None:
    """The train part minus the validation tail holds a whole window (then so do the validation
    windows and, as test windows are longer than the train part, the test windows)."""
    L, H, T = spec.length, spec.prediction_length, data.train_length
    parts = f"max_lag={spec.max_lag} + context_length={spec.context_length} + prediction_length={H} = {L}"
    available = T - num_val_windows * H
    if available < L:
        raise ContextTooLongError(
            f"{data.name}: the window ({parts} steps) is longer than the train part: {T} steps minus "
            f"num_val_windows={num_val_windows} x {H} for validation leaves {available}"
        )


def _warn_if_unexpected(data: GluonTSData) -> None:
    info = KNOWN_DATASETS.get(data.name)
    if info and (data.num_series, data.num_test_windows) != (info.num_series, info.rolling_evaluations):
        warnings.warn(
            f"{data.source}: {data.name} has {data.num_series} series and {data.num_test_windows} test "
            f"windows, the published one {info.num_series} and {info.rolling_evaluations}",
            stacklevel=3,
        )

"""Labelled anomaly-detection benchmarks as windows: NASA SMAP / MSL telemetry and NAB.

Every data set is a list of :class:`AnomalySeries` (one entity: a SMAP/MSL channel, a NAB file; read by
:mod:`tsdiffusion.data.sources.anomaly`), each with a train part (no labels, mostly normal), a test part and
a 0/1 label per test step. The :class:`AnomalyDataModule` base turns them into windows:

* normalisation: per series and feature, from that series' *train* part only (z-score or min-max);
  the test part never enters the statistics. Constant features get scale 1;
* train / val: the last ``val_fraction`` of each train part is the validation part (val loss and the
  calibration scores from which a task picks its threshold); windows of ``window_length`` steps every
  ``stride`` steps (val: every ``test_stride`` steps);
* test: windows every ``test_stride`` steps plus one aligned to the end, so every test step is covered;
  ``point_label`` (B, L) is the anomaly label of each step, for scoring only (no model may read it);
* stitching: every window carries ``series_index`` (B,) and ``window_start`` (B,) (extra, long fields),
  so overlapping window scores can be put back on the series' time axis
  (:func:`tsdiffusion.tasks.anomaly.stitch_windows`); a series shorter than a window is padded with
  ``observed_mask = 0``.

``test_dataloader`` returns two loaders, ``[calibration (val windows), test]``: an anomaly task scores
the first to set its threshold without labels and the second to report metrics.

Sources (Hundman et al. KDD 2018; Lavin & Ahmad ICMLA 2015): see :class:`SMAPMSLDataModule` and
:class:`NABDataModule`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from torch.utils.data import DataLoader

from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.data.download import DataSourceError, fetch, resolve
from tsdiffusion.data.sources.anomaly import (  # noqa: F401  (the readers' names, re-exported)
    NAB_URL,
    SMAP_MSL_LABELS_SHA256,
    SMAP_MSL_LABELS_URL,
    SMAP_MSL_URL,
    AnomalySeries,
    iter_members,
    nab_labels,
    parse_smap_msl_labels,
    ranges_to_labels,
    read_nab,
    read_smap_msl,
    split_nab,
)
from tsdiffusion.data.windows import (
    grid_windows,
    make_window_fields,
    minmax_stats,
    pad_to,
    series_stats,
    window_starts,
)
from tsdiffusion.errors import ConfigError

Normalise = Literal["zscore", "minmax", "none"]


class AnomalyWindowDataset(WindowDataset):
    """:class:`WindowDataset` whose stitching fields ``series_index`` and ``window_start`` stay integers."""

    _LONG = (*WindowDataset._LONG, "series_index", "window_start")


def train_stats(train: np.ndarray, normalise: Normalise) -> tuple[np.ndarray, np.ndarray]:
    """loc, scale (K,) from a train part (T, K); NaN ignored; a constant feature (range or std not above
    1e-8) gets scale 1."""
    if normalise == "none":
        return np.zeros(train.shape[1]), np.ones(train.shape[1])
    if normalise == "zscore":
        return series_stats(train, min_scale=1e-8)
    return minmax_stats(train, min_scale=1e-8)


class AnomalyDataModule(TSDataModule):
    """Base of the anomaly benchmarks: windows, train-only normalisation, calibration + test loaders.

    Args:
        window_length: L, steps per window.
        stride: steps between the starts of training windows.
        test_stride: steps between the starts of validation / test windows (default ``window_length // 2``);
            overlapping scores are averaged when stitched.
        val_fraction: the last fraction of every train part that is held out for validation / calibration.
        normalise: per series and feature, from the train part: ``zscore``, ``minmax`` ([0, 1]) or ``none``.
        batch_size, eval_batch_size, num_workers: see :class:`TSDataModule`.
    """

    def __init__(
        self,
        window_length: int = 100,
        stride: int = 1,
        test_stride: int | None = None,
        val_fraction: float = 0.1,
        normalise: Normalise = "zscore",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(batch_size, eval_batch_size, num_workers)
        if window_length < 2 or stride < 1 or (test_stride is not None and test_stride < 1):
            raise ConfigError(f"need window_length >= 2 and strides >= 1, got {window_length}, {stride}, {test_stride}")
        if not 0 < val_fraction < 1:
            raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
        self.window_length, self.stride = window_length, stride
        self.test_stride = test_stride or max(1, window_length // 2)
        self.val_fraction, self.normalise = val_fraction, normalise
        self.series: list[AnomalySeries] = []

    def load_series(self) -> list[AnomalySeries]:
        """Every entity of the data set, in a fixed order (``series_index`` = position)."""
        raise NotImplementedError

    @property
    def series_names(self) -> list[str]:
        self._ensure()
        return [s.name for s in self.series]

    def build(self) -> dict[str, WindowDataset]:
        self.series = self.load_series()
        ks = {s.train.shape[1] for s in self.series}
        if len(ks) != 1:
            raise DataSourceError(f"{self.name}: series have different numbers of features {sorted(ks)}")
        parts: dict[str, list[dict[str, np.ndarray]]] = {"train": [], "val": [], "test": []}
        for i, s in enumerate(self.series):
            for split, arrays in self._series_windows(i, s).items():
                parts[split].append(arrays)
        return {split: self._dataset(split, chunks) for split, chunks in parts.items()}

    def _series_windows(self, index: int, s: AnomalySeries) -> dict[str, dict[str, np.ndarray]]:
        loc, scale = train_stats(s.train, self.normalise)
        cut = len(s.train) - max(1, round(self.val_fraction * len(s.train)))
        parts = {"train": s.train[:cut], "val": s.train[cut:], "test": s.test}
        strides = {"train": self.stride, "val": self.test_stride, "test": self.test_stride}
        return {
            split: self._windows(values, strides[split], index, loc, scale, s.labels if split == "test" else None)
            for split, values in parts.items()
        }

    def _windows(self, values: np.ndarray, stride: int, index: int, loc: np.ndarray, scale: np.ndarray,
                 labels: np.ndarray | None) -> dict[str, np.ndarray]:  # fmt: skip
        """Windows of one part (T, K) (padded with missing steps to at least one window) as arrays."""
        L = self.window_length
        starts = window_starts(len(values), L, stride)
        padded = pad_to(values[None], L)
        windows = grid_windows(np.zeros(1, dtype=np.int64), starts + L)
        arrays = make_window_fields(padded, None, windows, L, loc, scale, None)
        if labels is not None:
            padded_labels = np.zeros(padded.shape[1], dtype=np.float32)
            padded_labels[: len(labels)] = labels
            arrays["point_label"] = padded_labels[windows.steps(L)] * arrays["observed_mask"].max(-1)
        arrays["series_index"] = np.full(len(starts), index)
        arrays["window_start"] = starts
        return arrays

    def _dataset(self, split: str, chunks: list[dict[str, np.ndarray]]) -> AnomalyWindowDataset:
        arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
        return AnomalyWindowDataset(arrays, source=f"{type(self).__name__}[{split}]")

    def test_dataloader(self) -> list[DataLoader]:
        """``[calibration (val windows), test]``: thresholds from the first, metrics from the second."""
        return [self._loader("val", shuffle=False), self._loader("test", shuffle=False)]

    def record_info(self) -> dict:
        self._ensure()
        labels = np.concatenate([s.labels for s in self.series])
        return {
            "series": self.series_names,
            "window_length": self.window_length,
            "stride": self.stride,
            "test_stride": self.test_stride,
            "val_fraction": self.val_fraction,
            "normalise": self.normalise,
            "test_steps": len(labels),
            "anomaly_ratio": float(labels.mean()),
            "windows": {k: len(v) for k, v in self.datasets.items()},
        }


class SMAPMSLDataModule(AnomalyDataModule):
    """NASA SMAP (25 features) or MSL (55 features) telemetry channels (Hundman et al., KDD 2018).

    Each channel is one entity with its own train / test arrays; column 0 is the telemetry value, the
    others are one-hot command features. Labels: the ``anomaly_sequences`` of ``labeled_anomalies.csv``
    (inclusive ranges). Channel ``T-10`` has no label row and is never used; a second ``P-2`` row is ignored.

    Args:
        spacecraft: ``SMAP`` or ``MSL`` (the ``spacecraft`` column of the labels).
        channels: chan ids to use (e.g. ``["P-1", "S-1"]``); None = all channels of the spacecraft.
        features: ``all`` columns, or ``telemetry`` (column 0 only, K = 1).
        path: a folder, ``.tar.gz`` or ``.zip`` in telemanom's layout; None downloads telemanom's
            ``data.zip`` and ``labeled_anomalies.csv`` into ``cache_dir``.
        cache_dir: download cache (default ``~/.cache/tsdiffusion``).
        **AnomalyDataModule arguments** (windows, normalisation, batches).
    """

    def __init__(
        self,
        spacecraft: Literal["SMAP", "MSL"] = "SMAP",
        channels: list[str] | None = None,
        features: Literal["all", "telemetry"] = "all",
        path: str | None = None,
        cache_dir: str | None = None,
        window_length: int = 100,
        stride: int = 1,
        test_stride: int | None = None,
        val_fraction: float = 0.1,
        normalise: Normalise = "zscore",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(
            window_length,
            stride,
            test_stride,
            val_fraction,
            normalise,
            batch_size,
            eval_batch_size,
            num_workers,
        )
        self.spacecraft, self.channels, self.features = spacecraft, channels, features
        self.path, self.cache_dir = path, cache_dir
        self.name = spacecraft.lower()

    def load_series(self) -> list[AnomalySeries]:
        if self.path is None:
            archive = fetch(SMAP_MSL_URL, None, cache_dir=self.cache_dir)
            labels = fetch(SMAP_MSL_LABELS_URL, SMAP_MSL_LABELS_SHA256, cache_dir=self.cache_dir)
        else:
            archive, labels = resolve(self.path, url=SMAP_MSL_URL, sha256=None), None
        series = read_smap_msl(archive, self.spacecraft, self.channels, labels)
        if self.features == "telemetry":
            series = [AnomalySeries(s.name, s.train[:, :1], s.test[:, :1], s.labels) for s in series]
        return series

    def record_info(self) -> dict:
        return {**super().record_info(), "spacecraft": self.spacecraft, "features": self.features}


class NABDataModule(AnomalyDataModule):
    """Numenta Anomaly Benchmark series (Lavin & Ahmad, ICMLA 2015), univariate (K = 1).

    NAB has no train/test split (it scores streaming detectors); here the first ``train_fraction`` of
    every series is its train part (labels unused; NAB's own probationary period is the first 15%) and
    the rest is scored. Labels: 1 inside the official ``combined_windows.json`` windows (inclusive). Steps
    are rows (native timestamps are irregular in places).

    Args:
        series: NAB keys such as ``"realKnownCause/nyc_taxi"``; None = all 58 files.
        train_fraction: leading fraction of each series used for training / validation.
        path: a folder or ``.tar.gz`` with NAB's ``data/`` and ``labels/`` (any top folder); None downloads
            the GitHub archive of the pinned commit into ``cache_dir``.
        cache_dir: download cache.
        **AnomalyDataModule arguments** (windows, normalisation, batches).
    """

    name = "nab"

    def __init__(
        self,
        series: list[str] | None = None,
        train_fraction: float = 0.5,
        path: str | None = None,
        cache_dir: str | None = None,
        window_length: int = 100,
        stride: int = 1,
        test_stride: int | None = None,
        val_fraction: float = 0.2,
        normalise: Normalise = "zscore",
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(
            window_length,
            stride,
            test_stride,
            val_fraction,
            normalise,
            batch_size,
            eval_batch_size,
            num_workers,
        )
        if not 0 < train_fraction < 1:
            raise ConfigError(f"train_fraction must be in (0, 1), got {train_fraction}")
        self.series_keys, self.train_fraction = series, train_fraction
        self.path, self.cache_dir = path, cache_dir

    def load_series(self) -> list[AnomalySeries]:
        if self.path is None:
            source = fetch(NAB_URL, None, cache_dir=self.cache_dir, filename="NAB-ea702d7.tar.gz")
        else:
            source = resolve(self.path, url=NAB_URL, sha256=None)
        data = read_nab(source, self.series_keys)
        return [split_nab(k, frame, windows, self.train_fraction) for k, (frame, windows) in data.items()]

    def record_info(self) -> dict:
        return {**super().record_info(), "train_fraction": self.train_fraction}

"""Labelled anomaly-detection benchmarks as windows: NASA SMAP / MSL telemetry and NAB.

Every data set is a list of :class:`AnomalySeries` (one entity: a SMAP/MSL channel, a NAB file), each
with a train part (no labels, mostly normal), a test part and a 0/1 label per test step. The
:class:`AnomalyDataModule` base turns them into windows:

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

import ast
import csv
import io
import json
import re
import tarfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from torch.utils.data import DataLoader

from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.data.download import DataSourceError, fetch, resolve

Normalise = Literal["zscore", "minmax", "none"]

#: telemanom's data (Hundman et al. 2018): arrays in a zip (checksum unknown offline), labels in the repo.
SMAP_MSL_URL = "https://s3-us-west-2.amazonaws.com/telemanom/data.zip"
SMAP_MSL_LABELS_URL = (
    "https://raw.githubusercontent.com/khundman/telemanom/2e6c5b6c3558e7835601519b7bdef37c649bdbdc/"
    "labeled_anomalies.csv"
)
#: sha256 of ``labeled_anomalies.csv`` at that commit (byte-identical to the shared copy).
SMAP_MSL_LABELS_SHA256 = "057ce2d6c8875982bf4e5404aefea14efdcbce413d80826d2b737c95b59b7539"
#: NAB at the commit of the shared copy (GitHub archives are not byte-stable, so no checksum).
NAB_URL = "https://github.com/numenta/NAB/archive/ea702d75cc2258d9d7dd35ca8e5e2539d71f3140.tar.gz"


@dataclass(frozen=True)
class AnomalySeries:
    """One entity. train: (T, K) float; test: (T', K) float (NaN = missing); labels: (T',) 0/1."""

    name: str
    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray


class AnomalyWindowDataset(WindowDataset):
    """:class:`WindowDataset` whose stitching fields ``series_index`` and ``window_start`` stay integers."""

    _LONG = (*WindowDataset._LONG, "series_index", "window_start")


# -- containers: a folder, a .tar(.gz) or a .zip, read without extracting -----------------------------


def iter_members(path: str | Path, pattern: re.Pattern) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file under ``path`` (folder, tar or zip) whose path matches ``pattern``."""
    path = Path(path)
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            name = p.relative_to(path).as_posix()
            if p.is_file() and pattern.search(name):
                yield name, p.read_bytes()
    elif zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for name in sorted(zf.namelist()):
                if pattern.search(name):
                    yield name, zf.read(name)
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar:
                    if m.isfile() and pattern.search(m.name):
                        yield m.name, tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataSourceError(f"{path}: not a folder, zip or readable tar archive ({err})") from err


# -- SMAP / MSL -----------------------------------------------------------------------------------------

_LABELS = re.compile(r"(^|/)labeled_anomalies\.csv$")


def parse_smap_msl_labels(text: str, where: str) -> list[tuple[str, str, list[tuple[int, int]], int]]:
    """``labeled_anomalies.csv`` -> [(chan_id, spacecraft, [(start, end)], num_values)], one row per channel.

    ``[start, end]`` are inclusive index ranges into the test array (telemanom's convention, as used by
    OmniAnomaly). The original lists ``P-2`` twice; the later row is ignored.
    """
    rows, seen = [], set()
    for i, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
        try:
            chan, craft = row["chan_id"], row["spacecraft"]
            seqs = [(int(a), int(b)) for a, b in ast.literal_eval(row["anomaly_sequences"])]
            n = int(row["num_values"])
        except (KeyError, ValueError, SyntaxError, TypeError) as err:
            raise DataSourceError(f"{where}, line {i}: not a labeled_anomalies.csv row ({err})") from err
        if chan not in seen:
            seen.add(chan)
            rows.append((chan, craft, seqs, n))
    return rows


def ranges_to_labels(length: int, ranges: Sequence[tuple[int, int]]) -> np.ndarray:
    """(length,) 0/1 with ones on every inclusive ``[start, end]`` range (clipped to the series)."""
    labels = np.zeros(length, dtype=np.float32)
    for start, end in ranges:
        labels[max(start, 0) : min(end, length - 1) + 1] = 1
    return labels


def read_smap_msl(
    path: str | Path,
    spacecraft: Literal["SMAP", "MSL"],
    channels: Sequence[str] | None = None,
    labels_path: str | Path | None = None,
) -> list[AnomalySeries]:
    """Channels of one spacecraft from telemanom's layout (``labeled_anomalies.csv``, ``train/<chan>.npy``,
    ``test/<chan>.npy``) in a folder, tar or zip; ``labels_path`` overrides the csv inside ``path``.

    channels: chan ids (e.g. ``["P-1", "S-1"]``) in the order given; None = every channel of the spacecraft,
    in the csv's order.
    """
    label_src = labels_path or path
    found = list(iter_members(label_src, _LABELS))
    if not found:
        raise DataSourceError(f"{label_src}: no labeled_anomalies.csv")
    rows = [r for r in parse_smap_msl_labels(found[0][1].decode(), found[0][0]) if r[1] == spacecraft]
    by_chan = {r[0]: r for r in rows}
    wanted = list(channels) if channels is not None else [r[0] for r in rows]
    unknown = [c for c in wanted if c not in by_chan]
    if unknown:
        raise DataSourceError(f"{path}: channels {unknown} are not {spacecraft} channels (have {sorted(by_chan)})")
    arrays = _read_arrays(path, set(wanted))
    return [_smap_series(c, arrays, by_chan[c], path) for c in wanted]


def _read_arrays(path: str | Path, channels: set[str]) -> dict[tuple[str, str], np.ndarray]:
    pattern = re.compile(r"(^|/)(train|test)/([^/]+)\.npy$")
    out = {}
    for name, data in iter_members(path, pattern):
        m = pattern.search(name)
        if m[3] in channels:
            out[(m[2], m[3])] = np.load(io.BytesIO(data), allow_pickle=False)
    return out


def _smap_series(chan: str, arrays: dict, row: tuple, where: str | Path) -> AnomalySeries:
    _, _, seqs, n = row
    if ("train", chan) not in arrays or ("test", chan) not in arrays:
        raise DataSourceError(f"{where}: missing train/{chan}.npy or test/{chan}.npy")
    train, test = arrays[("train", chan)], arrays[("test", chan)]
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise DataSourceError(f"{where}: {chan}: expected (T, D) arrays, got {train.shape} and {test.shape}")
    if len(test) != n:
        raise DataSourceError(f"{where}: {chan}: test has {len(test)} steps, labeled_anomalies.csv says {n}")
    return AnomalySeries(chan, train.astype(np.float64), test.astype(np.float64), ranges_to_labels(n, seqs))


# -- NAB -----------------------------------------------------------------------------------------------

_NAB_CSV = re.compile(r"(^|/)data/([^/]+/[^/]+\.csv)$")
_NAB_WINDOWS = re.compile(r"(^|/)labels/combined_windows\.json$")


def read_nab(path: str | Path, series: Sequence[str] | None = None) -> dict[str, tuple[pd.DataFrame, list]]:
    """NAB's ``data/<category>/<name>.csv`` (``timestamp,value``) and ``labels/combined_windows.json``.

    series: keys such as ``"realKnownCause/nyc_taxi.csv"`` (``.csv`` optional); None = every labelled file.
    Returns ``{key: (frame with columns timestamp (datetime64) and value, [[start_ts, end_ts], ...])}``.
    """
    windows_found = list(iter_members(path, _NAB_WINDOWS))
    if not windows_found:
        raise DataSourceError(f"{path}: no labels/combined_windows.json")
    windows = json.loads(windows_found[0][1])
    wanted = sorted(windows) if series is None else [s if s.endswith(".csv") else s + ".csv" for s in series]
    unknown = [s for s in wanted if s not in windows]
    if unknown:
        raise DataSourceError(f"{path}: series {unknown} have no entry in combined_windows.json")
    frames = {}
    for name, data in iter_members(path, _NAB_CSV):
        key = _NAB_CSV.search(name)[2]
        if key in wanted:
            frames[key] = _parse_nab_csv(data, name)
    missing = [s for s in wanted if s not in frames]
    if missing:
        raise DataSourceError(f"{path}: no data file for {missing}")
    return {k: (frames[k], windows[k]) for k in wanted}


def _parse_nab_csv(data: bytes, where: str) -> pd.DataFrame:
    frame = pd.read_csv(io.BytesIO(data))
    if list(frame.columns) != ["timestamp", "value"]:
        raise DataSourceError(f"{where}: expected the header 'timestamp,value', got {list(frame.columns)}")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce")
    return frame


def nab_labels(timestamps: pd.Series, windows: list) -> np.ndarray:
    """(T,) 0/1: 1 where ``start <= timestamp <= end`` for a NAB window ``[start, end]``."""
    ts = pd.to_datetime(timestamps).to_numpy()
    labels = np.zeros(len(ts), dtype=np.float32)
    for start, end in windows:
        labels[(ts >= pd.Timestamp(start).to_datetime64()) & (ts <= pd.Timestamp(end).to_datetime64())] = 1
    return labels


def split_nab(key: str, frame: pd.DataFrame, windows: list, train_fraction: float) -> AnomalySeries:
    """The first ``train_fraction`` of a NAB series is the train part (no labels), the rest the test part."""
    values = frame["value"].to_numpy(np.float64)[:, None]
    labels = nab_labels(frame["timestamp"], windows)
    cut = round(train_fraction * len(values))
    return AnomalySeries(key.removesuffix(".csv"), values[:cut], values[cut:], labels[cut:])


# -- windows -------------------------------------------------------------------------------------------


def window_starts(length: int, window_length: int, stride: int) -> np.ndarray:
    """Starts every ``stride`` steps plus one aligned to the end, so every step of the series is covered."""
    if length <= window_length:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, length - window_length + 1, stride)
    if starts[-1] != length - window_length:
        starts = np.append(starts, length - window_length)
    return starts


def train_stats(train: np.ndarray, normalise: Normalise) -> tuple[np.ndarray, np.ndarray]:
    """loc, scale (1, K) from a train part (T, K); NaN ignored; a constant feature gets scale 1."""
    if normalise == "none":
        return np.zeros((1, train.shape[1])), np.ones((1, train.shape[1]))
    if normalise == "zscore":
        loc, scale = np.nanmean(train, 0, keepdims=True), np.nanstd(train, 0, keepdims=True)
    else:
        loc = np.nanmin(train, 0, keepdims=True)
        scale = np.nanmax(train, 0, keepdims=True) - loc
    loc = np.nan_to_num(loc)
    scale = np.where(np.isfinite(scale) & (scale > 1e-8), scale, 1.0)
    return loc, scale


def cut_windows(
    values: np.ndarray, starts: np.ndarray, window_length: int, labels: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """values (T, K) normalised, NaN = missing -> observed / observed_mask (N, L, K), point_label (N, L)."""
    T, K = values.shape
    padded = np.full((max(T, window_length), K), np.nan)
    padded[:T] = values
    idx = starts[:, None] + np.arange(window_length)[None, :]
    windows = padded[idx]
    mask = np.isfinite(windows).astype(np.float32)
    out = {"observed": np.nan_to_num(windows).astype(np.float32), "observed_mask": mask}
    if labels is not None:
        lab = np.zeros(len(padded), dtype=np.float32)
        lab[:T] = labels
        out["point_label"] = lab[idx] * mask.max(-1)
    return out


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
            raise ValueError(f"need window_length >= 2 and strides >= 1, got {window_length}, {stride}, {test_stride}")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
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
        norm = {"train": s.train[:cut], "val": s.train[cut:], "test": s.test}
        strides = {"train": self.stride, "val": self.test_stride, "test": self.test_stride}
        return {
            split: self._windows((values - loc) / scale, strides[split], index, loc, scale,
                                 s.labels if split == "test" else None)
            for split, values in norm.items()
        }  # fmt: skip

    def _windows(self, values: np.ndarray, stride: int, index: int, loc: np.ndarray, scale: np.ndarray,
                 labels: np.ndarray | None) -> dict[str, np.ndarray]:  # fmt: skip
        starts = window_starts(len(values), self.window_length, stride)
        arrays = cut_windows(values, starts, self.window_length, labels)
        N, L, K = arrays["observed"].shape
        arrays["target_mask"] = arrays["observed_mask"].copy()
        arrays["timepoints"] = np.broadcast_to(np.arange(L, dtype=np.float32), (N, L))
        arrays["feature_ids"] = np.broadcast_to(np.arange(K), (N, K))
        arrays["loc"] = np.broadcast_to(loc[None].astype(np.float32), (N, 1, K))
        arrays["scale"] = np.broadcast_to(scale[None].astype(np.float32), (N, 1, K))
        arrays["series_index"] = np.full(N, index)
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
            raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
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

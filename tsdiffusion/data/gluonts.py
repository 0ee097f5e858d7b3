"""GluonTS multivariate benchmarks (electricity, traffic, exchange rate, solar) as forecasting windows.

Two on-disk layouts are read, from a folder or straight from a ``.tar.gz`` (nothing is extracted):

* GluonTS (what ``gluonts.dataset.repository.get_dataset`` leaves on disk)::

      NAME/metadata.json      {"freq": "B", "prediction_length": 30, ...}
      NAME/train/data.json    one JSON line per series {"start": ..., "target": [...], ...}
      NAME/test/data.json     rolling windows x K lines

* raw GP-copula (the tarballs of Salinas et al. 2019 that TimeGrad downloads)::

      NAME/metadata/metadata.json   {"time_granularity": "B", ...}   (no prediction_length)
      NAME/train/train.json
      NAME/test/test.json

Protocol (GluonTS ``MultivariateGrouper`` as used by TimeGrad): the K train lines form one (T, K)
series; the test file holds ``W x K`` lines, window-major, and window ``i`` is the next K lines, of
length ``T_train + (i + 1) * H`` in the published data. Its last H steps are scored; its context
comes from the window itself, so later windows see the true values of earlier horizons.

Windows of ``L = max_lag + context_length + prediction_length`` steps are cut as follows: train
windows lie inside ``[0, T_train - num_val_windows * H)``; validation window ``j`` ends
``(num_val_windows - 1 - j) * H`` steps before the end of the train part (CSDI's layout); test
window ``i`` ends at the end of test series ``i``. Train targets never overlap test horizons.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO, Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler

from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.data.download import DataSourceError, fetch, resolve, verify
from tsdiffusion.data.time_features import FrequencyError, freq_str, parse_freq, time_features

Scaling = Literal["standard", "mean", "context", "none"]


class GluonTSFormatError(ValueError):
    """A GluonTS data set that does not follow the layout: names the file, line and field."""


class ContextTooLongError(ValueError):
    """The window (lag history + context + horizon) does not fit in the series."""


# -- the published data sets --------------------------------------------------------------------

GP_COPULA_ROOT = "https://raw.githubusercontent.com/mbohlkeschneider/gluon-ts/mv_release/datasets/"


class GluonTSInfo(NamedTuple):
    """What ``gluonts.dataset.repository`` knows about a GP-copula data set (raw layout)."""

    url: str
    sha256: str | None
    num_series: int
    prediction_length: int
    freq: str
    rolling_evaluations: int


# sha256 is known only for exchange_rate_nips (the byte-identical copy in shared/data, see its
# SOURCE.md and resources/README.md). The other tarballs (>= 4 MiB) could not be obtained here, so
# their checksums are unknown (None): a download of those is used unverified.
KNOWN_DATASETS: dict[str, GluonTSInfo] = {
    "exchange_rate_nips": GluonTSInfo(
        GP_COPULA_ROOT + "exchange_rate_nips.tar.gz",
        "83f3cf364ae7854b0a74ef9825c47b8314896de820de877fd466cdffd94027d1",
        8, 30, "B", 5,
    ),
    "electricity_nips": GluonTSInfo(GP_COPULA_ROOT + "electricity_nips.tar.gz", None, 370, 24, "h", 7),
    "traffic_nips": GluonTSInfo(GP_COPULA_ROOT + "traffic_nips.tar.gz", None, 963, 24, "h", 7),
    "solar_nips": GluonTSInfo(GP_COPULA_ROOT + "solar_nips.tar.gz", None, 137, 24, "h", 7),
}  # fmt: skip

EMBEDDED = "embedded"
_EMBEDDED_NAME = "exchange_rate_nips"


def embedded_path() -> Path:
    """The package's copy of the canonical ``exchange_rate_nips.tar.gz`` (raw GP-copula layout)."""
    return Path(str(resources.files("tsdiffusion") / "resources" / "exchange_rate_nips.tar.gz"))


# -- reading files from a folder or a tar archive -----------------------------------------------

_JSON_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")


class _Tree:
    """The regular files of a folder or a tar archive, by posix path relative to its top."""

    def __init__(self, path: Path):
        self.path = path
        self.tar: tarfile.TarFile | None = None
        if path.is_dir():
            self.files = sorted(p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file())
            return
        try:
            self.tar = tarfile.open(path)
        except (tarfile.TarError, OSError) as err:
            raise DataSourceError(f"{path}: not a folder or a readable tar archive ({err})") from err
        self._members = {_clean(m.name): m for m in self.tar.getmembers() if m.isfile()}
        self.files = sorted(self._members)

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if self.tar else str(self.path / name)

    @contextmanager
    def open(self, name: str) -> Iterator[IO[str]]:
        raw = self.tar.extractfile(self._members[name]) if self.tar else open(self.path / name, "rb")
        with raw:
            stream = gzip.open(raw) if name.endswith(".gz") else raw
            with io.TextIOWrapper(stream, encoding="utf-8") as text:
                yield text

    def close(self) -> None:
        if self.tar:
            self.tar.close()


def _clean(name: str) -> str:
    return PurePosixPath(name).as_posix().removeprefix("./")


class _Layout(NamedTuple):
    kind: Literal["gluonts", "gp_copula"]
    root: str  # "" or "NAME"
    metadata: str
    train: list[str]
    test: list[str]


def _find_layout(tree: _Tree) -> _Layout:
    """Locate metadata and the train/test JSON-lines files of either published layout."""
    candidates = []
    for name in tree.files:
        p = PurePosixPath(name)
        if p.name == "metadata.json":
            raw = p.parent.name == "metadata"
            root = p.parent.parent if raw else p.parent
            candidates.append((len(root.parts), "gp_copula" if raw else "gluonts", root, name))
    if not candidates:
        raise GluonTSFormatError(
            f"{tree.path}: no metadata.json found; expected NAME/metadata.json, NAME/train/, NAME/test/ "
            "(GluonTS) or NAME/metadata/metadata.json, NAME/train/, NAME/test/ (GP-copula)"
        )
    _, kind, root, metadata = min(candidates)
    splits = {s: _split_files(tree, root, s) for s in ("train", "test")}
    return _Layout(kind, root.as_posix() if root.parts else "", metadata, splits["train"], splits["test"])


def _split_files(tree: _Tree, root: PurePosixPath, split: str) -> list[str]:
    folder = root / split
    files = [n for n in tree.files if PurePosixPath(n).parent == folder and n.endswith(_JSON_SUFFIXES)]
    if not files:
        raise GluonTSFormatError(f"{tree.where(folder.as_posix())}: no JSON-lines file of the {split} split")
    return files


# -- parsing ------------------------------------------------------------------------------------


class _Series(NamedTuple):
    start: str
    target: np.ndarray  # (T,) float32, NaN where missing
    where: str  # "file, line n"


def _read_lines(tree: _Tree, names: Sequence[str]) -> list[_Series]:
    out = []
    for name in names:
        with tree.open(name) as f:
            for lineno, line in enumerate(f, start=1):
                if line.strip():
                    out.append(_parse_line(line, f"{tree.where(name)}, line {lineno}"))
    return out


def _parse_line(line: str, where: str) -> _Series:
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise GluonTSFormatError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(entry, dict):
        raise GluonTSFormatError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    for field in ("start", "target"):
        if field not in entry:
            raise GluonTSFormatError(f"{where}: missing field {field!r} (have {sorted(entry)})")
    try:
        target = np.asarray(entry["target"], dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise GluonTSFormatError(f"{where}: field 'target': expected a list of numbers ({err})") from None
    if target.ndim != 1:
        raise GluonTSFormatError(
            f"{where}: field 'target': expected one series per line (a flat list), got shape {target.shape}"
        )
    if not isinstance(entry["start"], str):
        raise GluonTSFormatError(
            f"{where}: field 'start': expected a timestamp string, got {entry['start']!r}"
        )
    return _Series(entry["start"], target, where)


def _read_metadata(tree: _Tree, layout: _Layout) -> tuple[str, int | None]:
    """``(freq, prediction_length or None)`` from either layout's metadata file."""
    where = tree.where(layout.metadata)
    with tree.open(layout.metadata) as f:
        try:
            meta = json.load(f)
        except json.JSONDecodeError as err:
            raise GluonTSFormatError(f"{where}: not valid JSON ({err})") from None
    key = "freq" if layout.kind == "gluonts" else "time_granularity"
    if not isinstance(meta, dict) or key not in meta:
        have = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise GluonTSFormatError(f"{where}: missing field {key!r} (have {have})")
    try:
        freq = freq_str(parse_freq(meta[key]))
    except FrequencyError as err:
        raise FrequencyError(f"{where}: field {key!r}: {err}") from None
    horizon = meta.get("prediction_length")
    if horizon is not None and (not isinstance(horizon, int) or horizon < 1):
        raise GluonTSFormatError(f"{where}: field 'prediction_length': expected an int >= 1, got {horizon!r}")
    return freq, horizon


def _stack(group: Sequence[_Series], what: str) -> np.ndarray:
    """K series of one length -> (T, K); a ragged group or differing starts is an error."""
    first = group[0]
    for s in group[1:]:
        if len(s.target) != len(first.target):
            raise GluonTSFormatError(
                f"ragged target in {what}: {s.where} has {len(s.target)} steps but {first.where} has "
                f"{len(first.target)} (every series of a group must have the same length)"
            )
        if s.start != first.start:
            raise GluonTSFormatError(
                f"{what}: {s.where} starts at {s.start!r} but {first.where} at {first.start!r} "
                "(every series must start at the same time)"
            )
    return np.stack([s.target for s in group], axis=-1)


def _parse_start(series: _Series) -> pd.Timestamp:
    try:
        return pd.Timestamp(series.start)
    except (ValueError, TypeError) as err:
        raise GluonTSFormatError(
            f"{series.where}: field 'start': cannot parse {series.start!r} ({err})"
        ) from None


# -- the reader ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class GluonTSData:
    """A multivariate GluonTS data set: the train part and the rolling test windows.

    train: (T_train, K) float32, NaN where missing.
    test:  one (T_i, K) array per rolling window; the last ``prediction_length`` steps are scored.
    """

    name: str
    freq: str
    start: pd.Timestamp
    prediction_length: int
    train: np.ndarray
    test: tuple[np.ndarray, ...]
    source: str

    @property
    def num_series(self) -> int:
        return int(self.train.shape[1])

    @property
    def train_length(self) -> int:
        return int(self.train.shape[0])

    @property
    def num_test_windows(self) -> int:
        return len(self.test)

    def index(self, length: int | None = None) -> pd.DatetimeIndex:
        """Timestamps of the first ``length`` steps (default: the longest test window)."""
        length = max(len(a) for a in self.test) if length is None else length
        return pd.date_range(self.start, periods=length, freq=parse_freq(self.freq))


def read_gluonts(
    path: str | Path, *, name: str | None = None, prediction_length: int | None = None
) -> GluonTSData:
    """Read a GluonTS or raw GP-copula data set from a folder or a ``.tar.gz``.

    ``prediction_length`` overrides the metadata (required when neither the metadata nor the table of
    known data sets gives one). Errors name the file, line and field at fault.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataSourceError(f"{path}: no such file or folder")
    tree = _Tree(path)
    try:
        layout = _find_layout(tree)
        freq, meta_horizon = _read_metadata(tree, layout)
        train_series = _read_lines(tree, layout.train)
        test_series = _read_lines(tree, layout.test)
    finally:
        tree.close()
    name = name or PurePosixPath(layout.root).name or path.name.split(".")[0]
    horizon = _horizon(prediction_length, meta_horizon, name, tree.where(layout.metadata))
    start = _parse_start(train_series[0]) if train_series else None
    train, test = _group(train_series, test_series, tree.where(layout.root or "."))
    data = GluonTSData(name, freq, start, horizon, train, test, str(path))
    _check_protocol(data)
    return data


def _horizon(given: int | None, from_meta: int | None, name: str, meta_where: str) -> int:
    if given is not None:
        return given
    if from_meta is not None:
        return from_meta
    if name in KNOWN_DATASETS:
        return KNOWN_DATASETS[name].prediction_length
    raise GluonTSFormatError(
        f"{meta_where}: no field 'prediction_length' and {name!r} is not one of {sorted(KNOWN_DATASETS)}; "
        "pass prediction_length"
    )


def _group(
    train: list[_Series], test: list[_Series], where: str
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """GluonTS MultivariateGrouper: K train lines -> (T, K); W*K test lines -> W windows (T_i, K)."""
    K = len(train)
    if not train or not test:
        raise GluonTSFormatError(f"{where}: the {'train' if not train else 'test'} split has no series")
    if len(test) % K:
        raise GluonTSFormatError(
            f"{where}: the test split has {len(test)} series, not a multiple of the {K} train series "
            "(expected rolling windows x K lines)"
        )
    train_values = _stack(train, "the train split")
    windows = tuple(_stack(test[i * K : (i + 1) * K], f"test window {i}") for i in range(len(test) // K))
    for first in test[::K]:
        if first.start != train[0].start:
            raise GluonTSFormatError(
                f"{first.where}: starts at {first.start!r}, the train series at {train[0].start!r}"
            )
    return train_values, windows


def _check_protocol(data: GluonTSData) -> None:
    """Test horizons lie after the train part, so train and test targets never overlap."""
    H, T = data.prediction_length, data.train_length
    if H < 1:
        raise ValueError(f"{data.source}: prediction_length must be >= 1, got {H}")
    for i, window in enumerate(data.test):
        if len(window) - H < T:
            raise GluonTSFormatError(
                f"{data.source}: test window {i} has {len(window)} steps, so its horizon of H={H} starts at "
                f"{len(window) - H}, inside the train part of {T} steps (expected >= T_train + H steps)"
            )


def load_gluonts(
    name: str,
    path: str | Path | None = None,
    *,
    cache_dir: str | Path | None = None,
    prediction_length: int | None = None,
) -> GluonTSData:
    """Read a data set by name: downloaded and cached (``path=None``), the package copy
    (``path="embedded"``, exchange_rate_nips only), or a local ``.tar.gz``/folder."""
    return read_gluonts(
        source_path(name, path, cache_dir=cache_dir), name=name, prediction_length=prediction_length
    )


def source_path(name: str, path: str | Path | None, *, cache_dir: str | Path | None = None) -> Path:
    """The local file or folder that holds ``name``, downloading it into ``cache_dir`` when needed."""
    if path is not None and str(path) == EMBEDDED:
        if name != _EMBEDDED_NAME:
            raise DataSourceError(f"path='embedded' is only available for {_EMBEDDED_NAME!r}, not {name!r}")
        return verify(embedded_path(), KNOWN_DATASETS[_EMBEDDED_NAME].sha256)
    if path is None:
        if name not in KNOWN_DATASETS:
            raise DataSourceError(
                f"unknown data set {name!r}: pass `path` to a .tar.gz or folder in GluonTS layout, or "
                f"use one of {sorted(KNOWN_DATASETS)}"
            )
        info = KNOWN_DATASETS[name]
        try:
            return fetch(info.url, info.sha256, cache_dir=cache_dir)
        except DataSourceError as err:
            hint = " (or path='embedded' for the package copy)" if name == _EMBEDDED_NAME else ""
            raise DataSourceError(f"{err}{hint}") from err
    url = KNOWN_DATASETS[name].url if name in KNOWN_DATASETS else "a GluonTS data set"
    # A user's copy may be in either layout, so it is not checked against the raw tarball's checksum.
    return resolve(path, url=url, sha256=None, cache_dir=cache_dir)


def to_dataframe(
    data: GluonTSData, split: Literal["train", "test"] = "train", window: int = -1
) -> pd.DataFrame:
    """The train part, or one test window, as a wide (T, K) DataFrame indexed by timestamp."""
    values = data.train if split == "train" else data.test[window]
    return pd.DataFrame(
        values, index=data.index(len(values)), columns=pd.RangeIndex(data.num_series, name="series")
    )


# -- windows ------------------------------------------------------------------------------------


def series_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-series mean and std over the observed steps of ``values`` (T, K) -> two (K,) arrays.

    A series with no observed values gets mean 0; a constant or empty one gets std 1.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values.astype(np.float64), axis=0)
        std = np.nanstd(values.astype(np.float64), axis=0)
    mean = np.nan_to_num(mean, nan=0.0)
    std = np.where(np.isfinite(std) & (std > 0), std, 1.0)
    return mean, std


def context_loc_scale(context: np.ndarray, relative_floor: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Instance standardisation of one window: mean and std of each series over its observed context.

    context: (C, K) with NaN where missing -> loc (K,), scale (K,). The scale is at least
    ``relative_floor`` times the series' mean |x| over the context (and at least 1e-10), so a flat context
    does not blow the horizon up; an unobserved series gets loc 0 and its mean-|x| fallback.
    """
    observed = np.isfinite(context)
    count = np.maximum(observed.sum(axis=0), 1)
    values = np.where(observed, context, 0.0).astype(np.float64)
    loc = values.sum(axis=0) / count
    var = (np.where(observed, values - loc, 0.0) ** 2).sum(axis=0) / count
    scale = np.maximum(np.sqrt(var), relative_floor * mean_abs_scale(context))
    return loc, scale


def mean_abs_scale(context: np.ndarray, minimum: float = 1e-10) -> np.ndarray:
    """TimeGrad's ``MeanScaler`` on one window: mean |x| of each series over the observed context.

    context: (C, K) with NaN where missing -> (K,). A series that is all zero or unobserved gets the
    mean |x| over all series of the window (1 if that is 0 too); the scale is at least ``minimum``.
    """
    observed = np.isfinite(context)
    absolute = np.where(observed, np.abs(context), 0.0).astype(np.float64)
    count, total = observed.sum(axis=0), absolute.sum(axis=0)
    scale = total / np.maximum(count, 1)
    fallback = total.sum() / max(count.sum(), 1) or 1.0
    return np.maximum(np.where(total > 0, scale, fallback), minimum)


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


def make_window(
    values: np.ndarray, end: int, spec: WindowSpec, time_feats: np.ndarray
) -> dict[str, np.ndarray]:
    """One window ending (exclusive) at step ``end`` of ``values`` (T, K): a :class:`TSBatch` item.

    time_feats: (>= end, F) calendar features of the series' steps.
    """
    L, H = spec.length, spec.prediction_length
    raw = values[end - L : end]
    loc, scale = spec.loc_scale(raw)
    mask = np.isfinite(raw)
    observed = np.where(mask, (raw - loc) / scale, 0.0)
    target = mask.copy()
    target[: L - H] = False
    return {
        "observed": observed.astype(np.float32),
        "observed_mask": mask.astype(np.float32),
        "target_mask": target.astype(np.float32),
        "timepoints": np.arange(L, dtype=np.float32),
        "feature_ids": np.arange(values.shape[1], dtype=np.int64),
        "time_features": time_feats[end - L : end],
        "loc": loc[None, :].astype(np.float32),
        "scale": scale[None, :].astype(np.float32),
    }


def stack_windows(
    windows: Sequence[Mapping[str, np.ndarray]], spec: WindowSpec, K: int, F: int
) -> dict[str, Any]:
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

    def __init__(
        self, num_windows: int, num_samples: int | None = None, generator: torch.Generator | None = None
    ):
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
        seed: int | None = None,
        cache_dir: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        _check_args(
            name, path, context_length, prediction_length, max_lag, num_train_windows, num_val_windows
        )
        if scaling not in ("standard", "mean", "context", "none"):
            raise ValueError(f"scaling must be 'standard', 'mean', 'context' or 'none', got {scaling!r}")
        self.name, self.path, self.cache_dir = name, path, cache_dir
        self._context_length, self._prediction_length = context_length, prediction_length
        self.max_lag, self.scaling, self.seed = max_lag, scaling, seed
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
            self._tf = time_features(data.index(), data.freq)
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
        return self._make_loader("train", sampler)

    def val_dataloader(self) -> DataLoader:
        return self._make_loader("val", None)

    def test_dataloader(self) -> DataLoader:
        return self._make_loader("test", None)

    def predict_dataloader(self) -> DataLoader:
        return self._make_loader("test", None)

    def _make_loader(self, split: str, sampler: Sampler[int] | None) -> DataLoader:
        self._ensure()
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_windows,
        )


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
        raise ValueError(f"unknown data set {name!r}: use one of {sorted(KNOWN_DATASETS)} or pass `path`")
    limits = (
        ("context_length", context_length, 1),
        ("prediction_length", prediction_length, 1),
        ("num_train_windows", num_train_windows, 1),
        ("max_lag", max_lag, 0),
        ("num_val_windows", num_val_windows, 0),
    )
    for arg, value, low in limits:
        if value is not None and value < low:
            raise ValueError(f"{arg} must be >= {low}, got {value}")


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

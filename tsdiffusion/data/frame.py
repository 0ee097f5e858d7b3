"""Your own data: a DataModule from a CSV / Parquet / ``.npy`` file, a pandas DataFrame or a numpy array.

Layouts
    * **wide**: one row per time step, one column per series; the time stamps are a ``timestamp`` column, a
      ``DatetimeIndex``, or (neither) the row order;
    * **long**: one row per observation with columns ``item_id``, ``timestamp``, ``value`` (names
      configurable); the items are the K series;
    * arrays: ``(T, K)`` one multivariate series, or ``(N, L, K)`` N aligned multivariate items.

Every source becomes a *panel* ``(N, T, K)`` on a regular time grid: the frequency is given or inferred
(``pandas.infer_freq``), and time stamps missing from the grid become missing values (``observed_mask`` 0),
never dropped rows. Windows of ``window_length`` steps are cut every ``stride`` steps.

Splits (no leakage of the future into training)
    * ``split="time"``: the grid is cut at ``1 - val_fraction - test_fraction`` and ``1 - test_fraction``;
      a window belongs to the split in which its last step lies (for ``protocol="forecast"``: its whole
      horizon), so train windows end before the validation region starts; validation/test windows may look
      back into earlier regions for context, but only steps of their own region are scored.
    * ``split="series"``: the N items are shuffled (``seed``) and divided; every window of an item stays in
      its split (use ``univariate=True`` to make each series of a frame its own item).

Normalisation (``scaling="standard"``): per-series mean and standard deviation of the observed values of the
train part only (as CSDI's ``train`` statistics); every window carries ``loc`` / ``scale`` (1, K) so that
``observed * scale + loc`` is in original units.

Evaluation protocol (``target_mask``), owned by the DataModule as in the rest of tsdiffusion:
    * ``"imputation"``: a seeded ``missing_ratio`` of each item's observed values is held out (CSDI's
      protocol, Tashiro et al. 2021, sec. 5.1);
    * ``"forecast"``: the last ``prediction_length`` steps of each window (the GluonTS rolling protocol).

Labels: ``label_column`` (0/1 per time step) becomes ``point_label`` (anomaly detection); ``label_path``
(a table ``item_id,label``) or ``labels=`` of :meth:`FrameDataModule.from_array` become ``label``
(classification, one class per item).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from einops import rearrange
from pandas.tseries.frequencies import to_offset

from tsdiffusion.data.datamodule import SPLITS, TSDataModule, WindowDataset
from tsdiffusion.data.gluonts import series_stats
from tsdiffusion.data.time_features import FrequencyError, freq_str, parse_freq, time_features

Layout = Literal["auto", "wide", "long"]
Protocol = Literal["imputation", "forecast"]
SplitBy = Literal["time", "series"]
Scaling = Literal["standard", "none"]

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")


class FrameDataError(ValueError):
    """User data that cannot be used as given; the message names the file, column and row at fault."""


@dataclass(frozen=True)
class Panel:
    """A data set on a regular time grid.

    values:      (N, T, K) float64, NaN where missing
    index:       (T,) the grid: a ``DatetimeIndex`` or integer steps
    freq:        pandas frequency string of the grid (None for integer steps)
    series:      K series names; items: N item names
    point_label: (N, T) 0/1 or None; label: (N,) int or None
    """

    values: np.ndarray
    index: pd.Index
    freq: str | None
    series: tuple[str, ...]
    items: tuple[str, ...]
    point_label: np.ndarray | None
    label: np.ndarray | None
    source: str

    @property
    def has_dates(self) -> bool:
        return isinstance(self.index, pd.DatetimeIndex)


# -- reading ----------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV (``.csv``, ``.tsv``, ``.txt``) or Parquet (``.parquet``, ``.pq``) file as a DataFrame."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise FrameDataError(f"{path}: reading Parquet needs pyarrow or fastparquet ({err})") from None
    if suffix in (".csv", ".tsv", ".txt"):
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    raise FrameDataError(f"{path}: unsupported file type {suffix!r}; expected one of {(*TABLE_SUFFIXES, '.npy')}")


def _where(source: str, row: int) -> str:
    """Names a data row: a line of a CSV file (header on line 1), else the 0-based row position."""
    if source.lower().endswith((".csv", ".tsv", ".txt")):
        return f"{source}, line {row + 2}"
    return f"{source}, row {row}"


def _require_columns(df: pd.DataFrame, names: dict[str, str | None], source: str) -> None:
    for arg, name in names.items():
        if name is not None and name not in df.columns:
            have = [str(c) for c in df.columns]
            raise FrameDataError(f"{source}: unknown column {name!r} (from {arg}); the columns are {have}")


def _numeric(column: pd.Series, name: str, source: str) -> np.ndarray:
    """A column as float64 (NaN where empty); a non-numeric or infinite entry is an error naming its row."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = (~np.isfinite(values) & column.notna().to_numpy()).nonzero()[0]
    if len(bad):
        row = int(bad[0])
        raise FrameDataError(
            f"{_where(source, row)}: column {name!r}: non-numeric or infinite value {column.iloc[row]!r} "
            f"({len(bad)} such values in the column)"
        )
    return values


def _timestamps(column: pd.Series | pd.Index, name: str, source: str) -> pd.Index:
    """Time stamps as a ``DatetimeIndex``, or integer steps when the column is integer-valued."""
    column = pd.Series(column)
    if pd.api.types.is_integer_dtype(column):
        return pd.Index(column.to_numpy(dtype=np.int64))
    parsed = pd.to_datetime(column, errors="coerce")
    bad = parsed.isna().to_numpy().nonzero()[0]
    if len(bad):
        row = int(bad[0])
        raise FrameDataError(
            f"{_where(source, row)}: column {name!r}: cannot parse {column.iloc[row]!r} as a time stamp"
        )
    return pd.DatetimeIndex(parsed)


def _check_duplicates(keys: pd.DataFrame, what: str, source: str) -> None:
    """A repeated key row (time stamp, or item and time stamp) is an error naming both rows."""
    repeats = np.flatnonzero(keys.duplicated().to_numpy())
    if len(repeats):
        j = int(repeats[0])
        i = int(np.flatnonzero((keys == keys.iloc[j]).all(axis=1).to_numpy())[0])
        values = ", ".join(f"{c}={keys.iloc[j][c]!s}" for c in keys.columns)
        raise FrameDataError(
            f"{_where(source, j)}: duplicate time stamp{what} ({values}), first at {_where(source, i)}"
        )


# -- the regular grid -------------------------------------------------------------------------------


def infer_offset(stamps: pd.DatetimeIndex, source: str) -> pd.DateOffset:
    """The grid's step: ``pandas.infer_freq`` of the sorted unique stamps, else the most common difference
    (business days when every stamp is a weekday and the common difference is one day)."""
    unique = stamps.unique().sort_values()
    if len(unique) < 3:
        raise FrameDataError(f"{source}: cannot infer a frequency from {len(unique)} time stamps; pass freq")
    inferred = pd.infer_freq(unique)
    if inferred is not None:
        return to_offset(inferred)
    diffs = pd.Series(unique[1:] - unique[:-1])
    step = diffs.mode().iloc[0]
    if step == pd.Timedelta(days=1) and (unique.dayofweek < 5).all():
        return to_offset("B")
    return to_offset(step)


def regular_grid(stamps: pd.Index, freq: str | None, source: str) -> tuple[pd.Index, str | None]:
    """The regular grid from the first to the last stamp, and its frequency string (None for integer steps).

    Every stamp must lie on the grid; one that does not is an error naming it.
    """
    if not isinstance(stamps, pd.DatetimeIndex):
        unique = np.unique(stamps.to_numpy())
        step = int(np.gcd.reduce(np.diff(unique))) if len(unique) > 1 else 1
        return pd.Index(np.arange(unique[0], unique[-1] + 1, step)), None
    offset = parse_freq(freq) if freq is not None else infer_offset(stamps, source)
    grid = pd.date_range(stamps.min(), stamps.max(), freq=offset)
    off_grid = (~stamps.isin(grid)).nonzero()[0]
    if len(off_grid):
        row = int(off_grid[0])
        raise FrameDataError(
            f"{_where(source, row)}: time stamp {stamps[row]} is not on the regular grid of frequency "
            f"{offset.freqstr!r} starting at {grid[0]}; pass `freq` or resample the data"
        )
    return grid, freq_str(offset)


# -- frames -> panel --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSpec:
    """How a DataFrame is read (the column arguments of :class:`FrameDataModule`)."""

    layout: Layout = "auto"
    timestamp_column: str | None = None
    item_column: str = "item_id"
    value_column: str = "value"
    series: tuple[str, ...] | None = None
    label_column: str | None = None
    freq: str | None = None


def frame_to_panel(df: pd.DataFrame, spec: FrameSpec, source: str) -> Panel:
    """A wide or long DataFrame -> a one-item :class:`Panel` (N = 1) on the regular grid."""
    layout = spec.layout
    if layout == "auto":
        layout = "long" if {spec.item_column, spec.value_column} <= set(df.columns) else "wide"
    table, stamps, labels = (_wide if layout == "wide" else _long)(df, spec, source)
    grid, freq = regular_grid(stamps, spec.freq, source)
    values = table.set_axis(stamps, axis=0).reindex(grid).to_numpy(dtype=np.float64)
    point_label = None
    if labels is not None:
        point_label = pd.Series(labels, index=stamps).reindex(grid).fillna(0).to_numpy()[None]
    series = tuple(str(c) for c in table.columns)
    return Panel(values[None], grid, freq, series, ("0",), point_label, None, source)


def _wide(df: pd.DataFrame, spec: FrameSpec, source: str) -> tuple[pd.DataFrame, pd.Index, np.ndarray | None]:
    """Wide layout -> (T', K) numeric table, its T' time stamps, per-step labels (T',) or None."""
    ts_col = spec.timestamp_column
    _require_columns(df, {"timestamp_column": ts_col, "label_column": spec.label_column}, source)
    for name in spec.series or ():
        _require_columns(df, {"series": name}, source)
    if ts_col is None and "timestamp" in df.columns:
        ts_col = "timestamp"
    if ts_col is not None:
        stamps = _timestamps(df[ts_col], ts_col, source)
    elif isinstance(df.index, pd.DatetimeIndex):
        stamps = pd.DatetimeIndex(df.index)
    else:
        stamps = pd.Index(np.arange(len(df), dtype=np.int64))
    _check_duplicates(pd.DataFrame({"timestamp": stamps}), "", source)
    reserved = {ts_col, spec.label_column}
    names = list(spec.series) if spec.series else [c for c in df.columns if c not in reserved]
    if not names:
        raise FrameDataError(f"{source}: no series columns (the columns are {[str(c) for c in df.columns]})")
    table = pd.DataFrame({str(c): _numeric(df[c], str(c), source) for c in names})
    return table, stamps, _labels(df, spec.label_column, source)


def _long(df: pd.DataFrame, spec: FrameSpec, source: str) -> tuple[pd.DataFrame, pd.Index, np.ndarray | None]:
    """Long layout (one row per item and time stamp) -> the wide table; items in order of appearance."""
    ts_col = spec.timestamp_column or "timestamp"
    columns = {"item_column": spec.item_column, "value_column": spec.value_column, "timestamp_column": ts_col,
               "label_column": spec.label_column}  # fmt: skip
    _require_columns(df, columns, source)
    stamps = _timestamps(df[ts_col], ts_col, source)
    items = df[spec.item_column].astype(str).to_numpy()
    keys = pd.DataFrame({spec.item_column: items, ts_col: stamps})
    _check_duplicates(keys, " for a series", source)
    long = keys.assign(value=_numeric(df[spec.value_column], spec.value_column, source))
    table = long.pivot(index=ts_col, columns=spec.item_column, values="value")
    table = table[list(pd.unique(items))]
    if spec.label_column is None:
        return table, table.index, None
    per_row = pd.Series(_labels(df, spec.label_column, source), index=stamps)
    labels = per_row.groupby(level=0).max().reindex(table.index).to_numpy()
    return table, table.index, labels


def _labels(df: pd.DataFrame, column: str | None, source: str) -> np.ndarray | None:
    """Per-row 0/1 labels of ``column`` (empty -> 0); anything else is an error naming the row."""
    if column is None:
        return None
    values = np.nan_to_num(_numeric(df[column], column, source), nan=0.0)
    bad = (~np.isin(values, (0.0, 1.0))).nonzero()[0]
    if len(bad):
        row = int(bad[0])
        raise FrameDataError(f"{_where(source, row)}: column {column!r}: expected a 0/1 label, got {values[row]!r}")
    return values


def array_to_panel(
    values: np.ndarray,
    *,
    start: str | None = None,
    freq: str | None = None,
    series: Sequence[str] | None = None,
    labels: np.ndarray | None = None,
    point_labels: np.ndarray | None = None,
    source: str = "array",
) -> Panel:
    """``(T, K)`` or ``(N, L, K)`` values (NaN where missing) -> a :class:`Panel`.

    ``start`` and ``freq`` date the steps (else they are integer steps); ``labels`` (N,) classes per item;
    ``point_labels`` (T,) or (N, L) 0/1 per step.
    """
    arr = np.asarray(values)
    if arr.ndim not in (2, 3):
        raise FrameDataError(f"{source}: expected an array of shape (T, K) or (N, L, K), got {arr.shape}")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise FrameDataError(f"{source}: non-numeric values ({err})") from None
    arr = arr[None] if arr.ndim == 2 else arr
    N, T, K = arr.shape
    if np.isinf(arr).any():
        raise FrameDataError(
            f"{source}: infinite value at index {tuple(int(i) for i in np.argwhere(np.isinf(arr))[0])}"
        )
    if start is not None:
        index: pd.Index = pd.date_range(start, periods=T, freq=parse_freq(freq or "D"))
        freq = freq_str(parse_freq(freq or "D"))
    else:
        index, freq = pd.Index(np.arange(T, dtype=np.int64)), None
    names = tuple(str(s) for s in series) if series is not None else tuple(str(k) for k in range(K))
    if len(names) != K:
        raise FrameDataError(f"{source}: {len(names)} series names for K={K} series")
    point = None if point_labels is None else np.asarray(point_labels, dtype=np.float64).reshape(N, T)
    label = None if labels is None else np.asarray(labels).astype(np.int64).reshape(N)
    return Panel(arr, index, freq, names, tuple(str(n) for n in range(N)), point, label, source)


def split_univariate(panel: Panel) -> Panel:
    """Every series of every item becomes its own item with K = 1: ``(N, T, K) -> (N*K, T, 1)``."""
    N, _, K = panel.values.shape
    items = tuple(s if N == 1 else f"{i}/{s}" for i in panel.items for s in panel.series)
    point = None if panel.point_label is None else np.repeat(panel.point_label, K, axis=0)
    label = None if panel.label is None else np.repeat(panel.label, K)
    values = rearrange(panel.values, "n t k -> (n k) t 1")
    return Panel(values, panel.index, panel.freq, ("value",), items, point, label, panel.source)


def check_panel(panel: Panel) -> None:
    """Every series has an observed value (a NaN-only series is an error naming it)."""
    empty = np.isnan(panel.values).all(axis=1)  # (N, K)
    if empty.any():
        n, k = (int(i) for i in np.argwhere(empty)[0])
        item = f"item {panel.items[n]!r}, " if len(panel.items) > 1 else ""
        raise FrameDataError(f"{panel.source}: {item}series {panel.series[k]!r} has no observed value (all NaN)")


# -- windows ----------------------------------------------------------------------------------------


def time_regions(T: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    """Grid steps ``[start, end)`` of the train, validation and test regions of a time split."""
    test_start = T - round(T * test_fraction)
    val_start = test_start - round(T * val_fraction)
    return {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, T)}


def window_ends(region: tuple[int, int], length: int, stride: int, scored: int) -> list[int]:
    """Exclusive ends ``e`` of the windows of a region ``[a, b)``, anchored at ``b``, every ``stride`` steps.

    A window ``[e - length, e)`` belongs to the region when its last ``scored`` steps lie in it (its last step
    for imputation, its horizon for forecasting) and it starts at step 0 or later.
    """
    a, b = region
    first = max(length, a + scored)
    return list(range(b, first - 1, -stride))[::-1]


def holdout_mask(observed: np.ndarray, ratio: float, seed: int) -> np.ndarray:
    """(N, T, K) bool -> (N, T, K) bool: ``int(ratio * n_observed)`` observed values of each item, drawn
    without replacement from ``default_rng(seed)`` (CSDI's held-out evaluation points)."""
    rng = np.random.default_rng(seed)
    target = np.zeros(observed.shape, dtype=bool)
    for n, mask in enumerate(observed):
        flat = np.flatnonzero(mask)
        target[n].flat[rng.choice(flat, int(len(flat) * ratio), replace=False)] = True
    return target


@dataclass(frozen=True)
class Windows:
    """Where the windows of one split lie: ``item[i]`` and grid steps ``[end[i] - L, end[i])``, scored from
    grid step ``scored_from[i]`` on."""

    item: np.ndarray
    end: np.ndarray
    scored_from: np.ndarray


def make_window_fields(
    values: np.ndarray,
    target: np.ndarray,
    windows: Windows,
    length: int,
    loc: np.ndarray,
    scale: np.ndarray,
    time_feats: np.ndarray | None,
) -> dict[str, np.ndarray]:
    """Cut windows into :class:`tsdiffusion.batch.TSBatch` arrays with a leading item axis.

    values: (N, T, K) NaN where missing; target: (N, T, K) bool evaluation targets; loc, scale: (K,);
    time_feats: (T, F) or None. Returns observed / observed_mask / target_mask (W, L, K), timepoints (W, L),
    feature_ids (W, K), loc / scale (W, 1, K) and time_features (W, L, F) when given.
    """
    steps = windows.end[:, None] - length + np.arange(length)[None, :]  # (W, L) grid steps
    raw = values[windows.item[:, None], steps]  # (W, L, K)
    mask = np.isfinite(raw)
    scored = (steps >= windows.scored_from[:, None])[..., None]
    W, K = len(steps), values.shape[-1]
    fields = {
        "observed": np.where(mask, (np.nan_to_num(raw) - loc) / scale, 0.0),
        "observed_mask": mask,
        "target_mask": target[windows.item[:, None], steps] & mask & scored,
        "timepoints": np.tile(np.arange(length, dtype=np.float32), (W, 1)),
        "feature_ids": np.tile(np.arange(K), (W, 1)),
        "loc": np.tile(loc.reshape(1, 1, K), (W, 1, 1)),
        "scale": np.tile(scale.reshape(1, 1, K), (W, 1, 1)),
    }
    if time_feats is not None:
        fields["time_features"] = time_feats[steps]
    return fields


def panel_time_features(panel: Panel) -> np.ndarray | None:
    """(T, F) GluonTS calendar features of a dated grid (F = 0 for frequencies without any), else None."""
    if not panel.has_dates or panel.freq is None:
        return None
    try:
        return time_features(panel.index, panel.freq)
    except FrequencyError:
        return np.zeros((len(panel.index), 0), dtype=np.float32)


# -- the DataModule ---------------------------------------------------------------------------------


class FrameDataModule(TSDataModule):
    """Windows of your own data (a file, a DataFrame or an array) as :class:`tsdiffusion.batch.TSBatch` items.

    Items: ``observed`` (L, K) normalised, 0 where missing; ``observed_mask``; ``target_mask`` (the protocol's
    scored values, inside ``observed_mask``); ``timepoints`` 0..L-1; ``feature_ids`` 0..K-1;
    ``loc`` / ``scale`` (1, K); ``time_features`` (L, F) when the data has dates; ``point_label`` (L,)
    with ``label_column``; ``label`` () with ``label_path`` / ``labels``. The module docstring describes
    layouts, splits and protocols.

    Args:
        path: a ``.csv`` / ``.tsv`` / ``.parquet`` table (wide or long) or a ``.npy`` array ``(T, K)`` or
            ``(N, L, K)``; ``None`` with :meth:`from_dataframe` / :meth:`from_array`.
        layout: ``"wide"``, ``"long"`` or ``"auto"`` (long when ``item_column`` and ``value_column`` exist).
        timestamp_column: the time stamp column (default: ``timestamp`` if present, else a ``DatetimeIndex``,
            else the row order; integer stamps are steps).
        item_column, value_column: the long layout's series name and value columns.
        series: the wide layout's series columns (default: every column but the time stamp and label).
        freq: the grid frequency (``"h"``, ``"B"``, ``"15min"``; default inferred).
        window_length: L, steps per window.
        stride: steps between consecutive windows (default ``window_length``: no overlap).
        split: ``"time"`` or ``"series"`` (see the module docstring).
        val_fraction, test_fraction: share of the grid steps (time) or of the items (series).
        protocol: ``"imputation"`` (``missing_ratio`` held out) or ``"forecast"`` (the last
            ``prediction_length`` steps).
        missing_ratio: share of observed values held out as imputation targets, in (0, 1).
        prediction_length: H, the forecast horizon, < L.
        scaling: ``"standard"`` (train mean/std per series) or ``"none"``.
        univariate: every series becomes its own item with K = 1.
        label_column: a 0/1 column per time step -> ``point_label``.
        label_path: a table with columns ``item_column`` and ``label`` -> ``label`` per item.
        seed: seeds the held-out values and the series split.
        batch_size, eval_batch_size, num_workers: as :class:`TSDataModule`.
    """

    def __init__(
        self,
        path: str | None = None,
        layout: Layout = "auto",
        timestamp_column: str | None = None,
        item_column: str = "item_id",
        value_column: str = "value",
        series: list[str] | None = None,
        freq: str | None = None,
        window_length: int = 48,
        stride: int | None = None,
        split: SplitBy = "time",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        protocol: Protocol = "imputation",
        missing_ratio: float = 0.1,
        prediction_length: int = 24,
        scaling: Scaling = "standard",
        univariate: bool = False,
        label_column: str | None = None,
        label_path: str | None = None,
        seed: int = 1,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        _check_options(layout, split, protocol, scaling)
        _check_sizes(window_length, stride, val_fraction, test_fraction, missing_ratio, prediction_length, protocol)
        self.path, self.label_path = path, label_path
        self.spec = FrameSpec(layout, timestamp_column, item_column, value_column,
                              tuple(series) if series else None, label_column, freq)  # fmt: skip
        self.window_length, self.stride = window_length, stride or window_length
        self.split, self.val_fraction, self.test_fraction = split, val_fraction, test_fraction
        self.protocol, self.missing_ratio, self.prediction_length = protocol, missing_ratio, prediction_length
        self.scaling, self.univariate, self.seed = scaling, univariate, seed
        self.name = Path(path).stem if path else "frame"
        self._frame: pd.DataFrame | None = None
        self._array: dict[str, Any] | None = None
        self._panel: Panel | None = None
        self.loc = self.scale = np.zeros(0)
        self.windows: dict[str, Windows] = {}

    # -- constructors for Python use ------------------------------------------------------------
    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, **kwargs: Any) -> FrameDataModule:
        """A DataModule of a wide or long DataFrame; ``kwargs`` are the constructor's arguments."""
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"from_dataframe expects a pandas DataFrame, got {type(df).__name__}")
        dm = cls(path=None, **kwargs)
        dm._frame = df
        return dm

    @classmethod
    def from_array(
        cls,
        values: np.ndarray,
        *,
        start: str | None = None,
        series_names: Sequence[str] | None = None,
        labels: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        **kwargs: Any,
    ) -> FrameDataModule:
        """A DataModule of an array ``(T, K)`` or ``(N, L, K)`` (NaN where missing).

        ``start`` (with ``freq``) dates the steps; ``labels`` (N,) one class per item; ``point_labels`` (T,)
        or (N, L) 0/1 per step. ``kwargs`` are the constructor's arguments.
        """
        dm = cls(path=None, **kwargs)
        dm._array = {"values": values, "start": start, "series": series_names, "labels": labels,
                     "point_labels": point_labels}  # fmt: skip
        return dm

    # -- the data ---------------------------------------------------------------------------------
    def panel(self) -> Panel:
        """The whole data set on its regular grid, before windows, splits and normalisation."""
        if self._panel is None:
            panel = self._read()
            panel = split_univariate(panel) if self.univariate else panel
            if self.label_path is not None:
                panel = self._with_item_labels(panel)
            check_panel(panel)
            self._panel = panel
        return self._panel

    def _read(self) -> Panel:
        if self._frame is not None:
            return frame_to_panel(self._frame, self.spec, "DataFrame")
        if self._array is not None:
            a = self._array
            return array_to_panel(a["values"], start=a["start"], freq=self.spec.freq, series=a["series"],
                                  labels=a["labels"], point_labels=a["point_labels"])  # fmt: skip
        if self.path is None:
            raise FrameDataError("FrameDataModule: pass `path`, or use from_dataframe() / from_array()")
        if str(self.path).lower().endswith(".npy"):
            path = Path(self.path).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{path}: file not found")
            return array_to_panel(np.load(path, allow_pickle=False), freq=self.spec.freq, source=str(path))
        return frame_to_panel(read_table(self.path), self.spec, str(self.path))

    def _with_item_labels(self, panel: Panel) -> Panel:
        table = read_table(self.label_path)
        col = self.spec.item_column
        _require_columns(table, {"item_column": col, "label_path's label column": "label"}, str(self.label_path))
        mapping = dict(zip(table[col].astype(str), _numeric(table["label"], "label", str(self.label_path))))
        missing = [item for item in panel.items if item not in mapping]
        if missing:
            raise FrameDataError(
                f"{self.label_path}: no label for items {missing[:5]} (items: {list(panel.items)[:10]}; "
                "a single multivariate frame has one item '0': use univariate=True or an (N, L, K) array)"
            )
        label = np.array([mapping[item] for item in panel.items], dtype=np.int64)
        return Panel(panel.values, panel.index, panel.freq, panel.series, panel.items, panel.point_label,
                     label, panel.source)  # fmt: skip

    # -- sizes --------------------------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        """K, the number of series per window."""
        return int(self.panel().values.shape[-1])

    @property
    def seq_len(self) -> int:
        """L, the window length."""
        return self.window_length

    @property
    def freq(self) -> str | None:
        """The grid frequency (None when the data has no dates)."""
        return self.panel().freq

    @property
    def series_names(self) -> tuple[str, ...]:
        return self.panel().series

    @property
    def num_time_features(self) -> int:
        """F, calendar features per step (0 without dates)."""
        tf = panel_time_features(self.panel())
        return 0 if tf is None else int(tf.shape[1])

    # -- splits -------------------------------------------------------------------------------------
    def split_windows(self) -> dict[str, Windows]:
        """Where every split's windows lie (see :class:`Windows`); errors when a split gets no window."""
        panel = self.panel()
        N, T, _ = panel.values.shape
        L = self.window_length
        if T < L:
            raise FrameDataError(f"{panel.source}: window_length={L} is longer than the series ({T} grid steps)")
        if self.split == "time":
            return self._time_windows(N, T)
        return self._series_windows(N, T)

    def _time_windows(self, N: int, T: int) -> dict[str, Windows]:
        L = self.window_length
        scored = self.prediction_length if self.protocol == "forecast" else 1
        regions = time_regions(T, self.val_fraction, self.test_fraction)
        out = {}
        for split, region in regions.items():
            ends = window_ends(region, L, self.stride, scored)
            self._check_nonempty(split, len(ends), f"grid steps [{region[0]}, {region[1]}) of {T}")
            n, e = np.meshgrid(np.arange(N), np.asarray(ends, dtype=np.int64), indexing="ij")
            out[split] = Windows(n.ravel(), e.ravel(), np.full(n.size, region[0] if split != "train" else 0))
        return out

    def _series_windows(self, N: int, T: int) -> dict[str, Windows]:
        order = np.random.default_rng(self.seed).permutation(N)
        n_test, n_val = round(N * self.test_fraction), round(N * self.val_fraction)
        groups = {
            "test": order[:n_test],
            "val": order[n_test : n_test + n_val],
            "train": order[n_test + n_val :],
        }
        ends = np.asarray(window_ends((0, T), self.window_length, self.stride, 1), dtype=np.int64)
        out = {}
        for split in SPLITS:
            items = np.sort(groups[split])
            self._check_nonempty(split, len(items), f"{N} items")
            n, e = np.meshgrid(items, ends, indexing="ij")
            out[split] = Windows(n.ravel(), e.ravel(), np.zeros(n.size, dtype=np.int64))
        return out

    def _check_nonempty(self, split: str, count: int, where: str) -> None:
        fraction = {"train": 1.0, "val": self.val_fraction, "test": self.test_fraction}[split]
        if count == 0 and fraction > 0:
            horizon = f", prediction_length={self.prediction_length}" if self.protocol == "forecast" else ""
            raise FrameDataError(
                f"{self.panel().source}: the {split} split ({where}) holds no window of window_length="
                f"{self.window_length}{horizon}; use shorter windows or a larger {split} fraction"
            )

    def train_part(self) -> np.ndarray:
        """The values the normalisation is fitted on: (N', T', K), the train region or the train items."""
        values, w = self.panel().values, self.windows["train"]
        if self.split == "time":
            return values[:, : int(w.end.max())]
        return values[np.unique(w.item)]

    def fit_scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """(K,) loc and scale from the train part only (``scaling="none"``: 0 and 1)."""
        K = self.num_features
        if self.scaling == "none":
            return np.zeros(K), np.ones(K)
        return series_stats(rearrange(self.train_part(), "n t k -> (n t) k"))

    def target(self) -> np.ndarray:
        """(N, T, K) bool: the grid's evaluation targets (imputation: held-out values; forecast: all
        observed, cut to each window's horizon)."""
        values = self.panel().values
        observed = np.isfinite(values)
        if self.protocol == "imputation":
            return holdout_mask(observed, self.missing_ratio, self.seed)
        return observed

    def build(self) -> dict[str, WindowDataset]:
        panel = self.panel()
        self.windows = self.split_windows()
        if self.protocol == "forecast":
            self.windows = {s: _horizon_only(w, self.prediction_length) for s, w in self.windows.items()}
        loc, scale = self.fit_scaling()
        self.loc, self.scale = loc.astype(np.float32), scale.astype(np.float32)
        target, tf = self.target(), panel_time_features(panel)
        return {split: self._dataset(split, target, tf) for split in SPLITS}

    def _dataset(self, split: str, target: np.ndarray, tf: np.ndarray | None) -> WindowDataset:
        panel, w = self.panel(), self.windows[split]
        fields = make_window_fields(panel.values, target, w, self.window_length, self.loc, self.scale, tf)
        steps = w.end[:, None] - self.window_length + np.arange(self.window_length)[None, :]
        if panel.point_label is not None:
            fields["point_label"] = panel.point_label[w.item[:, None], steps]
        if panel.label is not None:
            fields["label"] = panel.label[w.item]
        return WindowDataset(fields, source=f"FrameDataModule({panel.source}) {split} split")

    # -- units --------------------------------------------------------------------------------------
    def denormalise(self, x: np.ndarray) -> np.ndarray:
        """Normalised values (..., K) -> original units: ``x * scale + loc`` with the train statistics."""
        self._ensure()
        return np.asarray(x) * self.scale + self.loc

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Original units (..., K) -> normalised: ``(x - loc) / scale`` with the train statistics."""
        self._ensure()
        return (np.asarray(x) - self.loc) / self.scale

    def record_info(self) -> dict[str, Any]:
        """What a result record says about the data (see :mod:`tsdiffusion.records`)."""
        panel = self.panel()
        self._ensure()
        return {
            "source": panel.source, "shape_NTK": list(panel.values.shape), "freq": panel.freq,
            "series": list(panel.series)[:50], "window_length": self.window_length, "stride": self.stride,
            "split": self.split, "protocol": self.protocol,
            "windows": {s: len(w.item) for s, w in self.windows.items()},
        }  # fmt: skip


def _horizon_only(windows: Windows, horizon: int) -> Windows:
    """Score only the last ``horizon`` steps of every window (the forecast protocol)."""
    return Windows(windows.item, windows.end, np.maximum(windows.scored_from, windows.end - horizon))


def _check_options(layout: str, split: str, protocol: str, scaling: str) -> None:
    options = (
        ("layout", layout, ("auto", "wide", "long")),
        ("split", split, ("time", "series")),
        ("protocol", protocol, ("imputation", "forecast")),
        ("scaling", scaling, ("standard", "none")),
    )
    for arg, value, allowed in options:
        if value not in allowed:
            raise ValueError(f"{arg} must be one of {allowed}, got {value!r}")


def _check_sizes(
    window_length: int, stride: int | None, val_fraction: float, test_fraction: float, missing_ratio: float,
    prediction_length: int, protocol: str,
) -> None:  # fmt: skip
    if window_length < 1 or (stride is not None and stride < 1):
        raise ValueError(f"window_length and stride must be >= 1, got {window_length} and {stride}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(
            f"val_fraction and test_fraction must be >= 0 and sum to < 1, got {val_fraction}, {test_fraction}"
        )
    if not 0 < missing_ratio < 1:
        raise ValueError(f"missing_ratio must be in (0, 1), got {missing_ratio}")
    if protocol == "forecast" and not 1 <= prediction_length < window_length:
        raise ValueError(f"prediction_length must be in [1, window_length={window_length}), got {prediction_length}")

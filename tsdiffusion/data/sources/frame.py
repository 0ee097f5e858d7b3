"""Reading your own data (CSV / Parquet / ``.npy`` files, DataFrames, arrays) into a :class:`Panel`.

Layouts
    * **wide**: one row per time step, one column per series; the time stamps are a ``timestamp`` column, a
      ``DatetimeIndex``, or (neither) the row order;
    * **long**: one row per observation with columns ``item_id``, ``timestamp``, ``value`` (names
      configurable); the items are the K series;
    * arrays: ``(T, K)`` one multivariate series, or ``(N, L, K)`` N aligned multivariate items.

Every source becomes a panel ``(N, T, K)`` on a regular time grid: the frequency is given or inferred
(``pandas.infer_freq``), and time stamps missing from the grid become missing values, never dropped rows.
Errors name the file, column and row at fault (:class:`FrameDataError`).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from einops import rearrange
from pandas.tseries.frequencies import to_offset

from tsdiffusion.data.sources.panel import VALUE_LIMIT, Panel, too_large, utf8_text
from tsdiffusion.data.time_features import freq_str, parse_freq
from tsdiffusion.errors import DataError, DataFileNotFoundError

Layout = Literal["auto", "wide", "long"]

TABLE_SUFFIXES = (".csv", ".tsv", ".txt", ".parquet", ".pq")


class FrameDataError(DataError):
    """User data that cannot be used as given; the message names the file, column and row at fault."""


# -- reading ----------------------------------------------------------------------------------------


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV (``.csv``, ``.tsv``, ``.txt``, each optionally gzipped: ``.csv.gz``) or Parquet (``.parquet``,
    ``.pq``) file as a DataFrame. A file that cannot be read as such (empty, binary, not UTF-8, compressed
    other than its name says, ragged rows, another separator, two columns of one name) is a
    :class:`FrameDataError` naming the file and, where known, the line."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataFileNotFoundError(f"{path}: file not found")
    suffixes = [x.lower() for x in path.suffixes]
    suffix = suffixes[-2] if len(suffixes) > 1 and suffixes[-1] == ".gz" else path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        try:
            return pd.read_parquet(path)
        except ImportError as err:
            raise FrameDataError(f"{path}: reading Parquet needs pyarrow or fastparquet ({err})") from None
        except Exception as err:  # the engines raise their own types (pyarrow.ArrowInvalid, OSError, ...)
            raise FrameDataError(f"{path}: not a readable Parquet file ({_one_line(err)})") from err
    if suffix in (".csv", ".tsv", ".txt"):
        return parse_csv(read_text(path), str(path), sep="\t" if suffix == ".tsv" else ",")
    raise FrameDataError(f"{path}: unsupported file type {suffix!r}; expected one of {(*TABLE_SUFFIXES, '.npy')}")


#: how files that are not plain text start, and what they are
_MAGIC = {b"\x1f\x8b": "gzip", b"PK\x03\x04": "zip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"(\xb5/\xfd": "zstd",
          b"PAR1": "Parquet"}  # fmt: skip


def _file_kind(head: bytes) -> str | None:
    return next((kind for magic, kind in _MAGIC.items() if head.startswith(magic)), None)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def read_text(path: Path) -> str:
    """The text of a (``.gz``: gzipped) text file; its compression must match its name (see :func:`decode_text`
    for the text itself)."""
    raw = path.read_bytes()
    kind = _file_kind(raw[:8])
    if path.name.lower().endswith(".gz"):
        if kind != "gzip":
            what = f"a {kind} file" if kind else f"not gzip-compressed (it starts with {raw[:12]!r})"
            raise FrameDataError(f"{path}: named .gz but {what}; give it the suffix of what it holds")
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise FrameDataError(f"{path}: a damaged or truncated gzip file ({_one_line(err)})") from None
    elif kind is not None:
        fix = {"gzip": f"name it {path.name}.gz", "Parquet": f"name it {path.stem}.parquet"}.get(kind, "unpack it")
        raise FrameDataError(f"{path}: a {kind} file, not {path.suffix} text; {fix}")
    return decode_text(raw, str(path))


def decode_text(raw: bytes, source: str) -> str:
    """UTF-8 text (a byte-order mark is dropped); an empty, binary, UTF-16 or otherwise non-UTF-8 file is an
    error naming ``source`` and the line of the first bad byte."""
    if not raw.strip():
        raise FrameDataError(f"{source}: empty file (expected a header line)")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise FrameDataError(f"{source}: UTF-16 text; save it as UTF-8")
    nul = raw.find(b"\x00")
    if nul >= 0:
        line = raw.count(b"\n", 0, nul) + 1
        raise FrameDataError(f"{source}, line {line}: a NUL byte: a binary file, not text")
    return utf8_text(raw, source, FrameDataError, "save it as UTF-8, e.g. iconv -f latin1 -t utf-8")


_SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}


def parse_csv(text: str, source: str, sep: str = ",") -> pd.DataFrame:
    """``sep``-separated text with a header line as a DataFrame, refusing what pandas would silently change:
    two columns of one name (pandas renames the second ``a.1``), a header that reads as one column but holds
    another separator, rows with an extra field (pandas would make the first column the index)."""
    lines = text.splitlines()
    header_line = next(i for i, line in enumerate(lines) if line.strip())
    names = next(csv.reader([lines[header_line]], delimiter=sep))
    first: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in first:
            raise FrameDataError(
                f"{source}, line {header_line + 1}: columns {first[name] + 1} and {i + 1} are both named {name!r} "
                f"(pandas would rename the second to '{name}.1'); give every column its own name"
            )
        first[name] = i
    try:
        df = pd.read_csv(io.StringIO(text), sep=sep)
    except pd.errors.EmptyDataError:
        raise FrameDataError(f"{source}: empty file (expected a header line)") from None
    except pd.errors.ParserError as err:
        m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if m:
            raise FrameDataError(
                f"{source}, line {m[2]}: {m[3]} fields but the header has {m[1]} (a ragged row, or a "
                f"{_SEPARATORS.get(sep, repr(sep))} inside an unquoted value)"
            ) from None
        raise FrameDataError(f"{source}: cannot be read as {_SEPARATORS.get(sep, repr(sep))}-separated text "
                             f"({_one_line(err)})") from None  # fmt: skip
    if not isinstance(df.index, pd.RangeIndex):
        raise FrameDataError(
            f"{source}, line {header_line + 2}: {len(names) + 1} fields but the header has {len(names)} "
            "(every row has an extra field; pandas would silently use the first column as the index)"
        )
    others = [s for s in _SEPARATORS if s != sep and s in names[0]] if len(df.columns) == 1 else []
    if others:
        read_as = "tab" if sep == "\t" else "comma"
        raise FrameDataError(
            f"{source}, line {header_line + 1}: the header {names[0][:60]!r} reads as one column: the file seems "
            f"{_SEPARATORS[others[0]]}-separated, but this file type is read {read_as}-separated (.csv: comma, "
            ".tsv: tab); convert it"
        )
    if df.empty:
        raise FrameDataError(f"{source}: a header line but no data rows")
    return df


def _where(source: str, row: int) -> str:
    """Names a data row: a line of a CSV file (header on line 1), else the 0-based row position."""
    if source.lower().removesuffix(".gz").endswith((".csv", ".tsv", ".txt")):
        return f"{source}, line {row + 2}"
    return f"{source}, row {row}"


def _require_columns(df: pd.DataFrame, names: dict[str, str | None], source: str) -> None:
    for arg, name in names.items():
        if name is not None and name not in df.columns:
            have = [str(c) for c in df.columns]
            raise FrameDataError(f"{source}: unknown column {name!r} (from {arg}); the columns are {have}")


def _numeric(column: pd.Series, name: str, source: str) -> np.ndarray:
    """A column as float64 (NaN where empty); a non-numeric or infinite entry, or one beyond
    :data:`VALUE_LIMIT`, is an error naming its row."""
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64)
    bad = (~np.isfinite(values) & column.notna().to_numpy()).nonzero()[0]
    if len(bad):
        row = int(bad[0])
        raise FrameDataError(
            f"{_where(source, row)}: column {name!r}: non-numeric or infinite value {column.iloc[row]!r} "
            f"({len(bad)} such values in the column)"
        )
    huge = np.flatnonzero(np.abs(np.nan_to_num(values)) > VALUE_LIMIT)
    if len(huge):
        row = int(huge[0])
        raise FrameDataError(f"{_where(source, row)}: column {name!r}: {too_large(values[row], len(huge))}")
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
    huge = np.argwhere(np.abs(np.nan_to_num(arr)) > VALUE_LIMIT)
    if len(huge):
        at = tuple(int(i) for i in huge[0])
        raise FrameDataError(f"{source}: index {at}: {too_large(arr[at], len(huge))}")
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


def read_file_panel(path: str | Path, spec: FrameSpec) -> Panel:
    """A ``.npy`` array or a CSV / Parquet table as a :class:`Panel`."""
    if str(path).lower().endswith(".npy"):
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataFileNotFoundError(f"{file}: file not found")
        try:
            values = np.load(file, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise FrameDataError(f"{file}: not a readable .npy array ({_one_line(err)})") from None
        return array_to_panel(values, freq=spec.freq, source=str(file))
    return frame_to_panel(read_table(path), spec, str(path))


def with_item_labels(panel: Panel, label_path: str | Path, item_column: str) -> Panel:
    """``label`` (N,) from a table with columns ``item_column`` and ``label``; every item needs a row."""
    table = read_table(label_path)
    _require_columns(table, {"item_column": item_column, "label_path's label column": "label"}, str(label_path))
    mapping = dict(zip(table[item_column].astype(str), _numeric(table["label"], "label", str(label_path))))
    missing = [item for item in panel.items if item not in mapping]
    if missing:
        raise FrameDataError(
            f"{label_path}: no label for items {missing[:5]} (items: {list(panel.items)[:10]}; "
            "a single multivariate frame has one item '0': use univariate=True or an (N, L, K) array)"
        )
    return panel.replace(label=np.array([mapping[item] for item in panel.items], dtype=np.int64))

"""Reading labelled anomaly-detection benchmarks: NASA SMAP / MSL telemetry (Hundman et al., KDD 2018) and NAB
(Lavin & Ahmad, ICMLA 2015).

Every data set is a list of :class:`AnomalySeries` (one entity: a SMAP/MSL channel, a NAB file), each with a
train part (no labels, mostly normal), a test part and a 0/1 label per test step. Containers (a folder, a
``.tar(.gz)`` or a ``.zip``) are read without extracting them.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from tsdiffusion.data.download import DataSourceError
from tsdiffusion.data.sources.archive import iter_members
from tsdiffusion.data.sources.frame import _numeric, _timestamps, decode_text, parse_csv
from tsdiffusion.data.sources.panel import VALUE_LIMIT, Panel, too_large
from tsdiffusion.errors import DataError

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

    def panel(self, part: Literal["train", "test"]) -> Panel:
        """The train or test part as a one-item :class:`Panel` (1, T, K); the test part with ``point_label``."""
        values = self.train if part == "train" else self.test
        label = None if part == "train" else self.labels[None]
        return Panel.of(values[None], self.name, items=[self.name]).replace(point_label=label)


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


def _text(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataSourceError(f"{where}: not UTF-8 text ({err}); a binary file, or another encoding") from None


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
    rows = [r for r in parse_smap_msl_labels(_text(found[0][1], found[0][0]), found[0][0]) if r[1] == spacecraft]
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
            try:
                out[(m[2], m[3])] = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError, EOFError) as err:
                raise DataSourceError(f"{path}:{name}: not a readable .npy array ({err})") from None
    return out


def _smap_series(chan: str, arrays: dict, row: tuple, where: str | Path) -> AnomalySeries:
    _, _, seqs, n = row
    if ("train", chan) not in arrays or ("test", chan) not in arrays:
        raise DataSourceError(f"{where}: missing train/{chan}.npy or test/{chan}.npy")
    train, test = arrays[("train", chan)], arrays[("test", chan)]
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise DataSourceError(f"{where}: {chan}: expected (T, D) arrays, got {train.shape} and {test.shape}")
    for part, values in (("train", train), ("test", test)):
        huge = np.argwhere(~(np.abs(np.nan_to_num(values.astype(np.float64), nan=0.0)) <= VALUE_LIMIT))
        if len(huge):
            t, d = (int(i) for i in huge[0])
            raise DataError(f"{where}: {part}/{chan}.npy, step {t}, column {d}: {too_large(values[t, d], len(huge))}")
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
    """A NAB csv (``timestamp,value``); what the CSV reader of own data refuses is refused here too (empty,
    binary, ragged, duplicate columns), and so are unparseable time stamps and non-numeric or huge values."""
    frame = parse_csv(decode_text(data, where), where)
    if list(frame.columns) != ["timestamp", "value"]:
        raise DataSourceError(f"{where}: expected the header 'timestamp,value', got {list(frame.columns)}")
    stamps = _timestamps(frame["timestamp"], "timestamp", where)
    return pd.DataFrame({"timestamp": stamps, "value": _numeric(frame["value"], "value", where)})


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

"""Reading GluonTS multivariate benchmarks (electricity, traffic, exchange rate, solar).

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

The windows cut from them are :class:`tsdiffusion.data.GluonTSDataModule`'s.
"""

from __future__ import annotations

import gzip
import json
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import IO, Literal, NamedTuple

import numpy as np
import pandas as pd

from tsdiffusion.data.download import DataSourceError, fetch, resolve, verify
from tsdiffusion.data.sources.archive import archive_problem
from tsdiffusion.data.sources.panel import VALUE_LIMIT, Panel, too_large
from tsdiffusion.data.time_features import FrequencyError, freq_str, parse_freq
from tsdiffusion.errors import DataError


class GluonTSFormatError(DataError):
    """A GluonTS data set that does not follow the layout: names the file, line and field."""


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
            reason = archive_problem(path, err)
            raise DataSourceError(f"{path}: not a folder or a readable tar archive ({reason})") from err
        self._members = {_clean(m.name): m for m in self.tar.getmembers() if m.isfile()}
        self.files = sorted(self._members)

    def where(self, name: str) -> str:
        return f"{self.path}:{name}" if self.tar else str(self.path / name)

    @contextmanager
    def open(self, name: str) -> Iterator[IO[bytes]]:
        """The member's bytes, gunzipped when its name ends in ``.gz``."""
        raw = self.tar.extractfile(self._members[name]) if self.tar else open(self.path / name, "rb")
        with raw:
            yield gzip.open(raw) if name.endswith(".gz") else raw

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
        for lineno, line in enumerate(_read_text(tree, name).split("\n"), start=1):
            if line.strip():
                out.append(_parse_line(line, f"{tree.where(name)}, line {lineno}"))
    return out


def _read_text(tree: _Tree, name: str) -> str:
    """A member's UTF-8 text (gunzipped for ``.gz``); what is not, is an error naming the member and line."""
    where = tree.where(name)
    try:
        with tree.open(name) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error, tarfile.TarError) as err:
        what = "not gzip-compressed, or damaged" if name.endswith(".gz") else "unreadable"
        raise GluonTSFormatError(f"{where}: {what} ({' '.join(str(err).split())})") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise GluonTSFormatError(
            f"{where}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); a binary file, or another encoding"
        ) from None


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
        target = np.asarray(entry["target"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise GluonTSFormatError(f"{where}: field 'target': expected a list of numbers ({err})") from None
    huge: np.ndarray | list = (
        np.flatnonzero(np.abs(np.nan_to_num(target, nan=0.0)) > VALUE_LIMIT) if target.ndim == 1 else []
    )
    if len(huge):
        step = int(huge[0])
        raise GluonTSFormatError(f"{where}: field 'target', step {step}: {too_large(target[step], len(huge))}")
    target = target.astype(np.float32)
    if target.ndim != 1:
        raise GluonTSFormatError(
            f"{where}: field 'target': expected one series per line (a flat list), got shape {target.shape}"
        )
    if not isinstance(entry["start"], str):
        raise GluonTSFormatError(f"{where}: field 'start': expected a timestamp string, got {entry['start']!r}")
    return _Series(entry["start"], target, where)


def _read_metadata(tree: _Tree, layout: _Layout) -> tuple[str, int | None]:
    """``(freq, prediction_length or None)`` from either layout's metadata file."""
    where = tree.where(layout.metadata)
    try:
        meta = json.loads(_read_text(tree, layout.metadata))
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
        raise GluonTSFormatError(f"{series.where}: field 'start': cannot parse {series.start!r} ({err})") from None


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

    def panel(self, window: int | None = None) -> Panel:
        """The train part (``window=None``) or one test window as a one-item :class:`Panel` (1, T, K)."""
        values = self.train if window is None else self.test[window]
        series = tuple(str(k) for k in range(self.num_series))
        return Panel(values[None], self.index(len(values)), self.freq, series, ("0",), None, None, self.source)

    def index(self, length: int | None = None) -> pd.DatetimeIndex:
        """Timestamps of the first ``length`` steps (default: the longest test window)."""
        length = max(len(a) for a in self.test) if length is None else length
        return pd.date_range(self.start, periods=length, freq=parse_freq(self.freq))


def read_gluonts(path: str | Path, *, name: str | None = None, prediction_length: int | None = None) -> GluonTSData:
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


def _group(train: list[_Series], test: list[_Series], where: str) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
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
    return read_gluonts(source_path(name, path, cache_dir=cache_dir), name=name, prediction_length=prediction_length)


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


def to_dataframe(data: GluonTSData, split: Literal["train", "test"] = "train", window: int = -1) -> pd.DataFrame:
    """The train part, or one test window, as a wide (T, K) DataFrame indexed by timestamp."""
    values = data.train if split == "train" else data.test[window]
    return pd.DataFrame(values, index=data.index(len(values)), columns=pd.RangeIndex(data.num_series, name="series"))

"""Reading UCR / UEA time-series classification archives in the ``.ts`` format (sktime / UEA), e.g. GunPoint.

The format (Bagnall et al., "The UEA multivariate time series classification archive, 2018",
arXiv:1811.00075; sktime's ``load_from_tsfile``): ``#`` comment lines, ``@`` header tags
(``@problemName``, ``@univariate``, ``@equalLength``, ``@seriesLength``, ``@missing``, ``@timeStamps``,
``@classLabel true <labels...>``), then ``@data``; each data line holds one series: the values of each
dimension comma-separated, dimensions separated by ``:``, the class label last; ``?`` or ``NaN`` marks a
missing value. Series of unequal length are right-padded as missing (``observed_mask`` 0).

Canonical source: the UEA & UCR Time Series Classification Repository,
``https://www.timeseriesclassification.com/aeon-toolkit/<Name>.zip`` (GunPoint: Dau et al., "The UCR Time
Series Archive", 2019). The project's copy is ``../shared/data/ucr_uea/GunPoint.tar.gz`` (see its SOURCE.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from tsdiffusion.data.download import DataSourceError
from tsdiffusion.data.sources.archive import iter_members
from tsdiffusion.data.sources.panel import VALUE_LIMIT, Panel, too_large, utf8_text
from tsdiffusion.errors import DataError

URL_TEMPLATE = "https://www.timeseriesclassification.com/aeon-toolkit/{name}.zip"


class TSFormatError(DataError):
    """A ``.ts`` file breaks the format; the message names the file, line and what was expected."""


@dataclass(frozen=True)
class TSFile:
    """A parsed ``.ts`` file. ``values`` (N, L, K) float64 with NaN where missing; ``labels`` (N,) strings."""

    name: str
    values: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]

    def panel(self, classes: tuple[str, ...] | None = None) -> Panel:
        """The series as a :class:`Panel` (N, L, K) with ``label`` the index of each class in ``classes``
        (default: :attr:`class_names`)."""
        lookup = {c: i for i, c in enumerate(classes or self.class_names)}
        label = np.array([lookup[c] for c in self.labels], dtype=np.int64)
        return Panel.of(self.values, self.name, label=label)


def _header(line: str, tags: dict[str, str], where: str) -> None:
    key, _, rest = line[1:].partition(" ")
    key = key.lower()
    if key == "timestamps" and rest.strip().lower() == "true":
        raise TSFormatError(f"{where}: @timeStamps true is not supported (expected plain values)")
    tags[key] = rest.strip()


def _parse_values(text: str, where: str) -> np.ndarray:
    try:
        values = np.array([np.nan if v.strip() in ("?", "NaN", "nan", "") else float(v) for v in text.split(",")])
    except ValueError as err:
        raise TSFormatError(f"{where}: expected comma-separated numbers, got {text[:60]!r} ({err})") from None
    bad = np.flatnonzero(~(np.abs(np.nan_to_num(values, nan=0.0)) <= VALUE_LIMIT))
    if len(bad):
        raise TSFormatError(f"{where}: value {int(bad[0]) + 1} of the series: {too_large(values[bad[0]])}")
    return values


def _parse_data_line(line: str, has_labels: bool, where: str) -> tuple[list[np.ndarray], str | None]:
    parts = line.split(":")
    if has_labels:
        if len(parts) < 2:
            raise TSFormatError(f"{where}: expected '<values>:<class label>', got no ':' separator")
        *dims, label = parts
        return [_parse_values(d, where) for d in dims], label.strip()
    return [_parse_values(d, where) for d in parts], None


def parse_ts(text: str, source: str = "<string>") -> TSFile:
    """Parse the contents of a ``.ts`` file. Raises :class:`TSFormatError` naming ``source`` and the line."""
    tags: dict[str, str] = {}
    rows: list[list[np.ndarray]] = []
    labels: list[str | None] = []
    in_data = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line, where = raw.strip(), f"{source}, line {lineno}"
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise TSFormatError(
                    f"{where}: expected a '@' header tag or '#' comment before @data, got {line[:40]!r}"
                )
            in_data = line.lower() == "@data"
            if not in_data:
                _header(line, tags, where)
            continue
        dims, label = _parse_data_line(line, _has_labels(tags), where)
        if rows and len(dims) != len(rows[0]):
            raise TSFormatError(f"{where}: expected {len(rows[0])} dimensions (as the first series), got {len(dims)}")
        rows.append(dims)
        labels.append(label)
    if not in_data:
        raise TSFormatError(f"{source}: {'empty file' if not text.strip() else 'no @data line'}")
    if not rows:
        raise TSFormatError(f"{source}: no series after @data")
    return _assemble(tags, rows, labels, source)


def _has_labels(tags: dict[str, str]) -> bool:
    return tags.get("classlabel", "false").split()[0].lower() == "true" if tags.get("classlabel") else False


def _assemble(tags: dict[str, str], rows: list[list[np.ndarray]], labels: list, source: str) -> TSFile:
    L = max(len(d) for dims in rows for d in dims)
    values = np.full((len(rows), L, len(rows[0])), np.nan)
    for i, dims in enumerate(rows):
        for k, d in enumerate(dims):
            values[i, : len(d), k] = d
    declared = tuple(tags["classlabel"].split()[1:]) if _has_labels(tags) else ()
    label_arr = np.array(labels if _has_labels(tags) else [""] * len(rows), dtype=object)
    unknown = sorted(set(label_arr) - set(declared)) if declared else []
    if unknown:
        raise TSFormatError(f"{source}: class labels {unknown[:5]} are not declared in @classLabel {list(declared)}")
    classes = declared or tuple(sorted(set(label_arr)))
    return TSFile(tags.get("problemname", Path(source).stem), values, label_arr.astype(str), classes)


def read_ts(path: str | Path) -> TSFile:
    """Read one ``.ts`` file from disk."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such .ts file")
    return parse_ts(_decode(path.read_bytes(), str(path)), str(path))


def read_ucr_split(source: str | Path, name: str, split: Literal["TRAIN", "TEST"]) -> TSFile:
    """``<name>_<split>.ts`` from a folder, a ``.tar(.gz)`` or a ``.zip`` (found at any depth)."""
    source = Path(source)
    target = f"{name}_{split}.ts"
    if source.is_dir():
        hits = sorted(source.rglob(target))
        if not hits:
            raise DataSourceError(f"{source}: no {target} in this folder or below")
        return read_ts(hits[0])
    text = _read_member(source, target)
    return parse_ts(text, f"{source}:{target}")


def _read_member(archive: Path, target: str) -> str:
    """The text of the first member of ``archive`` (a tar or zip) named ``target``, in any folder."""
    for _, data in iter_members(archive, re.compile(rf"(^|/){re.escape(target)}$")):
        return _decode(data, f"{archive}:{target}")
    raise DataSourceError(f"{archive}: no member named {target}")


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text of a ``.ts`` file; a binary or non-UTF-8 file is a :class:`TSFormatError` naming the line."""
    return utf8_text(data, source, TSFormatError)

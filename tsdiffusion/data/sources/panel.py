"""The one in-memory type every reader of :mod:`tsdiffusion.data.sources` can return: a :class:`Panel`."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from tsdiffusion.data.time_features import FrequencyError, time_features

#: the largest magnitude a value may have: float32's range (batches are float32; beyond it a value, its scaling
#: statistics or their squares overflow to inf)
VALUE_LIMIT = float(np.finfo(np.float32).max)


def too_large(value: float, count: int = 1) -> str:
    """What is wrong with a value beyond :data:`VALUE_LIMIT`, for a message after the file, line and column."""
    more = f" ({count} such values)" if count > 1 else ""
    return (f"value {value:.6g} is beyond the float32 range (|x| <= {VALUE_LIMIT:.4g}) that batches use, so its "
            f"scaling would overflow{more}; rescale the data (e.g. divide by a power of 10)")  # fmt: skip


@dataclass(frozen=True)
class Panel:
    """N aligned multivariate items on one time grid, before windows, splits and normalisation.

    values:      (N, T, K) float, NaN where missing (a shorter item is padded with NaN)
    index:       (T,) the grid: a ``DatetimeIndex`` or integer steps
    freq:        pandas frequency string of the grid (None for integer steps)
    series:      K series names; items: N item names
    point_label: (N, T) 0/1 per step or None; label: (N,) int class per item or None
    source:      where the data came from, for messages
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

    @property
    def observed(self) -> np.ndarray:
        """(N, T, K) bool: where the data has a value."""
        return np.isfinite(self.values)

    def replace(self, **changes) -> Panel:
        """A copy with some fields changed."""
        return replace(self, **changes)

    @classmethod
    def of(cls, values: np.ndarray, source: str, items=None, series=None, label=None) -> Panel:
        """An undated panel of ``values`` (N, T, K) with integer steps and default names."""
        N, T, K = values.shape
        items = tuple(str(i) for i in (range(N) if items is None else items))
        series = tuple(str(s) for s in (range(K) if series is None else series))
        return cls(values, pd.Index(np.arange(T, dtype=np.int64)), None, series, items, None, label, source)


def panel_time_features(panel: Panel) -> np.ndarray | None:
    """(T, F) GluonTS calendar features of a dated grid (F = 0 for frequencies without any), else None."""
    if not panel.has_dates or panel.freq is None:
        return None
    try:
        return time_features(panel.index, panel.freq)
    except FrequencyError:
        return np.zeros((len(panel.index), 0), dtype=np.float32)


def utf8_text(raw: bytes, source: str, error: type[Exception], advice: str = "save it as UTF-8") -> str:
    """``raw`` decoded as UTF-8 (a BOM dropped); a binary or non-UTF-8 file raises ``error`` naming the line."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise error(
            f"{source}, line {line}: not UTF-8 text (byte 0x{raw[err.start]:02x}); a binary file, or text in another "
            f"encoding ({advice})"
        ) from None

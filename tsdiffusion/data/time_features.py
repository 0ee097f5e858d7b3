"""Calendar covariates from a frequency string, in GluonTS's convention.

Each feature maps a calendar field to [-0.5, 0.5] (``gluonts.time_feature``): for example
hour of day ``hour / 23 - 0.5`` and day of year ``(dayofyear - 1) / 365 - 0.5``. Which features
a frequency gets follows ``time_features_from_frequency_str`` of GluonTS: hourly data gets
hour of day, day of week, day of month and day of year; business-daily data the last three.

Frequencies are accepted in the legacy spelling of the published data sets (``"H"``, ``"1B"``,
``"5T"``, ``"M"``) as well as in current pandas spelling (``"h"``, ``"5min"``, ``"ME"``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

import numpy as np
import pandas as pd
from pandas.tseries import offsets
from pandas.tseries.frequencies import to_offset

from tsdiffusion.errors import ConfigError


class FrequencyError(ConfigError):
    """A frequency string that pandas cannot parse or that has no calendar features."""


TimeFeature = Callable[[pd.DatetimeIndex], np.ndarray]
TimeFeatureKind = Literal["gluonts", "fourier"]


def second_of_minute(index: pd.DatetimeIndex) -> np.ndarray:
    return index.second.to_numpy() / 59.0 - 0.5


def minute_of_hour(index: pd.DatetimeIndex) -> np.ndarray:
    return index.minute.to_numpy() / 59.0 - 0.5


def hour_of_day(index: pd.DatetimeIndex) -> np.ndarray:
    return index.hour.to_numpy() / 23.0 - 0.5


def day_of_week(index: pd.DatetimeIndex) -> np.ndarray:
    return index.dayofweek.to_numpy() / 6.0 - 0.5


def day_of_month(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.day.to_numpy() - 1) / 30.0 - 0.5


def day_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.dayofyear.to_numpy() - 1) / 365.0 - 0.5


def month_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.month.to_numpy() - 1) / 11.0 - 0.5


def week_of_year(index: pd.DatetimeIndex) -> np.ndarray:
    return (index.isocalendar().week.to_numpy().astype(float) - 1) / 52.0 - 0.5


# Checked in order; the first offset class that matches decides (GluonTS's table, plus seconds).
_FEATURES_BY_OFFSET: tuple[tuple[type, tuple[TimeFeature, ...]], ...] = (
    (offsets.YearBegin, ()),
    (offsets.YearEnd, ()),
    (offsets.QuarterBegin, (month_of_year,)),
    (offsets.QuarterEnd, (month_of_year,)),
    (offsets.MonthBegin, (month_of_year,)),
    (offsets.MonthEnd, (month_of_year,)),
    (offsets.Week, (day_of_month, week_of_year)),
    (offsets.Day, (day_of_week, day_of_month, day_of_year)),
    (offsets.BusinessDay, (day_of_week, day_of_month, day_of_year)),
    (offsets.Hour, (hour_of_day, day_of_week, day_of_month, day_of_year)),
    (offsets.Minute, (minute_of_hour, hour_of_day, day_of_week, day_of_month, day_of_year)),
    (offsets.Second, (second_of_minute, minute_of_hour, hour_of_day, day_of_week, day_of_month, day_of_year)),
)

# Aliases that pandas >= 2.2 renamed or dropped, as written in GluonTS-era metadata files.
_LEGACY_ALIASES = {
    "H": "h", "T": "min", "S": "s", "L": "ms", "U": "us", "N": "ns",
    "M": "ME", "Q": "QE", "Y": "YE", "A": "YE", "AS": "YS", "BM": "BME",
    "BQ": "BQE", "BA": "BYE", "BY": "BYE", "BAS": "BYS", "BH": "bh", "CBH": "cbh",
}  # fmt: skip
_FREQ_RE = re.compile(r"^(?P<n>[+-]?\d*)(?P<base>[A-Za-z]+)(?P<anchor>-[A-Za-z]+)?$")


def parse_freq(freq: str) -> pd.DateOffset:
    """A pandas offset for ``freq``, accepting legacy aliases (``"H"``, ``"1B"``, ``"T"``, ``"M"``).

    Raises :class:`FrequencyError` naming the string when it cannot be parsed.
    """
    if not isinstance(freq, str) or not freq.strip():
        raise FrequencyError(f"frequency must be a non-empty string like 'H', '1B' or '30min', got {freq!r}")
    text = freq.strip()
    try:
        return to_offset(text)
    except ValueError as err:
        first_error = err
    match = _FREQ_RE.match(text)
    if match and match["base"] in _LEGACY_ALIASES:
        translated = match["n"] + _LEGACY_ALIASES[match["base"]] + (match["anchor"] or "")
        try:
            return to_offset(translated)
        except ValueError:
            pass
    raise FrequencyError(f"cannot parse frequency {freq!r} ({first_error})") from None


def freq_str(freq: str | pd.DateOffset) -> str:
    """The canonical pandas spelling of a frequency, e.g. ``"H" -> "h"``, ``"1B" -> "B"``."""
    offset = freq if isinstance(freq, pd.DateOffset) else parse_freq(freq)
    return offset.freqstr


def time_features_for(freq: str | pd.DateOffset) -> tuple[TimeFeature, ...]:
    """The calendar features GluonTS uses for a frequency (possibly none, e.g. yearly)."""
    offset = freq if isinstance(freq, pd.DateOffset) else parse_freq(freq)
    for offset_type, features in _FEATURES_BY_OFFSET:
        if isinstance(offset, offset_type):
            return features
    raise FrequencyError(
        f"no calendar features for frequency {offset.freqstr!r}; supported: yearly, quarterly, monthly, "
        "weekly, daily, business-daily, hourly, minutely, secondly"
    )


def time_features(index: pd.DatetimeIndex, freq: str | pd.DateOffset, kind: TimeFeatureKind = "gluonts") -> np.ndarray:
    """Calendar features of ``index`` for ``freq``: (L, F) float32.

    ``kind="gluonts"``: GluonTS's features in [-0.5, 0.5] (this module's table); ``"fourier"``: pytorch-ts's
    TimeGrad covariates, :func:`fourier_time_features`.
    """
    if kind == "fourier":
        return fourier_time_features(index, freq)
    if kind != "gluonts":
        raise ValueError(f"time feature kind must be 'gluonts' or 'fourier', got {kind!r}")
    features = time_features_for(freq)
    if not features:
        return np.zeros((len(index), 0), dtype=np.float32)
    return np.stack([f(index) for f in features], axis=-1).astype(np.float32)


def num_time_features(freq: str | pd.DateOffset, kind: TimeFeatureKind = "gluonts") -> int:
    """F, the number of calendar features for ``freq`` (``kind``: see :func:`time_features`)."""
    if kind == "fourier":
        return 2 * len(_fourier_fields(freq))
    return len(time_features_for(freq))


# pytorch-ts 0.6 ``pts.feature.fourier_time_features_from_frequency``: the TimeGrad estimator's default covariates.
_FOURIER_FIELDS = (
    (offsets.MonthEnd, ("weekofyear",)),
    (offsets.MonthBegin, ("weekofyear",)),
    (offsets.Week, ("daysinmonth", "weekofyear")),
    (offsets.Day, ("dayofweek",)),
    (offsets.BusinessDay, ("dayofweek", "dayofyear")),
    (offsets.Hour, ("hour", "dayofweek")),
    (offsets.Minute, ("minute", "hour", "dayofweek")),
)


def _fourier_fields(freq: str | pd.DateOffset) -> tuple[str, ...]:
    offset = freq if isinstance(freq, pd.DateOffset) else parse_freq(freq)
    for offset_type, fields in _FOURIER_FIELDS:
        if isinstance(offset, offset_type):
            return fields
    raise FrequencyError(
        f"no Fourier (pytorch-ts) calendar features for frequency {offset.freqstr!r}; supported: monthly, "
        "weekly, daily, business-daily, hourly, minutely"
    )


def fourier_time_features(index: pd.DatetimeIndex, freq: str | pd.DateOffset) -> np.ndarray:
    """pytorch-ts 0.6's TimeGrad covariates (``FourierDateFeatures``): (L, 2 F) float32.

    For each calendar field of ``freq`` (business-daily: day of week and day of year; hourly: hour and day of
    week), ``cos`` and ``sin`` of ``2 pi v / (max(v) + 1)`` where ``v`` is the pandas field (``dayofyear``
    counts from 1) and the maximum is taken over ``index`` itself, as the original does over each series'
    index; columns ``[cos f1, sin f1, cos f2, sin f2, ...]`` (``AddTimeFeatures`` + ``VstackFeatures``).
    """
    columns = []
    for field in _fourier_fields(freq):
        if field == "weekofyear":
            values = index.isocalendar().week.to_numpy().astype(np.float64)
        else:
            values = getattr(index, field).to_numpy().astype(np.float64)
        steps = values * 2.0 * np.pi / (values.max() + 1)
        columns += [np.cos(steps), np.sin(steps)]
    return np.stack(columns, axis=-1).astype(np.float32)

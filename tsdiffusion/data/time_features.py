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

import numpy as np
import pandas as pd
from pandas.tseries import offsets
from pandas.tseries.frequencies import to_offset

from tsdiffusion.errors import ConfigError


class FrequencyError(ConfigError):
    """A frequency string that pandas cannot parse or that has no calendar features."""


TimeFeature = Callable[[pd.DatetimeIndex], np.ndarray]


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


def time_features(index: pd.DatetimeIndex, freq: str | pd.DateOffset) -> np.ndarray:
    """Calendar features of ``index`` for ``freq``: (L, F) float32 in [-0.5, 0.5]."""
    features = time_features_for(freq)
    if not features:
        return np.zeros((len(index), 0), dtype=np.float32)
    return np.stack([f(index) for f in features], axis=-1).astype(np.float32)


def num_time_features(freq: str | pd.DateOffset) -> int:
    """F, the number of calendar features for ``freq``."""
    return len(time_features_for(freq))

"""What ``Model.impute`` and ``Model.forecast`` return: samples in original units, and their median and
quantiles as DataFrames."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class Imputation:
    """Imputed values in original units on the data's regular grid (T rows, K columns).

    median: the per-value median of the samples (observed values are kept as given);
    quantiles: ``{q: DataFrame}``; samples: (S, T, K); observed: True where the input had a value.
    """

    median: pd.DataFrame
    quantiles: dict[float, pd.DataFrame]
    samples: np.ndarray
    observed: pd.DataFrame


@dataclass
class Forecast:
    """Forecasts in original units for the H steps after the data's last time stamp.

    samples: (S, H, K) sample paths; median / mean / quantiles: DataFrames indexed by the H future steps.
    """

    samples: np.ndarray
    median: pd.DataFrame
    mean: pd.DataFrame
    quantiles: dict[float, pd.DataFrame]


def _frames(samples: np.ndarray, index: pd.Index, columns: Sequence[str], quantiles: Sequence[float]):
    """(S, T, K) -> median DataFrame and ``{q: DataFrame}``."""
    qs = sorted({0.5, *quantiles})
    values = np.quantile(samples, qs, axis=0)  # (Q, T, K)
    frames = {q: pd.DataFrame(v, index=index, columns=list(columns)) for q, v in zip(qs, values)}
    return frames[0.5], {q: frames[q] for q in quantiles}

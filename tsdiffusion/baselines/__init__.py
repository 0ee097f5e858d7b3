"""Non-learned baselines with their own interface (:mod:`.base`), evaluated by the tasks in place of a denoiser:
forecasting (seasonal naive, random walk, ETS via statsmodels), imputation (interpolation, LOCF, mean) and
anomaly scoring (rolling median)."""

from tsdiffusion.baselines.anomaly import RollingMedianScorer, rolling_mad_score, rolling_median
from tsdiffusion.baselines.base import Baseline, SamplingBaseline, ScoringBaseline
from tsdiffusion.baselines.classical import ETSForecaster, ets_paths
from tsdiffusion.baselines.forecasting import RandomWalk, SeasonalNaive, bootstrap_forecast, seasonal_residuals
from tsdiffusion.baselines.imputation import (
    InterpolationImputer,
    LOCFImputer,
    MeanImputer,
    SeasonalImputer,
    carry_forward,
    interpolate,
)

__all__ = [
    "Baseline",
    "ETSForecaster",
    "InterpolationImputer",
    "LOCFImputer",
    "MeanImputer",
    "RandomWalk",
    "RollingMedianScorer",
    "SamplingBaseline",
    "ScoringBaseline",
    "SeasonalImputer",
    "SeasonalNaive",
    "bootstrap_forecast",
    "carry_forward",
    "ets_paths",
    "interpolate",
    "rolling_mad_score",
    "rolling_median",
    "seasonal_residuals",
]

"""Metrics by role: probabilistic forecasts and imputations (:mod:`.probabilistic`, torchmetrics with sum
states, built on the chunked sample quantiles of :mod:`.quantiles`, the base classes of :mod:`.base` and the
energy score of :mod:`.energy`), synthetic series (:mod:`.generation`), anomaly scores and thresholds
(:mod:`.anomaly`) and learned representations (:mod:`.representation`).

``from tsdiffusion.metrics import CRPS...`` keeps working: every public name of the former ``metrics.py`` is
re-exported here.
"""

from tsdiffusion.metrics.probabilistic import (
    DEFAULT_CHUNK,
    DEFAULT_METRICS,
    DEFAULT_QUANTILES,
    Coverage,
    EnergyScore,
    Estimator,
    Interpolation,
    MetricName,
    PointError,
    ProbabilisticMetrics,
    QuantileCRPS,
    QuantileCRPSSum,
    SampleCRPS,
    SampleSummary,
    build_metric,
    sample_quantiles,
    summarize,
)

__all__ = [
    "DEFAULT_CHUNK",
    "DEFAULT_METRICS",
    "DEFAULT_QUANTILES",
    "Coverage",
    "EnergyScore",
    "Estimator",
    "Interpolation",
    "MetricName",
    "PointError",
    "ProbabilisticMetrics",
    "QuantileCRPS",
    "QuantileCRPSSum",
    "SampleCRPS",
    "SampleSummary",
    "build_metric",
    "sample_quantiles",
    "summarize",
]

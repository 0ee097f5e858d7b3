"""Figures on :class:`matplotlib.figure.Figure` with their own Agg canvas (no pyplot state, no global backend
switch), and the Lightning callbacks that draw a task's test results and send them to the logger."""

from tsdiffusion.plots.anomaly import label_segments, plot_anomaly_scores
from tsdiffusion.plots.calibration import NOMINAL_LEVELS, calibration_plot, central_coverage, pit_values
from tsdiffusion.plots.callbacks import (
    AnomalyPlotCallback,
    CalibrationCallback,
    FanChartCallback,
    GenerationPlotCallback,
    ImputationPlotCallback,
)
from tsdiffusion.plots.generation import plot_generation
from tsdiffusion.plots.samples import (
    fan_chart,
    first_window,
    imputation_plot,
    imputation_windows,
    log_figure,
    new_figure,
    save_figure,
)

__all__ = [
    "NOMINAL_LEVELS",
    "AnomalyPlotCallback",
    "CalibrationCallback",
    "FanChartCallback",
    "GenerationPlotCallback",
    "ImputationPlotCallback",
    "calibration_plot",
    "central_coverage",
    "fan_chart",
    "first_window",
    "imputation_plot",
    "imputation_windows",
    "label_segments",
    "log_figure",
    "new_figure",
    "pit_values",
    "plot_anomaly_scores",
    "plot_generation",
    "save_figure",
]

"""Tasks: thin LightningModules composing a denoiser, a diffusion process, a mask strategy and metrics."""

from tsdiffusion.tasks.anomaly import AnomalyTask
from tsdiffusion.tasks.base import DiffusionTask, make_cond
from tsdiffusion.tasks.forecasting import ForecastingTask, TimeGradTask
from tsdiffusion.tasks.generation import GenerationTask
from tsdiffusion.tasks.imputation import ImputationTask
from tsdiffusion.tasks.representation import RepresentationTask

__all__ = [
    "AnomalyTask",
    "DiffusionTask",
    "ForecastingTask",
    "GenerationTask",
    "ImputationTask",
    "RepresentationTask",
    "TimeGradTask",
    "make_cond",
]

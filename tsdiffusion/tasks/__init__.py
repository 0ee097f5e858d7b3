"""Tasks: thin LightningModules composing a denoiser, a diffusion process, a mask strategy and metrics."""

from tsdiffusion.tasks.base import DiffusionTask, make_cond
from tsdiffusion.tasks.imputation import ImputationTask

__all__ = ["DiffusionTask", "ImputationTask", "make_cond"]

"""Diffusion core: schedules, the Gaussian forward process, samplers."""

from tsdiffusion.diffusion.process import GaussianDiffusion
from tsdiffusion.diffusion.samplers import draw_samples, sample, sample_ddim, sample_ddpm, sample_dpmpp, timesteps
from tsdiffusion.diffusion.schedules import make_betas

__all__ = [
    "GaussianDiffusion",
    "draw_samples",
    "make_betas",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp",
    "timesteps",
]

"""Diffusion core: schedules, the Gaussian forward process, samplers, conditioning from outside the network."""

from tsdiffusion.diffusion.conditioning import Unconditional, conditioned
from tsdiffusion.diffusion.guidance import draw_guided_samples, guided, refine
from tsdiffusion.diffusion.process import GaussianDiffusion
from tsdiffusion.diffusion.samplers import draw_samples, sample, sample_ddim, sample_ddpm, sample_dpmpp, timesteps
from tsdiffusion.diffusion.schedules import make_betas

__all__ = [
    "GaussianDiffusion",
    "Unconditional",
    "conditioned",
    "draw_guided_samples",
    "draw_samples",
    "guided",
    "make_betas",
    "refine",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_dpmpp",
    "timesteps",
]

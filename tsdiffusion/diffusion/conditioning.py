"""Conditioning from outside the network: a denoiser that ignores ``cond``'s values, made to impute.

A task asks :func:`conditioned` for the function a sampler calls; a denoiser whose declared
capabilities say ``conditional=False`` comes back wrapped in :class:`Unconditional`.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import Tensor

from tsdiffusion.batch import Cond
from tsdiffusion.denoisers.protocol import Capabilities, Denoiser, capabilities_of
from tsdiffusion.diffusion.process import GaussianDiffusion


class Unconditional:
    """A denoiser that models ``x_t`` alone, conditioned by replacement (CSDI's unconditional ablation).

    At every call the conditioning values are noised to the step of the call, ``y_t = q_sample(observed, t, z)``
    (Ho et al. 2020, eq. 4), and replace ``x_t`` where they are known:
    ``denoiser(cond_mask * y_t + (1 - cond_mask) * x_t, t, cond)``. x_t: (B, L, K); t: (B,);
    ``cond["observed"]``, ``cond["cond_mask"]``: (B, L, K). Where ``cond_mask`` is 0 everywhere this is the
    denoiser itself (the draw ``z`` is still made).

    Args:
        process: the forward process that noises the conditioning values.
        denoiser: the wrapped network (declares its :class:`Capabilities`).
        generator: source of ``z``; None draws from torch's global generator (what the tasks do, so their
            samples stay as recorded).
    """

    def __init__(self, process: GaussianDiffusion, denoiser: Denoiser, generator: torch.Generator | None = None):
        self.process, self.denoiser, self.generator = process, denoiser, generator
        self.capabilities: Capabilities = replace(capabilities_of(denoiser), conditional=True)

    def __call__(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        noise = torch.randn(x_t.shape, dtype=x_t.dtype, device=x_t.device, generator=self.generator)
        noisy_obs = self.process.q_sample(cond["observed"], t, noise)
        mask = cond["cond_mask"]
        return self.denoiser(mask * noisy_obs + (1 - mask) * x_t, t, cond)


def conditioned(process: GaussianDiffusion, denoiser: Denoiser) -> Denoiser:
    """``denoiser`` itself if it declares ``conditional``, else ``Unconditional(process, denoiser)``."""
    return denoiser if capabilities_of(denoiser).conditional else Unconditional(process, denoiser)

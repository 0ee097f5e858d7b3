"""The Gaussian forward process: the only code that knows the alphas.

Notation (Ho et al. 2020): ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s`` for the 0-based step
index ``t`` in ``[0, N)``. A "previous" step ``s < t`` may be any earlier step (strided sampling);
``s = -1`` denotes the clean data, with ``abar_{-1} = 1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

from tsdiffusion.diffusion.schedules import Schedule, make_betas
from tsdiffusion.errors import ConfigError
from tsdiffusion.streams import Source, randint, randn

Prediction = Literal["eps", "x0", "v"]
DenoiseFn = Callable[[Tensor, Tensor], Tensor]


class GaussianDiffusion(nn.Module):
    """Forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I), its posteriors and reverse steps.

    Args:
        num_steps: N, the number of diffusion steps used in training.
        schedule: beta schedule (see :func:`make_betas`).
        beta_start, beta_end: schedule end points (CSDI: quad 1e-4..0.5, N=50; TimeGrad: linear 1e-4..0.1, N=100).
        prediction: what the denoiser outputs: the noise ``eps``, the clean data ``x0``, or ``v``
            (Salimans & Ho 2022: ``v = sqrt(abar) eps - sqrt(1 - abar) x0``).

    Buffers are float64 and non-persistent (recomputed from the arguments, never stale in a checkpoint);
    coefficients are cast to the dtype of the tensor they multiply.
    """

    def __init__(
        self,
        num_steps: int = 50,
        schedule: Schedule = "quad",
        beta_start: float = 1e-4,
        beta_end: float = 0.5,
        prediction: Prediction = "eps",
    ):
        super().__init__()
        if prediction not in ("eps", "x0", "v"):
            raise ConfigError(f"prediction must be 'eps', 'x0' or 'v', got {prediction!r}")
        self.num_steps = num_steps
        self.schedule = schedule
        self.prediction = prediction
        betas = make_betas(schedule, num_steps, beta_start, beta_end)
        abar = torch.cumprod(1 - betas, dim=0)
        self.register_buffer("betas", betas, persistent=False)
        self.register_buffer("alphas_cumprod", abar, persistent=False)
        # abar padded with abar_{-1} = 1 so that index s + 1 works for s = -1.
        self.register_buffer("_abar_prev", torch.cat([abar.new_ones(1), abar]), persistent=False)

    # -- coefficients ---------------------------------------------------------------------------
    def _abar(self, t: Tensor, like: Tensor) -> Tensor:
        """abar_t for t >= -1, shaped to broadcast against ``like`` (B, ...)."""
        a = self._abar_prev[t.long() + 1].to(like.dtype)
        return a.view(-1, *([1] * (like.dim() - 1)))

    def _steps(self, t: Tensor | int, x: Tensor) -> Tensor:
        if not isinstance(t, Tensor):
            t = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        elif t.dim() == 0:
            t = t.expand(x.shape[0])
        return t.to(x.device)

    # -- forward process ------------------------------------------------------------------------
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (Ho et al. 2020, eq. 4). x0, noise: (B, ...); t: (B,)."""
        a = self._abar(self._steps(t, x0), x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def q_posterior(self, x0: Tensor, x_t: Tensor, t: Tensor, s: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_s | x_t, x_0) for s < t (default s = t - 1; Ho et al. 2020, eqs. 6-7).

        With ``a = abar_t / abar_s`` (the effective alpha from s to t):
        mean = sqrt(abar_s)(1 - a)/(1 - abar_t) x0 + sqrt(a)(1 - abar_s)/(1 - abar_t) x_t,
        var  = (1 - a)(1 - abar_s)/(1 - abar_t).
        """
        t = self._steps(t, x_t)
        s = t - 1 if s is None else self._steps(s, x_t)
        abar_t, abar_s = self._abar(t, x_t), self._abar(s, x_t)
        a = abar_t / abar_s
        mean = abar_s.sqrt() * (1 - a) / (1 - abar_t) * x0 + a.sqrt() * (1 - abar_s) / (1 - abar_t) * x_t
        var = (1 - a) * (1 - abar_s) / (1 - abar_t)
        return mean, var.expand_as(x_t)

    # -- prediction types -----------------------------------------------------------------------
    def predict_x0(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """x0 from the denoiser output ``out`` (in ``self.prediction`` units)."""
        a = self._abar(self._steps(t, x_t), x_t)
        if self.prediction == "eps":
            return (x_t - (1 - a).sqrt() * out) / a.sqrt()
        if self.prediction == "v":
            return a.sqrt() * x_t - (1 - a).sqrt() * out
        return out

    def predict_eps(self, out: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """eps from the denoiser output ``out``."""
        a = self._abar(self._steps(t, x_t), x_t)
        if self.prediction == "eps":
            return out
        if self.prediction == "v":
            return (1 - a).sqrt() * x_t + a.sqrt() * out
        return (x_t - a.sqrt() * out) / (1 - a).sqrt()

    def target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The training target in ``self.prediction`` units."""
        if self.prediction == "eps":
            return noise
        if self.prediction == "x0":
            return x0
        a = self._abar(self._steps(t, x0), x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    # -- training -------------------------------------------------------------------------------
    def draw_timesteps(self, n: int, device: torch.device, generator: Source = None) -> Tensor:
        """t ~ Uniform{0, ..., N-1}, shape (n,)."""
        return randint(self.num_steps, n, generator, device)

    def loss(
        self,
        denoiser: Callable[..., Tensor],
        x0: Tensor,
        cond: dict,
        loss_mask: Tensor,
        *,
        t: Tensor | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Masked denoising loss: sum(((target - out) * mask)^2) / max(sum(mask), 1), as CSDI.

        x0, loss_mask: (B, L, K); t: (B,) or None (uniform); cond is passed to ``denoiser(x_t, t, cond)``.
        """
        if t is None:
            t = self.draw_timesteps(x0.shape[0], x0.device, generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        residual = (self.target(x0, noise, t) - denoiser(x_t, t, cond)) * loss_mask
        return residual.pow(2).sum() / loss_mask.sum().clamp(min=1)

    # -- reverse steps --------------------------------------------------------------------------
    # Every method that maps a denoiser output takes ``(out, x_t, t)``, the denoiser's own order after its
    # output (as predict_x0 / predict_eps); the step a reverse step goes to is the keyword ``s``.
    def _noise_like(self, x: Tensor, generator: Source) -> Tensor:
        return randn(x.shape, generator, device=x.device, dtype=x.dtype)

    def ddpm_step(
        self,
        out: Tensor,
        x_t: Tensor,
        t: Tensor | int,
        *,
        s: Tensor | int | None = None,
        generator: Source = None,
    ) -> Tensor:
        """Ancestral step x_t -> x_s ~ q(x_s | x_t, x0_hat) (Ho et al. 2020, Algorithm 2; s = t - 1 by default).

        For a strided step (s < t - 1) this uses the posterior of the respaced chain (Nichol & Dhariwal 2021).
        No noise is added when s = -1 (the final step returns x0_hat).
        """
        t = self._steps(t, x_t)
        s = t - 1 if s is None else self._steps(s, x_t)
        mean, var = self.q_posterior(self.predict_x0(out, x_t, t), x_t, t, s)
        return mean + var.sqrt() * self._noise_like(x_t, generator)

    def ddim_step(
        self,
        out: Tensor,
        x_t: Tensor,
        t: Tensor | int,
        *,
        s: Tensor | int | None = None,
        eta: float = 0.0,
        generator: Source = None,
    ) -> Tensor:
        """DDIM step x_t -> x_s (Song et al. 2021, eq. 12), sigma = eta * sqrt((1-abar_s)/(1-abar_t) (1-abar_t/abar_s)).

        s = t - 1 by default. eta = 0 is deterministic; eta = 1 with s = t - 1 equals the DDPM ancestral step.
        """
        t = self._steps(t, x_t)
        s = t - 1 if s is None else self._steps(s, x_t)
        abar_t, abar_s = self._abar(t, x_t), self._abar(s, x_t)
        x0 = self.predict_x0(out, x_t, t)
        eps = self.predict_eps(out, x_t, t)
        sigma = eta * ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).sqrt()
        x_s = abar_s.sqrt() * x0 + (1 - abar_s - sigma**2).clamp(min=0).sqrt() * eps
        if eta > 0:
            x_s = x_s + sigma * self._noise_like(x_t, generator)
        return x_s

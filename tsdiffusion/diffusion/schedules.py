"""Beta schedules, computed in float64 (pure functions)."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from tsdiffusion.errors import ConfigError

Schedule = Literal["linear", "quad", "cosine"]


def make_betas(
    schedule: Schedule, num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.5, *, cosine_s: float = 0.008
) -> Tensor:
    """Return the (num_steps,) float64 betas of a schedule.

    - ``linear``: ``linspace(beta_start, beta_end, N)`` (Ho et al. 2020; TimeGrad uses 1e-4..0.1, N=100).
    - ``quad``: ``linspace(sqrt(beta_start), sqrt(beta_end), N) ** 2`` (CSDI, Tashiro et al. 2021; 1e-4..0.5, N=50).
    - ``cosine``: ``alpha_bar(t) = cos(((t/N + s) / (1 + s)) * pi/2) ** 2``,
      ``beta_t = 1 - alpha_bar(t+1)/alpha_bar(t)``
      clipped at 0.999 (Nichol & Dhariwal 2021, eq. 17); ``beta_start``/``beta_end`` are unused.
    """
    if num_steps < 1:
        raise ConfigError(f"num_steps must be >= 1, got {num_steps}")
    if schedule == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=torch.float64)
    if schedule == "quad":
        return torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    if schedule == "cosine":
        steps = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        alpha_bar = torch.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=0.999)
    raise ConfigError(f"unknown schedule {schedule!r}: expected one of 'linear', 'quad', 'cosine'")

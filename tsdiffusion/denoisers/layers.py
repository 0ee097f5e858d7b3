"""Blocks shared by the denoisers: sinusoidal embeddings of diffusion steps and of time points."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tsdiffusion import kernels

StepFrequencies = Literal["csdi", "timegrad"]


def step_sinusoids(t: Tensor, dim: int, frequencies: StepFrequencies = "csdi") -> Tensor:
    """DiffWave's diffusion-step encoding (Kong et al., 2021, eq. in §3.1), used by CSDI and TimeGrad.

    ``[sin(t * 10^(4 i / (n - 1))), cos(t * 10^(4 i / (n - 1)))]`` for ``i < n = dim / 2``: the
    frequencies grow from 1 to 10^4, as in CSDI's code (not the transformer's 1/10000^(i/n)).
    ``frequencies="timegrad"``: ``10^(4 i / n)`` (1 to 10^(4 (n - 1) / n)), as pytorch-ts's TimeGrad
    (``epsilon_theta.py``).

    t: (B,) step index (long or float) -> (B, dim) float32
    """
    if dim % 2 or dim < 4:
        raise ValueError(f"step_sinusoids: dim must be even and >= 4, got {dim}")
    if frequencies not in ("csdi", "timegrad"):
        raise ValueError(f"step_sinusoids: frequencies must be 'csdi' or 'timegrad', got {frequencies!r}")
    half = dim // 2
    denominator = half - 1 if frequencies == "csdi" else half
    freqs = 10.0 ** (torch.arange(half, device=t.device) / denominator * 4.0)  # (dim/2,)
    angles = t.float().unsqueeze(-1) * freqs  # (B, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def time_sinusoids(pos: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Transformer positional encoding (Vaswani et al., 2017, §3.5) of real-valued positions.

    Channel ``2i`` is ``sin(pos / base^(2i / dim))`` and ``2i + 1`` the matching cosine (interleaved,
    as CSDI's time embedding of its ``timepoints``).

    pos: (...) float -> (..., dim) float32
    """
    if dim % 2:
        raise ValueError(f"time_sinusoids: dim must be even, got {dim}")
    inv_freq = 1 / torch.pow(base, torch.arange(0, dim, 2, device=pos.device) / dim)  # (dim/2,)
    angles = pos.float().unsqueeze(-1) * inv_freq  # (..., dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(-2)


class DiffusionStepEmbedding(nn.Module):
    """Diffusion step -> vector: :func:`step_sinusoids` then two Linear + SiLU layers (DiffWave, CSDI).

    Args:
        embedding_dim: width of the sinusoidal encoding (sines and cosines together).
        projection_dim: width of the output; defaults to ``embedding_dim``.
        frequencies: the spacing of :func:`step_sinusoids` (``"csdi"`` or ``"timegrad"``).
    """

    def __init__(
        self, embedding_dim: int = 128, projection_dim: int | None = None, frequencies: StepFrequencies = "csdi"
    ) -> None:
        super().__init__()
        projection_dim = embedding_dim if projection_dim is None else projection_dim
        self.embedding_dim, self.frequencies = embedding_dim, frequencies
        self.projection1 = nn.Linear(embedding_dim, projection_dim)
        self.projection2 = nn.Linear(projection_dim, projection_dim)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) long -> (B, projection_dim)."""
        emb = step_sinusoids(t, self.embedding_dim, self.frequencies).to(self.projection1.weight.dtype)
        return F.silu(self.projection2(F.silu(self.projection1(emb))))


def gated_activation(y: Tensor) -> Tensor:
    """WaveNet's gated activation ``sigmoid(gate) * tanh(filter)`` of ``gate, filter = y.chunk(2, dim=-1)``:
    (..., 2C) -> (..., C). In one pass by :func:`tsdiffusion.kernels.gated_tanh` when sampling on the CPU (no
    autograd), else torch's three ops."""
    out = kernels.gated_tanh(y)
    if out is None:
        gate, filt = y.chunk(2, dim=-1)
        out = torch.sigmoid(gate) * torch.tanh(filt)
    return out

"""Deterministic fills of the values a mask hides, along the time axis L, as tensor operations (no Python loop
over series): used by the imputation baselines and as an input channel of denoisers
(``CSDIDenoiser(interpolated_input=True)``)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["carry_forward", "interpolate", "window_mean"]


def interpolate(x: Tensor, mask: Tensor) -> Tensor:
    """Linear interpolation along L between the points where ``mask`` is 1, constant beyond the first and last
    of them; a series with no such point is 0. x, mask: (B, L, K) -> (B, L, K)."""
    B, L, K = x.shape
    steps = torch.arange(L, device=x.device).view(1, L, 1).expand(B, L, K)
    seen = mask > 0
    prev = torch.where(seen, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    flipped = torch.where(seen, steps, torch.full_like(steps, L)).flip(1)
    nxt = (-(-flipped).cummax(dim=1).values).flip(1)
    lo, hi = prev.clamp(min=0), nxt.clamp(max=L - 1)
    x_lo, x_hi = x.gather(1, lo), x.gather(1, hi)
    x_lo = torch.where(prev >= 0, x_lo, x_hi)
    x_hi = torch.where(nxt < L, x_hi, x_lo)
    w = torch.where(hi > lo, (steps - lo).to(x.dtype) / (hi - lo).clamp(min=1).to(x.dtype), torch.zeros_like(x))
    out = x_lo + w * (x_hi - x_lo)
    return torch.where(seen.any(dim=1, keepdim=True), out, torch.zeros_like(x))


def carry_forward(x: Tensor, mask: Tensor) -> Tensor:
    """Last observation carried forward along L (the next observation carried backward before the first one;
    0 for a series with none). x, mask: (B, L, K) -> (B, L, K)."""
    B, L, K = x.shape
    steps = torch.arange(L, device=x.device).view(1, L, 1).expand(B, L, K)
    seen = mask > 0
    prev = torch.where(seen, steps, torch.full_like(steps, -1)).cummax(dim=1).values
    first = torch.where(seen, steps, torch.full_like(steps, L)).amin(dim=1, keepdim=True).expand(B, L, K)
    idx = torch.where(prev >= 0, prev, first).clamp(max=L - 1)
    out = x.gather(1, idx)
    return torch.where(seen.any(dim=1, keepdim=True), out, torch.zeros_like(x))


def window_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Each series' mean over its points where ``mask`` is 1, at every step (0 for a series with none).
    x, mask: (B, L, K) -> (B, L, K)."""
    return ((x * mask).sum(1, keepdim=True) / mask.sum(1, keepdim=True).clamp(min=1)).expand_as(x)

"""Non-learned anomaly scorers that sit in a task's denoiser slot, so they are windowed, stitched,
thresholded and scored exactly like the diffusion model (:class:`tsdiffusion.tasks.anomaly.AnomalyTask`).

A scorer has ``score(observed (B, L, K), observed_mask (B, L, K)) -> (B, L, K)``; its ``forward`` returns
zeros, so it has no training signal and no parameters (fit with ``trainer.max_epochs: 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from tsdiffusion.batch import Cond

#: MAD -> standard deviation for Gaussian data (1 / Phi^-1(3/4)).
MAD_TO_STD = 1.4826


def rolling_median(x: Tensor, width: int) -> Tensor:
    """Centred rolling median along L, ignoring NaN, edges replicated. x: (B, L, K) -> (B, L, K)."""
    return _rolling(x, width).nanmedian(dim=-1).values


def _rolling(x: Tensor, width: int) -> Tensor:
    """(B, L, K) -> (B, L, K, W): the centred window of every step (replicate padding)."""
    half = width // 2
    padded = F.pad(rearrange(x, "b l k -> b k l"), (half, width - 1 - half), mode="replicate")
    return rearrange(padded.unfold(-1, width, 1), "b k l w -> b l k w")


def rolling_mad_score(x: Tensor, mask: Tensor, width: int, eps: float) -> Tensor:
    """|x - rolling median| / (1.4826 rolling MAD + eps) (Hampel filter; Hampel 1974). x, mask: (B, L, K)."""
    x = torch.where(mask > 0, x, torch.full_like(x, float("nan")))
    windows = _rolling(x, width)
    median = windows.nanmedian(dim=-1).values
    mad = (windows - median.unsqueeze(-1)).abs().nanmedian(dim=-1).values
    score = (x - median).abs() / (MAD_TO_STD * mad + eps)
    return torch.nan_to_num(score, nan=0.0) * mask


class RollingMedianScorer(nn.Module):
    """Distance from a centred rolling median, in units of the rolling MAD (a robust z-score), per feature.

    Args:
        num_features: K (unused; the CLI links it into every denoiser slot).
        width: rolling window in steps (odd values centre it exactly).
        eps: added to the scaled MAD (normalised units), so flat stretches do not divide by zero.
    """

    def __init__(self, num_features: int, width: int = 25, eps: float = 0.1):
        super().__init__()
        if width < 2:
            raise ValueError(f"width must be >= 2, got {width}")
        self.num_features, self.width, self.eps = num_features, width, eps

    def forward(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor:
        """No learned part: (B, L, K) zeros."""
        return torch.zeros_like(x_t)

    def score(self, observed: Tensor, observed_mask: Tensor) -> Tensor:
        """(B, L, K) anomaly score of every observed point."""
        return rolling_mad_score(observed, observed_mask, self.width, self.eps)

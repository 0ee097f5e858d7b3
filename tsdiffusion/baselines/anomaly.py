"""Non-learned anomaly scorers: the ``baseline`` of :class:`tsdiffusion.tasks.AnomalyTask`, so they are
windowed, stitched, thresholded and scored exactly like the diffusion model.

A scorer is a :class:`ScoringBaseline`: ``score(batch) -> (B, L, K)``; it has no parameters and nothing to train.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from tsdiffusion.baselines.base import ScoringBaseline
from tsdiffusion.batch import TSBatch

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


class RollingMedianScorer(ScoringBaseline):
    """Distance from a centred rolling median, in units of the rolling MAD (a robust z-score), per feature.

    Args:
        width: rolling window in steps (odd values centre it exactly).
        eps: added to the scaled MAD (normalised units), so flat stretches do not divide by zero.
    """

    def __init__(self, width: int = 25, eps: float = 0.1):
        if width < 2:
            raise ValueError(f"width must be >= 2, got {width}")
        self.width, self.eps = width, eps

    def score(self, batch: TSBatch) -> Tensor:
        """(B, L, K) anomaly score of every observed point."""
        return rolling_mad_score(batch["observed"], batch["observed_mask"], self.width, self.eps)

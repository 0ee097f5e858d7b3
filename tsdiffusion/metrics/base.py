"""What every sample metric shares: float64 sum states (:class:`_SampleMetric`), the update from a shared
:class:`~tsdiffusion.metrics.quantiles.SampleSummary` (:class:`_PointwiseMetric`) and the masked sums."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import rank_zero_warn

from tsdiffusion.metrics.quantiles import DEFAULT_CHUNK, Interpolation, SampleSummary, _check_inputs, summarize

Estimator = Literal["nrg", "fair"]


def _quantile_loss_sums(qs: Tensor, y: Tensor, w: Tensor, levels: Sequence[float]) -> Tensor:
    """Σ_i w_i 2 |(Q_q,i - y_i)(1{y_i <= Q_q,i} - q)| per level (CSDI ``quantile_loss``; GluonTS
    QuantileLoss), one level at a time so that temporaries stay the size of y.

    qs: (Q, *P) quantiles; y, w: (*P) target and weights (0 = not scored) -> (Q,) float64.
    """
    scored = w > 0
    sums = []
    for qp, q in zip(qs, levels):
        loss = 2 * ((qp - y) * ((y <= qp).to(qp.dtype) - q)).abs()
        sums.append(torch.where(scored, loss * w, 0).sum(dtype=torch.float64))
    return torch.stack(sums)


def _abs_sum(y: Tensor, w: Tensor) -> Tensor:
    """Σ_i w_i |y_i| (CSDI ``calc_denominator``) -> () float64."""
    return torch.where(w > 0, y.abs() * w, 0).sum(dtype=torch.float64)


def _masked_sum(x: Tensor, m: Tensor) -> Tensor:
    """Σ over points with m of x -> () float64."""
    return torch.where(m, x, 0).sum(dtype=torch.float64)


def _ratio(num: Tensor, den: Tensor, name: str) -> Tensor:
    """num / den, or NaN with a warning when den is 0 (nothing scored, or Σ|y| = 0)."""
    if den == 0:
        rank_zero_warn(f"{name}: the denominator is 0 (nothing scored, or Σ|y| = 0); returning NaN")
        return torch.full_like(num, float("nan"))
    return num / den


def _pair_factor(n_samples: int, estimator: str) -> float:
    """Factor turning a mean over all S^2 pairs into the estimator's mean: 1 (nrg) or S/(S-1) (fair)."""
    if estimator == "nrg":
        return 1.0
    if n_samples < 2:
        raise ValueError("the fair estimator needs at least 2 samples")
    return n_samples / (n_samples - 1)


# ----------------------------------------------------------------------------- metric classes


class _SampleMetric(Metric):
    """Plumbing shared by every metric here: float64 sum states, the chunk size."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = False
    uses_summary = False
    levels: tuple[float, ...] = ()

    def __init__(self, chunk_elements: int = DEFAULT_CHUNK) -> None:
        super().__init__()
        self.chunk_elements = chunk_elements

    def _sum_states(self, *names: str, size: int | None = None) -> None:
        for name in names:
            zeros = torch.zeros(() if size is None else (size,), dtype=torch.float64)
            self.add_state(name, zeros, dist_reduce_fx="sum")


class _PointwiseMetric(_SampleMetric):
    """A metric of per-point statistics; ``update`` accepts a precomputed :class:`SampleSummary`."""

    uses_summary = True

    def __init__(self, interpolation: Interpolation = "linear", chunk_elements: int = DEFAULT_CHUNK) -> None:
        super().__init__(chunk_elements)
        self.interpolation = interpolation

    def update(self, samples: Tensor, target: Tensor, mask: Tensor, summary: SampleSummary | None = None) -> None:
        """samples (B, S, L, K), target, mask (B, L, K); ``summary``: ``summarize`` of the same inputs."""
        m = _check_inputs(samples, target, mask)
        if summary is None:
            kw: dict[str, Any] = {"interpolation": self.interpolation, "chunk_elements": self.chunk_elements}
            summary = summarize(samples, target, self.levels, **kw)
        elif self.levels and summary.interpolation != self.interpolation:
            raise ValueError(f"summary interpolation {summary.interpolation!r} != {self.interpolation!r}")
        self._accumulate(summary, torch.where(m, target, 0), m)

    def _accumulate(self, summary: SampleSummary, target: Tensor, mask: Tensor) -> None:
        raise NotImplementedError

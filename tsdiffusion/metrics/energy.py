"""The energy score, the multivariate CRPS: E||X - y|| - 1/2 E||X - X'|| per window or per time step."""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, reduce
from torch import Tensor

from tsdiffusion.metrics.base import Estimator, _masked_sum, _pair_factor, _ratio, _SampleMetric
from tsdiffusion.metrics.quantiles import DEFAULT_CHUNK, _blocks, _check_inputs


def _sq_dists(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """x: (V, S, D), y: (V, D) -> Σ_d (x_s - y)^2 (V, S) and Σ_d (x_s - x_t)^2 (V, S, S), float64."""
    to_y = (x - y[:, None]).square_().sum(-1, dtype=torch.float64)
    xc = x - x.mean(1, keepdim=True)  # translation-invariant; centring keeps the Gram form accurate
    gram = (xc @ xc.transpose(1, 2)).double()
    norms = gram.diagonal(dim1=1, dim2=2)
    return to_y, (norms[:, :, None] + norms[:, None, :] - 2 * gram).clamp_min(0)


def _energy(to_y: Tensor, pair: Tensor, estimator: str) -> Tensor:
    """Squared distances (V, S), (V, S, S) -> ES (V,): mean_s ||x_s - y|| - Σ_st ||x_s - x_t|| / (2 S^2)
    (nrg) or / (2 S (S - 1)) (fair)."""
    n_samples = to_y.shape[1]
    pairs = n_samples**2 / _pair_factor(n_samples, estimator)
    return to_y.sqrt().mean(1) - pair.sqrt().sum((1, 2)) / (2 * pairs)


def _energy_windows(x: Tensor, y: Tensor, m: Tensor, estimator: str, chunk: int) -> tuple[Tensor, Tensor]:
    """x (B, S, N), y, m (B, N) flat windows -> (Σ ES over scored windows, number of scored windows).

    Squared distances are additive over coordinates, so a window may be split into column blocks.
    """
    n_batch, n_samples, n_cols = x.shape
    to_y = x.new_zeros(n_batch, n_samples, dtype=torch.float64)
    pair = x.new_zeros(n_batch, n_samples, n_samples, dtype=torch.float64)
    for bs, cs in _blocks(n_batch, n_samples, n_cols, chunk):
        a, p = _sq_dists(torch.where(m[bs, None, cs], x[bs, :, cs], 0), y[bs, cs])
        to_y[bs] += a
        pair[bs] += p
    scored = m.any(1)
    return _masked_sum(_energy(to_y, pair, estimator), scored), scored.sum()


def _energy_steps(x: Tensor, y: Tensor, m: Tensor, n_feat: int, estimator: str, chunk: int) -> tuple[Tensor, Tensor]:
    """x (B, S, L*K), y, m (B, L*K) -> (Σ ES over scored time steps, number of scored steps), ES over K."""
    total, count = x.new_zeros((), dtype=torch.float64), x.new_zeros((), dtype=torch.float64)
    n_batch, n_samples, n_cols = x.shape
    for bs, cs in _blocks(n_batch, n_samples, n_cols, chunk, align=n_feat):
        xb = rearrange(torch.where(m[bs, None, cs], x[bs, :, cs], 0), "b s (l k) -> (b l) s k", k=n_feat)
        yb = rearrange(y[bs, cs], "b (l k) -> (b l) k", k=n_feat)
        scored = reduce(m[bs, cs], "b (l k) -> (b l)", "max", k=n_feat)
        total += _masked_sum(_energy(*_sq_dists(xb, yb), estimator), scored)
        count += scored.sum()
    return total, count


class EnergyScore(_SampleMetric):
    """Energy score of the multivariate forecast (Gneiting & Raftery 2007 with β = 1; scoringrules
    ``energy_score``), the multivariate CRPS:

        ES(F, y) = E||X - y|| - 1/2 E||X - X'||,   ||.|| the Euclidean norm over the scored coordinates

    ``over="window"`` (default): one vector per window, all scored points of (L, K) jointly, so temporal
    and cross-series dependence both count. ``over="step"``: one vector per time step, over K (cross-series
    dependence only). ``estimator``: "nrg" (scoringrules' default, S^2 pairs) or "fair" (S(S - 1) pairs).
    compute() -> () float64, the mean ES over the vectors with at least one scored coordinate.
    """

    # metric states (add_state in _sum_states)
    score: Tensor
    n_vectors: Tensor

    def __init__(
        self,
        over: Literal["window", "step"] = "window",
        estimator: Estimator = "nrg",
        chunk_elements: int = DEFAULT_CHUNK,
    ) -> None:
        super().__init__(chunk_elements)
        self.over, self.estimator = over, estimator
        self._sum_states("score", "n_vectors")

    @torch.no_grad()
    def update(self, samples: Tensor, target: Tensor, mask: Tensor) -> None:
        """samples (B, S, L, K), target, mask (B, L, K)."""
        m = rearrange(_check_inputs(samples, target, mask), "b l k -> b (l k)")
        x = rearrange(samples, "b s l k -> b s (l k)")
        y = torch.where(m, rearrange(target, "b l k -> b (l k)"), 0)
        if self.over == "window":
            total, count = _energy_windows(x, y, m, self.estimator, self.chunk_elements)
        else:
            total, count = _energy_steps(x, y, m, samples.shape[-1], self.estimator, self.chunk_elements)
        self.score += total
        self.n_vectors += count

    def compute(self) -> Tensor:
        return _ratio(self.score, self.n_vectors, "energy_score")

"""Probabilistic metrics for sample forecasts, as torchmetrics with additive (sum) states.

Every metric is updated per batch with float32 or float64 tensors

    samples: (B, S, L, K) draws from the model, in the units to be scored (``observed * scale + loc``)
    target:  (B, L, K) the truth
    mask:    (B, L, K) 1 where a point is scored, 0 elsewhere (binary)

and keeps only sums (``dist_reduce_fx="sum"``, float64), so its value over many batches and processes
equals its value over the whole test set, as CSDI and GluonTS compute it over the concatenated set.

Rules shared by every metric:

* Points with mask 0 change nothing: target and samples there enter no sum (NaN is fine there). The
  one exception is ``QuantileCRPSSum(sum_over="all")``, CSDI's literal formula.
* ``compute()`` returns NaN, with a warning, when its denominator is 0: nothing was scored (an all-zero
  mask), or a normaliser Σ|y| is 0. Never a silent 0.
* Sample quantiles are those of ``torch.quantile(samples, q, dim=1)`` (CSDI computes its CRPS with it;
  numpy's default is the same): linear interpolation between order statistics at rank q (S - 1).
  ``interpolation="nearest"`` takes the order statistic at round(q (S - 1)), as GluonTS 0.x's
  ``SampleForecast.quantile`` did (the evaluator behind TimeGrad's CRPS-sum). They are taken by sort
  and gather over blocks of at most ``chunk_elements`` values: peak memory stays bounded (torch.quantile
  sorts a whole copy at once, with int64 indices) and no size limit applies (torch.quantile refuses a
  reduced dimension over 2^24, and older torch versions refused inputs over 2^24 in total).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange, reduce
from torch import Tensor
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import rank_zero_warn

DEFAULT_QUANTILES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
DEFAULT_CHUNK = 2**22

Interpolation = Literal["linear", "nearest"]
Estimator = Literal["nrg", "fair"]
MetricName = Literal[
    "crps", "crps_sum", "crps_fair", "crps_nrg", "ncrps_fair", "ncrps_nrg", "energy_score",
    "coverage_50", "coverage_90", "mse_mean", "mae_mean", "rmse_mean", "nmae_mean", "nrmse_mean",
    "mse_median", "mae_median", "rmse_median", "nmae_median", "nrmse_median",
]  # fmt: skip
DEFAULT_METRICS: tuple[MetricName, ...] = (
    "crps", "crps_sum", "crps_fair", "ncrps_fair", "energy_score", "coverage_50", "coverage_90",
    "mse_mean", "mae_median", "rmse_median", "nmae_median", "nrmse_mean",
)  # fmt: skip


# ----------------------------------------------------------------------------- blocks and quantiles


def _check_inputs(samples: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Validate the shapes; return the mask as bool (B, L, K)."""
    ok = samples.dim() == 4 and target.shape == mask.shape == samples.shape[:1] + samples.shape[2:]
    if not ok:
        raise ValueError(
            "expected samples (B, S, L, K), target and mask (B, L, K); got "
            f"{tuple(samples.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}"
        )
    return mask.bool()


def _blocks(n_batch: int, n_samples: int, n_cols: int, budget: int, align: int = 1) -> Iterator[tuple]:
    """Cover a (B, S, N) tensor with (batch slice, column slice) blocks of at most ``budget`` elements.

    Whole rows are grouped while they fit; a larger row is cut into column ranges whose width is a
    multiple of ``align`` (never less than ``align``, so one block may then exceed the budget).
    """
    row = n_samples * n_cols
    if row <= budget:
        step = budget // max(row, 1)
        for b0 in range(0, n_batch, step):
            yield slice(b0, b0 + step), slice(None)
        return
    width = max(align, budget // n_samples // align * align)
    for b in range(n_batch):
        for c0 in range(0, n_cols, width):
            yield slice(b, b + 1), slice(c0, c0 + width)


def _sorted_blocks(samples: Tensor, chunk_elements: int) -> Iterator[tuple[slice, slice, Tensor]]:
    """samples (B, S, L, K) -> (batch slice, column slice, block (b, S, n) sorted along S), N = L*K."""
    n_batch, n_samples, length, n_feat = samples.shape
    flat = rearrange(samples, "b s l k -> b s (l k)")
    for bs, cs in _blocks(n_batch, n_samples, length * n_feat, chunk_elements):
        yield bs, cs, flat[bs, :, cs].sort(dim=1).values


def _ranks(levels: Sequence[float], n_samples: int, interpolation: str, like: Tensor) -> tuple:
    """Order statistics and weights of torch.quantile -> lo, hi (Q,) long, w (Q,).

    r = q (S - 1), Q_q = x_(floor r) + (r - floor r)(x_(ceil r) - x_(floor r)), with r computed in the
    samples' dtype as torch.quantile does.
    """
    rank = torch.tensor(list(levels), dtype=like.dtype, device=like.device) * (n_samples - 1)
    if interpolation == "nearest":
        rank = rank.round()
    lo = rank.floor()
    return lo.long(), rank.ceil().long(), rank - lo


def _quantiles_of_sorted(xs: Tensor, ranks: tuple) -> Tensor:
    """xs: (b, S, n) sorted along S -> (Q, b, n)."""
    lo, hi, w = ranks
    return rearrange(torch.lerp(xs[:, lo], xs[:, hi], w[:, None]), "b q n -> q b n")


@torch.no_grad()
def sample_quantiles(
    samples: Tensor,
    levels: Sequence[float],
    *,
    interpolation: Interpolation = "linear",
    chunk_elements: int = DEFAULT_CHUNK,
) -> Tensor:
    """Per-point sample quantiles: samples (B, S, L, K) -> (Q, B, L, K).

    Equal to ``torch.quantile(samples, levels, dim=1, interpolation=...)`` bit for bit, but by sort and
    gather over blocks of at most ``chunk_elements`` values, so peak memory stays bounded and no size
    limit applies (a traffic window, S=100, L=192, K=963, is 18.5M values).
    """
    n_batch, n_samples, length, n_feat = samples.shape
    ranks = _ranks(levels, n_samples, interpolation, samples)
    out = samples.new_empty(len(levels), n_batch, length * n_feat)
    for bs, cs, xs in _sorted_blocks(samples, chunk_elements):
        out[:, bs, cs] = _quantiles_of_sorted(xs, ranks)
    return rearrange(out, "q b (l k) -> q b l k", l=length)


# ----------------------------------------------------------------------------- per-point summary


@dataclass(frozen=True)
class SampleSummary:
    """Per-point statistics of the samples, from one sort, shared by the pointwise metrics.

    levels:    the Q quantile levels held in ``quantiles``
    quantiles: (Q, B, L, K) sample quantiles (see ``sample_quantiles``)
    mean:      (B, L, K) sample mean
    median:    (B, L, K) ``torch.median`` over S: the lower of the two middle samples when S is even (CSDI)
    abs_error: (B, L, K) E|X - y| = (1/S) Σ_s |x_s - y|
    spread:    (B, L, K) E|X - X'| over all S^2 ordered pairs = (2/S^2) Σ_i (2i - S - 1) x_(i), i = 1..S
    """

    levels: tuple[float, ...]
    interpolation: str
    n_samples: int
    quantiles: Tensor
    mean: Tensor
    median: Tensor
    abs_error: Tensor
    spread: Tensor

    def at(self, levels: Sequence[float]) -> Tensor:
        """Quantiles at ``levels``, each one of ``self.levels`` -> (len(levels), B, L, K)."""
        idx = [self._index(q) for q in levels]
        return self.quantiles if idx == list(range(len(self.levels))) else self.quantiles[idx]

    def _index(self, q: float) -> int:
        for i, level in enumerate(self.levels):
            if abs(level - q) < 1e-9:
                return i
        raise KeyError(f"quantile level {q} is not in the summary's levels {self.levels}")


def _point_stats(xs: Tensor, y: Tensor) -> Tensor:
    """xs: (b, S, n) sorted along S (overwritten), y: (b, n) -> (4, b, n): mean, median, E|X-y|, E|X-X'|.

    Weighted sums over S are matrix products (S,) @ (b, S, n), much faster than reductions over dim 1.
    """
    n_samples = xs.shape[1]
    rank = torch.arange(1, n_samples + 1, dtype=xs.dtype, device=xs.device)
    gini = (2 * rank - n_samples - 1) * (2 / n_samples**2)
    average = torch.full_like(gini, 1 / n_samples)
    mean, median = average @ xs, xs[:, (n_samples - 1) // 2].clone()
    abs_error = average @ (xs - y[:, None]).abs_()
    spread = gini @ xs.sub_(mean[:, None])  # centred: no cancellation at large |x|
    return torch.stack([mean, median, abs_error, spread])


@torch.no_grad()
def summarize(
    samples: Tensor,
    target: Tensor,
    levels: Sequence[float] = DEFAULT_QUANTILES,
    *,
    interpolation: Interpolation = "linear",
    chunk_elements: int = DEFAULT_CHUNK,
) -> SampleSummary:
    """One chunked sort of samples (B, S, L, K) against target (B, L, K) -> :class:`SampleSummary`."""
    n_batch, n_samples, length, n_feat = samples.shape
    ranks = _ranks(levels, n_samples, interpolation, samples)
    y = rearrange(target, "b l k -> b (l k)")
    quant = samples.new_empty(len(levels), n_batch, length * n_feat)
    stats = samples.new_empty(4, n_batch, length * n_feat)
    for bs, cs, xs in _sorted_blocks(samples, chunk_elements):
        quant[:, bs, cs] = _quantiles_of_sorted(xs, ranks)
        stats[:, bs, cs] = _point_stats(xs, y[bs, cs])
    quant, stats = (rearrange(t, "q b (l k) -> q b l k", l=length) for t in (quant, stats))
    return SampleSummary(tuple(levels), interpolation, n_samples, quant, *stats)


# ----------------------------------------------------------------------------- sums


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

    def update(
        self, samples: Tensor, target: Tensor, mask: Tensor, summary: SampleSummary | None = None
    ) -> None:
        """samples (B, S, L, K), target, mask (B, L, K); ``summary``: ``summarize`` of the same inputs."""
        m = _check_inputs(samples, target, mask)
        if summary is None:
            kw = {"interpolation": self.interpolation, "chunk_elements": self.chunk_elements}
            summary = summarize(samples, target, self.levels, **kw)
        elif self.levels and summary.interpolation != self.interpolation:
            raise ValueError(f"summary interpolation {summary.interpolation!r} != {self.interpolation!r}")
        self._accumulate(summary, torch.where(m, target, 0), m)

    def _accumulate(self, summary: SampleSummary, target: Tensor, mask: Tensor) -> None:
        raise NotImplementedError


class QuantileCRPS(_PointwiseMetric):
    """CRPS as the mean weighted quantile loss (CSDI ``calc_quantile_CRPS``, GluonTS ``mean_wQuantileLoss``).

        CRPS ≈ (1/Q) Σ_q  2 Σ_i m_i |(Q_q,i - y_i)(1{y_i <= Q_q,i} - q)|  /  Σ_i m_i |y_i|

    over every scored point i of the whole set, Q_q,i the sample q-quantile at point i (module
    docstring), q on ``quantiles`` (default 0.05, 0.10, ..., 0.95 as CSDI and GluonTS). Tashiro et al.
    (2021), CSDI, whose ``utils.py`` computes it on the concatenated test set. compute() -> () float64.
    """

    def __init__(
        self,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        interpolation: Interpolation = "linear",
        chunk_elements: int = DEFAULT_CHUNK,
    ) -> None:
        super().__init__(interpolation, chunk_elements)
        self.levels = tuple(quantiles)
        self._sum_states("qloss", size=len(self.levels))
        self._sum_states("abs_target")

    def _accumulate(self, summary: SampleSummary, target: Tensor, mask: Tensor) -> None:
        w = mask.to(target.dtype)
        self.qloss += _quantile_loss_sums(summary.at(self.levels), target, w, self.levels)
        self.abs_target += _abs_sum(target, w)

    def compute(self) -> Tensor:
        return _ratio(self.qloss.mean(), self.abs_target, "crps")


def _masked_feature_sum(samples: Tensor, m: Tensor, chunk_elements: int) -> Tensor:
    """Σ_k m x over the scored features, by blocks of whole steps: (B, S, L, K), m (B, L, K) -> (B, S, L)."""
    n_batch, n_samples, length, n_feat = samples.shape
    flat = rearrange(samples, "b s l k -> b s (l k)")
    mf = rearrange(m, "b l k -> b 1 (l k)")
    out = samples.new_empty(n_batch, n_samples, length)
    for bs, cs in _blocks(n_batch, n_samples, length * n_feat, chunk_elements, align=n_feat):
        steps = slice(None) if cs.start is None else slice(cs.start // n_feat, cs.stop // n_feat)
        block = torch.where(mf[bs, :, cs], flat[bs, :, cs], 0)
        out[bs, :, steps] = reduce(block, "b s (l k) -> b s l", "sum", k=n_feat)
    return out


class QuantileCRPSSum(_SampleMetric):
    """CRPS-sum: the quantile CRPS of the sum over features (CSDI ``calc_quantile_CRPS_sum``,
    GluonTS ``m_sum_mean_wQuantileLoss``, the CRPS-sum of TimeGrad, Rasul et al. 2021).

        z_bl = Σ_k y_blk,  Z_bsl = Σ_k x_bslk,  w_bl = (1/K) Σ_k m_blk  (CSDI averages the mask over K)
        CRPS-sum ≈ (1/Q) Σ_q 2 Σ_bl w_bl |(Q_q(Z)_bl - z_bl)(1{z_bl <= Q_q(Z)_bl} - q)| / Σ_bl w_bl |z_bl|

    ``sum_over="scored"`` (default) sums only the scored features, so unscored points change nothing;
    ``"all"`` sums every feature, CSDI's code literally. The two agree whenever each time step is scored
    in all of K or in none (the forecasting benchmarks). compute() -> () float64.
    """

    def __init__(
        self,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        sum_over: Literal["scored", "all"] = "scored",
        interpolation: Interpolation = "linear",
        chunk_elements: int = DEFAULT_CHUNK,
    ) -> None:
        super().__init__(chunk_elements)
        self.levels, self.sum_over, self.interpolation = tuple(quantiles), sum_over, interpolation
        self._sum_states("qloss", size=len(self.levels))
        self._sum_states("abs_target")

    def update(self, samples: Tensor, target: Tensor, mask: Tensor) -> None:
        """samples (B, S, L, K), target, mask (B, L, K)."""
        m = _check_inputs(samples, target, mask)
        if self.sum_over == "all":
            z, zs = target.sum(-1), samples.sum(-1)
        else:
            z, zs = torch.where(m, target, 0).sum(-1), _masked_feature_sum(samples, m, self.chunk_elements)
        w = m.to(samples.dtype).mean(-1)
        kw = {"interpolation": self.interpolation, "chunk_elements": self.chunk_elements}
        qs = sample_quantiles(rearrange(zs, "b s l -> b s l 1"), self.levels, **kw)
        qs = rearrange(qs, "q b l 1 -> q b l")
        self.qloss += _quantile_loss_sums(qs, z, w, self.levels)
        self.abs_target += _abs_sum(z, w)

    def compute(self) -> Tensor:
        return _ratio(self.qloss.mean(), self.abs_target, "crps_sum")


class SampleCRPS(_PointwiseMetric):
    """CRPS of the samples in the energy (kernel) form (Gneiting & Raftery 2007, JASA):

        CRPS_i = E|X - y_i| - 1/2 E|X - X'|

    ``estimator="nrg"``: E|X - X'| over all S^2 pairs, the CRPS of the empirical CDF (properscoring
    ``crps_ensemble``; scoringrules ``estimator="nrg"``); too high by E|X - X'| / (2S) on average.
    ``estimator="fair"``: over the S(S - 1) pairs i != j (Ferro 2014), unbiased; the same number as the
    probability-weighted-moment estimator (Taillardat et al. 2016; scoringrules "fair" and "pwm").
    E|X - X'| comes from the sorted samples, O(S log S) per point.

    ``normalize="none"``: Σ_i m_i CRPS_i / Σ_i m_i, the mean per scored point;
    ``"target"``: Σ_i m_i CRPS_i / Σ_i m_i |y_i|, on the scale of :class:`QuantileCRPS`.
    compute() -> () float64.
    """

    def __init__(
        self,
        estimator: Estimator = "fair",
        normalize: Literal["none", "target"] = "none",
        chunk_elements: int = DEFAULT_CHUNK,
    ) -> None:
        super().__init__(chunk_elements=chunk_elements)
        self.estimator, self.normalize = estimator, normalize
        self._sum_states("score", "n_points", "abs_target")

    def _accumulate(self, summary: SampleSummary, target: Tensor, mask: Tensor) -> None:
        half_spread = 0.5 * _pair_factor(summary.n_samples, self.estimator) * summary.spread
        self.score += _masked_sum(summary.abs_error - half_spread, mask)
        self.n_points += mask.sum()
        self.abs_target += _abs_sum(target, mask)

    def compute(self) -> Tensor:
        den = self.abs_target if self.normalize == "target" else self.n_points
        return _ratio(self.score, den, f"crps_{self.estimator}")


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


def _energy_steps(
    x: Tensor, y: Tensor, m: Tensor, n_feat: int, estimator: str, chunk: int
) -> tuple[Tensor, Tensor]:
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


class Coverage(_PointwiseMetric):
    """Coverage of the central ``level`` interval: the fraction of scored points with
    Q_{(1-level)/2} <= y <= Q_{(1+level)/2} (sample quantiles). Calibrated forecasts give ``level``.
    compute() -> () float64 in [0, 1].
    """

    def __init__(
        self, level: float = 0.9, interpolation: Interpolation = "linear", chunk_elements: int = DEFAULT_CHUNK
    ) -> None:
        super().__init__(interpolation, chunk_elements)
        self.level = level
        self.levels = (round((1 - level) / 2, 10), round((1 + level) / 2, 10))
        self._sum_states("inside", "n_points")

    def _accumulate(self, summary: SampleSummary, target: Tensor, mask: Tensor) -> None:
        lo, hi = summary.at(self.levels)
        self.inside += ((lo <= target) & (target <= hi) & mask).sum()
        self.n_points += mask.sum()

    def compute(self) -> Tensor:
        return _ratio(self.inside, self.n_points, f"coverage_{self.level}")


class PointError(_PointwiseMetric):
    """Error of a point forecast taken from the samples, over every scored point i of the whole set:

        mse = Σ m e² / Σ m,  rmse = sqrt(mse),  mae = Σ m |e| / Σ m,        e_i = ŷ_i - y_i
        nmae (ND) = Σ m |e| / Σ m |y|,  nrmse = rmse / (Σ m |y| / Σ m)   (GluonTS ND and NRMSE)

    ``point="mean"``: ŷ the sample mean (GluonTS MSE); ``"median"``: ``torch.median`` over S, the lower
    middle sample when S is even, as CSDI's MAE/RMSE (GluonTS's ND interpolates the two middle samples:
    equal for odd S). compute() -> () float64.
    """

    def __init__(
        self,
        error: Literal["mse", "mae", "rmse", "nmae", "nrmse"] = "mae",
        point: Literal["mean", "median"] = "median",
        chunk_elements: int = DEFAULT_CHUNK,
    ) -> None:
        super().__init__(chunk_elements=chunk_elements)
        self.error, self.point = error, point
        self._sum_states("sq_err", "abs_err", "n_points", "abs_target")

    def _accumulate(self, summary: SampleSummary, target: Tensor, mask: Tensor) -> None:
        err = (summary.mean if self.point == "mean" else summary.median) - target
        self.sq_err += _masked_sum(err.square(), mask)
        self.abs_err += _masked_sum(err.abs(), mask)
        self.n_points += mask.sum()
        self.abs_target += _abs_sum(target, mask)

    def compute(self) -> Tensor:
        name = f"{self.error}_{self.point}"
        if self.error == "mae":
            return _ratio(self.abs_err, self.n_points, name)
        if self.error == "nmae":
            return _ratio(self.abs_err, self.abs_target, name)
        if self.error == "nrmse":  # sqrt(Σe²/n) / (Σ|y|/n)
            return _ratio((self.sq_err * self.n_points).sqrt(), self.abs_target, name)
        mse = _ratio(self.sq_err, self.n_points, name)
        return mse.sqrt() if self.error == "rmse" else mse


# ----------------------------------------------------------------------------- the collection


def build_metric(
    name: MetricName,
    quantiles: Sequence[float] = DEFAULT_QUANTILES,
    interpolation: Interpolation = "linear",
    chunk_elements: int = DEFAULT_CHUNK,
) -> Metric:
    """The metric behind a collection name: ``crps``, ``crps_sum`` (quantile forms), ``crps_<est>`` /
    ``ncrps_<est>`` (sample CRPS per point / normalised by Σ|y|), ``energy_score`` (per window, nrg),
    ``coverage_<pct>``, ``<error>_<point>`` (:class:`PointError`)."""
    kw = {"interpolation": interpolation, "chunk_elements": chunk_elements}
    if name in ("crps", "crps_sum"):
        return (QuantileCRPS if name == "crps" else QuantileCRPSSum)(quantiles, **kw)
    if name.startswith("coverage_"):
        return Coverage(int(name.removeprefix("coverage_")) / 100, **kw)
    if name == "energy_score":
        return EnergyScore(chunk_elements=chunk_elements)
    head, tail = name.split("_")
    if head in ("crps", "ncrps"):
        return SampleCRPS(tail, "target" if head == "ncrps" else "none", chunk_elements)
    return PointError(head, tail, chunk_elements)


class ProbabilisticMetrics(MetricCollection):
    """The metrics a task reports, by name (see :func:`build_metric`), updated with one call.

    ``update(samples (B, S, L, K), target (B, L, K), mask (B, L, K))`` sorts the samples once for all
    pointwise metrics; ``compute()`` -> ``{prefix + name: () float64}``. Each member is a plain
    torchmetrics Metric, so ``LightningModule.log_dict(collection)`` works, and so does DDP.
    """

    def __init__(
        self,
        metrics: Sequence[MetricName] = DEFAULT_METRICS,
        quantiles: Sequence[float] = DEFAULT_QUANTILES,
        interpolation: Interpolation = "linear",
        chunk_elements: int = DEFAULT_CHUNK,
        prefix: str | None = None,
    ) -> None:
        kw = {"quantiles": quantiles, "interpolation": interpolation, "chunk_elements": chunk_elements}
        members = {name: build_metric(name, **kw) for name in metrics}
        super().__init__(members, prefix=prefix, compute_groups=False)
        self.interpolation, self.chunk_elements = interpolation, chunk_elements

    def update(self, samples: Tensor, target: Tensor, mask: Tensor) -> None:
        """samples (B, S, L, K), target, mask (B, L, K)."""
        users = [m for m in self.values(copy_state=False) if getattr(m, "uses_summary", False)]
        summary = None
        if users:
            levels = tuple(sorted({q for m in users for q in m.levels}))
            kw = {"interpolation": self.interpolation, "chunk_elements": self.chunk_elements}
            summary = summarize(samples, target, levels, **kw)
        super().update(samples, target, mask, summary=summary)

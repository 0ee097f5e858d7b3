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

from collections.abc import Sequence
from typing import Any, Literal

import torch
from einops import rearrange, reduce
from torch import Tensor
from torchmetrics import Metric, MetricCollection

from tsdiffusion.metrics.base import (
    Estimator,
    _abs_sum,
    _masked_sum,
    _pair_factor,
    _PointwiseMetric,
    _quantile_loss_sums,
    _ratio,
    _SampleMetric,
)
from tsdiffusion.metrics.energy import EnergyScore
from tsdiffusion.metrics.quantiles import (
    DEFAULT_CHUNK,
    DEFAULT_QUANTILES,
    Interpolation,
    SampleSummary,
    _blocks,
    _check_inputs,
    sample_quantiles,
    summarize,
)

MetricName = Literal[
    "crps", "crps_sum", "crps_fair", "crps_nrg", "ncrps_fair", "ncrps_nrg", "energy_score",
    "coverage_50", "coverage_90", "mse_mean", "mae_mean", "rmse_mean", "nmae_mean", "nrmse_mean",
    "mse_median", "mae_median", "rmse_median", "nmae_median", "nrmse_median",
]  # fmt: skip
DEFAULT_METRICS: tuple[MetricName, ...] = (
    "crps", "crps_sum", "crps_fair", "ncrps_fair", "energy_score", "coverage_50", "coverage_90",
    "mse_mean", "mae_median", "rmse_median", "nmae_median", "nrmse_mean",
)  # fmt: skip


class QuantileCRPS(_PointwiseMetric):
    """CRPS as the mean weighted quantile loss (CSDI ``calc_quantile_CRPS``, GluonTS ``mean_wQuantileLoss``).

        CRPS ≈ (1/Q) Σ_q  2 Σ_i m_i |(Q_q,i - y_i)(1{y_i <= Q_q,i} - q)|  /  Σ_i m_i |y_i|

    over every scored point i of the whole set, Q_q,i the sample q-quantile at point i (module
    docstring), q on ``quantiles`` (default 0.05, 0.10, ..., 0.95 as CSDI and GluonTS). Tashiro et al.
    (2021), CSDI, whose ``utils.py`` computes it on the concatenated test set. compute() -> () float64.
    """

    # metric states (add_state in _sum_states)
    qloss: Tensor
    abs_target: Tensor

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

    # metric states (add_state in _sum_states)
    qloss: Tensor
    abs_target: Tensor

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
        kw: dict[str, Any] = {"interpolation": self.interpolation, "chunk_elements": self.chunk_elements}
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

    # metric states (add_state in _sum_states)
    score: Tensor
    n_points: Tensor
    abs_target: Tensor

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


class Coverage(_PointwiseMetric):
    """Coverage of the central ``level`` interval: the fraction of scored points with
    Q_{(1-level)/2} <= y <= Q_{(1+level)/2} (sample quantiles). Calibrated forecasts give ``level``.
    compute() -> () float64 in [0, 1].
    """

    # metric states (add_state in _sum_states)
    inside: Tensor
    n_points: Tensor

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

    # metric states (add_state in _sum_states)
    sq_err: Tensor
    abs_err: Tensor
    n_points: Tensor
    abs_target: Tensor

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
    kw: dict[str, Any] = {"interpolation": interpolation, "chunk_elements": chunk_elements}
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
        kw: dict[str, Any] = {"quantiles": quantiles, "interpolation": interpolation, "chunk_elements": chunk_elements}
        members = {name: build_metric(name, **kw) for name in metrics}
        super().__init__(members, prefix=prefix, compute_groups=False)
        self.interpolation, self.chunk_elements = interpolation, chunk_elements

    def update(self, samples: Tensor, target: Tensor, mask: Tensor) -> None:
        """samples (B, S, L, K), target, mask (B, L, K)."""
        users = [m for m in self.values(copy_state=False) if getattr(m, "uses_summary", False)]
        summary = None
        if users:
            levels = tuple(sorted({q for m in users for q in m.levels}))
            kw: dict[str, Any] = {"interpolation": self.interpolation, "chunk_elements": self.chunk_elements}
            summary = summarize(samples, target, levels, **kw)
        super().update(samples, target, mask, summary=summary)

"""Sample quantiles and per-point summaries of samples (B, S, L, K), by sort and gather over blocks.

Quantiles are those of ``torch.quantile(samples, q, dim=1)`` (linear interpolation between order statistics
at rank q (S - 1)), or the order statistic at round(q (S - 1)) with ``interpolation="nearest"``; see
:mod:`tsdiffusion.metrics.probabilistic` for why blocks of at most ``chunk_elements`` values.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

DEFAULT_QUANTILES: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))
DEFAULT_CHUNK = 2**22

Interpolation = Literal["linear", "nearest"]


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

"""Calibration of probabilistic forecasts and imputations: PIT histogram and coverage against nominal level.

* PIT (probability integral transform): for each scored value y with samples x_1..x_S, the randomised rank
  ``(#{x_s < y} + U #{x_s = y}) / S``, U ~ Uniform(0, 1) (ties: a deterministic baseline repeats one value).
  Calibrated forecasts give a flat histogram; a U shape means too narrow, a hump too wide, a slope bias.
* Coverage: the share of scored values inside the central interval ``[Q_{(1-a)/2}, Q_{(1+a)/2}]`` of the
  samples (linear interpolation, as :class:`tsdiffusion.metrics.Coverage`) for nominal levels a; calibrated
  forecasts lie on the diagonal.

Both are invariant under a positive affine map per series, so normalised and original units give the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

from tsdiffusion.plots.samples import new_figure, save_figure

#: Nominal levels of the central intervals in the coverage plot.
NOMINAL_LEVELS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def pit_values(samples: Tensor, target: Tensor, mask: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Randomised PIT of every scored value: samples (B, S, L, K), target, mask (B, L, K) -> (N,) in [0, 1]."""
    y = target.unsqueeze(1)
    below = (samples < y).sum(1).double()
    ties = (samples == y).sum(1).double()
    u = torch.rand(below.shape, generator=generator, dtype=torch.float64, device=below.device)
    pit = (below + u * ties) / samples.shape[1]
    return pit[mask > 0]


def central_coverage(samples: Tensor, target: Tensor, mask: Tensor, levels: Sequence[float]) -> tuple[Tensor, Tensor]:
    """(inside counts (A,), number of scored values ()) for central intervals of ``levels``.

    samples (B, S, L, K), target, mask (B, L, K); quantiles interpolate linearly between order statistics.
    """
    xs = samples.sort(dim=1).values  # (B, S, L, K); no torch.quantile: it refuses inputs over 2^24 values
    y, m, n = target.double(), mask > 0, samples.shape[1]

    def quantile(q: float) -> Tensor:  # linear interpolation between order statistics (numpy's "linear")
        pos = q * (n - 1)
        lo, frac = int(pos), pos - int(pos)
        hi = min(lo + 1, n - 1)
        return xs[:, lo].double() + frac * (xs[:, hi].double() - xs[:, lo].double())

    bounds = [(quantile(round((1 - a) / 2, 10)), quantile(round((1 + a) / 2, 10))) for a in levels]
    inside = [((lo <= y) & (y <= hi) & m).sum() for lo, hi in bounds]
    return torch.stack(inside).double(), m.sum().double()


def calibration_plot(
    pit_counts: np.ndarray,
    levels: Sequence[float],
    coverage: np.ndarray,
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Two panels: the PIT histogram (``pit_counts`` over equal bins of [0, 1], as densities, with the flat
    line of a calibrated forecast) and the coverage of central intervals against their nominal ``levels``."""
    counts = np.asarray(pit_counts, dtype=float)
    fig = new_figure((9, 3.6))
    ax_pit, ax_cov = fig.subplots(1, 2)
    edges = np.linspace(0, 1, len(counts) + 1)
    density = counts / max(counts.sum(), 1) * len(counts)
    ax_pit.bar(edges[:-1], density, width=np.diff(edges), align="edge", color="C0", alpha=0.8, edgecolor="white")
    ax_pit.axhline(1.0, color="black", ls="--", lw=1, label="calibrated")
    ax_pit.set(xlim=(0, 1), xlabel="PIT", ylabel="density", title=f"PIT histogram ({int(counts.sum())} values)")
    ax_pit.legend(fontsize="small")
    ax_cov.plot([0, 1], [0, 1], color="black", ls="--", lw=1, label="calibrated")
    ax_cov.plot(levels, coverage, marker="o", color="C1", label="observed")
    ax_cov.set(xlim=(0, 1), ylim=(0, 1), xlabel="nominal level of the central interval", ylabel="coverage",
               title="coverage vs nominal")  # fmt: skip
    ax_cov.legend(fontsize="small", loc="upper left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    return fig

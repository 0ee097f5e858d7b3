"""``results.png``: the figure of a sweep (bars per group and metric, one dot per seed, the papers' values)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from tsdiffusion.benchmark.collect import Group
from tsdiffusion.benchmark.compare import model_labels, ordered
from tsdiffusion.benchmark.references import references_for


def plot(groups: list[Group], entries: list[dict], metrics: list[str], path: Path) -> Path | None:
    """One row of horizontal bar panels per comparison set (task and data: its own scale, so a data set with
    values 100x smaller still shows), one panel per metric: the mean over seeds per group (baselines grey), one
    black dot per run (seed) over it, published values as red crosses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if any(len(g.values(m)) for g in groups)][:4]
    if not metrics or not groups:
        return None
    groups = ordered(groups)
    sets: dict[tuple[str, str], list[int]] = {}
    for i, g in enumerate(groups):
        sets.setdefault(g.comparison, []).append(i)
    names = model_labels(groups)
    sizes = [len(rows) for rows in sets.values()]
    fig = Figure(figsize=(3.6 * len(metrics) + 2.4, 0.42 * len(groups) + 1.0 * len(sets)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(sets), len(metrics), squeeze=False, gridspec_kw={"height_ratios": sizes})
    for row, ((kind, dataset), members) in zip(grid, sets.items()):
        part = [groups[i] for i in members]
        labels = [names[i] + (" †" if groups[i].baseline else "") for i in members]
        y = np.arange(len(part))
        colors = ["0.6" if g.baseline else "C0" for g in part]
        for col, (ax, m) in enumerate(zip(row, metrics)):
            ax.barh(y, [g.mean(m) for g in part], color=colors, alpha=0.7, label="mean over seeds")
            for j, g in enumerate(part):
                v = g.values(m)
                offsets = np.linspace(-0.2, 0.2, len(v)) if len(v) > 1 else np.zeros(len(v))
                ax.scatter(v, j + offsets, color="black", s=12, zorder=3, label="one run" if j == 0 else None)
            ref = [references_for(g, entries).get(m, (math.nan,))[0] for g in part]
            ax.scatter(ref, y, color="C3", marker="x", zorder=4, label="paper")
            ax.set_title(f"{m}: {kind}, {dataset}" if col == 0 else m, fontsize="small")
            ax.set_yticks(y, labels if col == 0 else [""] * len(y), fontsize="small")
            ax.tick_params(axis="x", labelsize="x-small")
            ax.invert_yaxis()
    grid[0][0].legend(fontsize="x-small", loc="best")
    fig.savefig(path, dpi=100)
    return path

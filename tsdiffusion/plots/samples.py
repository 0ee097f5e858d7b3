"""Figures of probabilistic forecasts and imputations (matplotlib, Agg canvas; no pyplot state).

Both functions take one window in the units to be shown (e.g. original units via ``observed * scale + loc``),
return a :class:`matplotlib.figure.Figure` with one panel per series, and save a PNG when given a path.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

ArrayLike = Tensor | np.ndarray


def _np(x: ArrayLike) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)


def new_figure(size: tuple[float, float]) -> Figure:
    """A figure with its own Agg canvas (no pyplot state, no global backend)."""
    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig


def _figure(n: int, title: str | None) -> tuple[Figure, list]:
    fig = new_figure((8, 2.2 * n))
    axes = fig.subplots(n, 1, squeeze=False)[:, 0].tolist()
    if title:
        fig.suptitle(title)
    return fig, axes


def save_figure(fig: Figure, path: str | Path | None) -> None:
    """Write ``fig`` as a PNG at ``path`` (folders created); nothing when ``path`` is None."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)


def fan_chart(
    observed: ArrayLike,
    samples: ArrayLike,
    target_mask: ArrayLike,
    series: Sequence[int] = (0, 1, 2, 3),
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Fan chart of a forecast: history, truth, sample median, 50% and 90% central bands.

    observed: (L, K) the window (history and the true future); samples: (S, L, K); target_mask: (L, K),
    1 on the forecast horizon. The horizon is the steps where any series is scored.
    """
    y, xs, m = _np(observed), _np(samples), _np(target_mask)
    horizon = np.flatnonzero(m.any(axis=1))
    start = int(horizon[0]) if len(horizon) else y.shape[0]
    steps = np.arange(y.shape[0])
    q = np.quantile(xs[:, start:], [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)  # (5, H, K)
    series = [k for k in series if k < y.shape[1]]
    fig, axes = _figure(len(series), title)
    for ax, k in zip(axes, series):
        ax.plot(steps[:start], y[:start, k], color="black", lw=1, label="history")
        ax.plot(steps[start:], y[start:, k], color="black", lw=1, ls="--", label="truth")
        ax.fill_between(steps[start:], q[0, :, k], q[4, :, k], color="C0", alpha=0.2, label="90%")
        ax.fill_between(steps[start:], q[1, :, k], q[3, :, k], color="C0", alpha=0.4, label="50%")
        ax.plot(steps[start:], q[2, :, k], color="C0", lw=1.2, label="median")
        ax.set_ylabel(f"series {k}")
    if axes:
        axes[0].legend(loc="upper left", fontsize="small", ncol=5)
    save_figure(fig, path)
    return fig


def imputation_plot(
    observed: ArrayLike,
    observed_mask: ArrayLike,
    target_mask: ArrayLike,
    samples: ArrayLike,
    series: Sequence[int] = (0, 1, 2, 3),
    path: str | Path | None = None,
    title: str | None = None,
) -> Figure:
    """Imputation: observed (conditioning) points, held-out truth, median imputation and its 5-95% band.

    observed, observed_mask, target_mask: (L, K); samples: (S, L, K). Held-out points are
    ``target_mask == 1``; conditioning points are observed and not held out.
    """
    y, om, tm, xs = _np(observed), _np(observed_mask) > 0, _np(target_mask) > 0, _np(samples)
    q = np.quantile(xs, [0.05, 0.5, 0.95], axis=0)  # (3, L, K)
    steps = np.arange(y.shape[0])
    series = [k for k in series if k < y.shape[1]]
    fig, axes = _figure(len(series), title)
    for ax, k in zip(axes, series):
        cond = om[:, k] & ~tm[:, k]
        ax.fill_between(steps, q[0, :, k], q[2, :, k], color="C1", alpha=0.3, label="5-95%")
        ax.plot(steps, q[1, :, k], color="C1", lw=1, label="median")
        ax.scatter(steps[cond], y[cond, k], s=8, color="black", label="observed")
        ax.scatter(steps[tm[:, k]], y[tm[:, k], k], s=14, marker="x", color="C3", label="held out")
        ax.set_ylabel(f"series {k}")
    if axes:
        axes[0].legend(loc="upper left", fontsize="small", ncol=4)
    save_figure(fig, path)
    return fig


def log_figure(trainer, fig: Figure, name: str, path: str | Path) -> None:
    """Save ``fig`` as a PNG at ``path`` and log it to every active logger that takes images.

    wandb (``WandbLogger.log_image``) and TensorBoard (``add_figure``) receive the figure; other loggers
    (CSV) keep only the PNG beside their files.
    """
    save_figure(fig, path)
    for logger in getattr(trainer, "loggers", []):
        if hasattr(logger, "log_image"):
            logger.log_image(key=name, images=[str(path)], step=trainer.global_step)
        elif hasattr(getattr(logger, "experiment", None), "add_figure"):
            logger.experiment.add_figure(name, fig, global_step=trainer.global_step)


def imputation_windows(batch: dict, samples: Tensor, windows: int, features: int) -> list[dict]:
    """Up to ``windows`` windows of a test batch, each with the ``features`` series with most held-out points.

    Returns dicts of ``imputation_plot`` arguments (normalised units, as imputation is scored).
    """
    out = []
    for b in range(min(windows, batch["observed"].shape[0])):
        held_out = batch["target_mask"][b].sum(dim=0)  # (K,)
        series = [int(k) for k in held_out.argsort(descending=True)[:features] if held_out[k] > 0]
        if series:
            out.append({
                "observed": batch["observed"][b], "observed_mask": batch["observed_mask"][b],
                "target_mask": batch["target_mask"][b], "samples": samples[b], "series": series,
            })  # fmt: skip
    return out


def first_window(batch: dict, samples: Tensor, units) -> tuple[Tensor, Tensor, Tensor]:
    """Window 0 of a test batch in display units: ``(observed (L, K), samples (S, L, K), target_mask (L, K))``.

    ``units(x, batch)`` maps normalised (B, ..., L, K) values to display units (a task's ``to_units``).
    """
    with torch.no_grad():
        return units(batch["observed"], batch)[0], units(samples, batch)[0], batch["target_mask"][0]

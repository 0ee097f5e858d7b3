"""Figure of an anomaly run: the series, its anomaly score, the threshold and the labelled windows."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from tsdiffusion.plots.samples import new_figure


def label_segments(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of every run of ones in a (T,) 0/1 array (NaN counts as 0)."""
    lab = np.nan_to_num(np.asarray(labels, dtype=float)) > 0
    edges = np.diff(np.concatenate([[0], lab.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def plot_anomaly_scores(
    values: np.ndarray, scores: np.ndarray, labels: np.ndarray, threshold: float, title: str | None = None
) -> Figure:
    """Two panels over the test steps (T,): the series (feature 0, original units) and the score with the
    threshold; labelled anomaly windows shaded red, steps over the threshold marked."""
    fig = new_figure((12, 5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = np.arange(len(values))
    top.plot(steps, values, lw=0.7, color="C0")
    bottom.plot(steps, scores, lw=0.7, color="C1", label="score")
    bottom.axhline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold:.3g}")
    flagged = np.nan_to_num(scores, nan=-np.inf) > threshold
    bottom.scatter(steps[flagged], scores[flagged], s=4, color="C3", label="flagged")
    for start, end in label_segments(labels):
        for ax in (top, bottom):
            ax.axvspan(start, end - 1, color="red", alpha=0.15, lw=0)
    top.set_ylabel("value")
    bottom.set_ylabel("anomaly score")
    bottom.set_xlabel("test step")
    bottom.legend(loc="upper right", fontsize=8)
    if title:
        top.set_title(title)
    fig.tight_layout()
    return fig

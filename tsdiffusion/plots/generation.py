"""Figures of synthetic windows against real ones: sample paths, marginals and a 2-D PCA projection."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tsdiffusion.metrics.generation import ArrayLike, _check_pair, pca_2d
from tsdiffusion.plots.samples import new_figure, save_figure


def plot_generation(
    real: ArrayLike, synth: ArrayLike, folder: str | Path, *, num_windows: int = 6, features: Sequence[int] = (0,)
) -> list[Path]:
    """Write ``samples.png`` (real vs synthetic windows), ``marginals.png`` (per-feature histograms) and
    ``pca.png`` (both sets on the real set's first two principal components) into ``folder``.

    real: (N, L, K), synth: (M, L, K), complete windows in the same units.
    """
    r, s = _check_pair(real, synth)
    folder = Path(folder)
    paths = [folder / "samples.png", folder / "marginals.png", folder / "pca.png"]
    feats = [k for k in features if k < r.shape[-1]] or [0]
    fig = new_figure((10, 2.5 * len(feats)))
    axes = fig.subplots(len(feats), 2, squeeze=False)
    for row, k in enumerate(feats):
        for col, (name, x) in enumerate((("real", r), ("synthetic", s))):
            axes[row, col].plot(x[:num_windows, :, k].T, lw=0.8)
            axes[row, col].set_title(f"{name}, feature {k}")
    fig.tight_layout()
    save_figure(fig, paths[0])
    K = min(r.shape[-1], 8)
    fig = new_figure((3 * K, 2.5))
    axes = fig.subplots(1, K, squeeze=False)
    for k in range(K):
        axes[0, k].hist(r[..., k].ravel(), bins=50, alpha=0.5, density=True, label="real")
        axes[0, k].hist(s[..., k].ravel(), bins=50, alpha=0.5, density=True, label="synthetic")
        axes[0, k].set_title(f"feature {k}")
    axes[0, 0].legend()
    fig.tight_layout()
    save_figure(fig, paths[1])
    pr, ps = pca_2d(r, s)
    fig = new_figure((4, 4))
    ax = fig.subplots()
    ax.scatter(*pr.T, s=6, alpha=0.6, label="real")
    ax.scatter(*ps.T, s=6, alpha=0.6, label="synthetic")
    ax.legend()
    ax.set_title("PCA of windows")
    fig.tight_layout()
    save_figure(fig, paths[2])
    return paths

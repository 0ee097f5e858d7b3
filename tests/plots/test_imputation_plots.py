"""Imputation figures: which windows and series are drawn, that test writes them, and that loggers receive them."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from tsdiffusion.denoisers import CSDIDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.plots import imputation_plot, imputation_windows, log_figure
from tsdiffusion.tasks import ImputationTask


def _batch(B=2, L=8, K=5):
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(B, L, K)
    target[0, :5, 3] = 1  # window 0: series 3 has most held-out points, then 1, then none
    target[0, :2, 1] = 1
    target[1, 0, 0] = 1
    return {
        "observed": torch.randn(B, L, K, generator=g),
        "observed_mask": torch.ones(B, L, K),
        "target_mask": target,
        "timepoints": torch.arange(L, dtype=torch.float32).expand(B, L),
    }


def test_windows_pick_series_with_most_held_out_points():
    batch = _batch()
    samples = torch.zeros(2, 3, 8, 5)
    windows = imputation_windows(batch, samples, windows=5, features=4)
    assert len(windows) == 2  # only two windows in the batch
    assert windows[0]["series"] == [3, 1]  # series without held-out points are left out
    assert windows[1]["series"] == [0]
    assert windows[0]["samples"].shape == (3, 8, 5)


class _ImageLogger:
    """Records what a wandb-like logger is asked to log."""

    def __init__(self):
        self.images = []

    def log_image(self, key, images, step=None):
        self.images.append((key, images, step))


def test_log_figure_saves_png_and_hands_it_to_image_loggers(tmp_path):
    batch = _batch()
    w = imputation_windows(batch, torch.randn(2, 4, 8, 5), 1, 2)[0]
    fig = imputation_plot(**w)
    logger = _ImageLogger()
    trainer = type("T", (), {"loggers": [logger, object()], "global_step": 7})()
    log_figure(trainer, fig, "test/imputation_0", tmp_path / "a" / "imp.png")
    assert (tmp_path / "a" / "imp.png").stat().st_size > 1000
    assert logger.images == [("test/imputation_0", [str(tmp_path / "a" / "imp.png")], 7)]


def test_imputation_task_test_writes_plots(tmp_path):
    batch = _batch(B=3)
    loader = DataLoader([{k: v[i] for k, v in batch.items()} for i in range(3)], batch_size=3)
    den = CSDIDenoiser(5, channels=8, layers=1, heads=2, diffusion_embedding_dim=16, time_embedding_dim=16,
                       feature_embedding_dim=4)  # fmt: skip
    task = ImputationTask(den, GaussianDiffusion(num_steps=5), num_samples=3, plot_windows=2, plot_features=2)
    trainer = L.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path), enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)  # fmt: skip
    trainer.test(task, loader)
    written = sorted(p.name for p in tmp_path.rglob("imputation_*.png"))
    assert written == ["imputation_0.png", "imputation_1.png"]

"""Calibration figures: the PIT of a calibrated forecast is uniform and that of an over-confident one U-shaped;
the coverage of central intervals equals the task's coverage metrics; the callback saves and logs them."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

from tsdiffusion.baselines import SamplingBaseline
from tsdiffusion.metrics import Coverage
from tsdiffusion.plots import CalibrationCallback, calibration_plot, central_coverage, pit_values
from tsdiffusion.tasks import ForecastingTask
from tsdiffusion.tasks.base import KeepFreedMemory


def _gaussian(B=4, S=50, L=16, K=3, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    target = torch.randn(B, L, K, generator=g)
    samples = spread * torch.randn(B, S, L, K, generator=g)
    return samples, target, torch.ones(B, L, K)


def test_pit_is_uniform_when_calibrated_and_u_shaped_when_too_narrow():
    samples, target, mask = _gaussian()
    pit = pit_values(samples, target, mask, torch.Generator().manual_seed(1))
    assert pit.shape == (4 * 16 * 3,) and 0 <= pit.min() and pit.max() <= 1
    counts = torch.histc(pit, bins=5, min=0, max=1)
    assert (counts - len(pit) / 5).abs().max() < 0.35 * len(pit) / 5  # flat within sampling noise (n=192)
    narrow = pit_values(0.2 * samples, target, mask, torch.Generator().manual_seed(1))
    edges = ((narrow < 0.1) | (narrow > 0.9)).float().mean()
    assert edges > 0.6  # a calibrated forecast puts 0.2 there


def test_pit_breaks_ties_uniformly_and_counts_by_hand():
    samples = torch.tensor([1.0, 2.0, 2.0, 3.0]).view(1, 4, 1, 1)
    pit = pit_values(samples, torch.tensor([[[2.0]]]), torch.ones(1, 1, 1), torch.Generator().manual_seed(0))
    assert 0.25 <= float(pit) <= 0.75  # one sample below, two equal: (1 + 2U) / 4
    pit = pit_values(samples, torch.tensor([[[2.5]]]), torch.ones(1, 1, 1))
    assert float(pit) == 0.75


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_central_coverage_equals_the_coverage_metric(level):
    samples, target, mask = _gaussian(S=37, spread=0.8)
    mask[0, :4] = 0  # unscored values do not count
    inside, n = central_coverage(samples, target, mask, [level])
    metric = Coverage(level)
    metric.update(samples, target, mask)
    assert n == mask.sum() and float(inside[0] / n) == pytest.approx(float(metric.compute()), abs=1e-12)


def test_calibration_plot_has_two_panels(tmp_path):
    fig = calibration_plot([5, 3, 2, 3, 5], [0.5, 0.9], [0.4, 0.8], path=tmp_path / "c.png", title="t")
    assert len(fig.axes) == 2 and (tmp_path / "c.png").stat().st_size > 1000


class _Noisy(SamplingBaseline):
    """Gaussian noise around the last conditioning value (a crude, not calibrated, forecaster)."""

    def sample(self, batch, cond_mask, num_samples, generator=None):
        x = batch["observed"] * cond_mask
        last = x[:, :8].mean(1, keepdim=True)  # the context is the first 8 steps
        noise = torch.randn((x.shape[0], num_samples, *x.shape[1:]), generator=generator)
        draws = last.unsqueeze(1) + 0.5 * noise
        return torch.where(cond_mask.unsqueeze(1) > 0, x.unsqueeze(1), draws)


def test_the_callback_saves_logs_and_agrees_with_the_task_metrics(tmp_path):
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(6):
        target = torch.zeros(12, 2)
        target[8:] = 1
        items.append({"observed": torch.randn(12, 2, generator=g), "observed_mask": torch.ones(12, 2),
                      "target_mask": target})  # fmt: skip
    task = ForecastingTask(baseline=_Noisy(), num_samples=20, plot_series=0, metrics=["coverage_50", "coverage_90"])
    assert any(isinstance(c, CalibrationCallback) for c in task.configure_callbacks())
    logger = CSVLogger(tmp_path, name="cal")
    trainer = L.Trainer(accelerator="cpu", logger=logger, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    out = trainer.test(task, DataLoader(items, batch_size=4), verbose=False)[0]
    folder = tmp_path / "cal" / "version_0"
    summary = json.loads((folder / "calibration.json").read_text())
    assert (folder / "calibration.png").stat().st_size > 1000 and sum(summary["pit_counts"]) == 6 * 4 * 2
    cov = dict(zip(summary["levels"], summary["coverage"]))
    assert cov[0.5] == pytest.approx(out["test/coverage_50"]) and cov[0.9] == pytest.approx(out["test/coverage_90"])
    quiet = ForecastingTask(baseline=_Noisy(), plot_series=0, plot_calibration=False).configure_callbacks()
    assert [type(c) for c in quiet] == [KeepFreedMemory]  # no figure callbacks

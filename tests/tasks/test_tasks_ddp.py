"""Epoch-end scores under DDP: two CPU processes (gloo, Lightning's ``ddp_spawn``) report the scores of the whole
test set, equal to one process's, for the anomaly, generation and representation tasks.

Each case makes a window's result independent of which rank draws it (a non-learned anomaly scorer; a fixed
sampling / feature generator and one window per batch), so the two runs must agree to rounding; a task that
scored each rank's shard alone would not (``test_a_shard_differs_from_the_whole`` shows the cases can fail).
Odd window counts make Lightning's ``DistributedSampler`` pad a rank with a repeated window, which the gathering
must drop.
"""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tsdiffusion.baselines import RollingMedianScorer
from tsdiffusion.data.anomaly import AnomalyDataModule, AnomalySeries
from tsdiffusion.denoisers.unet1d import UNet1DDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.tasks import AnomalyTask, GenerationTask, RepresentationTask

pytestmark = pytest.mark.slow


def _test(task: L.LightningModule, data, tmp_path, ddp: bool) -> dict[str, float]:
    kw = {"strategy": "ddp_spawn", "devices": 2} if ddp else {"devices": 1}
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, **kw)  # fmt: skip
    return trainer.test(task, datamodule=data, verbose=False)[0]


def _assert_equal(ddp: dict[str, float], single: dict[str, float]) -> None:
    assert sorted(ddp) == sorted(single)
    for name, value in single.items():
        assert ddp[name] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), name


# -- anomaly ----------------------------------------------------------------------------------------------


class TwoSpikySeries(AnomalyDataModule):
    """Two noisy sines with labelled spikes in their test parts (an odd number of windows per loader)."""

    name = "two_spiky_series"

    def load_series(self) -> list[AnomalySeries]:
        rng = np.random.default_rng(0)
        out = []
        for i, length in enumerate((300, 236)):
            x = np.sin(2 * np.pi * np.arange(length) / (12 + 4 * i)) + 0.1 * rng.normal(size=length)
            split = length // 2
            test, labels = x[split:, None].copy(), np.zeros(length - split, dtype=np.float32)
            spikes = rng.choice(np.arange(5, length - split - 5), 4, replace=False)
            test[spikes, 0] += 2.0 + rng.uniform(size=4)
            labels[spikes] = 1
            out.append(AnomalySeries(f"s{i}", x[:split, None].copy(), test, labels))
        return out


def _anomaly():
    data = TwoSpikySeries(window_length=24, stride=8, test_stride=8, batch_size=8, eval_batch_size=5)
    return AnomalyTask(baseline=RollingMedianScorer(width=9), num_samples=2, threshold="pot", pot_level=0.9), data


def test_anomaly_scores_are_those_of_the_whole_test_set(tmp_path):
    task, data = _anomaly()
    single = _test(task, data, tmp_path, ddp=False)
    assert {"test/auroc", "test/pa_f1", "test/threshold"} <= set(single)
    _assert_equal(_test(task, data, tmp_path, ddp=True), single)


# -- generation and representation: one window per batch, draws that do not depend on the rank ------------


class LabelledWindows(L.LightningDataModule):
    """Two classes of short sines (class 1 twice the frequency); 7 test windows, one per batch."""

    def __init__(self, n_train: int = 16, n_test: int = 7, length: int = 16):
        super().__init__()
        self.datasets = {"train": self._windows(n_train, length, 0), "test": self._windows(n_test, length, 1)}
        self.eval_batch_size = 1

    @staticmethod
    def _windows(n: int, length: int, seed: int) -> list[dict[str, torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        label = torch.arange(n) % 2
        phase = torch.rand(n, 1, generator=g) * 6
        t = torch.arange(length, dtype=torch.float32)
        x = torch.sin(0.4 * (1 + label[:, None]) * t + phase) + 0.3 * torch.randn(n, length, generator=g)
        ones = torch.ones(length, 1)
        # ``index``: each window's random streams (tsdiffusion.streams), so its samples do not depend on the rank
        return [{"observed": x[i, :, None], "observed_mask": ones, "target_mask": ones, "label": label[i],
                 "index": torch.tensor(i)} for i in range(n)]  # fmt: skip

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.datasets["test"], batch_size=1, shuffle=False)


def _denoiser(**kw) -> UNet1DDenoiser:
    torch.manual_seed(0)
    return UNet1DDenoiser(1, channels=8, channel_mults=(1,), heads=2, attention=False, **kw)


def test_generation_scores_are_those_of_the_whole_test_set(tmp_path):
    task = GenerationTask(_denoiser(), GaussianDiffusion(num_steps=4), num_samples=2, sample_steps=2,
                               score_iterations=3, score_batch_size=8, plot=False)  # fmt: skip
    data = LabelledWindows()
    single = _test(task, data, tmp_path, ddp=False)
    assert {"test/discriminative", "test/predictive", "test/marginal", "test/acf"} <= set(single)
    _assert_equal(_test(task, data, tmp_path, ddp=True), single)


def test_representation_scores_are_those_of_the_whole_test_set(tmp_path):
    task = RepresentationTask(_denoiser(), GaussianDiffusion(num_steps=4))
    data = LabelledWindows()
    single = _test(task, data, tmp_path, ddp=False)
    assert {"test/probe_accuracy", "test/kmeans_nmi", "test/raw_probe_accuracy"} <= set(single)
    _assert_equal(_test(task, data, tmp_path, ddp=True), single)


class HalfAnomalyTask(AnomalyTask):
    """Scores every other test batch only: what one of two ranks would report without gathering."""

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0):
        return None if batch_idx % 2 else super().test_step(batch, batch_idx, dataloader_idx)


def test_a_shard_differs_from_the_whole(tmp_path):
    """The cases above can fail: scored on a shard of the windows, the numbers change (one process, fast)."""
    task, data = _anomaly()
    whole = _test(task, data, tmp_path, ddp=False)
    half = HalfAnomalyTask(baseline=RollingMedianScorer(width=9), num_samples=2, threshold="pot", pot_level=0.9)
    assert _test(half, data, tmp_path, ddp=False)["test/auroc"] != pytest.approx(whole["test/auroc"], rel=1e-6)

"""A broken run never becomes a number: a non-finite or exploding training loss stops ``fit`` with an error that
names the step and leaves the last good checkpoint; sampled values far outside the data are counted on test and
flag the record, and non-finite metrics do too."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader

from tsdiffusion import hardware
from tsdiffusion.baselines import SamplingBaseline
from tsdiffusion.denoisers import CSDIDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.records import make_record, record_flags
from tsdiffusion.tasks import ImputationTask
from tsdiffusion.tasks.base import TrainingDivergedError, extreme_counts

L_, K = 12, 3


def _items(n: int = 6) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    t = torch.arange(L_, dtype=torch.float32)
    out = []
    for i in range(n):
        values = torch.sin(t / 3 + i)[:, None] + 0.1 * torch.randn(L_, K, generator=g)
        target = (torch.rand(L_, K, generator=g) < 0.3).float()
        out.append({"observed": values, "observed_mask": torch.ones(L_, K), "target_mask": target})
    return out


class _BrokenAt(ImputationTask):
    """Multiplies the loss of one optimisation step by ``factor`` (NaN: a non-finite loss)."""

    def __init__(self, bad_step: int, factor: float, **kwargs):
        denoiser = CSDIDenoiser(K, channels=8, layers=1, heads=1, diffusion_embedding_dim=8, time_embedding_dim=8,
                                feature_embedding_dim=4)  # fmt: skip
        process = GaussianDiffusion(num_steps=10)
        super().__init__(denoiser, process, num_samples=2, plot_windows=0, plot_calibration=False, **kwargs)
        self.bad_step, self.factor = bad_step, factor

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * self.factor if self.global_step == self.bad_step else loss


def _fit(task, tmp_path, epochs: int = 3):
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_on_train_epoch_end=True)
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, callbacks=[ckpt], enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0)  # fmt: skip
    trainer.fit(task, DataLoader(_items(), batch_size=2))  # 3 optimisation steps per epoch
    return ckpt


@pytest.mark.parametrize(("factor", "message"), [(math.nan, "training loss is nan"), (1e7, "over 1000 x")])
def test_a_diverging_loss_stops_fit_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, factor, message):
    torch.manual_seed(0)
    task = _BrokenAt(bad_step=4, factor=factor)  # step 4 (0-based) = epoch 1, batch 1
    with pytest.raises(TrainingDivergedError, match=message) as err:
        _fit(task, tmp_path)
    assert "epoch 1, batch 1" in str(err.value) and "last.ckpt" in str(err.value)
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 0 and saved["global_step"] == 3  # epoch 1's checkpoint was never written
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_a_healthy_run_and_an_unguarded_one_are_not_stopped(tmp_path):
    torch.manual_seed(0)
    _fit(_BrokenAt(bad_step=-1, factor=1.0), tmp_path / "a", epochs=2)  # no bad step
    # divergence_factor=None keeps only the non-finite check: a 1e7 x loss passes
    _fit(_BrokenAt(bad_step=1, factor=1e7, divergence_factor=None), tmp_path / "b", epochs=1)


def test_extreme_counts_by_hand():
    observed = torch.tensor([[[0.5, 3.0]], [[-2.0, 0.1]]])  # (B=2, L=1, K=2): bounds 20*max(1, |x|)
    batch = {"observed": observed, "observed_mask": torch.ones_like(observed), "target_mask": torch.ones_like(observed)}
    samples = torch.zeros(2, 4, 1, 2)  # (B, S, L, K)
    samples[0, 0, 0, 0] = 20.5  # bound 20: extreme
    samples[0, 1, 0, 1] = 59.0  # bound 60: fine
    samples[1, 2, 0, 0] = -41.0  # bound 40: extreme
    samples[1, 3, 0, 1] = math.inf  # non-finite
    samples[1, 0, 0, 1] = math.nan  # non-finite, but not scored below
    assert extreme_counts(samples, batch, 20.0).tolist() == [2.0, 2.0]
    batch["target_mask"] = torch.tensor([[[1.0, 1.0]], [[1.0, 0.0]]])
    assert extreme_counts(samples, batch, 20.0).tolist() == [2.0, 0.0]


class _Exploding(SamplingBaseline):
    """The conditioning values, and 1e6 at every hidden value of window 0's first sample."""

    def sample(self, batch, cond_mask, num_samples, generator=None):
        x = (batch["observed"] * cond_mask).unsqueeze(1).repeat(1, num_samples, 1, 1)
        x[0, 0] = torch.where(cond_mask[0] > 0, x[0, 0], torch.full_like(x[0, 0], 1e6))
        return x


def test_extreme_samples_are_counted_on_test_and_flag_the_record(tmp_path):
    items = _items(4)
    task = ImputationTask(baseline=_Exploding(), num_samples=3, plot_windows=0, plot_calibration=False)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    out = trainer.test(task, DataLoader(items, batch_size=2), verbose=False)[0]
    hidden_in_window_0 = float(items[0]["target_mask"].sum() + items[2]["target_mask"].sum())  # window 0 of 2 batches
    assert out["test/flag_extreme_samples"] == hidden_in_window_0 > 0
    assert out["test/flag_nonfinite_samples"] == 0
    record = make_record(task="ImputationTask", dataset="toy", model="_Exploding", metrics=trainer.callback_metrics,
                         config={"model": {"init_args": {"baseline": {"class_path": "x.y._Exploding"}}}}, seed=1,
                         wall_time_s=1.0)  # fmt: skip
    assert record["flags"] == {"extreme_samples": hidden_in_window_0}
    assert "flag_extreme_samples" not in record["metrics"] and record["baseline"] == "_Exploding"
    assert record["cpu"]


def test_record_flags_name_non_finite_metrics_and_skip_zero_counts():
    metrics = {"crps": float("inf"), "mae_median": float("nan"), "crps_sum": 0.1, "flag_extreme_samples": 0}
    record = make_record(task="T", dataset="d", model="M", metrics=metrics, config={}, seed=1, wall_time_s=0)
    assert record["flags"] == {"non_finite": ["crps", "mae_median"]} and record["baseline"] is None
    assert record_flags({"crps": 0.2, "flag_nonfinite_samples": 3.0}) == {"nonfinite_samples": 3.0}


class _Watch(_BrokenAt):
    """Records the allocator's tuning depth at every training step."""

    def training_step(self, batch, batch_idx):
        self.depths.append(hardware._state.depth)
        return super().training_step(batch, batch_idx)


@pytest.mark.skipif(hardware._glibc() is None, reason="glibc's allocator only")
@pytest.mark.parametrize("factor", [1.0, math.nan])
def test_fit_keeps_freed_memory_while_training_and_gives_it_back(tmp_path, factor):
    """glibc keeps freed memory on its heap during every step of a CPU fit (``keep_freed_memory``) and is set back
    when the fit ends, normally or by an error."""
    torch.manual_seed(0)
    task = _Watch(bad_step=2, factor=factor)
    task.depths = []
    if math.isnan(factor):
        with pytest.raises(TrainingDivergedError):
            _fit(task, tmp_path, epochs=1)
    else:
        _fit(task, tmp_path, epochs=1)
    assert task.depths and all(d == 1 for d in task.depths)
    assert hardware._state.depth == 0

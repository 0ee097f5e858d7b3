"""TimeGrad's training against pytorch-ts 0.6.0's own ``Trainer`` (issue 26): same start, same steps.

The fixture ``tests/fixtures/reference/timegrad_training.pt`` was written by
``benchmarks/reference/twins/lockstep_pts.py --fixture`` in the pytorch-ts venv: ``TimeGradEstimator``'s training
network for exchange_rate_nips (K = 8, LSTM 2 x 40, lags [1, 2], context = prediction = 30, dropout 0 so that the
run is deterministic), its initial weights, 5 batches of 4 windows drawn by its own training loader, the diffusion
steps and noises of each step (drawn in advance; ``GaussianDiffusion.log_prob`` replaced by the same computation
with them), and what ``pts.Trainer(epochs=1, num_batches_per_epoch=5, maximum_learning_rate=1e-2)`` did: the loss
and learning rate of every step and the final weights.

Here ``experiments/forecasting/exchange/timegrad.yaml``'s model (its task and optimiser settings; dropout set to 0)
and its trainer's gradient clipping are trained by Lightning on the same batches with the same draws, from the same
weights. Every step's loss, its learning rate and the final weights must agree: the loss reduction, Adam (betas,
eps, weight decay), the OneCycleLR schedule stepped per batch, and no clipping are pytorch-ts's. With the earlier
config (constant 1e-3, clipping at 10) the learning rates and the losses from step 2 on differ.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from tsdiffusion.denoisers.timegrad import convert_pytorchts_encoder_state_dict, convert_pytorchts_state_dict

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests/fixtures/reference/timegrad_training.pt"
CONFIG = ROOT / "experiments/forecasting/exchange/timegrad.yaml"


def build(spec: dict, **extra):
    module, name = spec["class_path"].rsplit(".", 1)
    return getattr(importlib.import_module(module), name)(**(spec.get("init_args") or {}), **extra)


def ours_batch(b: dict, context: int) -> dict:
    """A pytorch-ts training batch (all observed) -> our window of L = history + horizon steps, mean-scaled over
    the context as ``MeanScaler`` does."""
    seq = torch.cat([b["past_target_cdf"], b["future_target_cdf"]], dim=1)
    scale = b["past_target_cdf"][:, -context:].abs().mean(dim=1, keepdim=True)
    target = torch.zeros_like(seq)
    target[:, -b["future_target_cdf"].shape[1] :] = 1
    return {"observed": seq / scale, "observed_mask": torch.ones_like(seq), "target_mask": target,
            "time_features": torch.cat([b["past_time_feat"], b["future_time_feat"]], dim=1),
            "feature_ids": b["target_dimension_indicator"].long(), "loc": torch.zeros_like(scale),
            "scale": scale}  # fmt: skip


class Recorder(L.Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=False)


@pytest.fixture(scope="module")
def trained(reference):
    torch.manual_seed(0)
    cfg = yaml.safe_load(CONFIG.read_text())
    K = reference["batches"][0]["past_target_cdf"].shape[-1]
    context = reference["batches"][0]["future_target_cdf"].shape[1]  # context = horizon in this config
    model = dict(cfg["model"]["init_args"], rnn_dropout=0.0, plot_series=0, plot_calibration=False)
    model["denoiser"] = build(model["denoiser"], num_features=K)
    model["process"] = build(model["process"])
    task = build({"class_path": cfg["model"]["class_path"], "init_args": model})
    weights = {f"denoiser.{k}": v for k, v in convert_pytorchts_state_dict(reference["init"]).items()}
    weights |= {f"encoder.{k}": v for k, v in convert_pytorchts_encoder_state_dict(reference["init"]).items()}
    missing, unexpected = task.load_state_dict(weights, strict=False)
    assert not unexpected and all(k.startswith("process.") for k in missing), (missing, unexpected)

    draws = list(reference["draws"])
    loss = task.process.loss

    def fixed_draws(denoiser, x0, cond, mask, *, t=None, noise=None, generator=None):
        t, noise = draws.pop(0)
        return loss(denoiser, x0, cond, mask, t=t.long(), noise=noise)

    task.process.loss = fixed_draws
    rec = Recorder()
    trainer = L.Trainer(max_epochs=1, precision="32-true", gradient_clip_val=cfg["trainer"]["gradient_clip_val"],
                        accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[rec])  # fmt: skip
    batches = [ours_batch(b, context) for b in reference["batches"]]
    trainer.fit(task, DataLoader(batches, batch_size=None))
    assert not draws
    return task, rec


def test_every_step_has_pytorch_ts_learning_rate_and_loss(reference, trained):
    _, rec = trained
    assert rec.lrs == pytest.approx(reference["lrs"], rel=1e-6)
    assert rec.losses == pytest.approx(reference["losses"], rel=1e-4)


def test_final_weights_are_pytorch_ts_trainers(reference, trained):
    task, _ = trained
    final = {f"denoiser.{k}": v for k, v in convert_pytorchts_state_dict(reference["final"]).items()}
    final |= {f"encoder.{k}": v for k, v in convert_pytorchts_encoder_state_dict(reference["final"]).items()}
    init = {f"denoiser.{k}": v for k, v in convert_pytorchts_state_dict(reference["init"]).items()}
    init |= {f"encoder.{k}": v for k, v in convert_pytorchts_encoder_state_dict(reference["init"]).items()}
    ours = task.state_dict()
    for key, want in final.items():
        moved = float((want - init[key]).abs().max())
        assert float((ours[key] - want).abs().max()) <= 1e-3 * moved + 1e-6, key

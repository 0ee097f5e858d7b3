"""Lockstep twin, our side (issue 26): repeat ``lockstep_pts.py``'s optimisation with tsdiffusion's TimeGradTask
under a Lightning Trainer, from the same initial weights, on the same batches, with the same diffusion steps and
noises; print where the two runs part (per-step loss and learning rate, final weights).

    . .venv/bin/activate; export PYTHONPATH=$PWD OMP_NUM_THREADS=1
    python benchmarks/reference/twins/lockstep_ours.py DIR/lockstep.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run_twins import pts_to_ours

from tsdiffusion.denoisers.timegrad import TimeGradDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.tasks.forecasting import TimeGradTask


def ours_batch(b: dict, context: int) -> dict:
    """A pytorch-ts training batch -> our TSBatch window (L = history + horizon), mean-scaled over the context."""
    seq = torch.cat([b["past_target_cdf"], b["future_target_cdf"]], dim=1)
    past_obs = torch.minimum(b["past_observed_values"], 1 - b["past_is_pad"].unsqueeze(-1))
    obs = torch.cat([past_obs, b["future_observed_values"]], dim=1)
    ctx, m = b["past_target_cdf"][:, -context:], past_obs[:, -context:]
    scale = ((ctx.abs() * m).sum(1, keepdim=True) / m.sum(1, keepdim=True).clamp(min=1)).clamp(min=1e-10)
    H = b["future_target_cdf"].shape[1]
    target = torch.zeros_like(seq)
    target[:, -H:] = 1
    return {
        "observed": seq / scale,
        "observed_mask": obs,
        "target_mask": target,
        "time_features": torch.cat([b["past_time_feat"], b["future_time_feat"]], dim=1),
        "feature_ids": b["target_dimension_indicator"].long(),
        "loc": torch.zeros_like(scale),
        "scale": scale,
    }


class Listed(Dataset):
    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def make_task(K: int, dropout: float, **overrides) -> TimeGradTask:
    den = TimeGradDenoiser(
        K, cond_dim=100, residual_layers=8, residual_channels=8, dilation_cycle=2, step_frequencies="timegrad"
    )
    proc = GaussianDiffusion(num_steps=100, schedule="linear", beta_start=1e-4, beta_end=0.1, prediction="eps")
    kw = dict(
        num_time_features=4,
        lags=[1, 2],
        cell="LSTM",
        rnn_layers=2,
        rnn_hidden=40,
        rnn_dropout=dropout,
        lr=1e-3,
        weight_decay=1e-6,
        lr_schedule="onecycle",
        max_lr=0.01,
        plot_calibration=False,
        plot_series=0,
    )
    return TimeGradTask(den, proc, **(kw | overrides))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("lockstep", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ref = torch.load(args.lockstep, weights_only=False)
    K = ref["batches"][0]["past_target_cdf"].shape[-1]
    context = ref["batches"][0]["future_target_cdf"].shape[1]  # context = horizon here
    task = make_task(K, ref["args"]["dropout"])
    missing, unexpected = task.load_state_dict(pts_to_ours(ref["init"]), strict=False)
    assert not unexpected and all(k.startswith("process.") for k in missing), (missing, unexpected)
    queue = list(ref["draws"])
    loss0 = task.process.loss

    def loss(den, x0, cond, mask, *, t=None, noise=None, generator=None):
        tt, nz = queue.pop(0)
        return loss0(den, x0, cond, mask, t=tt, noise=nz)

    task.process.loss = loss
    losses, lrs = [], []

    class Rec(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    batches = [ours_batch(b, context) for b in ref["batches"]]
    trainer = L.Trainer(
        max_epochs=1,
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        limit_val_batches=0,
        callbacks=[Rec()],
        accelerator="cpu",
    )
    trainer.fit(task, DataLoader(Listed(batches), batch_size=None))
    n = len(ref["losses"])
    print("step  loss_pts  loss_ours  lr_pts  lr_ours")
    for i in [0, 1, 2, 5, 10, 20, 40, 60, 80, n - 1]:
        if i < n:
            print(f"{i:4d}  {ref['losses'][i]:.6f}  {losses[i]:.6f}  {ref['lrs'][i]:.3e}  {lrs[i]:.3e}")
    diff = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(ref["losses"], losses)]
    first = next((i for i, d in enumerate(diff) if d > 1e-3), None)
    print("first step with relative loss difference > 1e-3:", first, "max rel diff:", max(diff))
    final = pts_to_ours(ref["final"])
    ours = task.state_dict()
    worst = sorted(((float((ours[k] - v).abs().max()), k) for k, v in final.items()), reverse=True)[:5]
    print("largest final-weight differences:", worst)


if __name__ == "__main__":
    main()

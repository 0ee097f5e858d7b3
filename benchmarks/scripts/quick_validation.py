"""How the quick job's PhysioNet settings were chosen: scores on the VALIDATION records only, never on test.

    # validation CRPS of a config's model during training (every N epochs, then several samplers at the end)
    python benchmarks/scripts/quick_validation.py curve experiments/quick/csdi_physionet.yaml --epochs 12 --every 3 \
        --set model.init_args.prior=null                          # e.g. plain CSDI, without the prior
    # the baselines' validation CRPS (point fills, and interpolation plus Gaussian noise of several std), and the
    # std of interpolation's errors at randomly hidden TRAINING values (the prior_scale of the quick config)
    python benchmarks/scripts/quick_validation.py baselines experiments/quick/csdi_physionet.yaml
    # the same with the seasonal fill (period 24) for the electricity gaps, and its noise std
    python benchmarks/scripts/quick_validation.py baselines experiments/quick/csdi_electricity_gaps.yaml --period 24 \
        --noise-std 0.1 0.2 0.3 0.4 0.5

Each line printed is also appended to ``--out`` (JSON lines). ``--set key.path=value`` edits the config (value
parsed as yaml). Runs in bf16 autocast where the config's precision resolves to it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch
import yaml

from tsdiffusion.baselines import InterpolationImputer, LOCFImputer, MeanImputer, SeasonalImputer
from tsdiffusion.fill import interpolate
from tsdiffusion.metrics import ProbabilisticMetrics
from tsdiffusion.runs import instantiate, read_config


def edit(config: dict, assignment: str) -> None:
    """``a.b.c=value`` -> config["a"]["b"]["c"] = yaml value."""
    path, value = assignment.split("=", 1)
    *parents, key = path.split(".")
    node = config
    for p in parents:
        node = node.setdefault(p, {})
    node[key] = yaml.safe_load(value)


def val_scores(sample_fn, loader, num_samples: int) -> dict[str, float]:
    """CRPS and MAE of the median over the validation loader's held-out values; ``sample_fn(batch, cond_mask,
    S, generator) -> (B, S, L, K)`` with a fixed generator per batch."""
    metrics = ProbabilisticMetrics(["crps", "mae_median"])
    for i, batch in enumerate(loader):
        cond_mask = batch["observed_mask"] * (1 - batch["target_mask"])
        samples = sample_fn(batch, cond_mask, num_samples, torch.Generator().manual_seed(i))
        metrics.update(samples.float(), batch["observed"], batch["target_mask"])
    return {k: round(float(v), 4) for k, v in metrics.compute().items()}


def emit(out: Path, row: dict) -> None:
    print(json.dumps(row), flush=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")


def curve(args: argparse.Namespace) -> None:
    config = read_config(args.config)
    for assignment in args.set:
        edit(config, assignment)
    config["trainer"].update(max_epochs=args.epochs, logger=False, check_val_every_n_epoch=10_000,
                             enable_progress_bar=False, default_root_dir=str(args.root))  # fmt: skip
    built = instantiate(config)
    start, spent_eval = time.perf_counter(), [0.0]

    class Evaluate(L.Callback):
        def on_train_epoch_end(self, trainer, task) -> None:
            epoch = trainer.current_epoch + 1
            final = epoch == args.epochs
            if epoch % args.every and not final:
                return
            began = time.perf_counter()
            samplers = args.final_samplers if final else args.samplers
            row = {"name": args.name, "epoch": epoch, "step": trainer.global_step,
                   "train_s": round(began - start - spent_eval[0], 1)}  # fmt: skip
            task.eval()
            for spec in samplers:
                name, _, steps = spec.partition("-")
                task.hparams.sampler, task.hparams.sample_steps = name, int(steps) if steps else None
                t0 = time.perf_counter()
                with torch.no_grad(), trainer.precision_plugin.forward_context():
                    scores = val_scores(task.sample, trainer.datamodule.val_dataloader(), args.samples)
                row.update(
                    {f"{spec}_{k}": v for k, v in scores.items()}, **{f"{spec}_s": round(time.perf_counter() - t0, 1)}
                )
            task.train()
            spent_eval[0] += time.perf_counter() - began
            emit(args.out, row)

    built.trainer.callbacks.append(Evaluate())
    built.trainer.fit(built.task, datamodule=built.datamodule)


def baselines(args: argparse.Namespace) -> None:
    built = instantiate(read_config(args.config), trainer=False)
    dm = built.datamodule
    dm.setup("fit")
    fills = [("mean", MeanImputer), ("locf", LOCFImputer), ("interpolation", InterpolationImputer)]
    if args.period:
        fills.append((f"seasonal({args.period})", lambda **kw: SeasonalImputer(args.period, **kw)))
    for name, make in fills:
        emit(args.out, {"baseline": name, **val_scores(make().sample, dm.val_dataloader(), 2)})
    for name, make in fills[2:]:
        for std in args.noise_std:
            for s in (10, 100):
                scores = val_scores(make(noise_std=std).sample, dm.val_dataloader(), s)
                emit(args.out, {"baseline": f"{name}+N(0,{std}^2)", "samples": s, **scores})
    # interpolation's errors at values hidden as in training (10% of the observed values of each training window)
    g, errors = torch.Generator().manual_seed(0), []
    for batch in dm.train_dataloader():
        observed = batch["observed_mask"]
        hidden = (torch.rand(observed.shape, generator=g) < 0.1).float() * observed
        cond_mask = observed - hidden
        fill = interpolate(batch["observed"] * cond_mask, cond_mask)
        errors.append((batch["observed"] - fill)[hidden > 0])
    e = torch.cat(errors)
    stats = {"std": round(e.std().item(), 4), "mean_abs": round(e.abs().mean().item(), 4), "values": len(e)}
    emit(args.out, {"train_interpolation_error": stats})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("part", choices=("curve", "baselines"))
    p.add_argument("config")
    p.add_argument("--name", default="run")
    p.add_argument("--set", action="append", default=[], help="key.path=yaml value (repeatable)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--every", type=int, default=3)
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--samplers", nargs="+", default=["dpmpp-10"])
    p.add_argument("--final-samplers", nargs="+", default=["dpmpp-10", "ddim-10", "ddpm"])
    p.add_argument("--noise-std", nargs="+", type=float, default=[0.2, 0.35, 0.5, 0.74])
    p.add_argument("--period", type=int, default=0, help="also the seasonal fill of this period (e.g. 24)")
    p.add_argument("--root", type=Path, default=Path("runs/quick_validation"))
    p.add_argument("--out", type=Path, default=Path("runs/quick_validation/scores.jsonl"))
    args = p.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    (curve if args.part == "curve" else baselines)(args)


if __name__ == "__main__":
    main()

"""Time and quality of imputing PhysioNet records with a trained CSDI: DDPM vs DDIM, against PyPOTS's loop.

    python benchmarks/scripts/bench_imputation_samplers.py --run runs/csdi_physionet_cpu/version_0
    python benchmarks/scripts/bench_imputation_samplers.py --run RUN --samplers ddim-10 --records 4 --samples 10
    python benchmarks/scripts/bench_imputation_samplers.py --run RUN --samplers ddpm-50,dpmpp-10,dpmpp-10+bf16

Samplers: ``ddpm-N`` (ancestral on N evenly spaced steps), ``ddim-N``, ``dpmpp-N`` (DPM-Solver++(2M)),
``dpmpp_sde-N`` (its SDE variant), each with N denoiser calls; a ``+bf16`` suffix runs the denoiser under
``torch.autocast("cpu", torch.bfloat16)`` (what ``precision="bf16-mixed"`` does in a Lightning test).

The trained model is the run's ``config.yaml`` plus ``checkpoints/last.ckpt``; the records are the first
``--records`` test records of the run's DataModule (its fold, seed and held-out ratio). Every sampler draws
``--samples`` imputations of all records in one batched call (``records x samples`` rows) from the same seed;
CRPS (19 quantiles), MAE and RMSE of the median are scored on the held-out values in normalised units, as
CSDI reports them. Each row runs in a fresh subprocess; its peak memory is the peak resident set during
sampling above the level before it (Linux: the peak is reset through ``/proc/self/clear_refs`` once the
model and records are loaded and the DataModule freed; ``MALLOC_MMAP_THRESHOLD_`` lets glibc return freed
tensors to the system, so the peak is that of live tensors).

``pypots`` times PyPOTS's CSDI imputation (``BackboneCSDI.forward`` of pypots 1.5, which loops over the
samples and runs the 50 DDPM steps for one sample at a time, a batch of ``--records``) with the same
architecture and parameter count as ours; its weights are untrained (its time does not depend on them), so
it has no CRPS. It draws ``--pypots-samples`` samples and its time is scaled to ``--samples``: each sample is
an identical, independent loop, so the time is linear in their number. Needs ``pip install pypots==1.5``
(only its CSDI files are imported, which need only torch); skipped when absent.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
import yaml
from bench_csdi_denoiser import pypots_csdi_folder, pypots_side_info  # this folder (scripts run as files)

SAMPLERS = ("ddpm-50", "ddim-10", "ddim-5", "dpmpp-10")


def load_run(run: Path):
    """(task, datamodule) of a finished run: its saved config (model + data) and its last checkpoint's weights."""
    from tsdiffusion.runs import instantiate

    config = yaml.safe_load((run / "config.yaml").read_text())
    task, datamodule, _, _ = instantiate({"model": config["model"], "data": config["data"]}, trainer=False)
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    task.load_state_dict(state)
    return task.eval(), datamodule


def first_records(datamodule, n: int) -> dict:
    """The first ``n`` test records as one batch."""
    datamodule.setup("test")
    ds = datamodule.test_dataloader().dataset
    items = [ds[i] for i in range(n)]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> int:
    """Free what is unreferenced, reset the peak resident set (Linux >= 4.0) and return the current one (KiB)."""
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kib("VmRSS")


def peak_mib(rss_kib: int) -> float:
    return (_status_kib("VmHWM") - rss_kib) / 1024


def scores(samples: torch.Tensor, batch: dict) -> dict:
    from tsdiffusion.metrics import ProbabilisticMetrics

    m = ProbabilisticMetrics(["crps", "mae_median", "rmse_median"])
    m.update(samples, batch["observed"], batch["target_mask"])
    return {k: float(v) for k, v in m.compute().items()}


def child_ours(run: Path, sampler: str, records: int, samples: int) -> dict:
    task, dm = load_run(run)
    batch = first_records(dm, records)
    name, _, precision = sampler.partition("+")
    kind, steps = name.split("-")
    if precision not in ("", "bf16"):
        raise ValueError(f"sampler {sampler!r}: the only suffix is '+bf16'")
    task.hparams.sampler, task.hparams.sample_steps, task.hparams.sample_batch_size = kind, int(steps), None
    cond_mask = task.eval_cond_mask(batch)
    del dm
    rss = reset_peak()
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        draws = task.sample(batch, cond_mask, num_samples=samples, generator=gen).float()
    seconds = time.perf_counter() - t0
    row = {"model": "ours", "sampler": sampler, "calls": int(steps), "seconds": seconds}
    row["peak_mib"] = peak_mib(rss)
    row["params"] = sum(p.numel() for p in task.denoiser.parameters())
    return row | scores(draws, batch)


def load_pypots_backbone():
    """PyPOTS's ``BackboneCSDI`` from its CSDI files alone (the package's __init__ imports far more), or None."""
    folder = pypots_csdi_folder()
    if folder is None:
        return None
    package = types.ModuleType("_pypots_csdi")
    package.__path__ = [str(folder)]
    sys.modules["_pypots_csdi"] = package
    backbone_spec = importlib.util.spec_from_file_location("_pypots_csdi.backbone", folder / "backbone.py")
    module = importlib.util.module_from_spec(backbone_spec)
    backbone_spec.loader.exec_module(module)
    return module.BackboneCSDI


def child_pypots(run: Path, records: int, samples: int, pypots_samples: int) -> dict:
    task, dm = load_run(run)
    batch = first_records(dm, records)
    cond_mask = task.eval_cond_mask(batch)
    Backbone = load_pypots_backbone()
    model = Backbone(4, 8, 64, batch["observed"].shape[-1], 128, 16, 128, False, 50, "quad", 1e-4, 0.5).eval()
    embedding = torch.nn.Embedding(batch["observed"].shape[-1], 16)
    observed, mask = batch["observed"].transpose(1, 2), cond_mask.transpose(1, 2)
    del task, dm
    rss = reset_peak()
    with torch.no_grad():
        K = batch["observed"].shape[-1]
        side = pypots_side_info(batch["timepoints"], torch.arange(K).expand(len(cond_mask), K), cond_mask, embedding)
        t0 = time.perf_counter()
        model(observed, mask, side, pypots_samples)
        seconds = time.perf_counter() - t0
    row = {"model": f"pypots ({pypots_samples} drawn)", "sampler": "ddpm-50", "calls": 50 * pypots_samples}
    row["seconds"] = seconds * samples / pypots_samples
    row["peak_mib"] = peak_mib(rss)
    row["params"] = sum(p.numel() for p in model.diff_model.parameters()) + embedding.weight.numel()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a finished ImputationTask run folder")
    p.add_argument(
        "--samplers",
        default=",".join(SAMPLERS),
        help="comma-separated: ddpm-N, ddim-N, dpmpp-N, dpmpp_sde-N (each optionally +bf16), pypots",
    )
    p.add_argument("--records", type=int, default=16)
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--pypots-samples", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        if args.child == "pypots":
            row = child_pypots(args.run, args.records, args.samples, args.pypots_samples)
        else:
            row = child_ours(args.run, args.child, args.records, args.samples)
        print(json.dumps(row))
        return
    samplers = args.samplers.split(",")
    if "pypots" not in samplers and load_pypots_backbone() is not None:
        samplers.append("pypots")
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {args.threads} threads, {args.records} records x {args.samples} samples, "
          f"run {args.run}, load {load}")  # fmt: skip
    header = f"{'model':<20}{'sampler':>15}{'calls':>7}{'seconds':>10}{'vs pypots':>10}{'peak MiB':>10}"
    print(header + f"{'CRPS':>8}{'vs DDPM':>9}{'MAE':>8}{'RMSE':>8}{'params':>9}", flush=True)
    rows = []
    for sampler in samplers:
        cmd = [sys.executable, __file__, "--run", str(args.run), "--child", sampler, "--records", str(args.records)]
        cmd += ["--samples", str(args.samples), "--pypots-samples", str(args.pypots_samples)]
        cmd += ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072"))
        if out.returncode:
            print(f"{sampler}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    pypots = next((r for r in rows if r["model"].startswith("pypots")), None)
    ddpm = next((r for r in rows if r["sampler"].startswith("ddpm") and "crps" in r), None)
    for r in rows:
        speed = f"{pypots['seconds'] / r['seconds']:.1f}x" if pypots else "-"
        crps = f"{r['crps']:.4f}" if "crps" in r else "-"
        rel = f"{100 * (r['crps'] / ddpm['crps'] - 1):+.1f}%" if ddpm and "crps" in r else "-"
        mae = f"{r['mae_median']:.4f}" if "crps" in r else "-"
        rmse = f"{r['rmse_median']:.4f}" if "crps" in r else "-"
        print(
            f"{r['model']:<20}{r['sampler']:>15}{r['calls']:>7}{r['seconds']:>10.1f}{speed:>10}{r['peak_mib']:>10.0f}"
            f"{crps:>8}{rel:>9}{mae:>8}{rmse:>8}{r['params']:>9}"
        )


if __name__ == "__main__":
    main()

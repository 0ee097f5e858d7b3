"""Twin runs (issue 26): TimeGrad trained by pytorch-ts 0.6.0 and by tsdiffusion at the same config, each model
scored by both evaluations.

    bash benchmarks/reference/twins/setup_pytorchts.sh /work/refenv/pts        # once
    . .venv/bin/activate; export PYTHONPATH=$PWD OMP_NUM_THREADS=1
    python benchmarks/reference/twins/run_twins.py run --side reference --seeds 1 2 3
    python benchmarks/reference/twins/run_twins.py run --side ours --seeds 1 2 3
    python benchmarks/reference/twins/run_twins.py table

Runs in the project's venv; the reference side is a subprocess in the pytorch-ts venv (``--pts``,
``benchmarks/reference/twins/timegrad_pts.py``), so neither environment imports the other's code.

For each (side, seed), resumable (a finished pair is skipped), one JSON under ``--results``
(``benchmarks/results/twins/timegrad_exchange/{side}_s{seed}.json``):

* ``reference``: ``timegrad_pts.py`` trains and scores with pytorch-ts's pipeline and ``MultivariateEvaluator``
  (column "scored by reference"); its state dict is converted (``convert_pytorchts_state_dict`` and
  ``convert_pytorchts_encoder_state_dict``) into a checkpoint of our ``TimeGradTask`` and scored by ``tsdiffusion
  test`` on our test windows (column "scored by ours");
* ``ours``: ``tsdiffusion fit`` with ``--config`` (default the paper config,
  ``experiments/forecasting/exchange/timegrad.yaml``), scored by its own test (column "scored by ours"); its weights
  are converted back to pytorch-ts names (:func:`ours_to_pts`) and scored by ``timegrad_pts.py --load-state``.

Both evaluations use 100 samples per test date, the 5 rolling test dates of exchange_rate_nips and 19 quantiles
(CRPS = mean weighted quantile loss over all series and steps, CRPS-sum the same on the sum over series).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]
PTS_SCRIPT = ROOT / "benchmarks/reference/twins/timegrad_pts.py"
CONFIG = ROOT / "experiments/forecasting/exchange/timegrad.yaml"
RESULTS = ROOT / "benchmarks/results/twins/timegrad_exchange"


# -- weight conversion -------------------------------------------------------------------------------------------
def pts_to_ours(pts_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pytorch-ts ``TimeGradTrainingNetwork`` state dict -> ``TimeGradTask`` keys (``denoiser.*``, ``encoder.*``)."""
    from tsdiffusion.denoisers.timegrad import convert_pytorchts_encoder_state_dict, convert_pytorchts_state_dict

    out = {f"denoiser.{k}": v for k, v in convert_pytorchts_state_dict(pts_state).items()}
    out.update({f"encoder.{k}": v for k, v in convert_pytorchts_encoder_state_dict(pts_state).items()})
    return out


def ours_to_pts(ours: dict[str, torch.Tensor], pts_template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`pts_to_ours`, key by key against a pytorch-ts state dict of the same architecture
    (``pts_template``: its names and shapes; entries the converters do not map, the diffusion schedule buffers,
    keep the template's values). A converted kernel-3 weight (O, 3 I) ordered (tap, channel) goes back to
    (O, I, 3), a kernel-1 weight (O, I) to (O, I, 1)."""
    from einops import rearrange

    from tsdiffusion.denoisers.timegrad import convert_pytorchts_encoder_state_dict, convert_pytorchts_state_dict

    out = {}
    for key, value in pts_template.items():
        # the network holds its eps-network twice, as ``denoise_fn.*`` and ``diffusion.denoise_fn.*`` (one module,
        # two names): both must carry the converted weights, or load_state_dict lets the template's second copy win
        key_as = key.removeprefix("diffusion.") if key.startswith("diffusion.denoise_fn.") else key
        mapped = (
            {f"denoiser.{k}" for k in convert_pytorchts_state_dict({key_as: value})}
            if key_as.startswith("denoise_fn.")
            else {f"encoder.{k}" for k in convert_pytorchts_encoder_state_dict({key_as: value})}
        )
        if not mapped:
            out[key] = value.clone()
            continue
        (ours_key,) = mapped
        w = ours[ours_key].detach().clone()
        if value.dim() == 3:
            w = w.unsqueeze(-1) if value.shape[-1] == 1 else rearrange(w, "o (tap i) -> o i tap", tap=value.shape[-1])
        if w.shape != value.shape:
            raise ValueError(f"{key}: ours {tuple(w.shape)} vs pytorch-ts {tuple(value.shape)}")
        out[key] = w
    missing = set(ours) - {k for k in ours if k.startswith(("denoiser.", "encoder."))}
    if missing - {k for k in ours if k.startswith("process.")}:
        raise ValueError(f"weights not converted: {sorted(missing)}")
    return out


def ckpt_with_weights(template_ckpt: Path, weights: dict[str, torch.Tensor], out: Path) -> Path:
    """A copy of one of our checkpoints with its model weights replaced (every key must exist, same shape)."""
    ckpt = torch.load(template_ckpt, map_location="cpu", weights_only=False)
    state = ckpt["state_dict"]
    learned = {k for k in state if k.startswith(("denoiser.", "encoder."))}
    if learned != set(weights):
        raise ValueError(f"key mismatch: only ours {sorted(learned - set(weights))}, "
                         f"only given {sorted(set(weights) - learned)}")  # fmt: skip
    for k, v in weights.items():
        if state[k].shape != v.shape:
            raise ValueError(f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}")
        state[k] = v.to(state[k].dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out


# -- the two sides -----------------------------------------------------------------------------------------------
def sh(cmd: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(map(str, cmd)), f"> {log}", flush=True)
    with open(log, "w") as f:
        subprocess.run([str(c) for c in cmd], check=True, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)


def ours_cli(*args) -> list[str]:
    return [sys.executable, "-m", "tsdiffusion.cli", *args]


def our_metrics(record_dir: Path) -> dict:
    m = json.loads((record_dir / "metrics.json").read_text())["metrics"]
    return {"crps": m["test/crps"] if "test/crps" in m else m["crps"],
            "crps_sum": m["test/crps_sum"] if "test/crps_sum" in m else m["crps_sum"]}  # fmt: skip


def score_ours(config: Path, ckpt: Path, seed: int, work: Path, extra: list[str]) -> dict:
    """Our evaluation (``tsdiffusion test``) of a checkpoint."""
    record = work / "ours_eval"
    logs = work / "ours_eval_logs"
    sh(ours_cli("test", "-c", config, "--ckpt_path", ckpt, "--seed_everything", seed, "--record_dir", record,
                "--trainer.logger.init_args.save_dir", logs, *extra), work / "ours_eval.log")  # fmt: skip
    return our_metrics(record)


def score_reference(pts_python: str, state: Path, seed: int, work: Path) -> dict:
    out = work / "pts_eval"
    sh([pts_python, PTS_SCRIPT, "--seed", seed, "--out", out, "--load-state", state], work / "pts_eval.log")
    rec = json.loads((out / "record.json").read_text())
    return {"crps": rec["crps"], "crps_sum": rec["crps_sum"]}


def template_ckpt(config: Path, work: Path, extra: list[str]) -> Path:
    """One of our checkpoints of this config's architecture (one training step, no test): a frame to fill."""
    ckpt = work / "template/checkpoints/last.ckpt"
    if not ckpt.exists():
        sh(ours_cli("fit", "-c", config, "--trainer.max_steps", 1, "--trainer.limit_val_batches", 0,
                    "--test_after_fit", "false", "--trainer.logger.init_args.save_dir", work,
                    "--trainer.logger.init_args.name", "template", "--trainer.logger.init_args.version", "",
                    "--checkpoint.dirpath", ckpt.parent, *extra), work / "template.log")  # fmt: skip
    return ckpt


def run_reference(seed: int, args) -> dict:
    work = args.work / f"reference_s{seed}"
    if not (work / "train/record.json").exists():  # a finished training run is reused
        sh([args.pts, PTS_SCRIPT, "--seed", seed, "--epochs", args.epochs, "--out", work / "train"], work / "train.log")
    own = json.loads((work / "train/record.json").read_text())
    state = torch.load(work / "train/state_dict.pt", map_location="cpu")
    ckpt = ckpt_with_weights(
        template_ckpt(args.config, args.work, args.extra), pts_to_ours(state), work / "as_ours.ckpt"
    )
    return {
        "side": "reference", "seed": seed,
        "scored_by_reference": {"crps": own["crps"], "crps_sum": own["crps_sum"]},
        "scored_by_ours": score_ours(args.config, ckpt, seed, work, args.extra),
        "train_s": own["train_s"], "epochs": args.epochs, "reference_record": own,
    }  # fmt: skip


def run_ours(seed: int, args) -> dict:
    work = args.work / f"ours_s{seed}"
    t0 = time.time()
    if not (work / "record/metrics.json").exists():  # a finished fit + test is reused
        sh(ours_cli("fit", "-c", args.config, "--seed_everything", seed, "--data.init_args.seed", seed,
                    "--trainer.max_epochs", args.epochs, "--record_dir", work / "record",
                    "--trainer.logger.init_args.save_dir", work,
                    "--checkpoint.dirpath", work / "checkpoints", *args.extra), work / "fit.log")  # fmt: skip
    wall = time.time() - t0
    ckpt = work / "checkpoints/last.ckpt"
    ours_state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    record = {
        "side": "ours", "seed": seed, "scored_by_ours": our_metrics(work / "record"),
        "fit_and_test_wall_s": round(wall, 1), "config": str(args.config.relative_to(ROOT)), "extra": args.extra,
        "epochs": args.epochs,
    }  # fmt: skip
    if args.no_cross:
        return record
    template = args.pts_template or next(args.work.glob("reference_s*/train/state_dict.pt"), None)
    if template is None:
        raise SystemExit("ours -> pytorch-ts needs a pytorch-ts state dict of the same architecture: run the "
                         "reference side first or give --pts-template")  # fmt: skip
    pts_state = ours_to_pts(ours_state, torch.load(template, map_location="cpu"))
    torch.save(pts_state, work / "as_pts.pt")
    return record | {"scored_by_reference": score_reference(args.pts, work / "as_pts.pt", seed, work)}


def machine() -> str:
    """This CPU's model name and vector extensions (from /proc/cpuinfo), cores, and the thread setting."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
                name = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
    except OSError:
        pass
    tags = ", ".join(tag for f, tag in (("amx_tile", "AMX"), ("avx512f", "AVX-512"), ("avx2", "AVX2")) if f in flags)
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    return f"{name} ({tags or 'no AVX2'}), {os.cpu_count()} cores, OMP_NUM_THREADS={threads}"


# -- the table ---------------------------------------------------------------------------------------------------
def table(results: Path) -> str:
    rows = []
    for side, label in (("reference", "trained by pytorch-ts 0.6.0"), ("ours", "trained by tsdiffusion")):
        recs = [json.loads(p.read_text()) for p in sorted(results.glob(f"{side}_s*.json"))]
        if not recs:
            continue
        cells = []
        for col in ("scored_by_reference", "scored_by_ours"):
            for metric in ("crps", "crps_sum"):
                vals = [r[col][metric] for r in recs if col in r]
                if not vals:
                    cells.append("–")
                    continue
                sd = f" ± {statistics.stdev(vals):.4f}" if len(vals) > 1 else ""
                cells.append(f"{statistics.mean(vals):.4f}{sd} (n={len(vals)})")
        seeds = ",".join(str(r["seed"]) for r in recs)
        rows.append(f"| {label} (seeds {seeds}) | " + " | ".join(cells) + " |")
    head = ("| | scored by reference: CRPS | CRPS-sum | scored by ours: CRPS | CRPS-sum |\n"
            "| --- | --- | --- | --- | --- |")  # fmt: skip
    return "\n".join([head, *rows])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--side", choices=["reference", "ours"], required=True)
    run.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    run.add_argument("--pts", default=os.environ.get("PTS_PYTHON", "/work/refenv/pts/bin/python"))
    run.add_argument("--config", type=Path, default=CONFIG)
    run.add_argument("--results", type=Path, default=RESULTS)
    run.add_argument("--work", type=Path, default=Path("/work/runs/twins/harness"))
    run.add_argument("--pts-template", type=Path, help="a pytorch-ts state dict of the same architecture")
    run.add_argument("--epochs", type=int, default=20, help="epochs of 100 batches, both sides (paper: 20)")
    run.add_argument("--no-cross", action="store_true", help="ours only: skip the pytorch-ts evaluation of our weights")
    run.add_argument("extra", nargs="*", help="overrides passed to tsdiffusion fit/test (after --)")
    tab = sub.add_parser("table")
    tab.add_argument("--results", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.cmd == "table":
        print(table(args.results))
        return
    args.config = args.config.resolve()
    args.results.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        out = args.results / f"{args.side}_s{seed}.json"
        if out.exists():
            print(f"{out}: done, skipped")
            continue
        rec = (run_reference if args.side == "reference" else run_ours)(seed, args)
        rec["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        rec["machine"] = machine()
        out.write_text(json.dumps(rec, indent=1, default=str) + "\n")
        print(out, json.dumps({k: rec.get(k) for k in ("scored_by_reference", "scored_by_ours")}), flush=True)


if __name__ == "__main__":
    main()

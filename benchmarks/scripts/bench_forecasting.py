"""Speed and memory of the forecasting tasks (CSDI forecasting, TimeGrad) at electricity and traffic size.

    python benchmarks/scripts/bench_forecasting.py                       # every case, 1 thread
    python benchmarks/scripts/bench_forecasting.py --cases csdi-train --threads 2 --repeats 3
    python benchmarks/scripts/bench_forecasting.py --cases csdi-train --threads 2 --original ../CSDI  # + original

Each case runs in a fresh subprocess so that its peak resident memory (``ru_maxrss`` minus the RSS just
before the first call) is its own. Synthetic inputs of the benchmark sizes (speed does not depend on the
values); no metric here is a forecasting result.

Columns:
    train s/step    ``training_step`` + backward + Adam step of the task, median of ``--repeats`` after a warm-up
    sample 100      time to draw 100 samples for ONE test window, DDPM (every training step) and DDIM
                    (``--ddim-steps``). Measured as the time of ``--calls`` denoiser calls per chain, scaled to
                    the full number of calls (a chain's cost is linear in its calls), and from ``--samples`` to 100
                    draws (linear in the rows); "x" marks scaled values. Peak memory is that of the rows drawn.
    peak MiB        peak RSS increase over the case (training, or sampling with ``sample_batch_size`` rows)

Cases (K: 370 electricity, 963 traffic):
    csdi-train      B=8, L=168+24, 64 of K series per window, channels 64, 4 layers (CSDI's config), for each of
                    --variants (CSDI models below)
    csdi-sample     one window, L=192, all K series, S=100 in chunks of --csdi-chunk rows
    timegrad-train  B=64, L=168 lags + 24 + 24, all K series (TimeGrad's config)
    timegrad-sample one window, 24 steps ahead, S=100 in one batch
CSDI variants (--variants):
    linear-bf16     CSDIDenoiser(attention="linear"), the original's forecasting layers (linear-attention
                    transformers), under ``torch.autocast("cpu", torch.bfloat16)`` (Lightning's
                    ``precision="bf16-mixed"``)
    linear-fp32     the same in float32
    softmax-fp32    CSDIDenoiser(attention="softmax"): full softmax attention (CSDI's imputation layers)
    original        the original CSDI code (``CSDI_Forecasting`` of ``main_model.py``, ermongroup/CSDI, with
                    ``config/base_forecasting.yaml``: linear attention, float32), when --original names a checkout
                    of it (it imports ``linear_attention_transformer``, 0.19 with local-attention 1.4 and
                    product-key-memory 0.1 installs without further dependencies). Its training step is
                    ``model(batch)``, backward, Adam step, as its ``utils.train`` does.
Reference (brief): the original CSDI forecasting code at the electricity config takes 3.9 s per training
step with an 8 GB peak on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

from tsdiffusion.denoisers import CSDIDenoiser
from tsdiffusion.denoisers.timegrad import TimeGradDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.tasks.forecasting import ForecastingTask, TimeGradTask, timegrad_process

CASES = ("csdi-train", "csdi-sample", "timegrad-train", "timegrad-sample")
VARIANTS = ("linear-bf16", "linear-fp32", "softmax-fp32", "original")
SIZES = (370, 963)
H, CONTEXT, LAG, F_TIME = 24, 168, 168, 4


def make_batch(B: int, L: int, K: int, H: int) -> dict:
    target = torch.zeros(B, L, K)
    target[:, -H:] = 1
    return {
        "observed": torch.randn(B, L, K), "observed_mask": torch.ones(B, L, K), "target_mask": target,
        "timepoints": torch.arange(L).float().expand(B, L), "feature_ids": torch.arange(K).expand(B, K),
        "time_features": torch.rand(B, L, F_TIME) - 0.5, "loc": torch.zeros(B, 1, K), "scale": torch.ones(B, 1, K),
    }  # fmt: skip


def build(case: str, K: int, chunk: int, variant: str = "softmax-fp32"):
    if case.startswith("csdi"):
        attention = variant.split("-")[0]
        den = CSDIDenoiser(K, channels=64, layers=4, heads=8, attention_dropout=0.0, attention=attention)
        process = GaussianDiffusion(50, "quad", 1e-4, 0.5)
        task = ForecastingTask(den, process, num_train_features=64, sample_batch_size=chunk)
        return task, (8, CONTEXT + H, K)
    den = TimeGradDenoiser(K)
    return TimeGradTask(den, timegrad_process(), num_time_features=F_TIME), (64, LAG + H + H, K)


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def autocast(variant: str):
    bf16 = variant.endswith("bf16")
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def train_case(task, shape, repeats: int, variant: str = "softmax-fp32") -> dict:
    batch = make_batch(*shape, H)
    opt = torch.optim.Adam(task.parameters(), lr=1e-3)
    task.log = lambda *a, **k: None
    task.train()

    def step() -> None:
        opt.zero_grad()
        with autocast(variant):
            loss = task.training_step(batch, 0)
        loss.backward()
        opt.step()

    return {"train_s_per_step": _median(step, repeats)}


def build_original(folder: str, K: int) -> torch.nn.Module:
    """The original code's CSDI_Forecasting at its electricity config (``config/base_forecasting.yaml``)."""
    import yaml

    sys.path.insert(0, folder)
    from main_model import CSDI_Forecasting  # the original code, only when asked for

    with open(f"{folder}/config/base_forecasting.yaml") as f:
        config = yaml.safe_load(f)
    return CSDI_Forecasting(config, "cpu", K)


def original_train_case(model: torch.nn.Module, K: int, repeats: int) -> dict:
    """``utils.train`` of the original: ``model(batch)``, backward, Adam step (weight decay 1e-6)."""
    B, L = 8, CONTEXT + H
    gt_mask = torch.ones(B, L, K)
    gt_mask[:, -H:] = 0
    batch = {"observed_data": torch.randn(B, L, K), "observed_mask": torch.ones(B, L, K), "gt_mask": gt_mask,
             "timepoints": torch.arange(L).float().expand(B, L)}  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    model.train()

    def step() -> None:
        opt.zero_grad()
        model(batch).backward()
        opt.step()

    return {"train_s_per_step": _median(step, repeats)}


def sample_case(task, K: int, calls: int, ddim_steps: int, samples: int) -> dict:
    """Time ``calls`` denoiser calls per chain for one window with ``samples`` draws, scaled to 100 samples and
    to full DDPM and DDIM chains."""
    L = (CONTEXT if isinstance(task, ForecastingTask) else LAG + H) + H
    batch = make_batch(1, L, K, H)
    task.eval()
    N = task.process.num_steps
    task.hparams.update(sampler="ddpm", sample_steps=calls)
    t0 = time.perf_counter()
    task.sample(batch, task.eval_cond_mask(batch), num_samples=samples)
    measured = (time.perf_counter() - t0) * 100 / samples
    scaled = calls < N or samples < 100
    return {"ddpm_s": measured * N / calls, "ddim_s": measured * ddim_steps / calls, "scaled": scaled}


def run_child(case: str, K: int, variant: str, args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    row = {"case": case, "K": K, "model": variant if case.startswith("csdi") else "TimeGrad"}
    if variant == "original":
        model = build_original(args.original, K)
        measure = lambda: original_train_case(model, K, args.repeats)
    elif case.endswith("train"):
        task, shape = build(case, K, args.csdi_chunk, variant)
        measure = lambda: train_case(task, shape, args.repeats, variant)
    else:
        task, _ = build(case, K, args.csdi_chunk, variant)

        def measure() -> dict:
            with autocast(variant):
                return sample_case(task, K, args.calls, args.ddim_steps, args.samples)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    row |= measure()
    row["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    return row


def print_table(rows: list[dict], args) -> None:
    print(
        f"threads={args.threads}  torch {torch.__version__}  DDIM steps={args.ddim_steps}  CSDI chunk={args.csdi_chunk}"
    )
    print(
        f"{'case':<16} {'model':<13} {'K':>4} {'train s/step':>13} {'DDPM 100 smp s':>15} {'DDIM 100 smp s':>15} "
        f"{'peak MiB':>9}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['case']:<16} {r['model']:<13} {r['K']:>4}  failed: {r['error']}")
            continue
        mark = "x" if r.get("scaled") else " "
        train = f"{r['train_s_per_step']:.2f}" if "train_s_per_step" in r else "-"
        ddpm = f"{r['ddpm_s']:.1f}{mark}" if "ddpm_s" in r else "-"
        ddim = f"{r['ddim_s']:.1f}{mark}" if "ddim_s" in r else "-"
        print(f"{r['case']:<16} {r['model']:<13} {r['K']:>4} {train:>13} {ddpm:>15} {ddim:>15} {r['peak_mib']:>9.0f}")
    print("x: scaled from --calls denoiser calls per chain (and --samples draws) to full chains and 100 samples")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--calls", type=int, default=2, help="denoiser calls measured per chain")
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--samples", type=int, default=100, help="samples drawn (times are scaled to 100)")
    p.add_argument("--csdi-chunk", type=int, default=10, help="rows (samples) per CSDI sampler call")
    p.add_argument("--variants", default="linear-bf16,linear-fp32,softmax-fp32",
                   help="comma-separated CSDI models, of: " + ", ".join(VARIANTS))  # fmt: skip
    p.add_argument("--original", help="a checkout of the original CSDI code (ermongroup/CSDI): adds 'original'")
    p.add_argument("--child", nargs=3, metavar=("CASE", "K", "VARIANT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        p.error(f"--variants: unknown {sorted(unknown)}; choose from {VARIANTS}")
    if args.original and "original" not in variants:
        variants.append("original")
    if "original" in variants and not args.original:
        p.error("--variants original needs --original PATH (a checkout of ermongroup/CSDI)")
    if args.child:
        print(json.dumps(run_child(args.child[0], int(args.child[1]), args.child[2], args)))
        return
    rows = []
    passthrough = ["--threads", str(args.threads), "--repeats", str(args.repeats), "--calls", str(args.calls),
                   "--ddim-steps", str(args.ddim_steps), "--csdi-chunk", str(args.csdi_chunk),
                   "--samples", str(args.samples)]  # fmt: skip
    passthrough += ["--original", args.original] if args.original else []
    for case in args.cases:
        case_variants = variants if case.startswith("csdi") else ["-"]
        if case == "csdi-sample":  # the original draws one sample per chain: not timed here
            case_variants = [v for v in variants if v != "original"]
        for K in args.sizes if not case == "csdi-train" else args.sizes[:1]:  # 64 sampled series: K-independent
            for variant in case_variants:
                cmd = [sys.executable, __file__, "--child", case, str(K), variant, *passthrough]
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
                try:
                    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                except (IndexError, json.JSONDecodeError):
                    rows.append({"case": case, "K": K, "model": variant, "error": out.stderr.strip().splitlines()[-1:]})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print_table(rows, args)


if __name__ == "__main__":
    main()

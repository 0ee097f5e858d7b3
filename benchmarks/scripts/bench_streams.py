"""What per-window random streams cost: a task's ``sample`` with a ``torch.Generator`` (draws in call order,
batch-dependent) against :class:`tsdiffusion.streams.RowStreams` (batch-invariant), in one process, interleaved,
medians of ``--repeats``.

    python benchmarks/scripts/bench_streams.py --repeats 5 --out benchmarks/results/speed/amd-epyc-avx2

Cases: the quick job's CSDI imputation model (32 clients x 48 h, 16 windows a batch, 20 samples, DDIM-10; and DDPM
over all 50 steps, which draws noise at every step) and its TimeGrad (8 series, 30-step horizon, 5 windows,
20 samples DDIM-10; and DDPM over all 100 steps, 3000 draws per forecast). Random weights: the cost of the
draws does not depend on them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from tsdiffusion.denoisers import CSDIDenoiser
from tsdiffusion.denoisers.timegrad import TimeGradDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.records import cpu_model
from tsdiffusion.streams import RowStreams
from tsdiffusion.tasks import ImputationTask
from tsdiffusion.tasks.forecasting import TimeGradTask


def batch(B: int, L: int, K: int, horizon: int | None, F: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    target = torch.zeros(B, L, K)
    if horizon:
        target[:, -horizon:] = 1
    else:
        target = (torch.rand(B, L, K, generator=g) < 0.1).float()
    out = {
        "observed": torch.randn(B, L, K, generator=g), "observed_mask": torch.ones(B, L, K), "target_mask": target,
        "timepoints": torch.arange(L).float().expand(B, L), "feature_ids": torch.arange(K).expand(B, K),
        "index": torch.arange(B),
    }  # fmt: skip
    if F:
        out["time_features"] = torch.rand(B, L, F, generator=g) - 0.5
    return out


def csdi(sampler: str, steps: int | None) -> ImputationTask:
    den = CSDIDenoiser(32, channels=32, layers=2, heads=4, diffusion_embedding_dim=64, time_embedding_dim=64,
                       feature_embedding_dim=8, dropout=0.0)  # fmt: skip
    process = GaussianDiffusion(50, "quad", 1e-4, 0.5, prediction="v")
    return ImputationTask(den, process, num_samples=20, sampler=sampler, sample_steps=steps).eval()


def timegrad(sampler: str, steps: int | None, samples: int) -> TimeGradTask:
    den = TimeGradDenoiser(8, cond_dim=100, residual_layers=8, residual_channels=8, dilation_cycle=2)
    process = GaussianDiffusion(100, "linear", 1e-4, 0.1)
    return TimeGradTask(den, process, num_time_features=3, lags=[1, 2], num_samples=samples, sampler=sampler,
                        sample_steps=steps, sample_batch_size=10000).eval()  # fmt: skip


CASES = {
    "CSDI quick, DDIM-10 x 20": (lambda: csdi("ddim", 10), (16, 48, 32, None)),
    "CSDI quick, DDPM-50 x 20": (lambda: csdi("ddpm", None), (16, 48, 32, None)),
    "TimeGrad quick, DDIM-10 x 20": (lambda: timegrad("ddim", 10, 20), (5, 62, 8, 30, 3)),
    "TimeGrad quick, DDPM-100 x 20": (lambda: timegrad("ddpm", None, 20), (5, 62, 8, 30, 3)),
}


def run(task, b, source) -> float:
    t0 = time.perf_counter()
    with torch.no_grad():
        task.sample(b, task.eval_cond_mask(b), generator=source())
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--out", type=Path, default=None, help="folder for streams_overhead.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    print(f"{'case':34} {'generator s':>12} {'streams s':>10} {'ratio':>7}")
    for name in args.cases:
        make, shape = CASES[name]
        torch.manual_seed(0)
        task, b = make(), batch(*shape)
        gen = lambda: torch.Generator().manual_seed(1)
        streams = lambda b=b, s=task.hparams.num_samples: RowStreams.for_windows(1, b["index"], s)
        run(task, b, gen)  # warm-up
        times = {"generator": [], "streams": []}
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            times["generator"].append(run(task, b, gen))
            times["streams"].append(run(task, b, streams))
        med = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"case": name, **{f"{k}_s": v for k, v in med.items()}, "ratio": med["streams"] / med["generator"],
                     "all_s": times})  # fmt: skip
        print(f"{name:34} {med['generator']:12.3f} {med['streams']:10.3f} {rows[-1]['ratio']:7.3f}", flush=True)
        if args.out:  # after every case, so a stopped run keeps what it measured
            write(args.out, rows, args.repeats)


def write(out: Path, rows: list[dict], repeats: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    info = {"cpu": cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "repeats": repeats, "rows": rows}  # fmt: skip
    (out / "streams_overhead.json").write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()

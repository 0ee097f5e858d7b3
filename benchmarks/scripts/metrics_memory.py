"""Peak memory and time of one traffic-sized metrics update (S=100, L=192, K=963 per window).

Each case runs in a fresh subprocess. On CPU the peak is the growth of the process's high-water RSS
(``resource.getrusage().ru_maxrss``) over its resident size once the inputs exist; on CUDA it is
``torch.cuda.max_memory_allocated`` over the allocated memory once the inputs exist. The inputs
themselves (samples, target, mask) are not counted. "first" is the first update + compute (the one
whose peak is measured), "repeat" the best wall time of ``--repeats`` more on a fresh metric, with its
CPU time over all threads (less sensitive than wall time to other load on the machine).

    PYTHONPATH=. python benchmarks/scripts/metrics_memory.py       # CPU, one traffic window (or pip install -e .)
    PYTHONPATH=. python benchmarks/scripts/metrics_memory.py --device cuda --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

from tsdiffusion.metrics import (
    DEFAULT_CHUNK,
    DEFAULT_QUANTILES,
    EnergyScore,
    ProbabilisticMetrics,
    QuantileCRPS,
    QuantileCRPSSum,
)

CASES = {
    "QuantileCRPS": lambda chunk: QuantileCRPS(chunk_elements=chunk),
    "QuantileCRPSSum": lambda chunk: QuantileCRPSSum(chunk_elements=chunk),
    "EnergyScore (window)": lambda chunk: EnergyScore(chunk_elements=chunk),
    "ProbabilisticMetrics (default 12)": lambda chunk: ProbabilisticMetrics(chunk_elements=chunk),
    "torch.quantile, 19 levels (reference)": None,
}


def rss_mb() -> float:
    """Resident set size now, from /proc (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_inputs(args: argparse.Namespace) -> tuple[torch.Tensor, ...]:
    """samples (B, S, L, K), target, mask (B, L, K), filled in place (no temporaries)."""
    shape = (args.batch, args.length, args.features)
    samples = torch.empty(args.batch, args.samples, *shape[1:], device=args.device).normal_()
    return samples, torch.empty(shape, device=args.device).normal_(), torch.ones(shape, device=args.device)


def run_case(name: str, inputs: tuple[torch.Tensor, ...], chunk: int) -> None:
    if CASES[name] is None:
        torch.quantile(inputs[0], torch.tensor(DEFAULT_QUANTILES, device=inputs[0].device), dim=1)
        return
    metric = CASES[name](chunk).to(inputs[0].device)
    metric.update(*inputs)
    metric.compute()


def timed(name: str, inputs: tuple[torch.Tensor, ...], args: argparse.Namespace) -> tuple[float, float]:
    """-> (wall seconds, CPU seconds of all threads)."""
    start, cpu = time.perf_counter(), time.process_time()
    run_case(name, inputs, args.chunk)
    if args.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu


def child(name: str, args: argparse.Namespace) -> dict:
    """Measure one case in this (fresh) process."""
    inputs = make_inputs(args)
    if args.device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base, high_before = rss_mb(), peak_rss_mb()
    first, _ = timed(name, inputs, args)
    if args.device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = peak_rss_mb() - base
    repeat, repeat_cpu = min(timed(name, inputs, args) for _ in range(args.repeats))
    out = {"peak_mb": peak, "first_s": first, "repeat_s": repeat, "repeat_cpu_s": repeat_cpu}
    if args.device == "cpu":
        out["high_water_before_mb"] = high_before - base  # ~0 means the baseline is clean
    return out


def main() -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=fmt)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--length", type=int, default=192)
    parser.add_argument("--features", type=int, default=963)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chunk", type=int, default=DEFAULT_CHUNK, help="chunk_elements of the metrics")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args)))
        return
    in_mb = args.batch * args.samples * args.length * args.features * 4 / 2**20
    print(
        f"B={args.batch} S={args.samples} L={args.length} K={args.features} on {args.device}, "
        f"{torch.get_num_threads()} threads, chunk_elements={args.chunk}; "
        f"samples tensor {in_mb:.0f} MiB (float32), not counted below"
    )
    print(f"| {'case':<40} | peak extra MiB | first s | repeat s | repeat CPU s |")
    print(f"|{'-' * 42}|---------------:|--------:|---------:|-------------:|")
    for name in CASES:
        argv = [sys.executable, __file__, "--child", name, *sys.argv[1:]]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"| {name:<40} | failed: {proc.stderr.strip().splitlines()[-1]}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        row = f"{r['peak_mb']:14.0f} | {r['first_s']:7.2f} | {r['repeat_s']:8.2f} | {r['repeat_cpu_s']:12.2f}"
        print(f"| {name:<40} | {row} |")


if __name__ == "__main__":
    main()

"""Which attention call to use for CSDI on CPU under bf16 autocast? (torch's fused kernel, measured)

    python benchmarks/scripts/bench_cpu_attention.py [--threads 2] [--repeats 10] [--out FILE.json]

CSDI attends over many short sequences with narrow heads: over time, (B K) sequences of L steps; over features,
(B L) sequences of K features; head width 8 in the quick configs. This script times, at such shapes, forward +
backward (training) and forward alone (sampling, no grad) of:

- ``sdpa fp32``: ``F.scaled_dot_product_attention`` on float32 inputs;
- ``sdpa bf16``: the same on bf16 inputs (what a training step under bf16 autocast called before 2026-12-01);
- ``sdpa bf16 via fp32``: bf16 inputs cast to float32 for the call and the output cast back
  (``tsdiffusion.denoisers.csdi._float32_attention``, what a CPU training step under bf16 autocast calls now;
  sampling keeps ``sdpa bf16``: at sampling batch sizes the casts cost more than they save);
- ``math bf16``: softmax(q k^T / sqrt(d)) v with two bf16 matmuls.

Prints a table of medians (ms) per shape and writes them as JSON with the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from tsdiffusion.denoisers.csdi import _float32_attention


def _math(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.matmul(torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)).softmax(-1), v)


CALLS = {
    "sdpa fp32": (F.scaled_dot_product_attention, torch.float32),
    "sdpa bf16": (F.scaled_dot_product_attention, torch.bfloat16),
    "sdpa bf16 via fp32": (_float32_attention, torch.bfloat16),
    "math bf16": (_math, torch.bfloat16),
}
# (N sequences, heads, sequence length, head width): a quick CSDI batch of 16 windows
SHAPES = {
    "time, electricity (16 x 32 clients, 48 h)": (512, 4, 48, 8),
    "features, electricity (16 x 48 h, 32 clients)": (768, 4, 32, 8),
    "time, PhysioNet (16 x 35 variables, 48 h)": (560, 4, 48, 8),
    "features, PhysioNet (16 x 48 h, 35 variables)": (768, 4, 35, 8),
}


def _time(fn, dtype, shape, train: bool, repeats: int) -> float:
    q, k, v = (torch.randn(shape, dtype=dtype, requires_grad=train) for _ in range(3))

    def once() -> None:
        if train:
            fn(q, k, v).float().sum().backward()
        else:
            with torch.no_grad():
                fn(q, k, v)

    for _ in range(2):
        once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = []
    for mode, train in (("forward + backward", True), ("forward, no grad", False)):
        for label, shape in SHAPES.items():
            ms = {name: _time(fn, dtype, shape, train, args.repeats) for name, (fn, dtype) in CALLS.items()}
            rows.append({"mode": mode, "shape": label, "NHSd": list(shape), "ms": ms})
    names = list(CALLS)
    print(f"{'mode':<19} {'shape':<46} " + " ".join(f"{n:>18}" for n in names))
    for r in rows:
        print(f"{r['mode']:<19} {r['shape']:<46} " + " ".join(f"{r['ms'][n]:>18.1f}" for n in names))
    print(f"medians in ms over {args.repeats} calls, {args.threads} threads, torch {torch.__version__}")
    if args.out:
        machine = {"processor": platform.processor(), "machine": platform.machine(), "threads": args.threads,
                   "torch": torch.__version__}  # fmt: skip
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

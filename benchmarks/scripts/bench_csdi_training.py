"""The CSDI training step at the PhysioNet paper config against the original code, with and without our kernels.

    python benchmarks/scripts/bench_csdi_training.py --original /path/to/ermongroup-CSDI --threads 1 \
        --out benchmarks/results/speed/intel-amx

One run of one script, in one process (issue 27's target: training step >= 3x the original). The step is what
``tsdiffusion fit`` runs per batch: ``ImputationTask.training_step`` (random diffusion step, noise, the CSDI
denoiser with dropout 0.1 on activations and attention weights), backward, Adam; B=16 records of L=48 hours x K=35
variables, 4 residual layers x 64 channels, 8 heads. The original: ``CSDI_Physio(batch)``, backward, Adam, as its
``utils.train``. Variants, timed in turn (a, b, c, ..., a, b, c, ...) so that the load of other processes hits all
alike, medians of ``--repeats``:

    original               the original code, float32, glibc's allocator as it comes
    original, kept memory  the same inside ``keep_freed_memory`` (what our fit gives every step on the CPU)
    fp32 torch ops         ours, float32, ``tsdiffusion.kernels.dropout`` and ``softmax_dropout`` switched off,
                           glibc as it comes (what a fit ran before 2026-12-08)
    fp32 kernels           ours with those kernels
    fp32                   ours with the kernels inside ``keep_freed_memory`` (what a fit runs now: the
                           ``KeepFreedMemory`` callback of every task): a CPU without bf16 units
    bf16 ...               the same three under bf16 autocast (``--bf16``; default where the precision policy is
                           bf16): ``bf16`` is what a fit runs here

Printed: the matmul peaks (2048^3, float32 and bf16), each variant's CPU seconds per step (``time.process_time``
of one thread: the cost without time spent waiting for a core other processes hold) and wall seconds, GFLOP per
step (``FlopCounterMode``, forward + backward), GFLOP/s and share of the peak of the variant's dtype, the ratio to
the original, and a per-operation profile (``torch.profiler``) of the fastest variant. The load average is
recorded: on a shared machine the ratios measured in one run are the figures to read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch
from torch.profiler import profile

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks" / "scripts")]

import bench_speed as bs  # noqa: E402  (the step builders shared with the speed table)

from tsdiffusion import kernels  # noqa: E402
from tsdiffusion.chunked_eval import machine_type  # noqa: E402
from tsdiffusion.hardware import keep_freed_memory, precision_policy  # noqa: E402

KERNELS = {"dropout": kernels.dropout, "softmax_dropout": kernels.softmax_dropout}


def set_kernels(on: bool) -> None:
    """Our training kernels on, or off (each returns None, so the denoiser takes torch's ops)."""
    for name, fn in KERNELS.items():
        setattr(kernels, name, fn if on else (lambda *a, **k: None))


def variants(args) -> dict:
    """name -> (step function, kernels on, memory kept, dtype of its matmuls)."""
    out = {}
    if args.original:
        # the PhysioNet model (is_linear: False) never calls linear_attention_transformer, which diff_models imports
        sys.modules.setdefault("linear_attention_transformer", types.SimpleNamespace(LinearAttentionTransformer=None))
        step = bs.original_step_fn(*bs.original_physio(args.original))
        out["original"] = (step, True, False, torch.float32)
        out["original, kept memory"] = (step, True, True, torch.float32)
    torch.manual_seed(0)
    init = bs.physionet_task().state_dict()  # every variant of ours starts from the same weights
    for bf16 in (False, True) if args.bf16 else (False,):
        tag = "bf16" if bf16 else "fp32"
        for name, on, kept in ((f"{tag} torch ops", False, False), (f"{tag} kernels", True, False), (tag, True, True)):
            task = bs.physionet_task()
            task.load_state_dict(init)
            out[name] = (
                bs.train_step_fn(task, bs.physionet_batch(), bf16),
                on,
                kept,
                torch.bfloat16 if bf16 else torch.float32,
            )
    return out


def timed(fn, on: bool, kept: bool) -> tuple[float, float]:
    """Wall and CPU seconds of one step (after one untimed step in the same allocator setting)."""
    set_kernels(on)
    with keep_freed_memory(kept):
        fn()
        w, c = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - w, time.process_time() - c


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", help="a checkout of ermongroup/CSDI (the original code), timed in the same run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="also time bf16 autocast (default: where the precision policy is bf16)")  # fmt: skip
    p.add_argument("--out", help="folder for bench_csdi_training.{txt,json} (default: print only)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.bf16 is None:
        args.bf16 = precision_policy("auto").startswith("bf16")
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    load0 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    peaks = {torch.float32: bs.matmul_peak(torch.float32)}
    if args.bf16:
        peaks[torch.bfloat16] = bs.matmul_peak(torch.bfloat16)
    say(f"# CSDI PhysioNet training step (B=16, L=48, K=35, 4 x 64 channels, 8 heads, dropout 0.1), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    say(f"# {bs.cpu_name()} ({machine_type()}), torch {torch.__version__}, {args.threads} thread(s); load: {load0}")
    say("# matmul peak 2048^3 (GFLOP/s, wall): " + ", ".join(f"{str(d)[6:]} {v:.0f}" for d, v in peaks.items()))
    runs = variants(args)
    flops = {}
    for name, (fn, on, _, _) in runs.items():
        set_kernels(on)
        fn()  # warm-up (and the kernels' build)
        flops[name] = bs.step_flops(fn) if not name.startswith("original") else None
    for name in runs:
        flops[name] = flops[name] or flops["fp32"]  # the original: the same model and step, the same FLOPs
    walls: dict[str, list[float]] = {k: [] for k in runs}
    cpus: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, (fn, on, kept, _) in runs.items():
            w, c = timed(fn, on, kept)
            walls[name].append(w)
            cpus[name].append(c)
    set_kernels(True)
    med = {k: (statistics.median(walls[k]), statistics.median(cpus[k])) for k in runs}
    ref = med.get("original", (None, None))[1]
    say()
    say("| variant | CPU s/step | wall s/step | GFLOP/step | GFLOP/s (CPU) | share of its dtype's peak | vs original |")
    say("| --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for name, (_, _, _, dtype) in runs.items():
        w, c = med[name]
        gf = (flops[name] or 0) / 1e9
        rate = gf / c * args.threads if c else 0.0
        share = rate / peaks[dtype] if dtype in peaks else None
        vs = ref / c if ref else None
        rows.append({"variant": name, "cpu_s": c, "wall_s": w, "gflop": gf, "gflops_cpu": rate, "peak_share": share,
                     "vs_original": vs, "cpu_s_all": cpus[name], "wall_s_all": walls[name]})  # fmt: skip
        say(f"| {name} | {c:.3f} | {w:.3f} | {gf:.1f} | {rate:.1f} | "
            f"{'-' if share is None else f'{100 * share:.1f}% of {str(dtype)[6:]}'} | "
            f"{'-' if vs is None else f'{vs:.2f}x'} |")  # fmt: skip
    best = min((n for n in runs if not n.startswith("original")), key=lambda n: med[n][1])
    fn, on, kept, _ = runs[best]
    set_kernels(on)
    with keep_freed_memory(kept), profile() as prof:
        fn()
        fn()
    set_kernels(True)
    say()
    say(f"## per operation, {best}, 2 steps (torch.profiler, self CPU time)")
    say(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))
    load1 = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    say(f"# load after: {load1}")
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_csdi_training.txt").write_text("\n".join(lines) + "\n")
        meta = {"command": " ".join(sys.argv), "machine": machine_type(), "cpu": bs.cpu_name(),
                "torch": torch.__version__, "threads": args.threads, "load_before": load0, "load_after": load1,
                "peaks_gflops": {str(d)[6:]: v for d, v in peaks.items()}, "rows": rows}  # fmt: skip
        (out / "bench_csdi_training.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()

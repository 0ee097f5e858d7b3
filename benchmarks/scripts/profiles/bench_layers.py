# ruff: noqa  (a record of the script that produced the files here, run from /work/scratch/16b)
"""Before/after timing of CSDIDenoiser layers (issue 16, item 2), one run, interleaved repeats, medians.

before = the committed csdi.py at the start of this work (copy in /work/scratch/16b/csdi_before.py),
after  = tsdiffusion.denoisers.csdi; optional "after+compile" = compile_denoiser(after).
python bench_layers.py --configs physionet --repeats 3 [--compile]
"""

import argparse
import contextlib
import importlib
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, "/work/scratch/16b")
from profile_csdi import CONFIGS, make_inputs


def build(which, nf, att):
    torch.manual_seed(0)
    if which == "before":
        return importlib.import_module("csdi_before").CSDIDenoiser(nf, attention=att)
    from tsdiffusion.denoisers.csdi import CSDIDenoiser

    net = CSDIDenoiser(nf, attention=att)
    if which == "after+compile":
        from tsdiffusion.compile import compile_denoiser

        net = compile_denoiser(net)
    return net


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--precisions", nargs="*", default=["fp32", "bf16"])
    ap.add_argument("--kinds", nargs="*", default=["train", "sample"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--electricity-train", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(2)
    print(
        f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, torch {torch.__version__}, 2 threads, load {os.getloadavg()}"
    )
    versions = ["before", "after"] + (["after+compile"] if a.compile else [])
    for name in a.configs:
        B, L, K, nf, att = CONFIGS[name]
        x, t, cond = make_inputs(B, L, K, nf)
        nets = {v: build(v, nf, att) for v in versions}
        ref = nets["before"].state_dict()
        for v in versions[1:]:
            nets[v].load_state_dict(ref)
        for prec in a.precisions:
            ac = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else contextlib.nullcontext
            for kind in a.kinds:
                if name == "electricity" and kind == "train" and not a.electricity_train:
                    continue  # ~7 GB per eager training step (OOM-killed on the shared 24 GB machine)

                def call(net):
                    if kind == "train":
                        net.train()
                        with ac():
                            loss = net(x, t, cond).float().square().mean()
                        loss.backward()
                        net.zero_grad(set_to_none=True)
                    else:
                        net.eval()
                        with torch.no_grad(), ac():
                            return net(x, t, cond)

                times = {v: [] for v in versions}
                warm = {}
                for v in versions:  # warm-up (and compilation)
                    t0 = time.perf_counter()
                    call(nets[v])
                    warm[v] = time.perf_counter() - t0
                for _ in range(a.repeats):
                    for v in versions:
                        t0 = time.perf_counter()
                        call(nets[v])
                        times[v].append(time.perf_counter() - t0)
                med = {v: statistics.median(ts) * 1e3 for v, ts in times.items()}
                row = "  ".join(f"{v} {med[v]:8.1f} ms" for v in versions)
                ratios = "  ".join(f"{v}/after x{med['before'] / med[v]:.2f}" for v in versions[1:])
                print(
                    f"{name:11s} {kind:6s} {prec}: {row}   speed-up (before/{ratios.replace('/after', '')})  "
                    f"first call {', '.join(f'{v} {warm[v]:.1f} s' for v in versions)}  load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )


if __name__ == "__main__":
    main()

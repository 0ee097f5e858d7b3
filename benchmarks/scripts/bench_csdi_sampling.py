"""The CSDI sampling call at the PhysioNet size, op by op, against this machine's matmul peaks and the original code.

    python benchmarks/scripts/bench_csdi_sampling.py --threads 1 --out benchmarks/results/speed/amd-epyc-avx2
    python benchmarks/scripts/bench_csdi_sampling.py --threads 2 --repeats 7 --out benchmarks/results/speed/intel-amx

One run of one script, in one process (issue 27, item 2). The official CSDI PhysioNet checkpoint, one denoiser
call on ``--rows`` rows (default 100: one record's 100 samples, as the full-fold run calls it; L=48, K=35,
10% of the observed values held out), no grad, inside ``keep_freed_memory`` as ``draw_samples`` runs it.
Variants, timed in turn (a, b, c, a, b, c, ...) so that the load of other processes hits all alike, medians of
``--repeats``:

    original         the original code (``--original``, ermongroup/CSDI): ``CSDI_Physio.diffmodel`` on the input
                     ``impute`` builds per step, side information computed once per chain as ``impute`` does
    forward          ``CSDIDenoiser(x_t, t, cond)``: everything recomputed per call, torch's ops only
    chain torch      ``CSDIDenoiser.bind(cond)``: the per-chain caches ``draw_samples`` uses, torch's ops only
    chain            the same with ``tsdiffusion.kernels`` (attention, add + layer norm): what sampling runs
    bf16 chain torch under bf16 autocast (``--bf16``; default where the precision policy is bf16): the chain on
    bf16 chain       a bf16 copy of the weights, with torch's ops only or with ours
    chain+compile    ``--compile``: the chain's forward under ``torch.compile`` (inductor C++, freezing), if it
                     compiles; its compile time is reported separately

Printed: the float32 (and bf16) matmul peak (2048^3, measured in this process before and after), each variant's
wall and CPU seconds per call (``time.process_time``: with one thread, the cost without the time spent waiting for
a core that other processes hold), GFLOP (``FlopCounterMode``) and GFLOP/s on both clocks with the share of the
peak of the variant's dtype, the ratio to the original, a per-operation table (``torch.profiler``) of the chains
and the original with each op's FLOPs, GFLOP/s and share of peak, and the projected full-fold time (799 records x
100 samples x the sampler's steps) from the fastest variant's cost. The machine's load average is recorded: on a
shared machine wall times are not idle-machine figures, ratios measured in one run are.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import types
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tsdiffusion import kernels  # noqa: E402
from tsdiffusion.chunked_eval import machine_type  # noqa: E402
from tsdiffusion.hardware import keep_freed_memory, precision_policy  # noqa: E402

FOLD_RECORDS, SAMPLES = 799, 100
LOADED = " (LOADED MACHINE: wall times are not idle-machine figures; ratios in this run are)"


def matmul_peak(n: int = 2048, repeats: int = 5, dtype: torch.dtype = torch.float32) -> tuple[float, float]:
    """Median GFLOP/s of an n^3 product in ``dtype`` on wall and CPU clocks."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        a @ b
        walls.append(time.perf_counter() - w), cpus.append(time.process_time() - c)
    flop = 2 * n**3 / 1e9
    return flop / statistics.median(walls), flop / statistics.median(cpus) * torch.get_num_threads()


def inputs(rows: int, L: int = 48, K: int = 35, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(seed)
    observed = (torch.rand(L, K, generator=g) < 0.2).float()  # PhysioNet: ~80% of the values are missing
    cond_mask = observed * (torch.rand(L, K, generator=g) >= 0.1).float()
    cond = {"observed": torch.randn(L, K, generator=g) * cond_mask, "cond_mask": cond_mask,
            "timepoints": torch.arange(L, dtype=torch.float32)}  # fmt: skip
    cond = {k: v.expand(rows, *v.shape).contiguous() for k, v in cond.items()}  # one record's rows, as draw_samples
    return torch.randn(rows, L, K, generator=g), torch.full((rows,), 25), cond


def original_call(folder: str, checkpoint: str, x_t, t, cond):
    """The original's denoiser call inside ``impute`` (side information built once per chain, as there)."""
    import yaml

    sys.path.insert(0, folder)
    # diff_models.py imports linear_attention_transformer at the top; the PhysioNet model (is_linear: False)
    # never uses it (as benchmarks/reference/csdi_sampling_gap.py)
    sys.modules.setdefault("linear_attention_transformer", types.SimpleNamespace(LinearAttentionTransformer=None))
    from main_model import CSDI_Physio

    config = yaml.safe_load(open(f"{folder}/config/base.yaml"))
    model = CSDI_Physio(config, "cpu", 35)
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
    model.eval()
    cm = cond["cond_mask"].transpose(1, 2)  # (B, K, L)
    obs = cond["observed"].transpose(1, 2)
    side = model.get_side_info(cond["timepoints"], cm)
    x = x_t.transpose(1, 2).contiguous()
    step = torch.tensor([int(t[0])])

    def call():
        cond_obs = (cm * obs).unsqueeze(1)
        noisy = ((1 - cm) * x).unsqueeze(1)
        return model.diffmodel(torch.cat([cond_obs, noisy], dim=1), side, step).transpose(1, 2)

    return call


def attention_flops(rows: int, L: int = 48, K: int = 35, width: int = 64, layers: int = 4) -> float:
    """q k^T and the weights times v of both transformers of every layer: FlopCounterMode does not count torch's
    CPU attention kernel (``_scaled_dot_product_flash_attention_for_cpu``), so it is added by this formula."""
    return layers * 4 * rows * width * L * K * (L + K)


SDPA = "_scaled_dot_product_flash_attention_for_cpu"


def flops_of(fn, rows: int) -> tuple[float, dict[str, float]]:
    with FlopCounterMode(display=False) as fc:
        fn()
    per_op = {str(op).split(".")[-1]: n for op, n in fc.get_flop_counts()["Global"].items()}
    if not any("attention" in k for k in per_op):
        per_op[SDPA] = attention_flops(rows)
    return sum(per_op.values()), per_op


CONV_OPS = ("mkldnn_convolution", "_slow_conv2d_forward", "_convolution")  # where a convolution's time is spent


def op_table(fn, flops_per_op: dict[str, float], cpu_s: float, peak: float, threads: int) -> list[dict]:
    """Per aten op of one call: its share of the profiled self time (torch.profiler), that share of the call's
    measured CPU seconds ``cpu_s`` (on a loaded machine the profiler's times include waiting for a core; the
    shares do not, on average), its FLOPs, GFLOP/s per CPU-second and share of one thread's peak."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows, total = [], 0.0
    for ev in prof.key_averages():
        if not ev.key.startswith(("aten::", "tsdiffusion::")) or ev.self_cpu_time_total <= 0:
            continue
        ms = ev.self_cpu_time_total / 1e3
        total += ms
        name = ev.key.removeprefix("aten::")
        if name == "tsdiffusion::short_attention":
            flops_per_op = {**flops_per_op, name: flops_per_op.get(SDPA, 0.0)}
        flop = flops_per_op.get(name, 0.0)
        rows.append({"op": name, "calls": ev.count, "self_ms": ms, "gflop": flop / 1e9,
                     "gflops": flop / 1e6 / ms if flop else None})  # fmt: skip
    conv = flops_per_op.get("convolution", 0.0)
    target = next((r for r in rows for name in CONV_OPS if r["op"] == name), None)
    if conv and target is not None:  # FlopCounterMode names the op, the profiler the kernel that ran it
        target["gflop"] = conv / 1e9
        rows = [r for r in rows if r["op"] != "convolution"]
    for r in rows:
        r["share"] = r["self_ms"] / total
        r["cpu_ms"] = r["share"] * cpu_s * 1e3
        r["gflops"] = r["gflop"] / r["cpu_ms"] * 1e3 * threads if r["gflop"] else None
        r["peak_share"] = None if r["gflops"] is None else r["gflops"] / peak
    return sorted(rows, key=lambda r: -r["self_ms"])


def _bmm_softmax(q, k, v):
    """softmax(q k^T / sqrt(d)) v as two batched matmuls (the plain alternative to torch's fused CPU kernel)."""
    return torch.matmul(torch.matmul(q * q.shape[-1] ** -0.5, k.transpose(-1, -2)).softmax(-1), v)


def attention_table(rows: int, repeats: int, L: int = 48, K: int = 35, heads: int = 8, d: int = 8) -> list[dict]:
    """CPU ms of ``scaled_dot_product_attention`` against the plain bmm-softmax at the sampling call's two shapes
    (over time: rows*K sequences of L; over features: rows*L sequences of K), float32 and bf16, on the strided
    q/k/v views that CSDITransformerLayer passes; interleaved, medians."""
    out = []
    for axis, (n, s) in {"time": (rows * K, L), "feature": (rows * L, K)}.items():
        for dtype in (torch.float32, torch.bfloat16):
            q, k, v = torch.randn(n, s, heads, 3, d).to(dtype).permute(3, 0, 2, 1, 4).unbind(0)
            fns = {"sdpa": torch.nn.functional.scaled_dot_product_attention, "bmm-softmax": _bmm_softmax}
            if kernels.load() is not None:
                fns["ours"] = kernels.short_attention
            cpu = defaultdict(list)
            for fn in fns.values():
                fn(q, k, v)
            for _ in range(repeats):
                for name, fn in fns.items():
                    c = time.process_time()
                    fn(q, k, v)
                    cpu[name].append(time.process_time() - c)
            ms = {name: 1e3 * statistics.median(v) for name, v in cpu.items()}
            flop = 4 * n * heads * s * s * d
            speedup = ms["bmm-softmax"] / ms["sdpa"]
            out.append({"axis": axis, "sequences": n, "length": s, "dtype": str(dtype).split(".")[-1], **ms,
                        "gflops_sdpa": flop / ms["sdpa"] / 1e6, "sdpa_speedup": speedup,
                        "ours_speedup_vs_sdpa": ms["sdpa"] / ms["ours"] if "ours" in ms else None})  # fmt: skip
    return out


def compile_chain(den, x_t, cond):
    """The chain's forward compiled (inductor C++, freezing: the weights folded in as constants), or None."""
    from tsdiffusion.compile import compiler_available

    ok, why = compiler_available("cpu")
    if not ok:
        print(f"# --compile: {why}; the eager chain only", flush=True)
        return None, 0.0
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    cache = den._chain_cache(x_t, cond)
    fn = torch.compile(den._chain_forward, dynamic=False)
    start = time.perf_counter()
    try:
        fn(x_t, torch.full_like(x_t[:, 0, 0], 25).long(), cache)
    except Exception as err:  # any compiler failure falls back to eager
        print(f"# --compile failed ({type(err).__name__}: {err}); the eager chain only", flush=True)
        return None, 0.0
    return (lambda x, t: fn(x, t, cache)), time.perf_counter() - start


def without_kernel(fn):
    """``fn`` with torch's ops instead of tsdiffusion.kernels (short_attention, add_layer_norm)."""

    def call():
        real = kernels.load
        kernels.load = lambda: None
        try:
            return fn()
        finally:
            kernels.load = real

    return call


def under_bf16(fn):
    """``fn`` under bf16 autocast: the chain on a bf16 copy of the weights (CSDIDenoiser.bind)."""

    def call():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()

    return call


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rows", type=int, default=SAMPLES)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--checkpoint", default="/work/ref/CSDI/save/pretrained/model.pth")
    p.add_argument("--original", default="/work/ref/CSDI", help="ermongroup/CSDI checkout ('' to skip)")
    p.add_argument("--compile", action="store_true")
    p.add_argument(
        "--bf16",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the bf16 variants too (default: where the precision policy picks bf16)",
    )
    p.add_argument("--out", type=Path, default=None, help="write bench_csdi_sampling.txt / .json here")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from tsdiffusion.denoisers.pretrained import load_official_csdi_physionet

    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    load0 = os.getloadavg()
    say(f"# python benchmarks/scripts/bench_csdi_sampling.py {' '.join(sys.argv[1:])}")
    say(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; {machine_type()}; torch {torch.__version__}, "
        f"{args.threads} thread(s); precision policy {precision_policy('auto')}; load average at start "
        f"{load0[0]:.1f} on {os.cpu_count()} CPUs{LOADED if load0[0] > 1.5 else ''}")  # fmt: skip
    peak_w0, peak_c0 = matmul_peak()
    bf16 = args.bf16 if args.bf16 is not None else precision_policy("auto").startswith("bf16")
    bpeak_w0, bpeak_c0 = matmul_peak(dtype=torch.bfloat16) if bf16 else (float("nan"), float("nan"))
    den = load_official_csdi_physionet(args.checkpoint)
    x_t, t, cond = inputs(args.rows)
    chain = den.bind(cond)
    variants = {}
    with torch.no_grad(), keep_freed_memory():
        if args.original:
            variants["original"] = original_call(args.original, args.checkpoint, x_t, t, cond)
        variants["forward"] = without_kernel(lambda: den(x_t, t, cond))
        variants["chain torch"] = without_kernel(lambda: chain(x_t, t))
        if kernels.load() is not None:
            variants["chain"] = lambda: chain(x_t, t)
        if bf16:
            variants["bf16 chain torch"] = without_kernel(under_bf16(lambda: chain(x_t, t)))
            if kernels.load() is not None:
                variants["bf16 chain"] = under_bf16(lambda: chain(x_t, t))
        compile_s = 0.0
        if args.compile:
            compiled, compile_s = compile_chain(den, x_t, cond)
            if compiled is not None:
                variants["chain+compile"] = lambda: compiled(x_t, t)
        ref = variants["forward"]()
        diffs = {k: (fn() - ref).abs().max().item() for k, fn in variants.items()}
        flops = {k: flops_of(fn, args.rows) for k, fn in variants.items() if k != "chain+compile"}
        if "chain+compile" in variants:
            flops["chain+compile"] = flops["chain"]
        walls, cpus = defaultdict(list), defaultdict(list)
        for fn in variants.values():
            fn()
        for _ in range(args.repeats):
            for k, fn in variants.items():
                w, c = time.perf_counter(), time.process_time()
                fn()
                walls[k].append(time.perf_counter() - w), cpus[k].append(time.process_time() - c)
        profiled = [k for k in ("original", "chain", "bf16 chain") if k in variants]
        tables = {k: op_table(variants[k], flops[k][1], statistics.median(cpus[k]),
                              bpeak_c0 if k.startswith("bf16") else peak_c0, args.threads)
                  for k in profiled}  # fmt: skip
    peak_w1, peak_c1 = matmul_peak()
    bpeak_w1, bpeak_c1 = matmul_peak(dtype=torch.bfloat16) if bf16 else (float("nan"), float("nan"))
    peak_w, peak_c = statistics.median([peak_w0, peak_w1]), statistics.median([peak_c0, peak_c1])
    bpeak_w, bpeak_c = statistics.median([bpeak_w0, bpeak_w1]), statistics.median([bpeak_c0, bpeak_c1])
    load1 = os.getloadavg()
    say(f"# float32 matmul peak (2048^3, {args.threads} thread(s)): {peak_w0:.1f} / {peak_w1:.1f} GFLOP/s wall "
        f"(before / after), {peak_c0:.1f} / {peak_c1:.1f} GFLOP/s per CPU-second x threads; load average at end "
        f"{load1[0]:.1f}")  # fmt: skip
    if bf16:
        say(f"# bf16 matmul peak (2048^3): {bpeak_w0:.1f} / {bpeak_w1:.1f} GFLOP/s wall, {bpeak_c0:.1f} / "
            f"{bpeak_c1:.1f} per CPU-second x threads; the bf16 variants' %peak is of this peak")  # fmt: skip
    if compile_s:
        say(f"# chain+compile: compiled in {compile_s:.0f} s (once per process and batch shape)")
    say(
        f"# one denoiser call on {args.rows} rows (B={args.rows}, L=48, K=35, 64 channels, 4 layers, 8 heads), "
        f"no grad; medians of {args.repeats} interleaved repeats; GFLOP: FlopCounterMode's matrix "
        f"products plus the attention kernel's ({attention_flops(args.rows) / 1e9:.1f} GFLOP, by formula)"
    )
    say()
    say(
        "variants: 'torch' = torch's ops only, else with tsdiffusion.kernels (short_attention, add_layer_norm); "
        "'bf16' = under bf16 autocast, the chain on a bf16 copy of the weights; forward and the chains are ours"
    )
    head = (f"{'variant':<16}{'GFLOP':>8}{'wall s':>9}{'cpu s':>8}{'GF/s wall':>11}{'%peak':>7}{'GF/s cpu':>10}"
            f"{'%peak':>7}{'vs orig (cpu)':>15}{'vs fwd (cpu)':>14}{'max |diff|':>12}")  # fmt: skip
    say(head)
    res = {}
    orig_c = statistics.median(cpus["original"]) if "original" in cpus else None
    for k in variants:
        w, c = statistics.median(walls[k]), statistics.median(cpus[k])
        gf = flops[k][0] / 1e9
        pw, pc = (bpeak_w, bpeak_c) if k.startswith("bf16") else (peak_w, peak_c)
        res[k] = {"gflop": gf, "wall_s": w, "cpu_s": c, "gflops_wall": gf / w, "gflops_cpu": gf / c * args.threads,
                  "peak_share_wall": gf / w / pw, "peak_share_cpu": gf / c * args.threads / pc,
                  "dtype": "bfloat16" if k.startswith("bf16") else "float32",
                  "vs_original_cpu": orig_c / c if orig_c else None,
                  "vs_forward_cpu": statistics.median(cpus["forward"]) / c, "max_abs_diff_vs_forward": diffs[k],
                  "walls": walls[k], "cpus": cpus[k]}  # fmt: skip
        r = res[k]
        vs = f"{r['vs_original_cpu']:.2f}x" if r["vs_original_cpu"] else "-"
        say(f"{k:<16}{gf:>8.1f}{w:>9.2f}{c:>8.2f}{r['gflops_wall']:>11.1f}{100 * r['peak_share_wall']:>6.1f}%"
            f"{r['gflops_cpu']:>10.1f}{100 * r['peak_share_cpu']:>6.1f}%{vs:>15}{r['vs_forward_cpu']:>13.2f}x"
            f"{diffs[k]:>12.1e}")  # fmt: skip
    for k, rows in tables.items():
        say()
        say(f"per op, one call of {k!r}: share of torch.profiler's self time, that share of the call's CPU seconds "
            f"(cpu ms), GFLOP/s per CPU-second and share of the peak of its dtype")  # fmt: skip
        say(f"{'op':<46}{'calls':>6}{'share':>7}{'cpu ms':>9}{'GFLOP':>8}{'GF/s':>8}{'%peak':>7}")
        for r in rows[:14]:
            gfs = f"{r['gflops']:.1f}" if r["gflops"] else "-"
            pk = f"{100 * r['peak_share']:.0f}%" if r["peak_share"] else "-"
            say(f"{r['op'][:45]:<46}{r['calls']:>6}{100 * r['share']:>6.1f}%{r['cpu_ms']:>9.0f}"
                f"{r['gflop']:>8.2f}{gfs:>8}{pk:>7}")  # fmt: skip
    with torch.no_grad(), keep_freed_memory():
        attn = attention_table(args.rows, args.repeats)
    say()
    say(
        "attention at the sampling call's shapes (8 heads of 8 channels), CPU ms per call, medians, interleaved; "
        "'x' columns: how many times faster (sdpa than bmm-softmax, ours than sdpa)"
    )
    say(f"{'axis':<9}{'sequences x length':>20}{'dtype':>10}{'sdpa':>9}{'bmm-softmax':>13}{'ours':>7}"
        f"{'sdpa GF/s':>11}{'sdpa / bmm':>12}{'ours / sdpa':>13}")  # fmt: skip
    for r in attn:
        say(f"{r['axis']:<9}{str(r['sequences']) + ' x ' + str(r['length']):>20}{r['dtype']:>10}{r['sdpa']:>9.0f}"
            f"{r['bmm-softmax']:>13.0f}{r.get('ours', float('nan')):>7.0f}{r['gflops_sdpa']:>11.1f}"
            f"{r['sdpa_speedup']:>11.2f}x{r['ours_speedup_vs_sdpa'] or float('nan'):>12.2f}x")  # fmt: skip
    best = min((k for k in res if k != "original"), key=lambda k: res[k]["cpu_s"])
    per_row_cpu = res[best]["cpu_s"] / args.rows
    say()
    say(
        f"projected full fold (799 records x 100 samples), from {best!r}'s CPU seconds per row-call "
        f"({1e3 * per_row_cpu:.1f} ms x {args.threads} thread(s)), sampling only:"
    )
    proj = {}
    for sampler, steps in (("dpmpp-10", 10), ("ddpm-50", 50)):
        cpu_h = FOLD_RECORDS * SAMPLES * steps * per_row_cpu / 3600
        proj[sampler] = {"cpu_hours": cpu_h, "hours_on_2_idle_cores_if_linear": cpu_h / 2}
        say(f"  {sampler}: {cpu_h:.1f} CPU-hours; {cpu_h / 2:.1f} h on both idle cores if the two scale linearly")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "bench_csdi_sampling.txt").write_text("\n".join(lines) + "\n")
        out = {"args": {k: str(v) for k, v in vars(args).items()}, "machine": machine_type(),
               "torch": torch.__version__, "load_avg": [load0, load1],
               "peak": {"wall": [peak_w0, peak_w1], "cpu": [peak_c0, peak_c1]},
               "peak_bf16": {"wall": [bpeak_w0, bpeak_w1], "cpu": [bpeak_c0, bpeak_c1]},
               "variants": res, "ops": tables, "attention": attn, "projection": proj,
               "compile_s": compile_s}  # fmt: skip
        (args.out / "bench_csdi_sampling.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()

"""Where tsdiffusion stands against this machine's matrix units and against the original CSDI code (issue 16).

    python benchmarks/scripts/bench_speed.py --original /path/to/ermongroup-CSDI        # the table (item 3-5)
    python benchmarks/scripts/bench_speed.py --part precision --physionet RUN --exchange RUN  # bf16 vs fp32 (item 1)
    python benchmarks/scripts/bench_speed.py --part curves --curve-steps 120     # loss curves, float32 vs bf16 (item 1)
    python benchmarks/scripts/bench_speed.py --part memory --original CSDI --original-site SITE   # peak RSS (item 4)

``--part memory``: peak resident memory of CSDI electricity forecasting training steps (B=8, L=192, 64 of 370
series, linear attention), ours in float32 and bf16 autocast and the original ``CSDI_Forecasting``, each variant
in a fresh subprocess (``--memory-repeats`` rounds, in turn); per step the peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` before each step) minus the RSS after building model and batch. TimeGrad against
pytorch-ts: ``bench_timegrad_reference.py``.

One run of one script on the machine it runs on; results go to ``benchmarks/results/speed/<machine type>/``
(``speed.md`` + ``speed.json``, ``precision.md/json`` + ``loss_curves.png``). Synthetic inputs of the paper sizes
for timing (speed does not depend on values); the precision part uses trained runs and real test windows.

Table part (2 threads by default, wall clock, medians; the load average is recorded because the machine may be
shared):
- matmul peak: median GFLOP/s of a 2048^3 product, float32 and bf16;
- training steps (task ``training_step`` + backward + Adam): CSDI PhysioNet paper config (B=16, L=48, K=35,
  4 layers x 64 channels), CSDI electricity forecasting (B=8, L=192, 64 of 370 series, linear attention), TimeGrad
  electricity (B=64, 370 series), in float32 and bf16 autocast; GFLOP per step from ``torch.utils.flop_counter``
  (forward + backward) and the fraction of the matching (fp32 / bf16) matmul peak;
- the original CSDI code (``--original``, ermongroup/CSDI): ``CSDI_Physio`` and ``CSDI_Forecasting`` training
  steps (``model(batch)``, backward, Adam, as its ``utils.train``), timed interleaved with ours (ours, original,
  ours, ...), so that load changes hit both alike;
- 100-sample imputation of 16 records: ours as one batched chain per chunk (``draw_samples``), the original's
  ``impute`` (a Python loop over samples, each a 50-step chain over the 16 records). Both are linear in the
  number of samples and of denoiser calls, so a few calls / samples are timed and scaled (marked "scaled");
- per-row cost of a denoiser call at 16, 80 and 320 rows (inside ``keep_freed_memory``, as ``draw_samples``
  runs it), which decides the default ``sample_batch_size``;
- the CSDI PhysioNet paper protocol (200 epochs of ~3,200 train records at batch 16, then 100 samples for 799
  test records) estimated from the measured step and call times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from tsdiffusion.hardware import detect, keep_freed_memory

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "benchmarks" / "results" / "speed"


# -- the machine -----------------------------------------------------------------------------------------------
def machine_type() -> str:
    """``intel-amx`` / ``amd-avx512bf16`` / ``cpu-fp32`` (the folder name of the results)."""
    hw = detect("cpu")
    vendor = "intel" if "GenuineIntel" in Path("/proc/cpuinfo").read_text() else "amd"
    return f"{vendor}-amx" if hw.amx else f"{vendor}-avx512bf16" if hw.avx512_bf16 else f"{vendor}-fp32"


def load() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU seconds: no waiting for cores others hold)


def _time(fn) -> float:
    t0 = CLOCK()
    fn()
    return CLOCK() - t0


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 7) -> float:
    """Median GFLOP/s of an n x n x n product in ``dtype`` on this process's threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n**3 / statistics.median(_time(lambda: a @ b) for _ in range(repeats)) / 1e9


def autocast(bf16: bool):
    return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


# -- our tasks at the paper configs -------------------------------------------------------------------------
def physionet_task():
    from tsdiffusion.denoisers import CSDIDenoiser
    from tsdiffusion.diffusion import GaussianDiffusion
    from tsdiffusion.tasks import ImputationTask

    den = CSDIDenoiser(35, channels=64, layers=4, heads=8)  # CSDI's config/base.yaml
    return ImputationTask(den, GaussianDiffusion(50, "quad", 1e-4, 0.5), num_samples=100)


def physionet_batch(B: int = 16, L: int = 48, K: int = 35) -> dict:
    g = torch.Generator().manual_seed(0)
    observed = (torch.rand(B, L, K, generator=g) < 0.2).float()  # PhysioNet: ~20% of the values observed
    target = observed * (torch.rand(B, L, K, generator=g) < 0.1).float()
    return {"observed": torch.randn(B, L, K, generator=g) * observed, "observed_mask": observed,
            "target_mask": target, "timepoints": torch.arange(L).float().expand(B, L),
            "feature_ids": torch.arange(K).expand(B, K)}  # fmt: skip


def train_step_fn(task, batch: dict, bf16: bool):
    opt = torch.optim.Adam(task.parameters(), lr=1e-3)
    task.log = lambda *a, **k: None
    task.train()

    def step() -> None:
        opt.zero_grad()
        with autocast(bf16):
            loss = task.training_step(batch, 0)
        loss.backward()
        opt.step()

    return step


def step_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


# -- the original code -------------------------------------------------------------------------------------
def original_physio(folder: str):
    import yaml

    sys.path.insert(0, folder)
    from main_model import CSDI_Physio  # the original code, only when asked for

    config = yaml.safe_load(open(f"{folder}/config/base.yaml"))
    config["model"]["is_unconditional"] = False
    model = CSDI_Physio(config, "cpu", 35)
    b = physionet_batch()
    batch = {"observed_data": b["observed"], "observed_mask": b["observed_mask"],
             "gt_mask": b["observed_mask"] - b["target_mask"], "timepoints": b["timepoints"]}  # fmt: skip
    return model, batch


def original_step_fn(model, batch: dict):
    """``utils.train`` of the original: ``model(batch)``, backward, Adam step (weight decay 1e-6)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    model.train()

    def step() -> None:
        opt.zero_grad()
        model(batch).backward()
        opt.step()

    return step


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each fn, called in turn (a, b, a, b, ...) after one warm-up call each."""
    for fn in fns.values():
        fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(_time(fn))
    return {k: statistics.median(v) for k, v in times.items()}


# -- the table ----------------------------------------------------------------------------------------------
def bench_table(args) -> dict:
    torch.set_num_threads(args.threads)
    res = {"machine": machine_type(), "cpu": cpu_name(), "threads": args.threads, "clock": args.clock,
           "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": load(), "rows": []}  # fmt: skip
    res["peak_fp32"] = matmul_peak(torch.float32)
    res["peak_bf16"] = matmul_peak(torch.bfloat16)
    print(f"peak fp32 {res['peak_fp32']:.0f} GFLOP/s, bf16 {res['peak_bf16']:.0f} GFLOP/s", flush=True)
    rows = res["rows"]

    # CSDI PhysioNet paper config: training step, ours fp32 / bf16 and the original, interleaved
    torch.manual_seed(0)
    task, batch = physionet_task(), physionet_batch()
    fns = {"ours fp32": train_step_fn(task, batch, False), "ours bf16": train_step_fn(task, batch, True)}
    if args.original:
        fns["original"] = original_step_fn(*original_physio(args.original))
    flops = {k: step_flops(fn) for k, fn in fns.items()}
    med = interleaved(fns, args.repeats)
    for k, s in med.items():
        rows.append(_row("CSDI PhysioNet train step (B=16,L=48,K=35)", k, s, flops[k], res, med.get("original")))
    print(rows[-3:], flush=True)

    # per-row cost of a denoiser call (eval, as in sampling) at 16 / 80 / 320 rows
    res["per_row_ms"] = per_row_costs(task, args)
    print(res["per_row_ms"], flush=True)

    # 100-sample imputation of 16 records, ours (several samplers, fp32/bf16) vs the original loop
    res["imputation"] = imputation_times(task, batch, res["per_row_ms"], args)
    print(res["imputation"], flush=True)

    # CSDI electricity forecasting and TimeGrad training steps
    forecasting_rows(res, args)
    res["paper_protocol"] = paper_protocol(res)
    res["load_end"] = load()
    return res


def _row(case: str, model: str, s: float, flops: float, res: dict, ref_s: float | None) -> dict:
    peak = res["peak_bf16"] if "bf16" in model else res["peak_fp32"]
    gfs = flops / s / 1e9
    vs = ref_s / s if ref_s and model != "original" else None
    return {
        "case": case,
        "model": model,
        "s": s,
        "gflop": flops / 1e9,
        "gflops": gfs,
        "pct_peak": 100 * gfs / peak,
        "vs_original": vs,
    }


def per_row_costs(task, args) -> dict:
    """ms per row of one eval denoiser call at 16, 80, 320 rows, fp32 and bf16, inside keep_freed_memory."""
    from tsdiffusion.tasks.base import make_cond

    den = task.denoiser.eval()
    out = {}
    for bf16 in (False, True):
        for rows in (16, 80, 320):
            b = physionet_batch(rows)
            cond = make_cond(b, b["observed_mask"] - b["target_mask"])
            x, t = torch.randn(rows, 48, 35), torch.randint(0, 50, (rows,))

            def call(x=x, t=t, cond=cond, bf16=bf16) -> None:
                with torch.no_grad(), autocast(bf16):
                    den(x, t, cond)

            with keep_freed_memory():
                call()
                s = statistics.median(_time(call) for _ in range(max(1, args.repeats * 16 // rows)))
            out[f"{'bf16' if bf16 else 'fp32'} {rows}"] = 1e3 * s / rows
    return out


def imputation_times(task, batch: dict, per_row: dict, args) -> dict:
    """100 samples for 16 records: ours from the measured 320-row call (1600 rows = 5 chunks of 320), the
    original's impute timed for ``--original-samples`` samples and scaled to 100 (its loop is linear in them)."""
    out = {}
    for prec in ("fp32", "bf16"):
        ms = per_row[f"{prec} 320"]
        for sampler, calls in (("DDPM-50", 50), ("DPM++(2M)-10", 10)):
            out[f"ours {prec} {sampler}"] = {"s": ms * 1600 * calls / 1e3, "scaled": True}
    # one real (unscaled) chunk of ours, as a check of the scaling: 320 rows, 5 DDPM calls, the task's sampler
    task.eval()
    task.hparams.update(sampler="ddpm", sample_steps=5, sample_batch_size=320)
    cond_mask = batch["observed_mask"] - batch["target_mask"]
    task.hparams.update(sample_steps=2)
    s = _time(lambda: task.sample(batch, cond_mask, num_samples=20))
    out["ours fp32 check: 320 rows x 2 DDPM calls, measured"] = {
        "s": s,
        "scaled": False,
        "predicted": per_row["fp32 320"] * 320 * 2 / 1e3,
    }
    if args.original:
        model, ob = original_physio(args.original)
        model.eval()
        n = args.original_samples
        with torch.no_grad():
            s = _time(lambda: model.evaluate(ob, n))
        out["original DDPM-50 (loop over samples)"] = {"s": s * 100 / n, "scaled": True, "measured_samples": n}
    return out


def forecasting_rows(res: dict, args) -> None:
    """CSDI electricity forecasting (linear attention) and TimeGrad electricity training steps, fp32 and bf16
    (bench_forecasting.py's builders), the original's CSDI_Forecasting when its dependencies import."""
    sys.path.insert(0, str(ROOT / "benchmarks" / "scripts"))
    import bench_forecasting as bf

    cases = (
        ("csdi-train", "linear", "CSDI electricity train step (B=8,L=192,K=64/370)"),
        ("timegrad-train", "tg", "TimeGrad electricity train step (B=64,K=370)"),
    )
    for case, variant_fp32, label in cases:
        torch.manual_seed(0)
        task, shape = bf.build(case, 370, 10, f"{variant_fp32}-fp32")
        batch = bf.make_batch(*shape, bf.H)
        fns = {"ours fp32": train_step_fn(task, batch, False), "ours bf16": train_step_fn(task, batch, True)}
        if case == "csdi-train" and args.original:
            try:
                fns["original"] = original_forecast_step(args.original)
            except ImportError as e:  # linear_attention_transformer missing
                print(f"original forecasting skipped: {e}", flush=True)
        flops = {k: step_flops(fn) for k, fn in fns.items()}
        med = interleaved(fns, max(1, args.repeats // 2))
        for k, s in med.items():
            res["rows"].append(_row(label, k, s, flops[k], res, med.get("original")))
        print(res["rows"][-len(med) :], flush=True)


def original_forecast_step(folder: str):
    sys.path.insert(0, str(ROOT / "benchmarks" / "scripts"))
    import bench_forecasting as bf

    model = bf.build_original(folder, 370)
    B, L, K = 8, bf.CONTEXT + bf.H, 370
    gt_mask = torch.ones(B, L, K)
    gt_mask[:, -bf.H :] = 0
    batch = {"observed_data": torch.randn(B, L, K), "observed_mask": torch.ones(B, L, K), "gt_mask": gt_mask,
             "timepoints": torch.arange(L).float().expand(B, L)}  # fmt: skip
    return original_step_fn(model, batch)


def paper_protocol(res: dict) -> dict:
    """CSDI PhysioNet paper protocol from measured times: 200 epochs x ceil(3197/16) steps, then 100 samples for
    799 test records (50 batches of 16 records)."""
    steps = 200 * -(-3197 // 16)
    out = {}
    train = {r["model"]: r["s"] for r in res["rows"] if r["case"].startswith("CSDI PhysioNet")}
    for prec in ("fp32", "bf16"):
        t_train = steps * train[f"ours {prec}"]
        for sampler, calls in (("DDPM-50", 50), ("DPM++(2M)-10", 10)):
            t_test = res["per_row_ms"][f"{prec} 320"] * 799 * 100 * calls / 1e3
            out[f"ours {prec}, {sampler}"] = {"train_h": t_train / 3600, "test_h": t_test / 3600,
                                              "total_h": (t_train + t_test) / 3600}  # fmt: skip
    if "original" in train and "original DDPM-50 (loop over samples)" in res["imputation"]:
        t_train = steps * train["original"]
        t_test = res["imputation"]["original DDPM-50 (loop over samples)"]["s"] * 799 / 16
        out["original fp32, DDPM-50"] = {"train_h": t_train / 3600, "test_h": t_test / 3600,
                                         "total_h": (t_train + t_test) / 3600}  # fmt: skip
    return out


def write_table(res: dict, folder: Path, command: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "speed.json").write_text(json.dumps({**res, "command": command}, indent=1))
    lines = [f"# Speed on {res['cpu']} ({res['machine']}), {res['threads']} threads, {res['clock']} clock, torch "
             f"{res['torch']}",
             "", f"Date {res['date']}. Command: `{command}`", "",
             f"Load: start `{res['load_start']}`; end `{res['load_end']}` (shared machine: absolute times are "
             "inflated; ours/original were interleaved, so their ratios are fair).", "",
             f"Matmul peak (2048^3, median): float32 {res['peak_fp32']:.0f} GFLOP/s, bf16 {res['peak_bf16']:.0f} "
             "GFLOP/s.", "",
             "| case | model | s/step | GFLOP/step | GFLOP/s | % of peak (same dtype) | speed-up vs original |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in res["rows"]:
        vs = f"{r['vs_original']:.2f}x" if r["vs_original"] else "-"
        lines.append(f"| {r['case']} | {r['model']} | {r['s']:.3f} | {r['gflop']:.1f} | {r['gflops']:.0f} | "
                     f"{r['pct_peak']:.1f}% | {vs} |")  # fmt: skip
    lines += ["", "Denoiser call (eval, PhysioNet paper config) in ms per row, inside keep_freed_memory:", "",
              "| precision | 16 rows | 80 rows | 320 rows | 320 / 16 |", "|---|---|---|---|---|"]  # fmt: skip
    pr = res["per_row_ms"]
    for p in ("fp32", "bf16"):
        lines.append(f"| {p} | {pr[p + ' 16']:.2f} | {pr[p + ' 80']:.2f} | {pr[p + ' 320']:.2f} | "
                     f"{pr[p + ' 320'] / pr[p + ' 16']:.2f} |")  # fmt: skip
    lines += [
        "",
        "100-sample imputation of 16 records (scaled = a few calls/samples timed, scaled linearly):",
        "",
        "| how | s | scaled | vs original |",
        "|---|---|---|---|",
    ]
    orig = res["imputation"].get("original DDPM-50 (loop over samples)", {}).get("s")
    for k, v in res["imputation"].items():
        vs = f"{orig / v['s']:.1f}x" if orig and not k.startswith("original") and "check" not in k else "-"
        lines.append(f"| {k} | {v['s']:.1f} | {'yes' if v['scaled'] else 'no'} | {vs} |")
    lines += ["", "CSDI PhysioNet paper protocol on this machine (200 epochs x 200 steps of batch 16, then 100 "
              "samples for 799 test records), from the measured times:", "",
              "| setting | training h | test h | total h |", "|---|---|---|---|"]  # fmt: skip
    for k, v in res["paper_protocol"].items():
        lines.append(f"| {k} | {v['train_h']:.1f} | {v['test_h']:.1f} | {v['total_h']:.1f} |")
    (folder / "speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# -- memory: peak RSS of one CSDI forecasting training step, ours vs the original ----------------------------
MEMORY_VARIANTS = ("ours fp32", "ours bf16", "original")


def _rss_mib(field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak since start or the last reset) of this process, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def _reset_peak() -> None:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux ``/proc/self/clear_refs``, value 5)."""
    Path("/proc/self/clear_refs").write_text("5")


def memory_child(variant: str, args) -> dict:
    """Peak RSS of CSDI electricity training steps (B=8, L=192, 64 of 370 series, linear attention) in this fresh
    process: the first step (Adam state created) and a later step, each as the peak RSS increase over the RSS just
    before it, and over the RSS after building model and batch (``above_built``)."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if variant == "original":
        step = original_forecast_step(args.original)
    else:
        sys.path.insert(0, str(ROOT / "benchmarks" / "scripts"))
        import bench_forecasting as bf

        task, shape = bf.build("csdi-train", 370, 10, "linear-fp32")
        step = train_step_fn(task, bf.make_batch(*shape, bf.H), variant.endswith("bf16"))
    built = _rss_mib("VmRSS")
    out = {"variant": variant, "rss_built_mib": built, "steps": []}
    for i in range(args.memory_steps):
        _reset_peak()
        before = _rss_mib("VmRSS")
        t0 = time.process_time()
        step()
        cpu = time.process_time() - t0
        peak = _rss_mib("VmHWM")
        out["steps"].append({"step": i, "rss_before_mib": before, "peak_mib": peak, "increase_mib": peak - before,
                             "above_built_mib": peak - built, "cpu_s": cpu})  # fmt: skip
    return out


def memory_table(args) -> dict:
    """Each variant in its own fresh subprocess (its allocator state and peak its own), in turn."""
    res = {"machine": machine_type(), "cpu": cpu_name(), "threads": args.threads, "torch": torch.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": load(),
           "case": "CSDI electricity forecasting train step (B=8, L=168+24, 64 of K=370 series, 4 layers x 64 "
                   "channels, linear attention; original: config/base_forecasting.yaml)", "runs": []}  # fmt: skip
    variants = [v for v in MEMORY_VARIANTS if v != "original" or args.original]
    for _ in range(args.memory_repeats):
        for v in variants:
            cmd = [sys.executable, __file__, "--part", "memory-child", "--variant", v, "--threads", str(args.threads),
                   "--memory-steps", str(args.memory_steps)]  # fmt: skip
            cmd += ["--original", args.original] if args.original else []
            cmd += ["--original-site", args.original_site] if args.original_site else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res["runs"].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(res["runs"][-1]), flush=True)
    summary = {}
    for v in variants:
        runs = [r for r in res["runs"] if r["variant"] == v]
        first = statistics.median(r["steps"][0]["above_built_mib"] for r in runs)
        later = statistics.median(max(s["above_built_mib"] for s in r["steps"][1:]) for r in runs)
        summary[v] = {"first_step_peak_above_built_mib": first, "later_step_peak_above_built_mib": later,
                      "rss_built_mib": statistics.median(r["rss_built_mib"] for r in runs)}  # fmt: skip
    if "original" in summary:
        o = summary["original"]["later_step_peak_above_built_mib"]
        for v in variants[:-1]:
            summary[v]["ratio_to_original"] = summary[v]["later_step_peak_above_built_mib"] / o
    res["summary"] = summary
    res["load_end"] = load()
    print(json.dumps(summary, indent=1), flush=True)
    return res


# -- precision: bf16 vs float32 on trained runs ---------------------------------------------------------
def precision_check(args) -> dict:
    """CRPS at 100 samples with float32 and with bf16 autocast (same weights, same test windows, same seed)."""
    from tsdiffusion.runs import instantiate

    torch.set_num_threads(args.threads)
    out = {"load_start": load(), "runs": {}}
    for name, run, windows in (("physionet", args.physionet, args.windows), ("exchange", args.exchange, 5)):
        if not run:
            continue
        run = Path(run)
        built = instantiate(run / "config.yaml", trainer=False)
        task, dm = built.task, built.datamodule
        ckpt = torch.load(args.ckpt.get(name) or run / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=False)  # fmt: skip
        task.load_state_dict(ckpt["state_dict"])
        task.eval()
        dm.setup("test")
        batch = next(iter(dm.test_dataloader()))
        batch = {k: v[:windows] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        cond_mask = task.eval_cond_mask(batch)
        scores = {}
        for prec in ("32-true", "bf16-mixed"):
            gen = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            with autocast(prec == "bf16-mixed"):
                samples = task.sample(batch, cond_mask, num_samples=100, generator=gen)
            wall = time.perf_counter() - t0
            metric = task.test_metrics.clone()
            metric.reset()
            metric.update(task.to_units(samples.float(), batch), task.to_units(batch["observed"], batch),
                          batch["target_mask"])  # fmt: skip
            vals = {k: float(v) for k, v in metric.compute().items()}
            scores[prec] = {"metrics": vals, "wall_s": wall}
            print(name, prec, vals, f"{wall:.1f}s", flush=True)
        crps = next(k for k in scores["32-true"]["metrics"] if k.endswith("crps"))
        a, b = scores["32-true"]["metrics"][crps], scores["bf16-mixed"]["metrics"][crps]
        out["runs"][name] = {"run": str(run), "epoch": ckpt["epoch"], "global_step": ckpt["global_step"],
                             "windows": windows, "sampler": task.hparams.sampler,
                             "sample_steps": task.hparams.sample_steps, "crps_key": crps,
                             "crps_rel_diff_pct": 100 * (b - a) / a, **scores}  # fmt: skip
    out["load_end"] = load()
    return out


def loss_curves(args, folder: Path) -> dict:
    """Training loss per step of the same config, seed and batches in float32 and in bf16 autocast."""
    import pandas as pd
    import yaml

    from tsdiffusion.runs import instantiate

    torch.set_num_threads(args.threads)
    out = {}
    for config in args.curve_configs:
        cfg = yaml.safe_load(open(config))
        curves = {}
        for prec in ("32-true", "bf16-mixed"):
            log_dir = folder / "curve_logs"
            cfg["trainer"].update(precision=prec, max_steps=args.curve_steps, max_epochs=None, log_every_n_steps=1,
                                  limit_val_batches=0, default_root_dir=str(log_dir),
                                  logger={"class_path": "lightning.pytorch.loggers.CSVLogger",
                                          "init_args": {"save_dir": str(log_dir), "name": Path(config).stem,
                                                        "version": prec}})  # fmt: skip
            cfg.pop("test_after_fit", None)
            built = instantiate(cfg)
            t0 = time.perf_counter()
            built.trainer.fit(built.task, datamodule=built.datamodule)
            wall = time.perf_counter() - t0
            m = pd.read_csv(log_dir / Path(config).stem / prec / "metrics.csv")
            col = next(c for c in m.columns if c.startswith("train/loss") or c == "train_loss")
            m = m.dropna(subset=[col])
            curves[prec] = {"step": m["step"].tolist(), "loss": m[col].tolist(), "wall_s": wall}
        f, b = (statistics.mean(curves[p]["loss"][-20:]) for p in ("32-true", "bf16-mixed"))
        out[config] = {**curves, "seed": cfg.get("seed_everything"), "mean_last20_fp32": f, "mean_last20_bf16": b}
    plot_curves(out, folder / "loss_curves_bf16_vs_fp32.png")
    return out


def plot_curves(res: dict, path: Path) -> None:
    """Per config: both losses overlaid (top) and their difference bf16 - float32 per step (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    configs = [k for k in res if k != "command"]
    fig, axes = plt.subplots(2, len(configs), figsize=(6 * len(configs), 6), squeeze=False, sharex="col",
                             gridspec_kw={"height_ratios": [2, 1]})  # fmt: skip
    for col, config in enumerate(configs):
        c = res[config]
        f, b = c["32-true"], c["bf16-mixed"]
        top, bottom = axes[0][col], axes[1][col]
        top.plot(f["step"], f["loss"], label="float32 (32-true)", lw=2.5, color="tab:blue")
        top.plot(b["step"], b["loss"], label="bf16 autocast (bf16-mixed)", lw=1, color="tab:orange", ls="--")
        top.set(title=f"{Path(config).stem} (seed {c.get('seed', 1)}, same batches)", ylabel="training loss")
        top.legend()
        diff = [y - x for x, y in zip(f["loss"], b["loss"])]
        bottom.plot(f["step"][: len(diff)], diff, color="tab:red", lw=1)
        bottom.axhline(0, color="grey", lw=0.5)
        bottom.set(xlabel="training step", ylabel="bf16 - float32",
                   title=f"max |diff| {max(map(abs, diff)):.4f}; mean of last 20 steps "
                         f"{c['mean_last20_fp32']:.4f} (fp32) vs {c['mean_last20_bf16']:.4f} (bf16)")  # fmt: skip
        bottom.title.set_fontsize(9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = ("table", "precision", "curves", "curves-plot", "memory", "memory-child")
    p.add_argument("--part", choices=parts, default="table")
    p.add_argument("--variant", choices=MEMORY_VARIANTS, help="--part memory-child: the model measured")
    p.add_argument("--memory-steps", type=int, default=3, help="training steps per memory subprocess (>= 2)")
    p.add_argument("--memory-repeats", type=int, default=1, help="fresh subprocesses per variant")
    p.add_argument(
        "--curve-configs",
        nargs="+",
        default=["experiments/quick/csdi_physionet.yaml", "experiments/quick/csdi_exchange.yaml"],
    )
    p.add_argument("--curve-steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: process CPU seconds (use with --threads 1 on a machine shared with others)",
    )
    p.add_argument("--original", help="a checkout of the original CSDI code (ermongroup/CSDI)")
    p.add_argument("--original-site", help="site-packages holding linear_attention_transformer (original's deps)")
    p.add_argument("--original-samples", type=int, default=1, help="samples of the original's impute timed")
    p.add_argument("--physionet", help="a trained CSDI PhysioNet run folder (config.yaml, checkpoints/)")
    p.add_argument("--exchange", help="a trained CSDI forecasting run folder")
    p.add_argument("--windows", type=int, default=16, help="PhysioNet test records in the precision check")
    p.add_argument("--ckpt", nargs="*", default=[], help="name=path checkpoints that replace last.ckpt")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/speed/<machine>)")
    args = p.parse_args()
    args.ckpt = dict(c.split("=", 1) for c in args.ckpt)
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.original_site:  # the original's diff_models.py imports linear_attention_transformer at the top
        sys.path.append(args.original_site)
    folder = Path(args.out) if args.out else OUT / machine_type()
    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    if args.part == "curves-plot":  # redraw the figure from loss_curves.json
        plot_curves(json.loads((folder / "loss_curves.json").read_text()), folder / "loss_curves_bf16_vs_fp32.png")
        return
    if args.part == "curves":
        folder.mkdir(parents=True, exist_ok=True)
        res = loss_curves(args, folder)
        (folder / "loss_curves.json").write_text(json.dumps({**res, "command": command}, indent=1))
        return
    if args.part == "memory-child":
        print(json.dumps(memory_child(args.variant, args)))
        return
    if args.part == "memory":
        res = memory_table(args)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "memory.json").write_text(json.dumps({**res, "command": command}, indent=1))
        return
    if args.part == "precision":
        res = precision_check(args)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "precision.json").write_text(json.dumps({**res, "command": command}, indent=1))
        return
    write_table(bench_table(args), folder, command)


if __name__ == "__main__":
    main()

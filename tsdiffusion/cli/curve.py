"""The speed/quality curve of a trained run: CRPS and CRPS-sum against denoiser calls, per sampler.

``tsdiffusion curve --run DIR`` loads a finished run (its ``metrics.json`` record and
``checkpoints/last.ckpt``), and for every sampler (``ddpm`` strided, ``ddim``, ``dpmpp`` = DPM-Solver++(2M),
``dpmpp_sde``) and number of steps in a grid draws ``num_samples`` samples for one fixed set of test windows,
``repeats`` times, scoring each set with the task's CRPS / CRPS-sum in the task's units. It writes
``curve.csv``, ``curve.md`` and ``curve.png`` into the run folder (or ``--out``).

Controlled comparison: repeat ``r`` of window batch ``i`` uses the generator seed ``seed + 1_000_003 i + r`` for
every sampler and step count, so all configurations start from the same x_T (common random numbers) and
differ only by their sampler. The Monte-Carlo error is measured, not assumed: each configuration is scored
on ``repeats`` independent sample sets; the table gives the mean and its standard error (std / sqrt(R)),
and the paired difference to a reference configuration (default: the first sampler at the most steps) with
the standard error of the per-repeat differences, which the common random numbers make small.
``calls`` is the number of network evaluations per sample path (counted with a forward hook, so
guidance and TimeGrad's per-step chains are counted as they run); ``wall_s`` the mean time to sample every
window once.
"""

from __future__ import annotations

import argparse
import csv
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from tsdiffusion.benchmark.tables import csv_text, markdown_lines
from tsdiffusion.diffusion.samplers import SAMPLERS
from tsdiffusion.metrics import ProbabilisticMetrics
from tsdiffusion.runs import load_run

COLUMNS = ("sampler", "steps", "calls", "crps", "crps_se", "crps_sum", "crps_sum_se", "d_crps", "d_crps_se",
           "d_crps_sum", "d_crps_sum_se", "wall_s", "num_samples", "repeats", "windows")  # fmt: skip


def fixed_windows(datamodule, max_batches: int | None = None, max_windows: int | None = None) -> list[dict]:
    """The first ``max_batches`` batches of the test loader (all: None), as a list (the same for every sampler),
    cut to the first ``max_windows`` windows in all (None: no cut)."""
    out, left = [], max_windows
    for i, batch in enumerate(datamodule.test_dataloader()):
        if (max_batches is not None and i >= max_batches) or left == 0:
            break
        n = len(batch["observed"])
        if left is not None and n > left:
            batch = {
                k: v[:left] if hasattr(v, "shape") and v.dim() > 0 and len(v) == n else v for k, v in batch.items()
            }
            n = left
        out.append(batch)
        left = None if left is None else left - n
    if not out:
        raise ValueError("curve: the test loader yielded no windows")
    return out


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


class _CallCounter:
    """Counts the denoiser's forward calls and the rows they process."""

    def __init__(self, module: torch.nn.Module):
        self.calls = self.rows = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.rows += int(args[0].shape[0]) if args and hasattr(args[0], "shape") else 0

    def remove(self) -> None:
        self._handle.remove()


@torch.no_grad()
def evaluate_sampler(
    task, windows: list[dict], sampler: str, steps: int, num_samples: int, repeats: int, seed: int = 0
) -> dict[str, Any]:
    """Score one sampler configuration on ``windows``: per repeat, CRPS and CRPS-sum over all windows.

    Returns {"crps": [R], "crps_sum": [R], "wall_s": [R], "calls": denoiser evaluations per sample path}.
    """
    counter = _CallCounter(task.denoiser)
    res: dict[str, Any] = {"crps": [], "crps_sum": [], "wall_s": []}
    paths = 0
    try:
        for r in range(repeats):
            metrics = ProbabilisticMetrics(("crps", "crps_sum"))
            wall = 0.0
            for i, batch in enumerate(windows):
                gen = torch.Generator(device=task.device).manual_seed(seed + 1_000_003 * i + r)
                cond_mask = task.eval_cond_mask(batch)
                t0 = time.perf_counter()
                samples = task.sample(batch, cond_mask, num_samples, gen, sampler=sampler, steps=steps)
                wall += time.perf_counter() - t0
                paths += samples.shape[0] * samples.shape[1]
                metrics.update(task.to_units(samples, batch), task.to_units(batch["observed"], batch),
                               batch["target_mask"])  # fmt: skip
            scores = metrics.compute()
            res["crps"].append(float(scores["crps"]))
            res["crps_sum"].append(float(scores["crps_sum"]))
            res["wall_s"].append(wall)
    finally:
        counter.remove()
    res["calls"] = counter.rows / max(paths, 1)
    return res


def speed_quality_curve(
    task,
    windows: list[dict],
    samplers: Iterable[str] = SAMPLERS,
    steps: Iterable[int] = (5, 10, 20, 50),
    num_samples: int = 32,
    repeats: int = 4,
    seed: int = 0,
    reference: tuple[str, int] | None = None,
    log=None,
) -> list[dict[str, Any]]:
    """Rows of the curve (see :data:`COLUMNS`), one per (sampler, steps); steps above the training steps are
    dropped. ``reference``: (sampler, steps) the differences are taken against (default: first sampler, most
    steps)."""
    task.eval()
    n = task.process.num_steps
    grid = sorted({min(s, n) for s in steps})
    samplers = list(samplers)
    for name in samplers:
        if name not in SAMPLERS:
            raise ValueError(f"curve: unknown sampler {name!r}: expected one of {SAMPLERS}")
    reference = reference or (samplers[0], grid[-1])
    raw: dict[tuple[str, int], dict] = {}
    for name in samplers:
        for s in grid:
            raw[(name, s)] = evaluate_sampler(task, windows, name, s, num_samples, repeats, seed)
            if log:
                log(f"curve: {name} {s} steps: crps {_mean_se(raw[(name, s)]['crps'])[0]:.5f}")
    if reference not in raw:
        raise ValueError(f"curve: the reference {reference} is not among the evaluated configurations")
    ref = raw[reference]
    rows = []
    for (name, s), res in raw.items():
        row: dict[str, Any] = {"sampler": name, "steps": s, "calls": res["calls"], "num_samples": num_samples,
                               "repeats": repeats, "windows": sum(len(b["observed"]) for b in windows)}  # fmt: skip
        for key in ("crps", "crps_sum"):
            row[key], row[f"{key}_se"] = _mean_se(res[key])
            row[f"d_{key}"], row[f"d_{key}_se"] = _mean_se([a - b for a, b in zip(res[key], ref[key], strict=True)])
        row["wall_s"] = sum(res["wall_s"]) / len(res["wall_s"])
        rows.append(row)
    return rows


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def write_csv(rows: list[dict], path: Path) -> Path:
    path.write_text(csv_text(({k: row[k] for k in COLUMNS} for row in rows), COLUMNS))
    return path


def read_csv(path: str | Path) -> list[dict[str, Any]]:
    """Rows written by :func:`write_csv` (numbers as float / int), e.g. to redraw or compare saved curves."""
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {"sampler": raw["sampler"]}
            for k in COLUMNS[1:]:
                row[k] = int(raw[k]) if k in ("steps", "num_samples", "repeats", "windows") else float(raw[k])
            rows.append(row)
    return rows


def markdown_table(rows: list[dict], reference: str = "") -> str:
    head = ("sampler", "steps", "calls", "CRPS", "± se", "CRPS-sum", "± se", f"ΔCRPS vs {reference}", "± se",
            "ΔCRPS-sum", "± se", "wall s")  # fmt: skip
    keys = ("sampler", "steps", "calls", "crps", "crps_se", "crps_sum", "crps_sum_se", "d_crps", "d_crps_se",
            "d_crps_sum", "d_crps_sum_se", "wall_s")  # fmt: skip
    return "\n".join(markdown_lines(head, ([_fmt(r[k]) for k in keys] for r in rows)))


def curve_figure(rows: list[dict], title: str = ""):
    """A matplotlib Figure (no pyplot): CRPS and CRPS-sum against calls per sample, ±2 SE bars, one line per
    sampler."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, key, label in zip(axes, ("crps", "crps_sum"), ("CRPS", "CRPS-sum"), strict=True):
        for name in dict.fromkeys(r["sampler"] for r in rows):
            pts = sorted((r for r in rows if r["sampler"] == name), key=lambda r: r["calls"])
            ax.errorbar([r["calls"] for r in pts], [r[key] for r in pts],
                        yerr=[2 * (0 if math.isnan(r[f"{key}_se"]) else r[f"{key}_se"]) for r in pts],
                        marker="o", capsize=3, label=name)  # fmt: skip
        ax.set_xscale("log")
        ticks = sorted({r["calls"] for r in rows})
        ax.set_xticks(ticks, [f"{c:g}" for c in ticks])
        ax.minorticks_off()
        ax.set_xlabel("denoiser calls per sample")
        ax.set_ylabel(f"{label} (mean ± 2 SE over sample sets)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    return fig


def save_curve(rows: list[dict], out_dir: str | Path, title: str = "", reference: str = "") -> dict[str, Path]:
    """curve.csv, curve.md and curve.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"csv": write_csv(rows, out / "curve.csv")}
    md = f"# {title}\n\n" if title else ""
    (out / "curve.md").write_text(md + markdown_table(rows, reference) + "\n")
    paths["md"] = out / "curve.md"
    fig = curve_figure(rows, title)
    fig.savefig(out / "curve.png", dpi=120)
    paths["png"] = out / "curve.png"
    return paths


def run_curve(run_dir: str | Path, out_dir: str | Path | None = None, *, samplers: Sequence[str] = SAMPLERS,
              steps: Sequence[int] = (5, 10, 20, 50), num_samples: int = 32, repeats: int = 4,
              max_batches: int | None = None, max_windows: int | None = None, seed: int = 0,
              log=print) -> dict[str, Path]:  # fmt: skip
    """Load the run in ``run_dir``, compute its curve, save it (into ``out_dir``, default the run folder)."""
    task, dm, record = load_run(run_dir)
    windows = fixed_windows(dm, max_batches, max_windows)
    t0 = time.perf_counter()
    rows = speed_quality_curve(task, windows, samplers, steps, num_samples, repeats, seed, log=log)
    ref = f"{rows[0]['sampler']}-{max(r['steps'] for r in rows)}"
    title = (f"{record.get('task', type(task).__name__)} / {record.get('model', '')} on {record.get('dataset', '')}: "
             f"{rows[0]['windows']} windows, {num_samples} samples, {repeats} sample sets")  # fmt: skip
    paths = save_curve(rows, out_dir or run_dir, title, ref)
    log(f"curve: {len(rows)} configurations in {time.perf_counter() - t0:.0f} s -> {paths['md'].parent}")
    return paths


def main(argv: Sequence[str] | None = None) -> None:
    """``tsdiffusion curve --run DIR [--samplers ...] [--steps ...] [--num_samples S] [--repeats R]``."""
    p = argparse.ArgumentParser(prog="tsdiffusion curve", description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a finished run folder (metrics.json, checkpoints/last.ckpt)")
    p.add_argument("--out", default=None, help="output folder (default: the run folder)")
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--steps", nargs="+", type=int, default=[5, 10, 20, 50])
    p.add_argument("--num_samples", type=int, default=32)
    p.add_argument("--repeats", type=int, default=4, help="independent sample sets per configuration (>= 2)")
    p.add_argument("--max_batches", type=int, default=None, help="test batches used (default: all)")
    p.add_argument("--max_windows", type=int, default=None, help="test windows used in all (default: all)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.repeats < 2:
        p.error("--repeats must be >= 2 to measure the Monte-Carlo error")
    run_curve(a.run, a.out, samplers=a.samplers, steps=a.steps, num_samples=a.num_samples, repeats=a.repeats,
              max_batches=a.max_batches, max_windows=a.max_windows, seed=a.seed)  # fmt: skip

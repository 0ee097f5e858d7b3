"""Ablation reports: each factor level of a sweep against the factor's reference level, paired by seed.

A *factor* is a grid key of the spec, or ``variant`` (the spec's named override sets, one factor at a time);
its *reference level* comes from the spec's ``ablation:`` mapping (saved in ``sweep.json``), from
``tsdiffusion benchmark report DIR --ablation FACTOR=LEVEL,...``, or is the factor's first level. For every
(config, factor, level) the table shows, per metric:

* ``mean ± std`` over seeds (sample std, ``ddof=1``), and ``n``, the seeds;
* ``x opt``: mean ± std over seeds of the metric over the record's exact optimum ``data.optimal[metric]``
  (synthetic data sets with a known Bayes-optimal law, :class:`tsdiffusion.data.SyntheticDataModule`);
* ``Δ ref [95% CI]``: the **paired** difference to the reference level. Two runs are a pair when they share
  the seed, the config and the levels of every other factor (so they share initialisation, training windows
  and test windows, and differ only by this factor's level); the interval is Student's t on the n paired
  differences, ``mean ± t_{0.975, n-1} * sd / sqrt(n)`` (n - 1 degrees of freedom), so it needs n >= 2 pairs.
  A ``*`` marks an interval that excludes zero. Seeds that one side lacks (unfinished, failed or flagged runs)
  drop out of the pairs, never out of the means of the side that has them.

With several factors in one grid the comparison at each level averages over the other factors' levels (a
main effect, every cell paired). Flagged runs (exploded samples, non-finite metrics) are left out, as in the
main report. Output: ``ablation.md``, ``ablation.csv`` (every metric; one row per config, factor, level and
metric), ``ablation.png`` (metric against level per factor, one dot per seed) in the sweep folder, and the
Markdown appended to ``results.md`` as its section "Ablation".
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

from tsdiffusion.benchmark.collect import collect, lookup, split_flagged
from tsdiffusion.benchmark.spec import VARIANT, format_value, short_key
from tsdiffusion.records import write_text_atomic

#: Metrics of the printed / Markdown table when present (the CSV has every metric), in this order.
ABLATION_METRICS = ("crps", "crps_sum", "coverage_90", "mse_mean", "energy_score")

#: Confidence level of the paired intervals.
LEVEL = 0.95


@dataclass(frozen=True)
class Paired:
    """Paired differences (level - reference): mean, t interval bounds, number of pairs (NaN bounds for n < 2)."""

    mean: float
    lo: float
    hi: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and (self.lo > 0 or self.hi < 0)


def paired_interval(diffs: Any, level: float = LEVEL) -> Paired:
    """Student's t interval of the mean of paired differences (n - 1 degrees of freedom).

    ``mean ± t_{(1 + level) / 2, n - 1} * s / sqrt(n)``, s the sample std (ddof=1); bounds are NaN for n < 2.
    """
    d = np.asarray([x for x in np.asarray(diffs, dtype=float).ravel() if math.isfinite(x)])
    n = len(d)
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, 0)
    mean = float(d.mean())
    if n < 2:
        return Paired(mean, math.nan, math.nan, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * float(d.std(ddof=1)) / math.sqrt(n)
    return Paired(mean, mean - half, mean + half, n)


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


@dataclass
class LevelRow:
    """One (config, factor, level) of the ablation: per-seed values and the paired comparison per metric."""

    config: str
    factor: str
    level: str
    reference: bool
    values: dict[str, dict[tuple, float]]  # metric -> {pairing key (seed, other levels): value}
    optimum: dict[str, float]  # metric -> the records' exact optimum (NaN when the data has none)
    paired: dict[str, Paired]  # metric -> level minus reference (empty for the reference row)

    def stats(self, metric: str) -> tuple[float, float, int]:
        return _mean_std(list(self.values.get(metric, {}).values()))

    def ratio(self, metric: str) -> tuple[float, float, int]:
        best = self.optimum.get(metric, math.nan)
        if not (math.isfinite(best) and best > 0):
            return math.nan, math.nan, 0
        return _mean_std([v / best for v in self.values.get(metric, {}).values()])

    def seeds(self, metric: str) -> list[int]:
        return [key[0] for key in self.values.get(metric, {})]


def _level(value: Any) -> str:
    return format_value(value)


def factor_levels(sweep: dict[str, Any]) -> dict[str, list[str]]:
    """Factors of a sweep plan (``sweep.json``) with their levels in spec order: ``variant`` first, then the grid."""
    out = {}
    if sweep.get("variants"):
        out[VARIANT] = [str(v) for v in sweep["variants"]]
    for key, values in (sweep.get("grid") or {}).items():
        out[key] = [_level(v) for v in values]
    return out


def references(sweep: dict[str, Any], given: dict[str, str] | None = None) -> dict[str, str]:
    """Each factor's reference level: ``given`` (CLI), else the spec's ``ablation``, else its first level."""
    levels = factor_levels(sweep)
    spec = {k: _level(v) if k != VARIANT else str(v) for k, v in (sweep.get("ablation") or {}).items()}
    out: dict[str, Any] = {}
    for factor, values in levels.items():
        out[factor] = (given or {}).get(factor) or (given or {}).get(short_key(factor, levels)) or spec.get(factor)
        out[factor] = out[factor] or values[0]
        if out[factor] not in values:
            raise ValueError(f"ablation: reference {factor}={out[factor]!r} is not one of its levels {values}")
    return out


def parse_references(text: str | None) -> dict[str, str]:
    """``"variant=base,beta_end=0.1"`` -> a mapping (keys may be a grid key's last component)."""
    out = {}
    for part in (text or "").split(","):
        if part.strip():
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"--ablation: expected FACTOR=LEVEL, got {part!r}")
            out[key.strip()] = value.strip()
    return out


def ablation_rows(records: list[dict[str, Any]], levels: dict[str, list[str]], refs: dict[str, str]) -> list[LevelRow]:
    """Rows of every (config, factor, level) from records with ``_run`` (their run.json: config, seed, grid)."""
    rows = []
    configs = list(dict.fromkeys(r.get("_run", {}).get("config", "?") for r in records))
    for config in configs:
        recs = [r for r in records if r.get("_run", {}).get("config", "?") == config]
        for factor, values in levels.items():
            others = [f for f in levels if f != factor]
            cells: dict[str, dict[str, dict[tuple, float]]] = {v: {} for v in values}
            optimum: dict[str, dict[str, float]] = {v: {} for v in values}
            for rec in recs:
                grid = rec["_run"].get("grid") or {}
                level = _level(grid.get(factor)) if factor != VARIANT else str(grid.get(factor))
                if level not in cells:
                    continue
                key = (int(rec.get("seed", rec["_run"].get("seed", 0))), *(_level(grid.get(f)) for f in others))
                for metric, value in (rec.get("metrics") or {}).items():
                    if isinstance(value, int | float) and math.isfinite(value):
                        cells[level].setdefault(metric, {})[key] = float(value)
                        best = lookup(rec, f"data.optimal.{metric}")
                        if isinstance(best, int | float):
                            optimum[level][metric] = float(best)
            ref = cells[refs[factor]]
            for value in values:
                if not cells[value]:
                    continue
                paired = {}
                if value != refs[factor]:
                    for metric, by_key in cells[value].items():
                        common = [k for k in by_key if k in ref.get(metric, {})]
                        paired[metric] = paired_interval([by_key[k] - ref[metric][k] for k in common])
                rows.append(
                    LevelRow(config, factor, value, value == refs[factor], cells[value], optimum[value], paired)
                )
    return rows


# -- formatting -----------------------------------------------------------------------------------


def _g(x: float, digits: int = 4) -> str:
    return "-" if not math.isfinite(x) else f"{x:.{digits}g}"


def _pm(mean: float, std: float, digits: int = 4) -> str:
    if not math.isfinite(mean):
        return "-"
    return _g(mean, digits) if not math.isfinite(std) else f"{_g(mean, digits)} ± {_g(std, 2)}"


def _ratio(mean: float, std: float) -> str:
    """A ratio to the optimum with 3 decimals (1.201 ± 0.012)."""
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.3f}" if not math.isfinite(std) else f"{mean:.3f} ± {std:.3f}"


def _signed(x: float) -> str:
    return "-" if not math.isfinite(x) else f"{x:+.3g}"


def diff_cell(p: Paired | None, reference: bool) -> str:
    """``-0.012 [-0.02, -0.004] *`` (n pairs in the CSV); ``ref`` on the reference row."""
    if reference:
        return "ref"
    if p is None or p.n == 0:
        return "no pairs"
    if p.n < 2:
        return f"{_signed(p.mean)} (1 pair)"
    return f"{_signed(p.mean)} [{_signed(p.lo)}, {_signed(p.hi)}]" + (" *" if p.excludes_zero else "")


def shown_metrics(rows: list[LevelRow], metrics: list[str] | None = None) -> list[str]:
    present = {m for r in rows for m in r.values}
    return [m for m in (metrics or ABLATION_METRICS) if m in present]


def table(rows: list[LevelRow], metrics: list[str]) -> tuple[list[str], list[list[str]]]:
    """Header and cells: factor, level, n, then per metric mean ± std, x opt (when known) and Δ ref [95% CI]."""
    several = len({r.config for r in rows}) > 1
    factors = {r.factor: None for r in rows}
    header = [*(["config"] if several else []), "factor", "level", "n"]
    with_opt = {m for m in metrics if any(r.ratio(m)[2] for r in rows)}
    for m in metrics:
        header += [m, *([f"{m} x opt"] if m in with_opt else []), f"Δ {m} vs ref [95% CI]"]
    body = []
    for r in rows:
        n = max((r.stats(m)[2] for m in metrics), default=0)
        line = [*([Path(r.config).stem] if several else []), short_key(r.factor, factors), r.level, str(n)]
        for m in metrics:
            line.append(_pm(*r.stats(m)[:2]))
            if m in with_opt:
                line.append(_ratio(*r.ratio(m)[:2]))
            line.append(diff_cell(r.paired.get(m), r.reference))
        body.append(line)
    return header, body


LEGEND = (
    "mean ± std over seeds (n seeds); x opt: the metric over the exact optimum of the same test windows; "
    "Δ vs ref: level minus reference level, paired by seed (same initialisation, training and test windows), "
    "mean and 95% Student-t interval on the paired differences (n - 1 degrees of freedom); * the interval "
    "excludes zero. Seeds missing on either side drop out of the pairs."
)


def ablation_markdown(rows: list[LevelRow], metrics: list[str] | None = None, title: str = "Ablation") -> str:
    shown = shown_metrics(rows, metrics)
    header, body = table(rows, shown)
    esc = lambda s: s.replace("|", "\\|")
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in line) + " |" for line in body]
    return "\n".join([*lines, "", LEGEND, ""])


def ablation_text(rows: list[LevelRow], metrics: list[str] | None = None) -> str:
    """Plain-text table, one block of columns per metric (so it stays readable in a terminal)."""
    shown = shown_metrics(rows, metrics)
    out = []
    for m in shown:
        header, body = table(rows, [m])
        widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
        out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body]] + [""]
    return "\n".join([*out, LEGEND, ""])


def write_csv(rows: list[LevelRow], path: Path) -> None:
    """One row per config, factor, level and metric (every metric of the records)."""
    fields = ["config", "factor", "level", "reference", "metric", "n", "mean", "std", "seeds", "optimum",
              "ratio_mean", "ratio_std", "n_pairs", "diff_mean", "diff_lo95", "diff_hi95", "excludes_zero"]  # fmt: skip
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        for m in sorted(r.values):
            mean, std, n = r.stats(m)
            ratio = r.ratio(m)
            p = r.paired.get(m)
            w.writerow({
                "config": r.config, "factor": r.factor, "level": r.level, "reference": r.reference, "metric": m,
                "n": n, "mean": mean, "std": std, "seeds": " ".join(map(str, r.seeds(m))),
                "optimum": r.optimum.get(m, ""), "ratio_mean": ratio[0], "ratio_std": ratio[1],
                "n_pairs": p.n if p else "", "diff_mean": p.mean if p else "", "diff_lo95": p.lo if p else "",
                "diff_hi95": p.hi if p else "", "excludes_zero": p.excludes_zero if p else "",
            })  # fmt: skip
    write_text_atomic(path, buf.getvalue())


def figure(rows: list[LevelRow], metrics: list[str] | None = None) -> Figure:
    """Metric against level, one panel per (factor, metric): one dot per seed, the mean as a bar, the optimum
    (when known) as a dashed line. A plain :class:`matplotlib.figure.Figure` (no pyplot, no global backend)."""
    shown = shown_metrics(rows, metrics)[:4]
    factors = list(dict.fromkeys((r.config, r.factor) for r in rows))
    fig = Figure(figsize=(3.2 * max(len(shown), 1), 2.6 * max(len(factors), 1)), layout="constrained")
    axes = fig.subplots(max(len(factors), 1), max(len(shown), 1), squeeze=False)
    names = {r.factor: None for r in rows}
    for row_axes, (config, factor) in zip(axes, factors):
        mine = [r for r in rows if (r.config, r.factor) == (config, factor)]
        for ax, m in zip(row_axes, shown):
            for i, r in enumerate(mine):
                vals = list(r.values.get(m, {}).values())
                jitter = np.linspace(-0.12, 0.12, len(vals)) if len(vals) > 1 else np.zeros(len(vals))
                ax.scatter(i + jitter, vals, s=14, color="C3" if r.reference else "C0", zorder=3)
                if vals:
                    ax.hlines(np.mean(vals), i - 0.25, i + 0.25, color="k", lw=1)
                p = r.paired.get(m)
                if p is not None and p.excludes_zero:
                    ax.annotate("*", (i, max(vals)), ha="center", va="bottom")
            best = {r.optimum.get(m) for r in mine} - {None}
            if len(best) == 1:
                ax.axhline(best.pop(), ls="--", color="0.5", lw=1, label="optimum")
            ax.set_xticks(range(len(mine)), [r.level for r in mine], rotation=30, ha="right", fontsize="x-small")
            ax.set_title(f"{short_key(factor, names)}: {m}", fontsize="small")
    return fig


# -- sweep folder ---------------------------------------------------------------------------------


def load_plan(sweep_dir: str | Path) -> dict[str, Any]:
    try:
        return json.loads((Path(sweep_dir) / "sweep.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def has_ablation(sweep_dir: str | Path) -> bool:
    """True when the sweep's spec names reference levels (``ablation:``)."""
    return bool(load_plan(sweep_dir).get("ablation"))


def sweep_ablation(sweep_dir: str | Path, refs: dict[str, str] | None = None) -> list[LevelRow]:
    """Rows of a sweep folder (done runs, flagged ones left out)."""
    plan = load_plan(sweep_dir)
    levels = factor_levels(plan)
    if not levels:
        raise ValueError(f"{sweep_dir}: the sweep has no grid and no variants, so no factor to ablate")
    records, _ = collect(sweep_dir)
    ok, _ = split_flagged(records)
    return ablation_rows(ok, levels, references(plan, refs))


def write_ablation(sweep_dir: str | Path, refs: dict[str, str] | None = None, metrics: list[str] | None = None) -> str:
    """Write ablation.md / .csv / .png in the sweep folder and append the Markdown to results.md (when it exists);
    returns the plain-text table."""
    sweep_dir = Path(sweep_dir)
    rows = sweep_ablation(sweep_dir, refs)
    md = ablation_markdown(rows, metrics)
    write_text_atomic(sweep_dir / "ablation.md", md)
    write_csv(rows, sweep_dir / "ablation.csv")
    if rows:
        figure(rows, metrics).savefig(sweep_dir / "ablation.png", dpi=110)
    results = sweep_dir / "results.md"
    if results.is_file():
        head = results.read_text().split("\n## Ablation\n", 1)[0].rstrip("\n")
        write_text_atomic(results, f"{head}\n\n{md}")
    return ablation_text(rows, metrics)

"""Results of a sweep: mean ± std over seeds per (task, dataset, model, config, setting), joined with
published numbers, written as ``results.md``, ``results.csv`` and ``results.png`` in the sweep folder.

The unit is the result record ``metrics.json`` of every finished run (:mod:`tsdiffusion.records`); the
report can be recomputed at any time (``tsdiffusion benchmark report <sweep_dir>``) and never mutates runs.
Standard deviations are sample standard deviations over seeds (``ddof=1``); one seed shows the mean only.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tsdiffusion.benchmark.runs import read_status
from tsdiffusion.records import RECORD_NAME, write_json_atomic, write_text_atomic

#: Metrics shown in the Markdown table when present (the CSV has all of them), in this order.
DEFAULT_METRICS = ("crps", "crps_sum", "mae_median", "rmse_median", "mse_mean", "energy_score", "pa_f1", "f1")


@dataclass
class Group:
    """Runs that differ only by seed."""

    task: str
    dataset: str
    model: str
    config: str
    setting: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, ...]:
        return (self.task, self.dataset, self.model, self.config, self.setting)

    def values(self, metric: str) -> np.ndarray:
        vals = [r["metrics"].get(metric) for r in self.records]
        return np.array([v for v in vals if isinstance(v, int | float)], dtype=float)

    def stats(self, metric: str) -> tuple[float, float, int]:
        """(mean, sample std over seeds or NaN for one seed, number of seeds)."""
        v = self.values(metric)
        if len(v) == 0:
            return math.nan, math.nan, 0
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)

    def metric_names(self) -> list[str]:
        return sorted({k for r in self.records for k in r["metrics"]})


# -- collecting -----------------------------------------------------------------------------------


def collect(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records of done runs, each with ``_run`` = its run.json; statuses of runs that are not done)."""
    records, unfinished = [], []
    for folder in sorted((Path(sweep_dir) / "runs").glob("*/")):
        run = _read_json(folder / "run.json") or {"id": folder.name, "setting": "", "config": "?"}
        status = read_status(folder)
        record = _read_json(folder / RECORD_NAME)
        if status.get("state") == "done" and record is not None:
            records.append({**record, "_run": run})
        else:
            unfinished.append({"id": run["id"], **status, "folder": str(folder)})
    return records, unfinished


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def dataset_label(record: dict[str, Any]) -> str:
    """The record's dataset, marked ``(embedded)`` when it ran on the copy shipped in the package."""
    path = lookup(record, "config.data.init_args.path")
    return f"{record['dataset']} (embedded)" if path == "embedded" else str(record["dataset"])


def group_records(records: list[dict[str, Any]]) -> list[Group]:
    """Group records by (task, dataset, model, config, setting), in first-seen order."""
    groups: dict[tuple[str, ...], Group] = {}
    for rec in records:
        run = rec.get("_run", {})
        g = Group(
            rec["task"],
            dataset_label(rec),
            rec["model"],
            Path(run.get("config", "?")).stem,
            run.get("setting", ""),
        )
        groups.setdefault(g.key, g).records.append(rec)
    return list(groups.values())


# -- reference numbers ----------------------------------------------------------------------------


def lookup(obj: Any, dotted: str) -> Any:
    """``lookup(record, "config.data.init_args.missing_ratio")``; None when a key is missing."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


def load_reference(path: str | Path | None) -> tuple[dict[str, dict], list[dict]]:
    """(sources by key, entries) of a reference yaml (see ``benchmarks/reference.yaml``)."""
    if path is None or not Path(path).is_file():
        return {}, []
    raw = yaml.safe_load(Path(path).read_text()) or {}
    sources, entries = raw.get("sources", {}), raw.get("entries", [])
    for e in entries:
        if e.get("source") not in sources:
            raise ValueError(f"{path}: entry {e} names an unknown source; known: {sorted(sources)}")
    return sources, entries


def _matches(entry: dict, record: dict) -> bool:
    if (entry.get("task"), entry.get("dataset"), entry.get("model")) != (
        record["task"],
        record["dataset"],
        record["model"],
    ):
        return False
    for key, want in (entry.get("where") or {}).items():
        got = lookup(record, key)
        same = isinstance(got, int | float) and isinstance(want, int | float) and math.isclose(got, want)
        if not (same or got == want):
            return False
    return True


def references_for(group: Group, entries: list[dict]) -> dict[str, tuple[float, dict]]:
    """metric -> (published value, its entry) for the entries that match the group's first record."""
    out: dict[str, tuple[float, dict]] = {}
    for entry in entries:
        if _matches(entry, group.records[0]):
            for metric, value in entry["metrics"].items():
                out.setdefault(metric, (float(value), entry))
    return out


# -- writing --------------------------------------------------------------------------------------


def fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def table_rows(groups: list[Group], entries: list[dict]) -> list[dict[str, Any]]:
    """Long format: one row per (group, metric) with mean, std, n and the published value with its source."""
    rows = []
    for g in groups:
        refs = references_for(g, entries)
        for metric in g.metric_names():
            mean, std, n = g.stats(metric)
            ref, entry = refs.get(metric, (None, {}))
            rows.append(
                {
                    "task": g.task,
                    "dataset": g.dataset,
                    "model": g.model,
                    "config": g.config,
                    "setting": g.setting,
                    "metric": metric,
                    "n": n,
                    "mean": mean,
                    "std": std,
                    "reference": ref,
                    "source": _source_text(entry),
                }
            )
    return rows


def _source_text(entry: dict) -> str:
    return f"{entry['source']}, {entry['table']}" if entry else ""


def markdown(
    groups: list[Group],
    sources: dict,
    entries: list[dict],
    title: str,
    metrics: list[str] | None = None,
    unfinished: list[dict] | None = None,
) -> str:
    """The results table as a paper appendix would print it, with numbered sources and notes."""
    present = {m for g in groups for m in g.metric_names()}
    shown = metrics or [m for m in DEFAULT_METRICS if m in present]
    refs = [references_for(g, entries) for g in groups]
    with_ref = [m for m in shown if any(m in r for r in refs)]
    with_opt = [m for m in shown if not m.startswith("coverage") and any(optimum_ratio(g, m)[2] for g in groups)]
    notes: list[str] = []
    header = ["task", "dataset", "model", "config", "setting", "seeds"]
    for m in shown:
        header += [m] + ([f"{m} (paper)"] if m in with_ref else []) + ([f"{m} / optimum"] if m in with_opt else [])
    lines = [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g, r in zip(groups, refs):
        cells = [g.task, g.dataset, g.model, g.config, g.setting or "–", str(len(g.records))]
        for m in shown:
            cells.append(fmt(*g.stats(m)[:2]))
            if m in with_ref:
                cells.append(_ref_cell(r.get(m), notes))
            if m in with_opt:
                cells.append(fmt(*optimum_ratio(g, m)[:2]))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"[{i + 1}] {_cite(e, sources)}" for i, e in enumerate(notes)]
    if any("(embedded)" in g.dataset for g in groups):
        lines += [
            "",
            "*(embedded)*: the copy shipped with the package (PhysioNet: the first 600 records of set-a, a subset; "
            "exchange_rate_nips: the whole published set). Such runs use short budgets: they check the pipeline "
            "end to end and are not comparable with the papers' numbers.",
        ]
    lines += _unfinished_lines(unfinished or [])
    return "\n".join(lines) + "\n"


def optimum_ratio(group: Group, metric: str) -> tuple[float, float, int]:
    """(mean, std, n) over seeds of the metric divided by the record's exact optimum ``data.optimal[metric]``
    (synthetic data sets whose Bayes-optimal score is known, :class:`tsdiffusion.data.SyntheticDataModule`)."""
    ratios = []
    for rec in group.records:
        value, best = rec["metrics"].get(metric), lookup(rec, f"data.optimal.{metric}")
        if isinstance(value, int | float) and isinstance(best, int | float) and best > 0:
            ratios.append(value / best)
    if not ratios:
        return math.nan, math.nan, 0
    v = np.array(ratios)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def _ref_cell(ref: tuple[float, dict] | None, notes: list[dict]) -> str:
    if ref is None:
        return "–"
    value, entry = ref
    if entry not in notes:
        notes.append(entry)
    return f"{value:g} [{notes.index(entry) + 1}]"


def _cite(entry: dict, sources: dict) -> str:
    src = sources[entry["source"]]
    where = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in (entry.get("where") or {}).items())
    text = f"{src['paper']}, {entry['table']}" + (f" ({where})" if where else "")
    return text + (f"; {entry['note']}" if entry.get("note") else "")


def _unfinished_lines(unfinished: list[dict]) -> list[str]:
    if not unfinished:
        return []
    lines = ["", f"Not included: {len(unfinished)} run(s) not done:", ""]
    for u in unfinished:
        err = (u.get("error_tail") or u.get("error") or "").strip().splitlines()[-1:] or [""]
        job = f" (job {u['job_id']})" if u.get("job_id") else ""
        lines.append(f"- `{u['id']}`: {u.get('state')}{job} {err[0][:160]}".rstrip())
    return lines


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    buf = io.StringIO()
    fields = [
        "task",
        "dataset",
        "model",
        "config",
        "setting",
        "metric",
        "n",
        "mean",
        "std",
        "reference",
        "source",
    ]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def plot(groups: list[Group], entries: list[dict], metrics: list[str], path: Path) -> Path | None:
    """One horizontal bar panel per metric: mean ± std per group, published values as red crosses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if any(len(g.values(m)) for g in groups)][:4]
    if not metrics or not groups:
        return None
    labels = [f"{g.model} {g.dataset} {g.config} {g.setting}".strip() for g in groups]
    fig = Figure(figsize=(4.2 * len(metrics), 0.5 * len(groups) + 1.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    y = np.arange(len(groups))
    for i, (ax, m) in enumerate(zip(axes, metrics)):
        stats = [g.stats(m) for g in groups]
        means = [s[0] for s in stats]
        stds = [0.0 if math.isnan(s[1]) else s[1] for s in stats]
        ax.barh(y, means, xerr=stds, color="C0", alpha=0.8, capsize=3, label="this sweep")
        ref = [references_for(g, entries).get(m, (math.nan,))[0] for g in groups]
        ax.scatter(ref, y, color="C3", marker="x", zorder=3, label="paper")
        ax.set_title(m)
        ax.set_yticks(y, labels if i == 0 else [""] * len(y), fontsize="small")
        ax.invert_yaxis()
    axes[0].legend(fontsize="small", loc="lower right")
    fig.savefig(path, dpi=100)
    return path


def _stats_json(mean: float, std: float, n: int) -> dict[str, Any]:
    """NaN (no value, or one seed's std) as null, so results.json is strict JSON."""
    return {"mean": None if math.isnan(mean) else mean, "std": None if math.isnan(std) else std, "n": n}


def report(
    sweep_dir: str | Path,
    reference: str | Path | None = None,
    metrics: list[str] | None = None,
    title: str | None = None,
) -> str:
    """Aggregate a sweep folder into results.md / .csv / .png (and .json) there; returns the Markdown."""
    sweep_dir = Path(sweep_dir)
    if reference is None:
        reference = (_read_json(sweep_dir / "sweep.json") or {}).get("reference")
    sources, entries = load_reference(reference)
    records, unfinished = collect(sweep_dir)
    groups = group_records(records)
    title = title or f"Results: {sweep_dir.name} ({len(records)} runs done)"
    text = markdown(groups, sources, entries, title, metrics, unfinished)
    write_text_atomic(sweep_dir / "results.md", text)
    write_csv(table_rows(groups, entries), sweep_dir / "results.csv")
    shown = metrics or [m for m in DEFAULT_METRICS if any(m in g.metric_names() for g in groups)]
    plot(groups, entries, shown, sweep_dir / "results.png")
    write_json_atomic(
        sweep_dir / "results.json",
        {
            "groups": [
                {
                    "key": list(g.key),
                    "runs": [r["_run"].get("id") for r in g.records],
                    "metrics": {m: _stats_json(*g.stats(m)) for m in g.metric_names()},
                }
                for g in groups
            ]
        },
    )
    return text

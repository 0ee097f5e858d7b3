"""The full tables of a sweep: ``results.md`` (every shown metric with the papers' values and notes) and the
long-format ``results.csv``; and the Markdown / CSV writers every table of the project uses (also
:mod:`tsdiffusion.cli.curve`)."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tsdiffusion.benchmark.collect import Group, dataset_label, flags_of, is_baseline
from tsdiffusion.benchmark.compare import baseline_ratio, best_values, main_metric
from tsdiffusion.benchmark.references import optimum_ratio, references_for
from tsdiffusion.records import write_text_atomic

#: Metrics shown in the Markdown table when present (the CSV has all of them), in this order.
TABLE_METRICS = ("crps", "crps_sum", "mae_median", "rmse_median", "mse_mean", "energy_score", "pa_f1", "f1")


def markdown_lines(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A Markdown table: the header, its ``|---|`` rule, one line per row (cells as ``str``)."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def csv_text(rows: Iterable[dict[str, Any]], fields: Sequence[str]) -> str:
    """CSV (``csv`` module defaults, ``\\r\\n`` line ends) of ``rows`` with the columns ``fields``."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fields))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "–"
    return f"{mean:.4g}" if math.isnan(std) else f"{mean:.4g} ± {std:.2g}"


def table_rows(groups: list[Group], entries: list[dict], flagged: list[dict] | None = None) -> list[dict[str, Any]]:
    """Long format: one row per (group, metric) with mean, std, n, the published value with its source, whether
    the row is a baseline, the best of its comparison set, and the main metric's ratio to the best baseline;
    then one row per (flagged run, metric) with ``flags`` set (never averaged)."""
    rows = []
    best = best_values(groups, sorted({m for g in groups for m in g.metric_names()}))
    for g in groups:
        refs = references_for(g, entries)
        main, ratio = main_metric(g), baseline_ratio(groups, g)
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
                    "baseline": g.baseline,
                    "best": not metric.startswith("coverage") and best.get((g.comparison, metric)) == mean,
                    "ratio_to_best_baseline": ratio if metric == main else None,
                    "flags": "",
                }
            )
    for r in flagged or []:
        run = r.get("_run", {})
        for metric, value in sorted(r["metrics"].items()):
            rows.append(
                {
                    "task": r["task"], "dataset": dataset_label(r), "model": r["model"],
                    "config": Path(run.get("config", "?")).stem, "setting": run.get("setting", ""),
                    "metric": metric, "n": 1, "mean": value, "std": None, "reference": None, "source": "",
                    "baseline": is_baseline(r), "best": False, "ratio_to_best_baseline": None,
                    "flags": json.dumps(flags_of(r)),
                }
            )  # fmt: skip
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
    shown = metrics or [m for m in TABLE_METRICS if m in present]
    refs = [references_for(g, entries) for g in groups]
    with_ref = [m for m in shown if any(m in r for r in refs)]
    with_opt = [m for m in shown if not m.startswith("coverage") and any(optimum_ratio(g, m)[2] for g in groups)]
    notes: list[str] = []
    header = ["task", "dataset", "model", "config", "setting", "seeds"]
    for m in shown:
        header += [m] + ([f"{m} (paper)"] if m in with_ref else []) + ([f"{m} / optimum"] if m in with_opt else [])
    rows = []
    for g, r in zip(groups, refs):
        cells = [g.task, g.dataset, g.model, g.config, g.setting or "–", str(len(g.records))]
        for m in shown:
            cells.append(fmt(*g.stats(m)[:2]))
            if m in with_ref:
                cells.append(_ref_cell(r.get(m), notes))
            if m in with_opt:
                cells.append(fmt(*optimum_ratio(g, m)[:2]))
        rows.append(cells)
    lines = [f"## {title}", "", *markdown_lines(header, rows), ""]
    lines += [f"[{i + 1}] {_cite(e, sources)}" for i, e in enumerate(notes)]
    if any("(embedded)" in g.dataset for g in groups):
        lines += [
            "",
            "*(embedded)*: the copy shipped with the package (PhysioNet: the first 600 records of set-a, a subset; "
            "exchange_rate_nips: the whole published set; electricity_subset: 1000 hours of 203 clients, a subset). "
            "Such runs use short budgets: they check the pipeline end to end and are not comparable with the "
            "papers' numbers.",
        ]
    lines += unfinished_lines(unfinished or [])
    return "\n".join(lines) + "\n"


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


def unfinished_lines(unfinished: list[dict]) -> list[str]:
    if not unfinished:
        return []
    lines = ["", f"Not included: {len(unfinished)} run(s) not done:", ""]
    for u in unfinished:
        err = (u.get("error_tail") or u.get("error") or "").strip().splitlines()[-1:] or [""]
        job = f" (job {u['job_id']})" if u.get("job_id") else ""
        lines.append(f"- `{u['id']}`: {u.get('state')}{job} {err[0][:160]}".rstrip())
    return lines


CSV_FIELDS = ("task", "dataset", "model", "config", "setting", "metric", "n", "mean", "std", "reference", "source",
              "baseline", "best", "ratio_to_best_baseline", "flags")  # fmt: skip


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """``results.csv``: the long-format rows of :func:`table_rows`."""
    write_text_atomic(path, csv_text(rows, CSV_FIELDS))

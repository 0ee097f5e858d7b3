"""Results of a sweep: mean ± std over seeds per (task, dataset, model, config, setting), joined with
published numbers, written as ``results.md``, ``results.txt``, ``results.csv`` and ``results.png`` in the
sweep folder.

The unit is the result record ``metrics.json`` of every finished run (:mod:`tsdiffusion.records`); the
report can be recomputed at any time (``tsdiffusion benchmark report <sweep_dir>``) and never mutates runs.
Standard deviations are sample standard deviations over seeds (``ddof=1``); one seed shows the mean only.

Every table compares like with like: the rows of one *comparison set* (task kind, dataset) share test windows
and metric code. Baselines (records with ``baseline``, :mod:`tsdiffusion.baselines`) are rows of the table;
the best value of each shown metric in a set is marked (``*`` in text, bold in Markdown), and every row shows
``x base``: its main metric (CRPS, else the task's second metric) over the best baseline's in its set.
Runs whose record carries ``flags`` (exploded samples, non-finite metrics) are never averaged: they are
listed under "Flagged".

The parts, in the order a report runs them:

* :mod:`~tsdiffusion.benchmark.collect`: the records of done runs, grouped (:class:`Group`), flagged ones apart;
* :mod:`~tsdiffusion.benchmark.references`: the published numbers (reference yaml) and exact optima;
* :mod:`~tsdiffusion.benchmark.compare`: main metrics, best values, the best baseline and ratios to it;
* :mod:`~tsdiffusion.benchmark.summary`: the summary table printed by ``tsdiffusion benchmark`` (text, 120
  columns: task, data, model, seeds, CRPS, the task's second metric, coverage 50/90, x base, paper) and as
  Markdown with machine and dates (``tsdiffusion benchmark report DIR --markdown``);
* :mod:`~tsdiffusion.benchmark.tables`: every shown metric (``results.md``) and the long ``results.csv``;
* :mod:`~tsdiffusion.benchmark.figure`: ``results.png``;
* this module: :func:`report` writes them all (and ``results.json``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tsdiffusion.benchmark.collect import Group, collect, flags_of, group_records, read_json, split_flagged, sweep_notes
from tsdiffusion.benchmark.compare import baseline_ratio
from tsdiffusion.benchmark.figure import plot
from tsdiffusion.benchmark.references import load_reference
from tsdiffusion.benchmark.summary import summary_markdown, summary_table
from tsdiffusion.benchmark.tables import TABLE_METRICS, markdown, table_rows, write_csv
from tsdiffusion.records import write_json_atomic, write_text_atomic


def load_sweep(
    sweep_dir: str | Path, reference: str | Path | None = None
) -> tuple[list[Group], list[dict], dict, list[dict], list[dict], list[dict]]:
    """(groups, records, sources, entries, flagged records, unfinished runs) of a sweep folder."""
    sweep_dir = Path(sweep_dir)
    if reference is None:
        reference = (read_json(sweep_dir / "sweep.json") or {}).get("reference")
    sources, entries = load_reference(reference)
    records, unfinished = collect(sweep_dir)
    ok, flagged = split_flagged(records)
    return group_records(ok), ok, sources, entries, flagged, unfinished


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
    groups, records, sources, entries, flagged, unfinished = load_sweep(sweep_dir, reference)
    notes = sweep_notes(sweep_dir)
    title = title or f"Results: {sweep_dir.name} ({len(records) + len(flagged)} runs done)"
    text = markdown(groups, sources, entries, title, metrics, unfinished)
    if groups or flagged:  # the summary first, then every metric
        head, _, rest = text.partition("\n\n")
        summary = summary_markdown(groups, entries, records, flagged, notes)
        text = f"{head}\n\n{summary}\n### All metrics\n\n{rest}"
    write_text_atomic(sweep_dir / "results.md", text)
    write_text_atomic(
        sweep_dir / "results.txt", summary_table(groups, entries, flagged, unfinished=unfinished, notes=notes)
    )
    write_csv(table_rows(groups, entries, flagged), sweep_dir / "results.csv")
    shown = metrics or [m for m in TABLE_METRICS if any(m in g.metric_names() for g in groups)]
    plot(groups, entries, shown, sweep_dir / "results.png")
    write_json_atomic(
        sweep_dir / "results.json",
        {
            "groups": [
                {
                    "key": list(g.key),
                    "baseline": g.baseline,
                    "ratio_to_best_baseline": _stats_json(baseline_ratio(groups, g), math.nan, 1)["mean"],
                    "runs": [r["_run"].get("id") for r in g.records],
                    "metrics": {m: _stats_json(*g.stats(m)) for m in g.metric_names()},
                }
                for g in groups
            ],
            "flagged": [{"run": r.get("_run", {}).get("id"), "flags": flags_of(r)} for r in flagged],
        },
    )
    return text

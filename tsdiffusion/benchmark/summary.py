"""The summary table of a sweep, one row per group with its main numbers: plain text fitted to 120 columns
(printed by ``tsdiffusion benchmark``, ``results.txt``) or Markdown with machine and dates
(``tsdiffusion benchmark report DIR --markdown``, pasted into the README)."""

from __future__ import annotations

import math
import textwrap
from typing import Any

from tsdiffusion.benchmark.collect import Group, flags_of
from tsdiffusion.benchmark.compare import SECOND_METRIC, baseline_ratio, best_values, model_labels, ordered
from tsdiffusion.benchmark.references import references_for
from tsdiffusion.benchmark.tables import fmt, markdown_lines, unfinished_lines

#: Width of the printed summary table.
TABLE_WIDTH = 120


def _num(value: float, digits: int = 4) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}g}"


def summary_rows(groups: list[Group], entries: list[dict], *, markdown: bool = False) -> tuple[list[str], list[list]]:
    """(header, rows of cells) of the summary table, grouped by comparison set (models, then baselines marked
    ``†``); best values marked (``*`` or bold); data shipped with the package marked ``°``."""
    groups = ordered(groups)
    seconds = [SECOND_METRIC.get(g.kind) for g in groups]
    best = best_values(groups, ["crps", *{m for m in seconds if m}])
    labels = model_labels(groups)
    header = ["task", "data", "model", "n", "CRPS", "2nd metric", "cov 50/90", "x base", "paper"]
    rows = []
    for g, label, second in zip(groups, labels, seconds):
        refs = references_for(g, entries)
        cells = [g.kind, g.dataset.replace(" (embedded)", "°"), label + (" †" if g.baseline else ""),
                 str(len(g.records))]  # fmt: skip
        for m in ("crps", second):
            text = fmt(*g.stats(m)[:2]) if m else "–"
            if m and text != "–" and best.get((g.comparison, m)) == g.mean(m):
                text = f"**{text}**" if markdown else f"{text} *"
            cells.append(text)
        cells.append(f"{_num(g.mean('coverage_50'), 2)}/{_num(g.mean('coverage_90'), 2)}")
        ratio = baseline_ratio(groups, g)
        cells.append("–" if math.isnan(ratio) else f"{ratio:.2f}")
        paper = [refs.get(m, (math.nan,))[0] for m in ("crps", second) if m]
        cells.append(" / ".join(_num(v) for v in paper) if any(not math.isnan(v) for v in paper) else "–")
        rows.append(cells)
    if not any(r[6] != "–/–" for r in rows):  # no coverage anywhere: drop the column
        header, rows = header[:6] + header[7:], [r[:6] + r[7:] for r in rows]
    return header, rows


def _fit_widths(header: list[str], rows: list[list[str]], width: int) -> tuple[list[int], int]:
    """(column widths, gap) that fit ``width``: two spaces between columns when everything fits, else one; then
    the data column gives way first (down to 12), then the data and model columns (down to 8)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    sep = 2 if sum(widths) + 2 * (len(widths) - 1) <= width else 1  # one space before cutting names
    data, model = header.index("data"), header.index("model")
    while sum(widths) + sep * (len(widths) - 1) > width:
        i = data if widths[data] > 12 else max((data, model), key=lambda j: widths[j])
        if widths[i] <= 8:
            break
        widths[i] -= 1
    return widths, sep


def _cut(text: str, w: int) -> str:
    return text if len(text) <= w else text[: w - 1] + "…"


def summary_legend(groups: list[Group]) -> list[str]:
    kinds = sorted({g.kind for g in groups})
    second = ", ".join(f"{SECOND_METRIC[k]} ({k})" for k in kinds if k in SECOND_METRIC)
    lines = [
        f"2nd metric: {second}." if second else "",
        "x base: main metric (CRPS, else the 2nd) / the best baseline's on the same task and data (CRPS: < 1 "
        "beats it).",
        "Best per task and data marked; †: a baseline; n: seeds; cov 50/90: share inside the central 50%/90% "
        "intervals.",
    ]
    if any("(embedded)" in g.dataset for g in groups):
        lines.append("°: the copy of the data shipped with the package (short budgets, not the papers' setting).")
    return [x for x in lines if x]


def flagged_lines(flagged: list[dict[str, Any]]) -> list[str]:
    """One line per flagged run: its id, model and flags."""
    out = []
    for r in flagged:
        flags = ", ".join(f"{k}={v}" for k, v in flags_of(r).items())
        run = r.get("_run", {}).get("id", "?")
        out.append(f"- {run}: {r.get('task')} {r.get('dataset')} {r.get('model')} seed {r.get('seed')}: {flags}")
    return out


def summary_table(
    groups: list[Group],
    entries: list[dict],
    flagged: list[dict] | None = None,
    width: int = TABLE_WIDTH,
    unfinished: list[dict] | None = None,
    notes: list[str] | None = None,
) -> str:
    """The plain-text summary (every line at most ``width`` columns, notes wrapped), then the spec's notes,
    flagged and unfinished runs."""
    header, rows = summary_rows(groups, entries)
    if not rows:
        return "\n".join(["no finished runs", *unfinished_lines(unfinished or [])]) + "\n"
    widths, sep = _fit_widths(header, rows, width)
    gap = " " * sep
    right = {"n", "CRPS", "2nd metric", "cov 50/90", "x base", "paper"}
    lines = []
    for r in [header, *rows]:
        cells = [_cut(str(c), w) for c, w in zip(r, widths)]
        lines.append(gap.join(c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, header)))
        if r is header:
            lines.append(gap.join("-" * w for w in widths))
    lines += ["", *summary_legend(groups)]
    if notes:
        lines += ["", "Notes:"]
        lines += [w for n in notes for w in textwrap.wrap(n, width, initial_indent="- ", subsequent_indent="  ")]
    if flagged:
        lines += ["", f"Flagged, not averaged ({len(flagged)} run(s)):", *flagged_lines(flagged)]
    lines += unfinished_lines(unfinished or [])
    return "\n".join(_cut(x.rstrip(), width) for x in lines) + "\n"


def machine_and_dates(records: list[dict[str, Any]]) -> str:
    """``Machine: <cpu model> (<machine>). Runs of <first date> to <last date> (UTC), N runs, T min ...``."""
    cpus = sorted({str(r.get("cpu") or r.get("machine", "?")) for r in records})
    machines = sorted({str(r.get("machine", "?")) for r in records})
    dates = sorted(str(r.get("date", ""))[:10] for r in records if r.get("date"))
    when = (dates[0] if dates[0] == dates[-1] else f"{dates[0]} to {dates[-1]}") if dates else "?"
    wall = sum(float(r.get("wall_time_s") or 0) for r in records)
    total = f", {len(records)} runs, {wall / 60:.1f} min of run time in all" if wall else ""
    return f"Machine: {'; '.join(cpus)} ({'; '.join(machines)}). Runs of {when} (UTC){total}."


def summary_markdown(
    groups: list[Group],
    entries: list[dict],
    records: list[dict],
    flagged: list[dict] | None = None,
    notes: list[str] | None = None,
) -> str:
    """The summary as Markdown (mean ± std over seeds, best in bold), machine and dates, legend, the spec's
    notes, flagged runs."""
    header, rows = summary_rows(groups, entries, markdown=True)
    lines = markdown_lines(header, rows)
    lines += ["", machine_and_dates(records + (flagged or [])), "", *summary_legend(groups)]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    if flagged:
        lines += ["", f"Flagged, not averaged ({len(flagged)} run(s)):", "", *flagged_lines(flagged)]
    return "\n".join(lines) + "\n"

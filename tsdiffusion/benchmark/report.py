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

* :func:`summary_table`: the table printed by ``tsdiffusion benchmark`` (fits ``width`` = 120 columns): task,
  data, model, seeds, CRPS, the task's second metric (:data:`SECOND_METRIC`), coverage 50/90, x base, paper;
* :func:`summary_markdown`: the same as Markdown with machine and dates from the records
  (``tsdiffusion benchmark report DIR --markdown``, pasted into the README);
* :func:`markdown`: every default metric (``results.md``); the CSV has all of them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tsdiffusion.benchmark.runs import read_status
from tsdiffusion.records import RECORD_NAME, record_flags, write_json_atomic, write_text_atomic

#: Metrics shown in the Markdown table when present (the CSV has all of them), in this order.
DEFAULT_METRICS = ("crps", "crps_sum", "mae_median", "rmse_median", "mse_mean", "energy_score", "pa_f1", "f1")

#: The second metric of the summary table, per task kind (CRPS is the first).
SECOND_METRIC = {
    "forecasting": "crps_sum",
    "imputation": "mae_median",
    "anomaly": "auroc",
    "generation": "discriminative",
    "representation": "probe_accuracy",
}

#: Metrics where higher is better (every other one: lower is better; coverage is never marked best).
HIGHER_IS_BETTER = frozenset(
    {"auroc", "auprc", "f1", "pa_f1", "precision", "recall", "pa_precision", "pa_recall", "probe_accuracy",
     "probe_auroc", "accuracy", "nmi", "ari"}
)  # fmt: skip

#: Width of the printed summary table.
TABLE_WIDTH = 120


def task_kind(task: str) -> str:
    """``ForecastingTask``, ``TimeGradTask``, ``GuidedForecastingTask`` -> ``forecasting``; likewise imputation,
    anomaly, generation, representation; anything else: the class name without ``Task``, lower case."""
    name = task.lower()
    for kind, keys in (
        ("forecasting", ("forecast", "timegrad")),
        ("imputation", ("imput",)),
        ("anomaly", ("anomal",)),
        ("generation", ("generat",)),
        ("representation", ("represent",)),
    ):
        if any(k in name for k in keys):
            return kind
    return name.removesuffix("task")


def is_baseline(record: dict[str, Any]) -> bool:
    """A record of a non-learned baseline: its ``baseline`` field, or a ``model.init_args.baseline`` in its
    config (records written before the field existed)."""
    return bool(record.get("baseline") or lookup(record, "config.model.init_args.baseline"))


def flags_of(record: dict[str, Any]) -> dict[str, Any]:
    """The record's ``flags``; for records written before flags existed, its non-finite metrics."""
    flags = record.get("flags")
    return dict(flags) if isinstance(flags, dict) else record_flags(record.get("metrics", {}))


def split_flagged(records: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records without flags, flagged records): flagged runs are listed, never averaged."""
    ok = [r for r in records if not flags_of(r)]
    return ok, [r for r in records if flags_of(r)]


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

    @property
    def kind(self) -> str:
        return task_kind(self.task)

    @property
    def baseline(self) -> bool:
        return any(is_baseline(r) for r in self.records)

    @property
    def comparison(self) -> tuple[str, str]:
        """(task kind, dataset): the rows that share test windows and metrics."""
        return (self.kind, self.dataset)

    def mean(self, metric: str) -> float:
        return self.stats(metric)[0]

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
    embedded = path == "embedded" or str(path).startswith("embedded:")  # FrameDataModule's "embedded:<name>"
    return f"{record['dataset']} (embedded)" if embedded else str(record["dataset"])


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
            "exchange_rate_nips: the whole published set; electricity_subset: 1000 hours of 203 clients, a subset). "
            "Such runs use short budgets: they check the pipeline end to end and are not comparable with the "
            "papers' numbers.",
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
        "baseline",
        "best",
        "ratio_to_best_baseline",
        "flags",
    ]
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def plot(groups: list[Group], entries: list[dict], metrics: list[str], path: Path) -> Path | None:
    """One row of horizontal bar panels per comparison set (task and data: its own scale, so a data set with
    values 100x smaller still shows), one panel per metric: the mean over seeds per group (baselines grey), one
    black dot per run (seed) over it, published values as red crosses."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    metrics = [m for m in metrics if any(len(g.values(m)) for g in groups)][:4]
    if not metrics or not groups:
        return None
    groups = ordered(groups)
    sets: dict[tuple[str, str], list[int]] = {}
    for i, g in enumerate(groups):
        sets.setdefault(g.comparison, []).append(i)
    names = _model_labels(groups)
    sizes = [len(rows) for rows in sets.values()]
    fig = Figure(figsize=(3.6 * len(metrics) + 2.4, 0.42 * len(groups) + 1.0 * len(sets)), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.subplots(len(sets), len(metrics), squeeze=False, gridspec_kw={"height_ratios": sizes})
    for row, ((kind, dataset), members) in zip(grid, sets.items()):
        part = [groups[i] for i in members]
        labels = [names[i] + (" †" if groups[i].baseline else "") for i in members]
        y = np.arange(len(part))
        colors = ["0.6" if g.baseline else "C0" for g in part]
        for col, (ax, m) in enumerate(zip(row, metrics)):
            ax.barh(y, [g.mean(m) for g in part], color=colors, alpha=0.7, label="mean over seeds")
            for j, g in enumerate(part):
                v = g.values(m)
                offsets = np.linspace(-0.2, 0.2, len(v)) if len(v) > 1 else np.zeros(len(v))
                ax.scatter(v, j + offsets, color="black", s=12, zorder=3, label="one run" if j == 0 else None)
            ref = [references_for(g, entries).get(m, (math.nan,))[0] for g in part]
            ax.scatter(ref, y, color="C3", marker="x", zorder=4, label="paper")
            ax.set_title(f"{m}: {kind}, {dataset}" if col == 0 else m, fontsize="small")
            ax.set_yticks(y, labels if col == 0 else [""] * len(y), fontsize="small")
            ax.tick_params(axis="x", labelsize="x-small")
            ax.invert_yaxis()
    grid[0][0].legend(fontsize="x-small", loc="best")
    fig.savefig(path, dpi=100)
    return path


def _stats_json(mean: float, std: float, n: int) -> dict[str, Any]:
    """NaN (no value, or one seed's std) as null, so results.json is strict JSON."""
    return {"mean": None if math.isnan(mean) else mean, "std": None if math.isnan(std) else std, "n": n}


# -- the summary table: baselines, best rows, ratios -------------------------------------------------


def main_metric(group: Group) -> str | None:
    """The metric of the ratio to the best baseline: ``crps`` when present, else the task's second metric."""
    for m in ("crps", SECOND_METRIC.get(group.kind)):
        if m and len(group.values(m)):
            return m
    return None


def _better(metric: str, a: float, b: float) -> bool:
    return a > b if metric in HIGHER_IS_BETTER else a < b


def best_values(groups: list[Group], metrics: list[str]) -> dict[tuple[tuple[str, str], str], float]:
    """(comparison set, metric) -> the best mean among the set's groups (sets of one group are left out)."""
    out: dict[tuple[tuple[str, str], str], float] = {}
    sizes: dict[tuple[str, str], int] = {}
    for g in groups:
        sizes[g.comparison] = sizes.get(g.comparison, 0) + 1
    for g in groups:
        for m in metrics:
            v, key = g.mean(m), (g.comparison, m)
            if sizes[g.comparison] > 1 and not math.isnan(v) and (key not in out or _better(m, v, out[key])):
                out[key] = v
    return out


def best_baseline(groups: list[Group], group: Group) -> tuple[Group | None, str | None]:
    """The best baseline of ``group``'s comparison set on its main metric, and that metric."""
    metric = main_metric(group)
    if metric is None:
        return None, None
    best = None
    for b in groups:
        if b.baseline and b.comparison == group.comparison and not math.isnan(b.mean(metric)):
            if best is None or _better(metric, b.mean(metric), best.mean(metric)):
                best = b
    return best, metric


def baseline_ratio(groups: list[Group], group: Group) -> float:
    """Mean of ``group``'s main metric over the best baseline's (NaN without a baseline); below 1 beats the
    baseline for lower-is-better metrics (CRPS), above 1 for the others (AUROC, accuracy)."""
    best, metric = best_baseline(groups, group)
    if best is None or metric is None or best.mean(metric) == 0:
        return math.nan
    return group.mean(metric) / best.mean(metric)


def _model_labels(groups: list[Group]) -> list[str]:
    """Model class (``Denoiser`` / ``Imputer`` dropped) and its setting; when two rows of a set would clash, each
    adds the words of its config name that the clashing configs do not share (``interpolation_physionet`` vs
    ``interpolation_noise_physionet``: ``Interpolation`` and ``Interpolation (noise)``)."""
    base = [
        g.model.removesuffix("Denoiser").removesuffix("Imputer") + (f" [{g.setting}]" if g.setting else "")
        for g in groups
    ]
    labels = []
    for g, b in zip(groups, base):
        clashing = [h.config for h, c in zip(groups, base) if c == b and h.comparison == g.comparison]
        if len(clashing) < 2:
            labels.append(b)
            continue
        shared = set.intersection(*(set(c.split("_")) for c in clashing))
        words = [w for w in g.config.split("_") if w not in shared]
        labels.append(f"{b} ({'_'.join(words)})" if words else b)
    return labels


def _num(value: float, digits: int = 4) -> str:
    return "–" if math.isnan(value) else f"{value:.{digits}g}"


def summary_rows(groups: list[Group], entries: list[dict], *, markdown: bool = False) -> tuple[list[str], list[list]]:
    """(header, rows of cells) of the summary table, grouped by comparison set (models, then baselines marked
    ``†``); best values marked (``*`` or bold); data shipped with the package marked ``°``."""
    groups = ordered(groups)
    seconds = [SECOND_METRIC.get(g.kind) for g in groups]
    best = best_values(groups, ["crps", *{m for m in seconds if m}])
    labels = _model_labels(groups)
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


def ordered(groups: list[Group]) -> list[Group]:
    """Groups of one comparison set together (sets in first-seen order), models before baselines."""
    first: dict[tuple[str, str], int] = {}
    for g in groups:
        first.setdefault(g.comparison, len(first))
    return sorted(groups, key=lambda g: (first[g.comparison], g.baseline))


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
        return "\n".join(["no finished runs", *_unfinished_lines(unfinished or [])]) + "\n"
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
    lines += _unfinished_lines(unfinished or [])
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
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    lines += ["", machine_and_dates(records + (flagged or [])), "", *summary_legend(groups)]
    if notes:
        lines += ["", "Notes:", "", *(f"- {n}" for n in notes)]
    if flagged:
        lines += ["", f"Flagged, not averaged ({len(flagged)} run(s)):", "", *flagged_lines(flagged)]
    return "\n".join(lines) + "\n"


def sweep_notes(sweep_dir: str | Path) -> list[str]:
    """The spec's ``notes`` saved in the sweep folder's ``sweep.json`` (none when it has no plan)."""
    return (_read_json(Path(sweep_dir) / "sweep.json") or {}).get("notes") or []


def load_sweep(
    sweep_dir: str | Path, reference: str | Path | None = None
) -> tuple[list[Group], list[dict], dict, list[dict], list[dict], list[dict]]:
    """(groups, records, sources, entries, flagged records, unfinished runs) of a sweep folder."""
    sweep_dir = Path(sweep_dir)
    if reference is None:
        reference = (_read_json(sweep_dir / "sweep.json") or {}).get("reference")
    sources, entries = load_reference(reference)
    records, unfinished = collect(sweep_dir)
    ok, flagged = split_flagged(records)
    return group_records(ok), ok, sources, entries, flagged, unfinished


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
    shown = metrics or [m for m in DEFAULT_METRICS if any(m in g.metric_names() for g in groups)]
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

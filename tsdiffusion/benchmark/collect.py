"""Collecting a sweep's results: the result records of its done runs, grouped by what differs only by seed.

A :class:`Group` is the runs of one (task, dataset, model, config, setting); its comparison set (task kind,
dataset) is the rows that share test windows and metric code. Records that carry ``flags`` (exploded
samples, non-finite metrics) are set apart by :func:`split_flagged`, never averaged.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tsdiffusion.benchmark.run_folder import read_status
from tsdiffusion.records import RECORD_NAME, record_flags


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


def lookup(obj: Any, dotted: str) -> Any:
    """``lookup(record, "config.data.init_args.missing_ratio")``; None when a key is missing."""
    for part in dotted.split("."):
        if not isinstance(obj, dict) or part not in obj:
            return None
        obj = obj[part]
    return obj


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


def collect(sweep_dir: str | Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(records of done runs, each with ``_run`` = its run.json; statuses of runs that are not done)."""
    records, unfinished = [], []
    for folder in sorted((Path(sweep_dir) / "runs").glob("*/")):
        run = read_json(folder / "run.json") or {"id": folder.name, "setting": "", "config": "?"}
        status = read_status(folder)
        record = read_json(folder / RECORD_NAME)
        if status.get("state") == "done" and record is not None:
            records.append({**record, "_run": run})
        else:
            unfinished.append({"id": run["id"], **status, "folder": str(folder)})
    return records, unfinished


def read_json(path: Path) -> dict[str, Any] | None:
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


def sweep_notes(sweep_dir: str | Path) -> list[str]:
    """The spec's ``notes`` saved in the sweep folder's ``sweep.json`` (none when it has no plan)."""
    return (read_json(Path(sweep_dir) / "sweep.json") or {}).get("notes") or []

"""Published numbers to compare with: the reference yaml (``benchmarks/specs/reference.yaml``: sources and
entries, each entry matching records by task, dataset, model and ``where`` keys) and, for synthetic data, the
exact optimum a record carries (``data.optimal``)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import yaml

from tsdiffusion.benchmark.collect import Group, lookup


def load_reference(path: str | Path | None) -> tuple[dict[str, dict], list[dict]]:
    """(sources by key, entries) of a reference yaml (see ``benchmarks/specs/reference.yaml``)."""
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

"""Comparing rows of one comparison set: each task's main and second metric, which direction is better, the
best value per set, the best baseline and every row's ratio to it, the order and labels of rows."""

from __future__ import annotations

import math

from tsdiffusion.benchmark.collect import Group

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


def ordered(groups: list[Group]) -> list[Group]:
    """Groups of one comparison set together (sets in first-seen order), models before baselines."""
    first: dict[tuple[str, str], int] = {}
    for g in groups:
        first.setdefault(g.comparison, len(first))
    return sorted(groups, key=lambda g: (first[g.comparison], g.baseline))


def model_labels(groups: list[Group]) -> list[str]:
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

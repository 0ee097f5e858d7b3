"""Anomaly scoring math: per-point scores, window stitching, label-free thresholds and the metrics that read
test labels (the only code that does).

* :func:`imputation_scores` (ImDiffusion, Chen et al. VLDB 2024): ``|median_S(x_hat) - x| / (std_S(x_hat) + eps)``;
  :func:`reduce_features` averages point scores over the observed features;
* :func:`stitch_windows` puts window scores back on each series' time axis, averaged where windows overlap;
  :func:`stitch_all` does it for every field of a set of windows;
* :func:`normalise_by_calibration` turns each series' scores into robust z-scores of its calibration scores;
* thresholds from calibration scores (no labels): :func:`quantile_threshold`, :func:`pot_threshold` (SPOT,
  Siffer et al. KDD 2017);
* :func:`anomaly_metrics`: AUROC, AUPRC, precision / recall / F1 at the threshold and the point-adjusted
  ``pa_*`` scores of the literature (Xu et al. WWW 2018, :func:`point_adjust`), which inflate results.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_recall,
)

# -- scores ---------------------------------------------------------------------------------------------


def imputation_scores(samples: Tensor, x: Tensor, eps: float) -> Tensor:
    """|median - x| / (std + eps) per point (ImDiffusion). samples (B, S, L, K), x (B, L, K) -> (B, L, K)."""
    median = samples.median(dim=1).values
    return (median - x).abs() / (samples.std(dim=1) + eps)


def reduce_features(scores: Tensor, observed_mask: Tensor) -> Tensor:
    """(B, L, K) -> (B, L): mean over the observed features (0 where none is observed)."""
    return (scores * observed_mask).sum(-1) / observed_mask.sum(-1).clamp(min=1)


def stitch_windows(
    series_index: np.ndarray, window_start: np.ndarray, values: np.ndarray, valid: np.ndarray
) -> dict[int, np.ndarray]:
    """Window values back on each series' time axis, averaged where windows overlap.

    series_index, window_start: (N,) ints; values, valid: (N, L). Returns ``{series: (T,)}`` with T the last
    valid step + 1 (a series without a valid step is left out); a step no valid window covers is NaN.
    """
    out = {}
    L = values.shape[1]
    for s in np.unique(series_index):
        rows = series_index == s
        pos = window_start[rows][:, None] + np.arange(L)[None, :]
        ok = valid[rows] > 0
        if not ok.any():  # no valid step: no series
            continue
        length = int(pos[ok].max()) + 1
        total = np.bincount(pos[ok], weights=values[rows][ok], minlength=length)
        count = np.bincount(pos[ok], minlength=length)
        out[int(s)] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


def stitch_all(windows: dict[str, Tensor]) -> dict[str, list]:
    """Stitched ``score``, ``label``, ``value`` per series (lists of (T,) arrays) and their ``series`` indices.

    windows: (N,) ``series_index`` and ``window_start``, (N, L) ``score``, ``label``, ``value`` and ``valid``.
    """
    cat = {k: v.double().numpy() for k, v in windows.items()}
    index, start = cat["series_index"].astype(np.int64), cat["window_start"].astype(np.int64)
    out: dict[str, list] = {}
    for key in ("score", "label", "value"):
        stitched = stitch_windows(index, start, cat[key], cat["valid"])
        out["series"] = sorted(stitched)
        out[key] = [stitched[s] for s in out["series"]]
    return out


def stitch_and_normalise(
    calibration: dict[str, Tensor], test: dict[str, Tensor], normalisation: Literal["series", "none"] = "none"
) -> tuple[dict[str, list], dict[str, list]]:
    """:func:`stitch_all` of the calibration and test windows, then (``series``) each series' scores as robust
    z-scores of its own calibration scores (:func:`normalise_by_calibration`). No labels are read."""
    cal, tst = stitch_all(calibration), stitch_all(test)
    if normalisation == "series":
        c, t = normalise_by_calibration(dict(zip(cal["series"], cal["score"])), dict(zip(tst["series"], tst["score"])))
        cal["score"] = [c[s] for s in cal["series"]]
        tst["score"] = [t[s] for s in tst["series"]]
    return cal, tst


# -- thresholds (no labels) --------------------------------------------------------------------------


def normalise_by_calibration(
    calibration: dict[int, np.ndarray], test: dict[int, np.ndarray]
) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Each series' scores as robust z-scores of its own calibration scores: (s - median) / (1.4826 MAD).

    calibration, test: ``{series: (T,) scores}`` (NaN allowed). Telemetry channels differ in how well the
    model reconstructs them, so raw scores pooled over channels rank a noisy normal channel above a clean
    anomalous one; this puts every channel on the scale of its own normal behaviour (no labels are read).
    A series without calibration scores uses the pooled calibration statistics; a zero MAD falls back to
    the series' calibration std, then to 1.
    """
    pooled = np.concatenate([v[np.isfinite(v)] for v in calibration.values()])

    def stats(x: np.ndarray) -> tuple[float, float]:
        x = x[np.isfinite(x)] if len(x) else x
        if not len(x):
            x = pooled
        med = float(np.median(x))
        spread = 1.4826 * float(np.median(np.abs(x - med)))
        return med, spread if spread > 0 else (float(x.std()) or 1.0)

    params = {s: stats(calibration.get(s, np.array([]))) for s in set(calibration) | set(test)}
    scale = lambda d: {s: (v - params[s][0]) / params[s][1] for s, v in d.items()}
    return scale(calibration), scale(test)


def quantile_threshold(scores: np.ndarray, q: float) -> float:
    """The q-quantile of calibration scores (NaN ignored)."""
    return float(np.nanquantile(scores, q))


def threshold_from(
    scores: np.ndarray,
    rule: Literal["quantile", "pot"],
    *,
    quantile: float = 0.99,
    level: float = 0.98,
    risk: float = 1e-3,
) -> float:
    """The threshold ``rule`` applied to calibration scores (no labels): :func:`quantile_threshold` at
    ``quantile`` or :func:`pot_threshold` at ``level`` / ``risk``."""
    if rule == "pot":
        return pot_threshold(scores, level, risk)
    return quantile_threshold(scores, quantile)


def pot_threshold(scores: np.ndarray, level: float, risk: float) -> float:
    """Peaks over threshold (SPOT's initialisation, Siffer et al. KDD 2017, eq. 1).

    u = the ``level`` quantile; the n_u excesses over u follow a generalised Pareto law (gamma, sigma),
    fitted here by the method of moments (Hosking & Wallis 1987; valid for gamma < 1/2):
    gamma = (1 - m^2 / v) / 2, sigma = m (m^2 / v + 1) / 2. The threshold with exceedance probability
    ``risk``: z = u + sigma / gamma ((risk n / n_u)^(-gamma) - 1), or u - sigma log(risk n / n_u) at gamma 0.
    """
    x = scores[np.isfinite(scores)]
    u = float(np.quantile(x, level))
    peaks = x[x > u] - u
    if len(peaks) < 2 or peaks.var() == 0:
        return float(x.max())
    m, v = peaks.mean(), peaks.var()
    gamma, sigma = 0.5 * (1 - m * m / v), 0.5 * m * (m * m / v + 1)
    r = risk * len(x) / len(peaks)
    if abs(gamma) < 1e-6:
        return float(u - sigma * np.log(r))
    return float(u + sigma / gamma * (r ** (-gamma) - 1))


# -- metrics (the only code that reads test labels) ---------------------------------------------------


def point_adjust(pred: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Point adjustment (Xu et al. WWW 2018): a labelled segment with one detected point is fully detected.

    pred, label: (T,) 0/1 of one series -> adjusted pred (T,). Predictions outside segments are kept.
    """
    pred, label = pred.astype(bool).copy(), label.astype(bool)
    edges = np.diff(np.concatenate([[0], label.astype(int), [0]]))
    for start, end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        if pred[start:end].any():
            pred[start:end] = True
    return pred


def _rates(pred: Tensor, label: Tensor, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}precision": float(binary_precision(pred, label)),
        f"{prefix}recall": float(binary_recall(pred, label)),
        f"{prefix}f1": float(binary_f1_score(pred, label)),
    }


def anomaly_metrics(scores: list[np.ndarray], labels: list[np.ndarray], threshold: float) -> dict[str, float]:
    """Pooled metrics over series. scores, labels: one (T,) array per series (NaN scores are dropped).

    ``auroc`` / ``auprc`` (torchmetrics; scores min-max scaled to [0, 1] first, since torchmetrics applies a
    sigmoid to values outside [0, 1], which would tie large scores), ``precision`` / ``recall`` / ``f1`` of
    ``score > threshold``, and ``pa_precision`` / ``pa_recall`` / ``pa_f1`` after point adjustment per series.
    """
    keep = [np.isfinite(s) for s in scores]
    s = np.concatenate([x[k] for x, k in zip(scores, keep)])
    y = torch.as_tensor(np.concatenate([x[k] for x, k in zip(labels, keep)])).long()
    pa = np.concatenate([point_adjust(x[k] > threshold, lab[k]) for x, lab, k in zip(scores, labels, keep)])
    prob = torch.as_tensor((s - s.min()) / max(s.max() - s.min(), 1e-12))
    out = {"auroc": float(binary_auroc(prob, y)), "auprc": float(binary_average_precision(prob, y))}
    out |= _rates(torch.as_tensor(s > threshold).long(), y, "")
    out |= _rates(torch.as_tensor(pa).long(), y, "pa_")
    out |= {
        "threshold": threshold,
        "pred_ratio": float((s > threshold).mean()),
        "anomaly_ratio": float(y.float().mean()),
    }
    return out

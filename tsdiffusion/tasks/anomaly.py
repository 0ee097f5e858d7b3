"""Anomaly detection with a diffusion model: points the learned distribution cannot reconstruct.

Training is CSDI's imputation training (random masks on mostly normal training windows). Each test step
gets a score by one of two rules:

* ``imputation`` (ImDiffusion, Chen et al. VLDB 2024): P fixed masks partition the time steps of
  a window (interleaved: step l is hidden by pattern ``l mod P``; blocks: by ``(l // block) mod P``);
  each pattern's hidden steps are imputed from the rest with S samples, and a hidden point scores
  ``|median_S(x_hat) - x| / (std_S(x_hat) + eps)``: the imputation error relative to the model's own spread;
* ``reconstruction`` (default; partial noising, as DiffAD / AnoDDPM, Wyatt et al. CVPRW 2022): the window is
  noised to step t* with q(x_t* | x_0) (Ho et al. 2020, eq. 4), denoised back to step 0 without
  conditioning, S times; a point scores ``|median_S(x0_hat) - x|``.

Per-point scores are averaged over the observed features (B, L), window scores are averaged where
windows overlap (:func:`stitch_windows`), each series' scores can be standardised by its own calibration
scores (:func:`normalise_by_calibration`, off by default), and a threshold is set on the stitched scores of the
*calibration* windows (the held-out end of the training data; no labels): a quantile, or the
peaks-over-threshold rule of SPOT (Siffer et al. KDD 2017). Test labels are read only by
:func:`anomaly_metrics`: AUROC, AUPRC, precision / recall / F1 at the threshold and, reported separately,
the point-adjusted ``pa_*`` scores of the literature (Xu et al. WWW 2018), which inflate results.

Why reconstruction is the default: on the CPU-budget runs (experiments/anomaly/*/csdi_cpu*.yaml, the same
checkpoints scored both ways) its AUROC was MSL 0.616 / SMAP 0.625 against 0.477 / 0.543 for the imputation
rule; on NAB it was 0.500 against 0.577. The rule was chosen on MSL and then confirmed on SMAP; per-series
normalisation did not help either rule there (MSL 0.587 / SMAP 0.603 with it, for reconstruction).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_f1_score,
    binary_precision,
    binary_recall,
)

from tsdiffusion.batch import TSBatch, repeat_batch
from tsdiffusion.diffusion import timesteps
from tsdiffusion.masking import make_cond_mask
from tsdiffusion.tasks.base import DiffusionTask, make_cond

CALIBRATION, TEST = 0, 1


# -- scoring math ---------------------------------------------------------------------------------------


def mask_patterns(length: int, num_patterns: int, kind: Literal["interleaved", "blocks"], block: int = 1) -> Tensor:
    """(P, L) 0/1 hide masks that partition the L steps: every step is hidden by exactly one pattern."""
    steps = torch.arange(length)
    group = steps % num_patterns if kind == "interleaved" else (steps // block) % num_patterns
    return (group[None, :] == torch.arange(num_patterns)[:, None]).float()


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
    valid step + 1; a step no valid window covers is NaN.
    """
    out = {}
    L = values.shape[1]
    for s in np.unique(series_index):
        rows = series_index == s
        pos = window_start[rows][:, None] + np.arange(L)[None, :]
        ok = valid[rows] > 0
        length = int(pos[ok].max()) + 1
        total = np.bincount(pos[ok], weights=values[rows][ok], minlength=length)
        count = np.bincount(pos[ok], minlength=length)
        out[int(s)] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


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


# -- the task ---------------------------------------------------------------------------------------


class AnomalyTask(DiffusionTask):
    """Train as imputation on (mostly normal) windows; score test steps by what the model cannot reconstruct.

    Needs a DataModule whose ``test_dataloader`` returns ``[calibration, test]`` loaders with
    ``series_index`` and ``window_start`` per window and ``point_label`` on the test windows
    (:class:`tsdiffusion.data.anomaly.AnomalyDataModule`).

    Args:
        scoring: ``reconstruction`` (default; partial noising to t*) or ``imputation`` (ImDiffusion).
            A denoiser with a ``score(observed, observed_mask)`` method (a non-learned scorer, see
            :mod:`tsdiffusion.anomaly_baselines`) replaces both.
        num_patterns: P, fixed masks of the imputation rule (each hides 1/P of the steps).
        pattern: ``interleaved`` (hide step l in pattern l mod P) or ``blocks`` of ``pattern_block`` steps.
        pattern_block: block length of ``blocks``.
        spread_eps: eps in ``|median - x| / (std + eps)`` (normalised units).
        noise_step: t* of the reconstruction rule (0-based; < the process's N); ``None``: N // 5 (10 of CSDI's 50).
        denoise_steps: denoiser calls from t* back to 0 (None = every step), with ``sampler`` / ``eta``.
        score_normalisation: ``none`` (default): raw scores pooled over series; ``series``: each series'
            scores become robust z-scores of its own calibration scores first (:func:`normalise_by_calibration`).
        threshold: ``quantile`` of the calibration scores, or ``pot`` (peaks over threshold).
        threshold_quantile: q of ``quantile``.
        pot_level, pot_risk: the initial quantile and the risk of ``pot``.
        mask_strategy: training masks (see :mod:`tsdiffusion.masking`).
        plot_series: save a figure (series, score, threshold, labels) for the first this many test series
            into the logger's folder.
        **DiffusionTask arguments**: ``num_samples`` is S (>= 2) of either rule; ``metrics`` is not used
            (the probabilistic metrics collection is left empty).

    Logs ``test/auroc``, ``test/auprc``, ``test/precision``, ``test/recall``, ``test/f1``,
    ``test/pa_precision``, ``test/pa_recall``, ``test/pa_f1``, ``test/threshold``, ``test/pred_ratio``,
    ``test/anomaly_ratio``.
    """

    def __init__(
        self,
        *args,
        scoring: Literal["imputation", "reconstruction"] = "reconstruction",
        num_patterns: int = 2,
        pattern: Literal["interleaved", "blocks"] = "blocks",
        pattern_block: int = 8,
        spread_eps: float = 0.1,
        noise_step: int | None = None,
        denoise_steps: int | None = None,
        score_normalisation: Literal["series", "none"] = "none",
        threshold: Literal["quantile", "pot"] = "quantile",
        threshold_quantile: float = 0.99,
        pot_level: float = 0.98,
        pot_risk: float = 1e-3,
        mask_strategy: Literal["random", "historical", "mix"] = "random",
        plot_series: int = 0,
        **kwargs,
    ):
        kwargs["metrics"] = ()
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["denoiser", "process"])
        if self.hparams.num_samples < 2:
            raise ValueError(
                f"AnomalyTask needs num_samples >= 2 (a median and a spread), got {self.hparams.num_samples}"
            )
        if noise_step is not None and noise_step < 0:
            raise ValueError(f"noise_step must be >= 0, got {noise_step}")
        if scoring == "reconstruction" and self.hparams.sampler not in ("ddpm", "ddim"):
            raise ValueError(
                f"AnomalyTask: scoring='reconstruction' denoises from t* with sampler 'ddpm' or 'ddim', "
                f"got {self.hparams.sampler!r}"
            )
        self._windows: dict[int, list[dict[str, Tensor]]] = {CALIBRATION: [], TEST: []}
        self.anomaly_results: dict = {}

    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        return make_cond_mask(self.hparams.mask_strategy, batch)

    @property
    def learned(self) -> bool:
        """False for a non-learned scorer in the denoiser slot (nothing to train or optimise)."""
        return any(p.requires_grad for p in self.parameters())

    def training_step(self, batch: TSBatch, batch_idx: int) -> Tensor | None:
        return super().training_step(batch, batch_idx) if self.learned else None

    # -- scores per window ------------------------------------------------------------------------
    def score_batch(self, batch: TSBatch, generator: torch.Generator | None = None) -> Tensor:
        """(B, L) anomaly score of every step of every window (never reads ``point_label``)."""
        model_input = {k: v for k, v in batch.items() if k != "point_label"}
        if hasattr(self.denoiser, "score"):
            per_point = self.denoiser.score(model_input["observed"], model_input["observed_mask"])
        elif self.hparams.scoring == "imputation":
            per_point = self.imputation_score(model_input, generator)
        else:
            per_point = self.reconstruction_score(model_input, generator)
        return reduce_features(per_point, batch["observed_mask"])

    def imputation_score(self, batch: TSBatch, generator: torch.Generator | None = None) -> Tensor:
        """(B, L, K): each step imputed by the pattern that hides it, all P patterns in one sampler call."""
        hp = self.hparams
        B, L, K = batch["observed"].shape
        hide = mask_patterns(L, hp.num_patterns, hp.pattern, hp.pattern_block).to(batch["observed"])
        rows = repeat_batch(batch, hp.num_patterns)  # (b p) ...
        hidden = repeat(hide, "p l -> (b p) l k", b=B, k=K)
        cond_mask = rows["observed_mask"] * (1 - hidden)
        samples = self.sample(rows, cond_mask, hp.num_samples, generator)
        err = imputation_scores(samples, rows["observed"], hp.spread_eps) * hidden
        return rearrange(err, "(b p) l k -> b p l k", p=hp.num_patterns).sum(1)

    def reconstruction_score(self, batch: TSBatch, generator: torch.Generator | None = None) -> Tensor:
        """(B, L, K): |median_S(x0_hat) - x| after noising to t* and denoising back, unconditionally."""
        hp = self.hparams
        t_star = self.process.num_steps // 5 if hp.noise_step is None else hp.noise_step
        if t_star >= self.process.num_steps:
            raise ValueError(f"noise_step must be < the process's {self.process.num_steps} steps, got {t_star}")
        S, x0 = hp.num_samples, batch["observed"]
        rows = repeat_batch(batch, S)  # (b s) ...
        cond = make_cond(rows, torch.zeros_like(rows["observed"]))
        noise = torch.randn(rows["observed"].shape, device=x0.device, generator=generator)
        x = self.process.q_sample(rows["observed"], torch.full_like(noise[:, 0, 0], t_star).long(), noise)
        x = self.denoise_from(x, t_star, cond, generator)
        median = rearrange(x, "(b s) l k -> b s l k", s=S).median(dim=1).values
        return (median - x0).abs()

    @torch.no_grad()
    def denoise_from(self, x_t: Tensor, t_start: int, cond: dict, generator: torch.Generator | None = None) -> Tensor:
        """x_{t*} (N, L, K) -> x_0 with ``denoise_steps`` DDPM / DDIM steps from t* down to 0."""
        hp, fn = self.hparams, self.denoise_fn(cond)
        seq = timesteps(t_start + 1, min(hp.denoise_steps or t_start + 1, t_start + 1))
        for t, s in zip(seq, [*seq[1:], -1]):
            step = torch.full_like(x_t[:, 0, 0], t).long()
            out = fn(x_t, step, cond)
            if hp.sampler == "ddim":
                x_t = self.process.ddim_step(out, t, s, x_t, eta=hp.eta, generator=generator)
            else:
                x_t = self.process.ddpm_step(out, t, x_t, s, generator=generator)
        return x_t

    # -- evaluation ------------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._windows = {CALIBRATION: [], TEST: []}

    def test_step(self, batch: TSBatch, batch_idx: int, dataloader_idx: int = 0) -> None:
        scores = self.score_batch(batch, self._generator(batch_idx + 100_000 * dataloader_idx))
        first = batch["observed"][..., 0] * batch["scale"][..., 0] + batch["loc"][..., 0]
        window = {
            "series_index": batch["series_index"], "window_start": batch["window_start"], "score": scores,
            "valid": batch["observed_mask"].amax(-1), "value": first,
            "label": batch.get("point_label", torch.zeros_like(scores)),
        }  # fmt: skip
        self._windows[dataloader_idx].append({k: v.detach().cpu() for k, v in window.items()})

    def on_test_epoch_end(self) -> None:
        if not self._windows[CALIBRATION] or not self._windows[TEST]:
            raise RuntimeError("AnomalyTask.test needs two test loaders, [calibration, test] (see AnomalyDataModule)")
        calibration = _stitch_all(self._windows[CALIBRATION])
        test = _stitch_all(self._windows[TEST])
        if self.hparams.score_normalisation == "series":
            cal, tst = normalise_by_calibration(
                dict(zip(calibration["series"], calibration["score"])), dict(zip(test["series"], test["score"]))
            )
            calibration["score"] = [cal[s] for s in calibration["series"]]
            test["score"] = [tst[s] for s in test["series"]]
        threshold = self.threshold_from(np.concatenate(calibration["score"]))
        metrics = anomaly_metrics(test["score"], test["label"], threshold)
        self.log_dict({f"test/{k}": float(v) for k, v in metrics.items()}, add_dataloader_idx=False)
        self.anomaly_results = {
            "threshold": threshold,
            "calibration": calibration,
            "test": test,
            "metrics": metrics,
        }
        self._save_plots()

    def threshold_from(self, calibration_scores: np.ndarray) -> float:
        """The threshold rule applied to calibration scores (no labels)."""
        hp = self.hparams
        if hp.threshold == "pot":
            return pot_threshold(calibration_scores, hp.pot_level, hp.pot_risk)
        return quantile_threshold(calibration_scores, hp.threshold_quantile)

    def predict_step(self, batch: TSBatch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Window scores (B, L) with ``series_index`` / ``window_start`` for :func:`stitch_windows`."""
        scores = self.score_batch(batch, self._generator(batch_idx + 100_000 * dataloader_idx))
        return {"score": scores, "series_index": batch["series_index"], "window_start": batch["window_start"]}

    def _save_plots(self) -> None:
        folder = getattr(self.trainer, "log_dir", None) if self._trainer is not None else None
        if not self.hparams.plot_series or folder is None or not self.trainer.is_global_zero:
            return
        from tsdiffusion.plots_anomaly import plot_anomaly_scores

        names = getattr(getattr(self.trainer, "datamodule", None), "series_names", None)
        test = self.anomaly_results["test"]
        for i in range(min(self.hparams.plot_series, len(test["score"]))):
            name = names[test["series"][i]] if names else str(test["series"][i])
            fig = plot_anomaly_scores(test["value"][i], test["score"][i], test["label"][i],
                                      self.anomaly_results["threshold"], title=name)  # fmt: skip
            Path(folder).mkdir(parents=True, exist_ok=True)
            fig.savefig(Path(folder) / f"anomaly_{name.replace('/', '_')}.png", dpi=100)
            import matplotlib.pyplot as plt

            plt.close(fig)

    def configure_optimizers(self):
        """As :class:`DiffusionTask`; nothing to optimise for a non-learned scorer."""
        if not self.learned:
            return None
        return super().configure_optimizers()


def _stitch_all(windows: list[dict[str, Tensor]]) -> dict[str, list]:
    """Stitched ``score``, ``label``, ``value`` per series (lists of (T,) arrays), ``series`` indices."""
    cat = {k: torch.cat([w[k] for w in windows]).double().numpy() for k in windows[0]}
    index, start = cat["series_index"].astype(np.int64), cat["window_start"].astype(np.int64)
    out: dict[str, list] = {}
    for key in ("score", "label", "value"):
        stitched = stitch_windows(index, start, cat[key], cat["valid"])
        out["series"] = sorted(stitched)
        out[key] = [stitched[s] for s in out["series"]]
    return out

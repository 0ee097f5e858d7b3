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
windows overlap, each series' scores can be standardised by its own calibration scores (off by default),
and a threshold is set on the stitched scores of the *calibration* windows (the held-out end of the training
data; no labels): a quantile, or the peaks-over-threshold rule of SPOT (Siffer et al. KDD 2017). The math
is in :mod:`tsdiffusion.metrics.anomaly`; test labels are read only by its :func:`anomaly_metrics`: AUROC,
AUPRC, precision / recall / F1 at the threshold and, reported separately, the point-adjusted ``pa_*`` scores
of the literature (Xu et al. WWW 2018), which inflate results.

Why reconstruction is the default: on the CPU-budget runs (experiments/anomaly/*/csdi_cpu*.yaml, the same
checkpoints scored both ways) its AUROC was MSL 0.616 / SMAP 0.625 against 0.477 / 0.543 for the imputation
rule; on NAB it was 0.500 against 0.577. The rule was chosen on MSL and then confirmed on SMAP; per-series
normalisation did not help either rule there (MSL 0.587 / SMAP 0.603 with it, for reconstruction).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from einops import rearrange, repeat
from torch import Tensor

from tsdiffusion.baselines.base import ScoringBaseline
from tsdiffusion.batch import TSBatch, repeat_batch
from tsdiffusion.diffusion import draw_samples
from tsdiffusion.masking import make_cond_mask
from tsdiffusion.metrics.anomaly import (
    anomaly_metrics,
    imputation_scores,
    reduce_features,
    stitch_and_normalise,
    threshold_from,
)
from tsdiffusion.plots.callbacks import AnomalyPlotCallback
from tsdiffusion.streams import RowStreams, Source
from tsdiffusion.tasks.base import DiffusionTask, make_cond

CALIBRATION, TEST = 0, 1


# -- masks ------------------------------------------------------------------------------------------------


def mask_patterns(length: int, num_patterns: int, kind: Literal["interleaved", "blocks"], block: int = 1) -> Tensor:
    """(P, L) 0/1 hide masks that partition the L steps: every step is hidden by exactly one pattern."""
    steps = torch.arange(length)
    group = steps % num_patterns if kind == "interleaved" else (steps // block) % num_patterns
    return (group[None, :] == torch.arange(num_patterns)[:, None]).float()


# -- the task ---------------------------------------------------------------------------------------


class AnomalyTask(DiffusionTask):
    """Train as imputation on (mostly normal) windows; score test steps by what the model cannot reconstruct.

    Needs a DataModule whose ``test_dataloader`` returns ``[calibration, test]`` loaders with
    ``series_index`` and ``window_start`` per window and ``point_label`` on the test windows
    (:class:`tsdiffusion.data.anomaly.AnomalyDataModule`).

    Args:
        scoring: ``reconstruction`` (default; partial noising to t*) or ``imputation`` (ImDiffusion).
            A ``baseline`` (a :class:`tsdiffusion.baselines.ScoringBaseline`, e.g. ``RollingMedianScorer``)
            in place of the denoiser replaces both; its scores go through the same stitching and thresholds.
        num_patterns: P, fixed masks of the imputation rule (each hides 1/P of the steps).
        pattern: ``interleaved`` (hide step l in pattern l mod P) or ``blocks`` of ``pattern_block`` steps.
        pattern_block: block length of ``blocks``.
        spread_eps: eps in ``|median - x| / (std + eps)`` (normalised units).
        noise_step: t* of the reconstruction rule (0-based; < the process's N); ``None``: N // 5 (10 of CSDI's 50).
        reconstruction_steps: denoiser calls from t* back to 0 (None = every step), with ``sampler`` / ``eta``.
        score_normalisation: ``none`` (default): raw scores pooled over series; ``series``: each series'
            scores become robust z-scores of its own calibration scores first (:func:`normalise_by_calibration`).
        threshold: ``quantile`` of the calibration scores, or ``pot`` (peaks over threshold).
        threshold_quantile: q of ``quantile``.
        pot_level, pot_risk: the initial quantile and the risk of ``pot``.
        mask_strategy: training masks (see :mod:`tsdiffusion.masking`).
        plot_series: save a figure (series, score, threshold, labels) for the first this many test series
            into the logger's folder (an :class:`tsdiffusion.plots.AnomalyPlotCallback`).
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
        reconstruction_steps: int | None = None,
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
        self.save_hyperparameters(ignore=["denoiser", "process", "baseline", "prior"])
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
        if self.baseline is not None and not isinstance(self.baseline, ScoringBaseline):
            raise TypeError(f"AnomalyTask needs a ScoringBaseline, got {type(self.baseline).__name__}")
        self._windows: dict[int, list[dict[str, Tensor]]] = {CALIBRATION: [], TEST: []}
        self.anomaly_results: dict = {}

    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        return make_cond_mask(self.hparams.mask_strategy, batch)

    def configure_callbacks(self) -> list:
        """The base task's and an :class:`AnomalyPlotCallback` of ``plot_series`` series (none for 0)."""
        plots = [AnomalyPlotCallback(self.hparams.plot_series)] if self.hparams.plot_series else []
        return [*super().configure_callbacks(), *plots]

    # -- scores per window ------------------------------------------------------------------------
    def score_batch(self, batch: TSBatch, generator: Source = None) -> Tensor:
        """(B, L) anomaly score of every step of every window (never reads ``point_label``)."""
        model_input = {k: v for k, v in batch.items() if k != "point_label"}
        if self.baseline is not None:
            per_point = self.baseline.score(model_input)
        elif self.hparams.scoring == "imputation":
            per_point = self.imputation_score(model_input, generator)
        else:
            per_point = self.reconstruction_score(model_input, generator)
        return reduce_features(per_point, batch["observed_mask"])

    def imputation_score(self, batch: TSBatch, generator: Source = None) -> Tensor:
        """(B, L, K): each step imputed by the pattern that hides it, all P patterns in one sampler call."""
        hp = self.hparams
        B, L, K = batch["observed"].shape
        hide = mask_patterns(L, hp.num_patterns, hp.pattern, hp.pattern_block).to(batch["observed"])
        rows = repeat_batch(batch, hp.num_patterns)  # (b p) ...
        hidden = repeat(hide, "p l -> (b p) l k", b=B, k=K)
        cond_mask = rows["observed_mask"] * (1 - hidden)
        if isinstance(generator, RowStreams):  # a stream per window and pattern
            generator = generator.split(hp.num_patterns)
        samples = self.sample(rows, cond_mask, hp.num_samples, generator)
        err = imputation_scores(samples, rows["observed"], hp.spread_eps) * hidden
        return rearrange(err, "(b p) l k -> b p l k", p=hp.num_patterns).sum(1)

    def reconstruction_score(self, batch: TSBatch, generator: Source = None) -> Tensor:
        """(B, L, K): |median_S(x0_hat) - x| after noising to t* and denoising back, unconditionally."""
        hp = self.hparams
        t_star = self.process.num_steps // 5 if hp.noise_step is None else hp.noise_step
        if t_star >= self.process.num_steps:
            raise ValueError(f"noise_step must be < the process's {self.process.num_steps} steps, got {t_star}")
        x0 = batch["observed"]
        cond = make_cond(batch, torch.zeros_like(x0))
        # S rows per window from x0 noised to t*, denoised with ``reconstruction_steps`` calls; all B * S rows in one
        # sampler call (no max_batch), as the recorded scores were drawn
        x = draw_samples(self.process, self.denoise_fn(cond), cond, tuple(x0.shape), hp.num_samples,
                         sampler=hp.sampler, steps=hp.reconstruction_steps, eta=hp.eta, t_start=t_star, x0=x0,
                         generator=generator)  # fmt: skip
        return (x.median(dim=1).values - x0).abs()

    # -- evaluation ------------------------------------------------------------------------------
    def on_test_epoch_start(self) -> None:
        self._windows = {CALIBRATION: [], TEST: []}

    def test_step(self, batch: TSBatch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Scores the windows; returns them, (B,) ``series_index`` / ``window_start`` and (B, L) ``score``,
        ``valid``, ``value`` (feature 0, original units) and ``label`` (for the epoch end and the figures)."""
        scores = self.score_batch(batch, self.sample_source(batch, batch_idx, dataloader_idx=dataloader_idx))
        first = batch["observed"][..., 0] * batch["scale"][..., 0] + batch["loc"][..., 0]
        window = {
            "series_index": batch["series_index"], "window_start": batch["window_start"], "score": scores,
            "valid": batch["observed_mask"].amax(-1), "value": first,
            "label": batch.get("point_label", torch.zeros_like(scores)),
        }  # fmt: skip
        self._windows[dataloader_idx].append({k: v.detach() for k, v in window.items()})
        return window

    def on_test_epoch_end(self) -> None:
        """Stitch, normalise, threshold and score the windows of the whole test set (gathered over ranks)."""
        if not self._windows[CALIBRATION] or not self._windows[TEST]:
            raise RuntimeError("AnomalyTask.test needs two test loaders, [calibration, test] (see AnomalyDataModule)")
        windows = {i: self._gathered(i) for i in (CALIBRATION, TEST)}
        self._windows = {CALIBRATION: [], TEST: []}
        hp = self.hparams
        calibration, test = stitch_and_normalise(windows[CALIBRATION], windows[TEST], hp.score_normalisation)
        threshold = self.threshold_from(np.concatenate(calibration["score"]))
        metrics = anomaly_metrics(test["score"], test["label"], threshold)
        self.log_dict({f"test/{k}": float(v) for k, v in metrics.items()}, add_dataloader_idx=False)
        self.anomaly_results = {"threshold": threshold, "calibration": calibration, "test": test, "metrics": metrics}

    def _gathered(self, dataloader_idx: int) -> dict[str, Tensor]:
        """The windows of one test loader, of every rank in loader order, on the CPU."""
        parts = self._windows[dataloader_idx]
        cat = {k: torch.cat([w[k] for w in parts]) for k in parts[0]}
        return {k: self.gather_ordered(v, dataloader_idx).cpu() for k, v in cat.items()}

    def threshold_from(self, calibration_scores: np.ndarray) -> float:
        """The threshold rule applied to calibration scores (no labels)."""
        hp = self.hparams
        return threshold_from(calibration_scores, hp.threshold, quantile=hp.threshold_quantile, level=hp.pot_level,
                              risk=hp.pot_risk)  # fmt: skip

    def predict_step(self, batch: TSBatch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        """Window scores (B, L) with ``series_index`` / ``window_start`` for :func:`stitch_windows`."""
        scores = self.score_batch(batch, self.sample_source(batch, batch_idx, dataloader_idx=dataloader_idx))
        return {"score": scores, "series_index": batch["series_index"], "window_start": batch["window_start"]}

"""Synthetic time-series generation: unconditional, or conditioned on a class label.

Training conditions on nothing (mask strategy ``none``, as Diffusion-TS, Yuan & Qiao 2024, trains its
unconditional model): the loss covers every observed value. At test time the task draws ``num_samples``
synthetic windows per real test window (with that window's label when class-conditional) and scores them
against the real test windows with :mod:`tsdiffusion.metrics.generation` (TimeGAN's discriminative and predictive
scores, marginal and autocorrelation distances) beside the same scores of trivial baselines, logged as
``test/<name>``; the probabilistic forecast metrics of the base task do not apply.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor

from tsdiffusion.batch import Cond, TSBatch
from tsdiffusion.denoisers import capabilities_of
from tsdiffusion.diffusion import draw_samples
from tsdiffusion.masking import make_cond_mask
from tsdiffusion.metrics.generation import scores_with_baselines
from tsdiffusion.plots.callbacks import GenerationPlotCallback
from tsdiffusion.streams import Source
from tsdiffusion.tasks.base import DiffusionTask


class GenerationTask(DiffusionTask):
    """Generate whole windows with any denoiser; score them against held-out real windows.

    Args:
        class_conditional: keep ``label`` in the conditioning (the denoiser must use it, e.g.
            ``UNet1DDenoiser(num_classes=C)``); False drops it from every batch.
        num_samples: synthetic windows per real test window (S).
        score_iterations, score_lr, score_batch_size: training of the post-hoc GRUs of the discriminative
            and predictive scores (TimeGAN: 2000 iterations, Adam 1e-3, batches of 128).
        score_repeats: the discriminative score is averaged over this many train/test splits.
        score_seed: seeds the scores' splits and GRU initialisations.
        plot: write ``samples.png``, ``marginals.png`` and ``pca.png`` under ``<log_dir>/generation``
            (a :class:`tsdiffusion.plots.GenerationPlotCallback`).
        **DiffusionTask arguments** (see :class:`tsdiffusion.tasks.base.DiffusionTask`; ``sampler`` picks
        DDPM or DDIM, ``sample_steps`` its number of denoiser calls).
    """

    metric_units = "normalised"

    def __init__(
        self,
        *args,
        class_conditional: bool = False,
        num_samples: int = 1,
        score_iterations: int = 2000,
        score_lr: float = 1e-3,
        score_batch_size: int = 128,
        score_repeats: int = 1,
        score_seed: int = 0,
        plot: bool = True,
        **kwargs,
    ):
        super().__init__(*args, num_samples=num_samples, **kwargs)
        self.save_hyperparameters(ignore=["denoiser", "process", "baseline", "prior"])
        if class_conditional and capabilities_of(self.denoiser).num_classes == 0:
            raise ValueError("class_conditional=True needs a denoiser that reads labels (num_classes > 0)")
        self._real: list[Tensor] = []
        self._synth: list[Tensor] = []
        self.last_scores: dict[str, float] = {}

    # -- conditioning -------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: TSBatch, dataloader_idx: int) -> TSBatch:
        if not self.hparams.class_conditional and "label" in batch:
            batch = {k: v for k, v in batch.items() if k != "label"}
        return batch

    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        return make_cond_mask("none", batch)

    def eval_cond_mask(self, batch: TSBatch) -> Tensor:
        return make_cond_mask("none", batch)

    # -- generation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        num_windows: int,
        seq_len: int,
        labels: Tensor | None = None,
        generator: Source = None,
    ) -> Tensor:
        """Draw ``num_windows`` synthetic windows (N, L, K) in normalised units with the task's sampler.

        labels: (N,) long class per window (class-conditional tasks only).
        """
        hp, K = self.hparams, self.denoiser.num_features
        if hp.class_conditional and labels is None:
            raise ValueError("a class-conditional task needs labels (N,) to generate")
        zeros = torch.zeros(num_windows, seq_len, K, device=self.device)
        cond: Cond = {"observed": zeros, "cond_mask": zeros}
        if hp.class_conditional:
            cond["label"] = labels.to(self.device).long()
        samples = draw_samples(
            self.process, self.denoise_fn(cond), cond, (num_windows, seq_len, K), 1,
            sampler=hp.sampler, steps=hp.sample_steps, eta=hp.eta, max_batch=hp.sample_batch_size,
            generator=generator, device=self.device,
        )  # fmt: skip
        return samples[:, 0]

    # -- evaluation ---------------------------------------------------------------------------------
    def configure_callbacks(self) -> list:
        """The base task's and a :class:`GenerationPlotCallback` when ``plot``."""
        return [*super().configure_callbacks(), *([GenerationPlotCallback()] if self.hparams.plot else [])]

    def test_step(self, batch: TSBatch, batch_idx: int) -> dict[str, Tensor]:
        """Draws S synthetic windows per real one; returns ``{"real": (B, L, K), "synth": (B S, L, K)}``."""
        real = batch["observed"]
        if not bool(batch["observed_mask"].all()):
            raise ValueError("GenerationTask scores complete windows; this test batch has missing values")
        S = self.hparams.num_samples
        labels = batch["label"].repeat_interleave(S) if "label" in batch else None
        synth = self.generate(len(real) * S, real.shape[1], labels, generator=self.sample_source(batch, batch_idx))
        self._real.append(real)
        self._synth.append(synth)
        return {"real": real, "synth": synth}

    def on_test_epoch_end(self) -> None:
        """Scores the synthetic windows of the whole test set (gathered over ranks, in loader order)."""
        S = self.hparams.num_samples
        real = self.gather_ordered(torch.cat(self._real)).cpu()
        synth = rearrange(torch.cat(self._synth), "(n s) l k -> n s l k", s=S)
        synth = rearrange(self.gather_ordered(synth).cpu(), "n s l k -> (n s) l k")
        self._real, self._synth = [], []
        hp = self.hparams
        scores = scores_with_baselines(
            real, synth, iterations=hp.score_iterations, repeats=hp.score_repeats, seed=hp.score_seed,
            lr=hp.score_lr, batch_size=hp.score_batch_size,
        )  # fmt: skip
        self.last_scores = scores
        self.log_dict({f"test/{k}": float(v) for k, v in scores.items()}, sync_dist=False)

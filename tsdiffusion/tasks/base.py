"""The shared LightningModule: a denoiser, a diffusion process, a training mask, samplers and metrics.

A task is thin: subclasses choose the training conditioning (:meth:`DiffusionTask.train_cond_mask`), the
evaluation conditioning (:meth:`DiffusionTask.eval_cond_mask`) and the units in which metrics are scored.
The math lives in :mod:`tsdiffusion.diffusion`, the networks in :mod:`tsdiffusion.denoisers`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import lightning as L
import torch
from einops import rearrange
from torch import Tensor, nn

from tsdiffusion.baselines.base import Baseline, SamplingBaseline
from tsdiffusion.batch import Cond, TSBatch
from tsdiffusion.diffusion import GaussianDiffusion, conditioned, draw_samples, timesteps
from tsdiffusion.diffusion.samplers import SamplerName
from tsdiffusion.errors import ConfigError, TrainingDivergedError
from tsdiffusion.hardware import keep_freed_memory
from tsdiffusion.metrics import DEFAULT_METRICS, MetricName, ProbabilisticMetrics
from tsdiffusion.streams import RowStreams, Source

if TYPE_CHECKING:
    from lightning.fabric.utilities.data import AttributeDict

_COND_FIELDS = ("timepoints", "feature_ids", "time_features", "label")


def make_cond(batch: TSBatch, cond_mask: Tensor) -> Cond:
    """The denoiser's view of a batch: observed values only where ``cond_mask`` is 1, plus side information."""
    cond: Cond = {"observed": batch["observed"] * cond_mask, "cond_mask": cond_mask}
    for key in _COND_FIELDS:
        if key in batch:
            cond[key] = batch[key]
    return cond


def extreme_counts(samples: Tensor, batch: TSBatch, limit: float) -> Tensor:
    """(extreme, non-finite) counts, float64 (2,), of the sampled values (B, S, L, K) at scored positions
    (``target_mask``): extreme when ``|x| > limit * max(1, max_l |observed_l|)`` of the series in the window,
    normalised units (standardised data: ``limit`` standard deviations of the training data)."""
    scored = (batch["target_mask"] > 0).unsqueeze(1)  # (B, 1, L, K)
    observed = (batch["observed"] * batch["observed_mask"]).abs().amax(dim=1, keepdim=True)  # (B, 1, K)
    bound = limit * observed.clamp(min=1.0).unsqueeze(1)  # (B, 1, 1, K)
    finite = torch.isfinite(samples)
    extreme = (finite & (samples.abs() > bound) & scored).sum()
    nonfinite = (~finite & scored).sum()
    return torch.stack([extreme, nonfinite]).double().cpu()


class KeepFreedMemory(L.Callback):
    """For a fit on the CPU, glibc keeps freed memory on its heap (:func:`tsdiffusion.hardware.keep_freed_memory`,
    as the sampling chains do): each training step's activations reuse the pages of the step before instead of
    being mapped and faulted in again (the CSDI PhysioNet step under bf16: 230k page faults a step, a quarter of
    its time). Set back when the fit ends, normally or by an exception."""

    def __init__(self) -> None:
        self._kept: contextlib.ExitStack | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cpu" and self._kept is None:
            self._kept = contextlib.ExitStack()
            self._kept.enter_context(keep_freed_memory())

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.release()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.release()

    def release(self) -> None:
        if self._kept is not None:
            self._kept.close()
            self._kept = None


class DiffusionTask(L.LightningModule):
    """Base LightningModule of every diffusion task.

    Args:
        denoiser: any module with the signature ``denoiser(x_t (B,L,K), t (B,), cond) -> (B,L,K)``.
        baseline: a non-learned model evaluated in place of a denoiser (:mod:`tsdiffusion.baselines`): the
            task's test windows, conditioning, metrics and figures are those of a trained model, and ``fit``
            has nothing to optimise. Give exactly one of ``denoiser`` and ``baseline``.
        process: the forward process (schedule, number of steps, prediction type); default CSDI's
            ``GaussianDiffusion()`` (50 quad steps, 1e-4..0.5, eps prediction).
        lr, weight_decay: Adam settings (CSDI: 1e-3, 1e-6).
        lr_milestones: fractions of ``trainer.max_epochs`` at which the learning rate is multiplied by
            ``lr_gamma`` (CSDI: 0.75 and 0.9, x0.1).
        lr_schedule: ``"multistep"`` (default): the milestones above; ``"onecycle"``: ``OneCycleLR`` over all
            training steps, stepped every batch, peaking at ``max_lr`` (torch's defaults otherwise: start at
            ``max_lr / 25``, peak at 30%, cosine down to ``max_lr / 25e4``, momentum cycled 0.85..0.95). This is
            what pytorch-ts's ``Trainer`` does for TimeGrad, whose ``maximum_learning_rate`` defaults to 1e-2: its
            ``learning_rate`` (1e-3) is overwritten by the schedule. ``lr_milestones`` is then ignored.
        max_lr: the peak of the ``"onecycle"`` schedule (default 1e-2, pytorch-ts's).
        num_samples: S, samples per test window (CSDI: 100).
        sampler, sample_steps, eta: ``ddpm`` (ancestral, optionally strided), ``ddim``, ``dpmpp``
            (DPM-Solver++(2M)) or ``dpmpp_sde`` (its SDE variant) with ``sample_steps`` denoiser calls
            (None = every training step); ``eta``: DDIM's.
        sample_batch_size: at most this many rows (windows x samples) per sampler call (memory bound).
        sample_seed: seed of the sampling streams, so test metrics do not depend on the training RNG; with the
            window's index it keys each window's draws (:meth:`sample_source`), whatever the batch layout.
        val_loss_steps: validation loss averaged over this many evenly spaced diffusion steps (None = all,
            as CSDI); uses a fixed generator, so it is comparable across epochs.
        metrics: metric names reported on test (see :mod:`tsdiffusion.metrics`).
        divergence_factor: training stops with :class:`TrainingDivergedError` (naming the step) when the loss
            is NaN/inf or exceeds this multiple of the smallest loss of the first 10 optimisation steps (the
            smallest, so a loss that explodes from the second step on is caught; None: only non-finite losses
            stop it). The check runs in ``on_train_batch_end``, before the epoch's checkpoint is written
            (``save_on_train_epoch_end``), so ``last.ckpt`` keeps the last good epoch.
        extreme_limit: on test, a sampled value at a scored position counts as extreme when its magnitude (in
            normalised units) exceeds ``extreme_limit x max(1, max |observed|)`` of its series in the window;
            the counts of extreme and non-finite sampled values are logged as ``test/flag_extreme_samples``
            and ``test/flag_nonfinite_samples`` and a non-zero count flags the run's record
            (:func:`tsdiffusion.records.record_flags`).
        plot_calibration: after ``test``, a PIT histogram and a coverage-vs-nominal plot of the scored
            values (:class:`tsdiffusion.plots.CalibrationCallback`), saved and logged.
        prior: a :class:`tsdiffusion.baselines.SamplingBaseline` whose point estimate (its ``point`` method, e.g.
            :class:`tsdiffusion.baselines.InterpolationImputer`) is the mean the diffusion runs around, as CARD
            (Han, Zheng, Zhou, NeurIPS 2022) diffuses around a regressor's prediction: the model learns the
            residual ``x0 - prior`` and every sample is ``prior + residual``. The denoiser still sees the raw
            conditioning values. An untrained model (zero-initialised output) then starts from the baseline's
            fill instead of from noise. None (default): plain diffusion of ``x0``, as the papers.
        prior_scale: with a ``prior``, the residual is modelled in units of this scale, ``(x0 - prior) /
            prior_scale``, so that it has about the unit variance the noise schedules assume (EDM's sigma_data,
            Karras et al. 2022): measure it on training data, e.g. the standard deviation of the prior's errors
            at positions hidden as in training. Samples are ``prior + prior_scale x residual``.
    """

    if TYPE_CHECKING:
        # save_hyperparameters() makes hparams an AttributeDict (attribute access); Lightning annotates the
        # property with the wider Union[AttributeDict, MutableMapping].
        @property
        def hparams(self) -> AttributeDict: ...

    metric_units: Literal["normalised", "original"] = "normalised"

    def __init__(
        self,
        denoiser: nn.Module | None = None,
        process: GaussianDiffusion | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        lr_milestones: Sequence[float] = (0.75, 0.9),
        lr_gamma: float = 0.1,
        lr_schedule: Literal["multistep", "onecycle"] = "multistep",
        max_lr: float = 1e-2,
        num_samples: int = 100,
        sampler: SamplerName = "ddpm",
        sample_steps: int | None = None,
        eta: float = 0.0,
        sample_batch_size: int | None = None,
        sample_seed: int = 0,
        val_loss_steps: int | None = None,
        metrics: Sequence[MetricName] = DEFAULT_METRICS,
        baseline: Baseline | None = None,
        divergence_factor: float | None = 1000.0,
        extreme_limit: float = 20.0,
        plot_calibration: bool = True,
        prior: SamplingBaseline | None = None,
        prior_scale: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["denoiser", "process", "baseline", "prior"])
        if (denoiser is None) == (baseline is None):
            raise ConfigError(f"{type(self).__name__}: give exactly one of denoiser= and baseline=")
        if prior is not None and baseline is not None:
            raise ConfigError(f"{type(self).__name__}: prior= is the mean a denoiser's diffusion runs around; a "
                             "baseline has no diffusion (give denoiser= with prior=)")  # fmt: skip
        if lr_schedule not in ("multistep", "onecycle"):
            raise ValueError(
                f"{type(self).__name__}: lr_schedule must be 'multistep' or 'onecycle', got {lr_schedule!r}"
            )
        if not prior_scale > 0:
            raise ConfigError(f"{type(self).__name__}: prior_scale must be > 0, got {prior_scale}")
        self.denoiser, self.baseline, self.prior = denoiser, baseline, prior
        self.process = process if process is not None else GaussianDiffusion()
        self.test_metrics = ProbabilisticMetrics(metrics, prefix="test/")
        self._first_losses: list[float] = []
        self._flag_counts = [0.0, 0.0]  # extreme, non-finite sampled values (floats: no tensor to share on spawn)

    # -- conditioning (override in subclasses) ----------------------------------------------------
    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        """(B, L, K): what the model sees during training."""
        raise NotImplementedError

    def eval_cond_mask(self, batch: TSBatch) -> Tensor:
        """(B, L, K): what the model sees at evaluation: everything observed except the evaluation targets."""
        return batch["observed_mask"] * (1 - batch["target_mask"])

    @property
    def learned(self) -> bool:
        """False for a baseline (nothing to train, validate or optimise)."""
        return self.baseline is None

    def configure_callbacks(self) -> list:
        """:class:`KeepFreedMemory`, and the calibration figures (:class:`CalibrationCallback`) when
        ``plot_calibration`` and the task scores samples with this class's ``test_step`` (forecasting, imputation);
        subclasses add their own figures to these."""
        from tsdiffusion.plots.callbacks import CalibrationCallback

        samples = type(self).test_step is DiffusionTask.test_step
        figures = [CalibrationCallback()] if samples and self.hparams.get("plot_calibration", True) else []
        return [KeepFreedMemory(), *figures]

    # -- training -------------------------------------------------------------------------------
    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """Stop on a non-finite or exploding loss (``divergence_factor``) with an error naming the step."""
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach()) if isinstance(loss, Tensor) else float(loss)
        factor = self.hparams.get("divergence_factor", 1000.0)
        if math.isfinite(value) and len(self._first_losses) < 10:
            self._first_losses.append(value)
        reference = min(self._first_losses) if self._first_losses else math.nan
        exploded = factor is not None and reference > 0 and value > factor * reference
        if math.isfinite(value) and not exploded:
            return
        what = f"is {value}"
        if math.isfinite(value):
            what = f"= {value:.4g}, over {factor:g} x the smallest of the first steps' losses ({reference:.4g})"
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none written yet"
        raise TrainingDivergedError(
            f"{type(self).__name__}: training loss {what} at optimisation step {self.global_step} (epoch "
            f"{self.current_epoch}, batch {batch_idx}); stopped before this epoch's checkpoint, last good "
            f"checkpoint: {ckpt}",
            hint=f"lower the learning rate (model.init_args.lr={self.hparams.lr:g}) or clip gradients "
            "(trainer.gradient_clip_val)",
        )

    def training_step(self, batch: TSBatch, batch_idx: int) -> Tensor | None:
        if not self.learned:
            return None
        cond_mask = self.train_cond_mask(batch)
        loss_mask = batch["observed_mask"] * (1 - cond_mask)
        x0 = self.residual_target(batch, cond_mask)
        loss = self.process.loss(self.denoiser, x0, make_cond(batch, cond_mask), loss_mask)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["observed"]))
        return loss

    def validation_step(self, batch: TSBatch, batch_idx: int) -> Tensor | None:
        if not self.learned:
            return None
        cond_mask = self.eval_cond_mask(batch)
        cond, x0 = make_cond(batch, cond_mask), self.residual_target(batch, cond_mask)
        loss_mask = batch["observed_mask"] * (1 - cond_mask)
        gen = torch.Generator(device=x0.device).manual_seed(10_000 + batch_idx)
        steps = timesteps(self.process.num_steps, self.hparams.val_loss_steps)
        losses = [
            self.process.loss(self.denoiser, x0, cond, loss_mask, t=torch.full_like(x0[:, 0, 0], t).long(),
                              generator=gen)
            for t in steps
        ]  # fmt: skip
        loss = torch.stack(losses).mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=len(x0), sync_dist=True)
        return loss

    def prior_mean(self, batch: TSBatch, cond_mask: Tensor) -> Tensor | None:
        """(B, L, K) the ``prior``'s point estimate given the conditioning values (normalised units), or None."""
        if self.prior is None:
            return None
        return self.prior.point(batch, cond_mask).detach()

    def residual_target(self, batch: TSBatch, cond_mask: Tensor) -> Tensor:
        """What the diffusion models: ``observed``, or with a ``prior`` ``(observed - prior) / prior_scale``."""
        prior = self.prior_mean(batch, cond_mask)
        if prior is None:
            return batch["observed"]
        return (batch["observed"] - prior) / self.hparams.get("prior_scale", 1.0)

    # -- sampling -------------------------------------------------------------------------------
    def denoise_fn(self, cond: Cond):
        """The function a sampler calls: the denoiser, or for one that declares ``conditional=False`` the
        :class:`tsdiffusion.diffusion.Unconditional` wrapper (observed values noised to step t, CSDI)."""
        return conditioned(self.process, self.denoiser)

    @torch.no_grad()
    def sample(self, batch: TSBatch, cond_mask: Tensor, num_samples: int | None = None,
               generator: Source = None, *, sampler: SamplerName | None = None,
               steps: int | None = None) -> Tensor:  # fmt: skip
        """Samples (B, S, L, K) in normalised units, observed values kept where ``cond_mask`` is 1; ``sampler``
        and ``steps`` (denoiser calls) default to the task's ``sampler`` and ``sample_steps``."""
        hp = self.hparams
        s = num_samples or hp.num_samples
        if self.baseline is not None:
            if not isinstance(self.baseline, SamplingBaseline):
                raise TypeError(f"{type(self).__name__} needs a SamplingBaseline, got {type(self.baseline).__name__}")
            return self.baseline.sample(batch, cond_mask, s, generator)
        cond = make_cond(batch, cond_mask)
        samples = draw_samples(
            self.process, self.denoise_fn(cond), cond, tuple(batch["observed"].shape), s,
            sampler=sampler or hp.sampler, steps=hp.sample_steps if steps is None else steps, eta=hp.eta,
            max_batch=hp.sample_batch_size, generator=generator, device=batch["observed"].device,
        )  # fmt: skip
        prior = self.prior_mean(batch, cond_mask)
        if prior is not None:
            samples = prior.unsqueeze(1) + self.hparams.get("prior_scale", 1.0) * samples
        keep = cond_mask.unsqueeze(1)
        return samples * (1 - keep) + (batch["observed"] * cond_mask).unsqueeze(1)

    def sample_source(self, batch: TSBatch, batch_idx: int, num_samples: int | None = None,
                      dataloader_idx: int = 0) -> Source:  # fmt: skip
        """Where a test batch's random draws come from: per-window streams keyed by (``sample_seed``, the
        window's ``index`` in its evaluation set, the sample), so a window's samples do not depend on the batch
        size, the sample chunking, the workers or the number of ranks (:mod:`tsdiffusion.streams`). A batch
        without ``index`` (built by hand) falls back to a generator seeded by its position, as before."""
        seed = self.hparams.sample_seed + 1_000_003 * dataloader_idx
        if "index" in batch:
            return RowStreams.for_windows(seed, batch["index"], num_samples or self.hparams.num_samples)
        seed = seed + 1_000_003 * batch_idx + 7919 * self.global_rank
        return torch.Generator(device=self.device).manual_seed(seed)

    def to_units(self, x: Tensor, batch: TSBatch) -> Tensor:
        """Normalised -> the units metrics are scored in. x: (B, ..., L, K)."""
        if self.metric_units == "normalised" or "scale" not in batch:
            return x
        extra = x.dim() - 3
        scale = batch["scale"].view(batch["scale"].shape[0], *([1] * extra), *batch["scale"].shape[1:])
        loc = batch["loc"].view_as(scale)
        return x * scale + loc

    # -- evaluation -----------------------------------------------------------------------------
    def test_step(self, batch: TSBatch, batch_idx: int) -> dict[str, Tensor]:
        """Updates the metrics; returns ``{"samples": (B, S, L, K)}`` in normalised units (for the callbacks)."""
        cond_mask = self.eval_cond_mask(batch)
        samples = self.sample(batch, cond_mask, generator=self.sample_source(batch, batch_idx))
        target = self.to_units(batch["observed"], batch)
        self.test_metrics.update(self.to_units(samples, batch), target, batch["target_mask"])
        counts = extreme_counts(samples, batch, self.hparams.get("extreme_limit", 20.0)).tolist()
        self._flag_counts = [a + b for a, b in zip(self._flag_counts, counts)]
        return {"samples": samples}

    def on_test_epoch_start(self) -> None:
        self._flag_counts = [0.0, 0.0]

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute(), sync_dist=False)
        self.test_metrics.reset()
        for count, name in zip(self._flag_counts, ("extreme_samples", "nonfinite_samples")):
            self.log(f"test/flag_{name}", count, sync_dist=True, reduce_fx="sum")

    def predict_step(self, batch: TSBatch, batch_idx: int) -> dict[str, Tensor]:
        cond_mask = self.eval_cond_mask(batch)
        samples = self.sample(batch, cond_mask, generator=self.sample_source(batch, batch_idx))
        return {"samples": self.to_units(samples, batch), "cond_mask": cond_mask}

    def gather_ordered(self, x: Tensor, dataloader_idx: int = 0) -> Tensor:
        """Rows (N_rank, ...) of this rank's test windows -> (N, ...) of the whole test set in loader order.

        Under DDP Lightning's ``DistributedSampler`` deals the N windows out in turn (rank r gets windows
        r, r + W, ...) and pads every rank to the same count with the first windows again; the gathered
        (W, n, ...) rows are interleaved back and the padding dropped, so every rank holds what one process
        would. Single process: ``x`` unchanged.
        """
        if self.trainer.world_size == 1:
            return x
        rows = rearrange(self.all_gather(x), "w n ... -> (n w) ...")
        loaders = self.trainer.test_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        return rows[: len(loader.dataset)]

    # -- optimisation ---------------------------------------------------------------------------
    def configure_optimizers(self):
        if not self.learned:
            return None
        hp = self.hparams
        opt = torch.optim.Adam(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.get("lr_schedule", "multistep") == "onecycle":
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=hp.max_lr, total_steps=total)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": cycle, "interval": "step"}}
        epochs = max(self.trainer.max_epochs or 1, 1)
        milestones = sorted({max(1, int(f * epochs)) for f in hp.lr_milestones})
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=hp.lr_gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

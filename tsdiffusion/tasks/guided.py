"""One unconditional model, conditioned at test time (TSDiff, Kollovieh et al. 2023): guided forecasting and imputation.

Training is unconditional (nothing is given to the network; the loss covers every observed value), so one
model serves any conditioning pattern. At test time the task draws samples by observation self-guidance
(:func:`tsdiffusion.diffusion.guidance.draw_guided_samples`) with the task's sampler, or, given a
``base_forecaster``, refines that forecaster's samples (:func:`tsdiffusion.diffusion.guidance.refine`).
Everything else (windows, evaluation masks, metrics, fan charts and imputation plots) is the parent task's.

The denoiser must not condition on ``cond`` itself: ``UNet1DDenoiser(use_cond_channels=False)`` or
``CSDIDenoiser(unconditional=True)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from einops import rearrange, repeat
from torch import Tensor

from tsdiffusion.baselines import SamplingBaseline
from tsdiffusion.batch import TSBatch
from tsdiffusion.denoisers.protocol import capabilities_of
from tsdiffusion.diffusion.guidance import GuidanceKind, draw_guided_samples, quantile_levels, refine
from tsdiffusion.diffusion.samplers import SamplerName
from tsdiffusion.streams import Source, catch_up, rows_of
from tsdiffusion.tasks.base import DiffusionTask, make_cond
from tsdiffusion.tasks.forecasting import ForecastingTask
from tsdiffusion.tasks.imputation import ImputationTask

if TYPE_CHECKING:  # the mixin's methods use the task's attributes (denoiser, process, hparams, ...)
    _MixinBase = DiffusionTask
else:
    _MixinBase = object


class _Guided(_MixinBase):
    """Unconditional training and guided (or refining) sampling; mixed into a task before its base class. The
    arguments are those of :class:`GuidedForecastingTask`; the rest go to the task's base class."""

    def __init__(
        self,
        *args,
        guidance: GuidanceKind = "mse",
        guidance_scale: float = 1.0,
        guidance_jacobian: Literal["network", "identity"] = "network",
        base_forecaster: SamplingBaseline | None = None,
        refine_iterations: int = 20,
        refine_step_size: float = 0.01,
        refine_method: Literal["ml", "langevin"] = "langevin",
        refine_prior_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["denoiser", "process", "base_forecaster"])
        self.base_forecaster = base_forecaster
        self._check_guided()

    def _check_guided(self) -> None:
        if capabilities_of(self.denoiser).conditional:
            raise ValueError(
                f"{type(self).__name__}: the denoiser {type(self.denoiser).__name__} conditions on cond itself; "
                "guidance needs an unconditional one (UNet1DDenoiser(use_cond_channels=False) or "
                "CSDIDenoiser(unconditional=True))"
            )
        if self.prior is not None:
            raise ValueError(f"{type(self).__name__}: prior= is not supported with guided sampling")
        hp = self.hparams
        if hp.guidance not in ("mse", "quantile"):
            raise ValueError(f"{type(self).__name__}: guidance must be 'mse' or 'quantile', got {hp.guidance!r}")

    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        return torch.zeros_like(batch["observed"])

    def sample(self, batch: TSBatch, cond_mask: Tensor, num_samples: int | None = None,
               generator: Source = None, *, sampler: SamplerName | None = None,
               steps: int | None = None) -> Tensor:  # fmt: skip
        """Samples (B, S, L, K) in normalised units, observed values kept where ``cond_mask`` is 1; ``sampler``
        and ``steps`` as :meth:`tsdiffusion.tasks.base.DiffusionTask.sample` (unused when refining)."""
        hp = self.hparams
        S = num_samples or hp.num_samples
        observed = batch["observed"] * cond_mask
        if self.base_forecaster is None:
            cond = make_cond(batch, torch.zeros_like(cond_mask))  # side information only
            draws = draw_guided_samples(
                self.process, self.denoiser, cond, observed, cond_mask, S, scale=hp.guidance_scale,
                kind=hp.guidance, jacobian=hp.guidance_jacobian, sampler=sampler or hp.sampler,
                steps=hp.sample_steps if steps is None else steps, eta=hp.eta, max_batch=hp.sample_batch_size,
                generator=generator,
            )  # fmt: skip
        else:
            draws = self._refine(batch, cond_mask, S, generator)
        keep = cond_mask.unsqueeze(1)
        return draws * (1 - keep) + observed.unsqueeze(1)

    def _refine(self, batch: TSBatch, cond_mask: Tensor, S: int, generator: Source) -> Tensor:
        hp = self.hparams
        with torch.no_grad():
            init = self.base_forecaster.sample(batch, cond_mask, S, generator)  # (B, S, L, K)
        rows = rearrange(init, "b s l k -> (b s) l k").to(batch["observed"].dtype)
        cond = make_cond(batch, torch.zeros_like(cond_mask))
        cond = {k: v.repeat_interleave(S, dim=0) for k, v in cond.items()}
        observed = repeat(batch["observed"] * cond_mask, "b l k -> (b s) l k", s=S)
        mask = repeat(cond_mask, "b l k -> (b s) l k", s=S)
        levels = quantile_levels(S).repeat(len(cond_mask)).to(rows.device)
        chunk = hp.sample_batch_size or len(rows)
        out, gen = [], generator
        for r0 in range(0, len(rows), chunk):
            r = slice(r0, r0 + chunk)
            gen = rows_of(generator, r)
            c = {k: v[r] for k, v in cond.items()}
            fn = lambda x, t, c=c: self.denoiser(x, t, c).to(x.dtype)
            out.append(refine(
                self.process, fn, rows[r], observed[r], mask[r], iterations=hp.refine_iterations,
                step_size=hp.refine_step_size, method=hp.refine_method, prior_weight=hp.refine_prior_weight,
                kind=hp.guidance, quantiles=levels[r], generator=gen,
            ))  # fmt: skip
        catch_up(generator, gen)
        return rearrange(torch.cat(out), "(b s) l k -> b s l k", s=S)


class GuidedForecastingTask(_Guided, ForecastingTask):
    """Forecasting with an unconditionally trained model, by observation self-guidance or refinement (TSDiff).

    Args:
        guidance: the observation likelihood: ``mse`` (unit Gaussian) or ``quantile`` (asymmetric Laplace, the
            samples of a window at the levels j / (S + 1)).
        guidance_scale: w, the weight of the observation score (TSDiff's s); 0 samples the unconditional model.
        guidance_jacobian: ``network`` (TSDiff: the gradient through the denoiser) or ``identity`` (no backward
            pass; see :func:`tsdiffusion.diffusion.guidance.guided`).
        base_forecaster: refine this forecaster's samples instead of sampling by guidance (any object with
            ``sample(batch, cond_mask, num_samples, generator) -> (B, S, L, K)``, e.g.
            ``tsdiffusion.baselines.SeasonalNaive``).
        refine_iterations, refine_step_size, refine_method, refine_prior_weight: the refinement
            (:func:`tsdiffusion.diffusion.guidance.refine`: ``ml`` gradient or ``langevin`` steps on the energy).
        **ForecastingTask arguments**; set ``num_train_features: null`` for a denoiser with a fixed K (U-Net).
    """


class GuidedImputationTask(_Guided, ImputationTask):
    """Imputation with an unconditionally trained model by observation self-guidance (TSDiff), any missing pattern.

    Args: as :class:`GuidedForecastingTask` (``base_forecaster``: any imputer with the same ``sample``);
    **ImputationTask arguments** (its ``mask_strategy`` is unused: training conditions on nothing).
    """

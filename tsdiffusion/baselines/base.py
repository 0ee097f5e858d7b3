"""The baselines' interface: not a denoiser, so no ``forward`` and no diffusion process.

A task takes a baseline in place of a denoiser (``ForecastingTask(baseline=SeasonalNaive(168))``,
``AnomalyTask(baseline=RollingMedianScorer())``) and evaluates it with the same windows, conditioning, metrics
and figures as a trained model; there is nothing to train (``fit`` does no optimisation step).

* :class:`SamplingBaseline` draws samples of the values a task hides (forecasting and imputation):
  ``sample(batch, cond_mask, num_samples, generator) -> (B, S, L, K)`` in normalised units, with the
  conditioning values kept where ``cond_mask`` is 1 (the contract of :meth:`DiffusionTask.sample`).
* :class:`ScoringBaseline` scores every point of a window (anomaly detection):
  ``score(batch) -> (B, L, K)``, higher is more anomalous, 0 where nothing is observed.

Baselines are plain classes with typed constructors (a yaml's ``class_path`` / ``init_args``), without
parameters or state; randomness comes only from the ``generator`` argument.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tsdiffusion.batch import TSBatch
from tsdiffusion.streams import Source


class Baseline:
    """A non-learned model evaluated by a task in place of a denoiser (see the subclasses)."""


class SamplingBaseline(Baseline):
    """Draws samples of the hidden values of a window: forecasting and imputation baselines."""

    def sample(self, batch: TSBatch, cond_mask: Tensor, num_samples: int, generator: Source = None) -> Tensor:
        """(B, S, L, K) samples in normalised units; ``observed * cond_mask`` kept where ``cond_mask`` is 1.
        ``generator``: a ``torch.Generator``, or the per-window streams of the ``(b s)`` rows
        (:mod:`tsdiffusion.streams`), which make a window's draws independent of the batch."""
        raise NotImplementedError

    def point(self, batch: TSBatch, cond_mask: Tensor) -> Tensor:
        """(B, L, K) a point estimate in normalised units (the ``prior`` of a diffusion task). Default: the
        median of 9 samples drawn with a fixed seed, so the same batch always gives the same estimate;
        deterministic baselines return their fill."""
        generator = torch.Generator(device=cond_mask.device).manual_seed(0)
        return self.sample(batch, cond_mask, 9, generator).median(dim=1).values


class ScoringBaseline(Baseline):
    """Scores every point of a window: anomaly detection baselines."""

    def score(self, batch: TSBatch) -> Tensor:
        """(B, L, K) anomaly score of every observed point (never reads ``point_label``)."""
        raise NotImplementedError

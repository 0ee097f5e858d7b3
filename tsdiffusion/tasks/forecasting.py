"""Probabilistic forecasting: CSDI's forecasting setting and TimeGrad, scored in original units.

* :class:`ForecastingTask` (CSDI, Tashiro et al. 2021, §6.2 and App. E.3): a denoiser of the whole window
  conditioned on the context (the forecast mask); the loss is taken on the horizon. In training a random
  subset of ``num_train_features`` series per window is modelled (CSDI: 64), ``feature_ids`` selecting their
  embeddings; at test all series at once.
* :class:`TimeGradTask` (Rasul et al. 2021): the model is :mod:`tsdiffusion.denoisers.timegrad`: an RNN
  (:class:`~tsdiffusion.denoisers.TimeGradEncoder`) over lagged targets gives h_t for every step; the eps-network
  denoises each step's K-vector given h_t. Training uses every step of the window in parallel (teacher forcing,
  eq. 9, :func:`~tsdiffusion.denoisers.timegrad.teacher_forcing_rows`); forecasting is autoregressive over the
  horizon (Algorithm 2, :func:`~tsdiffusion.denoisers.timegrad.forecast`), all samples in one batch. The task
  holds the encoder's hyperparameters and the diffusion chain (process and sampler) it hands to the loop.

Metrics are computed in original units (``observed * scale + loc``), as both papers report them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from tsdiffusion.batch import TSBatch
from tsdiffusion.denoisers.timegrad import TimeGradEncoder, forecast, teacher_forcing_rows
from tsdiffusion.diffusion import GaussianDiffusion, sample, timesteps
from tsdiffusion.diffusion.samplers import SamplerName
from tsdiffusion.masking import forecast_mask
from tsdiffusion.plots.callbacks import FanChartCallback
from tsdiffusion.streams import Source
from tsdiffusion.tasks.base import DiffusionTask

_PER_FEATURE = ("observed", "observed_mask", "target_mask", "loc", "scale")


def subsample_features(batch: TSBatch, n: int, generator: torch.Generator | None = None) -> TSBatch:
    """A random subset of ``n`` series per window (CSDI ``sample_features``); ``feature_ids`` keep their identity.

    Fields (B, L, K), (B, 1, K) and feature_ids (B, K) -> the same with K = n. No-op when K <= n.
    """
    B, _, K = batch["observed"].shape
    if K <= n:
        return batch
    device = batch["observed"].device
    idx = torch.rand(B, K, device=device, generator=generator).argsort(dim=-1)[:, :n]  # (B, n)
    ids = batch.get("feature_ids", torch.arange(K, device=device).expand(B, K))
    out = dict(batch, feature_ids=torch.gather(ids, 1, idx))
    for key in _PER_FEATURE:
        if key in batch:
            v = batch[key]
            out[key] = torch.gather(v, 2, idx[:, None, :].expand(B, v.shape[1], n))
    return out


class ForecastingTask(DiffusionTask):
    """CSDI-style forecasting: condition on the context, score the horizon (original units).

    Args:
        num_train_features: series modelled per training window, drawn at random (CSDI: 64); ``None``
            models all of them. Validation and test always use every series.
        plot_series: series shown in the fan chart saved as ``fan_chart.png`` after ``test`` (0: none).
        **DiffusionTask arguments** (see :class:`tsdiffusion.tasks.base.DiffusionTask`); with
        ``baseline=SeasonalNaive(...)`` (:mod:`tsdiffusion.baselines`) in place of a denoiser, the task
        scores the baseline's sample paths (``tsdiffusion test``; nothing to train).
    """

    metric_units = "original"

    def __init__(self, *args, num_train_features: int | None = 64, plot_series: int = 4, **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["denoiser", "process", "baseline", "prior"])

    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        return forecast_mask(batch)

    def configure_callbacks(self) -> list:
        """The calibration figures and a :class:`FanChartCallback` of ``plot_series`` series (none for 0); also
        :class:`TimeGradTask`'s (hence the explicit base call)."""
        fan = [FanChartCallback(self.hparams.plot_series)] if self.hparams.plot_series else []
        return [*DiffusionTask.configure_callbacks(self), *fan]

    def training_step(self, batch: TSBatch, batch_idx: int) -> Tensor:
        n = self.hparams.num_train_features
        return super().training_step(subsample_features(batch, n) if n else batch, batch_idx)


def timegrad_process() -> GaussianDiffusion:
    """TimeGrad's diffusion: 100 steps, linear betas 1e-4..0.1 (Rasul et al. 2021, App. A)."""
    return GaussianDiffusion(num_steps=100, schedule="linear", beta_start=1e-4, beta_end=0.1, prediction="eps")


class TimeGradTask(DiffusionTask):
    """TimeGrad: RNN encoder + per-step eps-network; autoregressive forecasts (Rasul et al. 2021).

    Expects scaled windows (``GluonTSDataModule(scaling="mean", max_lag >= max(lags))`` as TimeGrad, or
    ``scaling="context"``, which works better on exchange rates) with
    ``time_features`` and ``feature_ids``. Steps ``[max(lags), L)`` of each window are modelled: in training
    all of them in parallel, each with its own diffusion step (the ``(b l)`` rows of
    :class:`tsdiffusion.denoisers.TimeGradDenoiser`); at test the RNN runs over the context, its state is
    repeated S times, and each horizon step is drawn by a full DDPM/DDIM chain (L = 1) before it is fed back.

    Args:
        denoiser: a TimeGrad eps-network (``num_features``, ``cond_dim`` attributes).
        process: defaults to TimeGrad's (100 linear steps, 1e-4..0.1).
        num_time_features: F of the data (GluonTS features: 4 hourly, 3 business-daily).
        lags: lagged targets fed to the RNN (TimeGrad: hourly [1, 24, 168], business-daily [1, 2]).
        cell, rnn_layers, rnn_hidden, rnn_dropout, embedding_dim: the encoder (TimeGrad: LSTM 2 x 40, 0.1, 1).
        plot_series: series in the fan chart saved after ``test`` (0: none).
        **DiffusionTask arguments**; ``sample_batch_size`` bounds the rows (windows x samples) per chain.
    """

    metric_units = "original"

    def __init__(
        self,
        denoiser: nn.Module,
        process: GaussianDiffusion | None = None,
        *,
        num_time_features: int = 4,
        lags: Sequence[int] = (1, 24, 168),
        cell: Literal["LSTM", "GRU"] = "LSTM",
        rnn_layers: int = 2,
        rnn_hidden: int = 40,
        rnn_dropout: float = 0.1,
        embedding_dim: int = 1,
        plot_series: int = 4,
        **kwargs,
    ):
        super().__init__(denoiser, process or timegrad_process(), **kwargs)
        if self.prior is not None:
            raise ValueError("TimeGradTask: prior= is not supported (the RNN unrolls over the series itself)")
        self.save_hyperparameters(ignore=["denoiser", "process", "baseline", "prior"])
        self.encoder = TimeGradEncoder(
            denoiser.num_features, num_time_features, lags, cell, rnn_layers, rnn_hidden, rnn_dropout,
            embedding_dim, cond_dim=denoiser.cond_dim,
        )  # fmt: skip

    configure_callbacks = ForecastingTask.configure_callbacks  # the calibration figures and the fan chart

    # -- training -------------------------------------------------------------------------------
    def window_loss(self, batch: TSBatch, t: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Denoising loss (eq. 9) on every step of ``[max(lags), L)``, one diffusion step per (b l) row."""
        x0, mask, cond = teacher_forcing_rows(self.encoder, batch)
        steps = None if t is None else torch.full((len(x0),), t, device=x0.device, dtype=torch.long)
        return self.process.loss(self.denoiser, x0, cond, mask, t=steps, generator=generator)

    def training_step(self, batch: TSBatch, batch_idx: int) -> Tensor:
        loss = self.window_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["observed"]))
        return loss

    def validation_step(self, batch: TSBatch, batch_idx: int) -> Tensor:
        gen = torch.Generator(device=batch["observed"].device).manual_seed(10_000 + batch_idx)
        steps = timesteps(self.process.num_steps, self.hparams.val_loss_steps)
        loss = torch.stack([self.window_loss(batch, t, gen) for t in steps]).mean()
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["observed"]), sync_dist=True)
        return loss

    # -- forecasting ----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, batch: TSBatch, cond_mask: Tensor, num_samples: int | None = None,
               generator: Source = None, *, sampler: SamplerName | None = None,
               steps: int | None = None) -> Tensor:  # fmt: skip
        """Autoregressive samples (B, S, L, K) (:func:`tsdiffusion.denoisers.timegrad.forecast`), each horizon
        step by a chain of ``sampler`` with ``steps`` calls (default: the task's ``sampler`` / ``sample_steps``).

        Runs in float32 even under bf16 autocast: the chains' calls are small (one time step, 8 channels) and
        elementwise-bound, and autocast's casts made the 100-sample forecast 1.5x slower on an AMX CPU
        (``benchmarks/results/speed/intel-amx/timegrad.json``: 259 s bf16 vs 169 s float32).
        """
        hp = self.hparams
        sampler, steps = sampler or hp.sampler, hp.sample_steps if steps is None else steps

        def chain(x_T: Tensor, hidden: Tensor, generator: Source) -> Tensor:
            fn = lambda x_t, t: self.denoiser(x_t, t, {"hidden": hidden}).to(x_t.dtype)
            return sample(self.process, fn, x_T, sampler, steps=steps, eta=hp.eta, generator=generator)

        with torch.autocast(batch["observed"].device.type, enabled=False):
            return forecast(self.encoder, chain, batch, cond_mask, num_samples or hp.num_samples,
                            hp.sample_batch_size, generator)  # fmt: skip

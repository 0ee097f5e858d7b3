"""Probabilistic imputation (CSDI, Tashiro et al. 2021): impute held-out observed values from the rest."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from tsdiffusion.batch import TSBatch
from tsdiffusion.masking import make_cond_mask
from tsdiffusion.plots.callbacks import ImputationPlotCallback
from tsdiffusion.tasks.base import DiffusionTask


class ImputationTask(DiffusionTask):
    """Train on observed values hidden by a mask strategy; impute the DataModule's held-out targets.

    Args:
        mask_strategy: CSDI's training masks: ``random`` (a random ratio of the observed values per window),
            ``historical`` (the missingness pattern of another window), ``mix`` (either, with probability 1/2);
            for gaps (block-missing targets) ``block`` (one contiguous block per hit series, see
            :func:`tsdiffusion.masking.block_mask`) or ``random_block`` (random or block, 1/2 each).
        plot_windows, plot_features: after ``test``, ``imputation_<i>.png`` for the first ``plot_windows``
            windows (patients) of the last test batch, each showing its ``plot_features`` variables with
            most held-out values: observed points, held-out truth, median and 5-95% band; also logged
            to the active logger (wandb / TensorBoard). 0 windows: no plots.
        **DiffusionTask arguments** (see :class:`tsdiffusion.tasks.base.DiffusionTask`); a ``baseline``
            (e.g. :class:`tsdiffusion.baselines.InterpolationImputer`) can stand in for the denoiser.

    Metrics are scored in the normalised units CSDI reports (CRPS over 19 quantiles, MAE/RMSE of the median).
    """

    metric_units = "normalised"

    def __init__(
        self,
        *args,
        mask_strategy: Literal["random", "historical", "mix", "block", "random_block"] = "random",
        plot_windows: int = 3,
        plot_features: int = 4,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["denoiser", "process", "baseline", "prior"])

    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        return make_cond_mask(self.hparams.mask_strategy, batch)

    def configure_callbacks(self) -> list:
        """The calibration figures and an :class:`ImputationPlotCallback` of ``plot_windows`` windows (none for 0)."""
        hp = self.hparams
        plots = [ImputationPlotCallback(hp.plot_windows, hp.plot_features)] if hp.plot_windows else []
        return [*super().configure_callbacks(), *plots]

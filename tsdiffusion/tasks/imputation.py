"""Probabilistic imputation (CSDI, Tashiro et al. 2021): impute held-out observed values from the rest."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from tsdiffusion.batch import TSBatch
from tsdiffusion.masking import make_cond_mask
from tsdiffusion.tasks.base import DiffusionTask


class ImputationTask(DiffusionTask):
    """Train on observed values hidden by a mask strategy; impute the DataModule's held-out targets.

    Args:
        mask_strategy: CSDI's training masks: ``random`` (a random ratio of the observed values per window),
            ``historical`` (the missingness pattern of another window), ``mix`` (either, with probability 1/2).
        **DiffusionTask arguments** (see :class:`tsdiffusion.tasks.base.DiffusionTask`).

    Metrics are scored in the normalised units CSDI reports (CRPS over 19 quantiles, MAE/RMSE of the median).
    """

    metric_units = "normalised"

    def __init__(self, *args, mask_strategy: Literal["random", "historical", "mix"] = "random", **kwargs):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["denoiser", "process"])

    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        return make_cond_mask(self.hparams.mask_strategy, batch)

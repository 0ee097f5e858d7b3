"""Probabilistic imputation (CSDI, Tashiro et al. 2021): impute held-out observed values from the rest."""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from tsdiffusion.batch import TSBatch
from tsdiffusion.masking import make_cond_mask
from tsdiffusion.plots import imputation_plot, imputation_windows, log_figure
from tsdiffusion.tasks.base import DiffusionTask


class ImputationTask(DiffusionTask):
    """Train on observed values hidden by a mask strategy; impute the DataModule's held-out targets.

    Args:
        mask_strategy: CSDI's training masks: ``random`` (a random ratio of the observed values per window),
            ``historical`` (the missingness pattern of another window), ``mix`` (either, with probability 1/2).
        plot_windows, plot_features: after ``test``, ``imputation_<i>.png`` for the first ``plot_windows``
            windows (patients) of the last test batch, each showing its ``plot_features`` variables with
            most held-out values: observed points, held-out truth, median and 5-95% band; also logged
            to the active logger (wandb / TensorBoard). 0 windows: no plots.
        **DiffusionTask arguments** (see :class:`tsdiffusion.tasks.base.DiffusionTask`).

    Metrics are scored in the normalised units CSDI reports (CRPS over 19 quantiles, MAE/RMSE of the median).
    """

    metric_units = "normalised"

    def __init__(
        self,
        *args,
        mask_strategy: Literal["random", "historical", "mix"] = "random",
        plot_windows: int = 3,
        plot_features: int = 4,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.save_hyperparameters(ignore=["denoiser", "process"])

    def train_cond_mask(self, batch: TSBatch) -> Tensor:
        return make_cond_mask(self.hparams.mask_strategy, batch)

    def on_test_epoch_end(self) -> None:
        super().on_test_epoch_end()
        self.save_imputation_plots()

    def save_imputation_plots(self) -> list[str]:
        """Plot windows of the last test batch into the run folder (see ``plot_windows``); returns the paths."""
        trainer, hp = self._trainer, self.hparams
        if not hp.plot_windows or trainer is None or trainer.log_dir is None or not hasattr(self, "last_test_batch"):
            return []
        if trainer.fast_dev_run or not trainer.is_global_zero:
            return []
        batch, samples = self.last_test_batch
        paths = []
        for i, window in enumerate(imputation_windows(batch, samples, hp.plot_windows, hp.plot_features)):
            path = f"{trainer.log_dir}/imputation_{i}.png"
            fig = imputation_plot(**window, title=f"{type(self).__name__}: last test batch, window {i}")
            log_figure(trainer, fig, f"test/imputation_{i}", path)
            fig.clear()
            paths.append(path)
        return paths

"""Lightning callbacks that draw a task's test results into the run folder and send them to the logger.

Each callback is fed by what ``test_step`` returns (``outputs`` of ``on_test_batch_end``), never by task state:

* :class:`FanChartCallback`: ``{"samples": (B, S, L, K)}`` of forecasting tasks -> ``fan_chart.png``;
* :class:`ImputationPlotCallback`: the same of imputation -> ``imputation_<i>.png``;
* :class:`AnomalyPlotCallback`: the window scores of :class:`AnomalyTask` -> ``anomaly_<series>.png``;
* :class:`GenerationPlotCallback`: ``{"real", "synth"}`` of :class:`GenerationTask` -> ``generation/*.png``;
* :class:`CalibrationCallback`: ``{"samples"}`` of every test batch of forecasting and imputation ->
  ``calibration.png`` (PIT histogram, coverage vs nominal) and ``calibration.json``.

Tasks register the one they need in ``configure_callbacks`` from their plot options (``plot_series``,
``plot_windows``, ``plot``). Figures are drawn on global rank 0 only, from that rank's batches, and not under
``fast_dev_run``.
"""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from tsdiffusion.plots.anomaly import plot_anomaly_scores
from tsdiffusion.plots.calibration import NOMINAL_LEVELS, calibration_plot, central_coverage, pit_values
from tsdiffusion.plots.generation import plot_generation
from tsdiffusion.plots.samples import fan_chart, first_window, imputation_plot, imputation_windows, log_figure
from tsdiffusion.records import write_json_atomic


def _folder(trainer: L.Trainer) -> str | None:
    """The run's log folder, or None when no figure should be drawn."""
    if trainer.fast_dev_run:
        return None
    folder = trainer.log_dir  # a broadcast from rank 0 under DDP: every rank must ask, or the others wait forever
    return folder if trainer.is_global_zero else None


def _cpu(x):
    return {k: _cpu(v) for k, v in x.items()} if isinstance(x, dict) else x.detach().cpu()


class _LastBatchCallback(L.Callback):
    """Keeps the last test batch (on CPU) and the samples ``test_step`` returned for it."""

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.last: tuple[dict, Tensor] | None = None

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, dict) and "samples" in outputs:
            self.last = (_cpu(dict(batch)), outputs["samples"].detach().cpu())


class FanChartCallback(_LastBatchCallback):
    """Fan chart of window 0 of the last test batch, in the task's metric units (``to_units``).

    Args:
        series: the first this many series are drawn.
    """

    def __init__(self, series: int = 4) -> None:
        self.series = series

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = _folder(trainer)
        if folder is None or not self.series or getattr(self, "last", None) is None:
            return
        batch, samples = self.last
        observed, draws, target_mask = first_window(batch, samples, pl_module.to_units)
        title = f"{type(pl_module).__name__}: last test batch, window 0"
        fig = fan_chart(observed, draws, target_mask, range(self.series), title=title)
        log_figure(trainer, fig, "test/fan_chart", f"{folder}/fan_chart.png")
        fig.clear()


class ImputationPlotCallback(_LastBatchCallback):
    """``imputation_<i>.png`` for the first ``windows`` windows of the last test batch, each with its
    ``features`` series with most held-out values (normalised units, as imputation is scored)."""

    def __init__(self, windows: int = 3, features: int = 4) -> None:
        self.windows, self.features = windows, features

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = _folder(trainer)
        if folder is None or not self.windows or getattr(self, "last", None) is None:
            return
        batch, samples = self.last
        for i, window in enumerate(imputation_windows(batch, samples, self.windows, self.features)):
            fig = imputation_plot(**window, title=f"{type(pl_module).__name__}: last test batch, window {i}")
            log_figure(trainer, fig, f"test/imputation_{i}", f"{folder}/imputation_{i}.png")
            fig.clear()


class CalibrationCallback(L.Callback):
    """PIT histogram and coverage of central intervals against their nominal level, over every test batch of
    this rank (:mod:`tsdiffusion.plots.calibration`): ``calibration.png`` (logged as ``test/calibration``) and
    ``calibration.json`` (PIT bin counts, levels, coverage) in the run's log folder.

    Args:
        bins: PIT histogram bins.
        levels: nominal levels of the central intervals.
        seed: seed of the uniform draws that break ties in the PIT.
    """

    def __init__(self, bins: int = 10, levels: tuple[float, ...] = NOMINAL_LEVELS, seed: int = 0) -> None:
        self.bins, self.levels, self.seed = bins, tuple(levels), seed

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # numpy and floats, no tensors: a spawned DDP run pickles the callbacks with their state
        self.pit_counts = np.zeros(self.bins)
        self.inside = np.zeros(len(self.levels))
        self.n_points = 0.0
        self.generator: torch.Generator | None = torch.Generator().manual_seed(self.seed)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not (isinstance(outputs, dict) and "samples" in outputs and "target_mask" in batch):
            return
        samples = outputs["samples"].detach().cpu()
        target, mask = batch["observed"].detach().cpu(), batch["target_mask"].detach().cpu()
        pit = pit_values(samples, target, mask, self.generator)
        self.pit_counts += torch.histc(pit, bins=self.bins, min=0.0, max=1.0).numpy()
        inside, n = central_coverage(samples, target, mask, self.levels)
        self.inside += inside.numpy()
        self.n_points += float(n)

    def coverage(self) -> list[float]:
        """Coverage at each nominal level so far (NaN before any scored value)."""
        return (self.inside / self.n_points).tolist() if self.n_points > 0 else [math.nan] * len(self.levels)

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.generator = None  # not picklable state

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = _folder(trainer)
        if folder is None or getattr(self, "n_points", 0) == 0:
            return
        summary = {"pit_counts": self.pit_counts.tolist(), "levels": list(self.levels), "coverage": self.coverage()}
        write_json_atomic(Path(folder) / "calibration.json", summary)
        title = f"{type(pl_module).__name__}: {int(self.n_points)} scored values"
        fig = calibration_plot(self.pit_counts, self.levels, np.array(summary["coverage"]), title=title)
        log_figure(trainer, fig, "test/calibration", f"{folder}/calibration.png")
        fig.clear()


class AnomalyPlotCallback(L.Callback):
    """Series, stitched score, threshold and labels of the first ``series`` test series (``anomaly_<name>.png``).

    Collects the window outputs of ``test_step`` (``score``, ``value``, ``label``, ``valid``, ``series_index``,
    ``window_start``) of both loaders, stitches and normalises them as the task does
    (:func:`tsdiffusion.metrics.anomaly.stitch_and_normalise`) and reads the threshold the task logged.
    """

    def __init__(self, series: int = 3) -> None:
        self.series = series

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.windows: dict[int, list[dict[str, Tensor]]] = {0: [], 1: []}

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.series and isinstance(outputs, dict) and "score" in outputs:
            self.windows.setdefault(dataloader_idx, []).append(_cpu(outputs))

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from tsdiffusion.metrics.anomaly import stitch_and_normalise

        folder = _folder(trainer)
        threshold = trainer.callback_metrics.get("test/threshold")
        if folder is None or not self.series or threshold is None or not all(self.windows.get(i) for i in (0, 1)):
            return
        cat = {i: {k: torch.cat([w[k] for w in self.windows[i]]) for k in self.windows[i][0]} for i in (0, 1)}
        _, test = stitch_and_normalise(cat[0], cat[1], pl_module.hparams.get("score_normalisation", "none"))
        names = getattr(trainer.datamodule, "series_names", None)
        for i in range(min(self.series, len(test["score"]))):
            name = names[test["series"][i]] if names else str(test["series"][i])
            fig = plot_anomaly_scores(test["value"][i], test["score"][i], test["label"][i], float(threshold),
                                      title=name)  # fmt: skip
            log_figure(trainer, fig, f"test/anomaly_{name}", Path(folder) / f"anomaly_{name.replace('/', '_')}.png")
            fig.clear()


class GenerationPlotCallback(L.Callback):
    """``samples.png``, ``marginals.png`` and ``pca.png`` of real vs synthetic test windows under
    ``<log_dir>/generation``, from the ``real`` (B, L, K) and ``synth`` (B S, L, K) that ``test_step`` returns."""

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.real: list[Tensor] = []
        self.synth: list[Tensor] = []

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, dict) and "synth" in outputs:
            self.real.append(outputs["real"].detach().cpu())
            self.synth.append(outputs["synth"].detach().cpu())

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        folder = _folder(trainer)
        if folder is None or not self.real:
            return
        real, synth = torch.cat(self.real).numpy(), torch.cat(self.synth).numpy()
        for path in plot_generation(real, synth, Path(folder) / "generation"):
            for logger in trainer.loggers:
                if hasattr(logger, "log_image"):
                    logger.log_image(key=f"test/generation_{path.stem}", images=[str(path)], step=trainer.global_step)


__all__ = [
    "AnomalyPlotCallback",
    "CalibrationCallback",
    "FanChartCallback",
    "GenerationPlotCallback",
    "ImputationPlotCallback",
]

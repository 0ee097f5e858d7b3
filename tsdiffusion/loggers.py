"""The only module that touches wandb: Lightning's WandbLogger with offline logging by default."""

from __future__ import annotations

from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger


class WandbLogger(_LightningWandbLogger):
    """Lightning's :class:`~lightning.pytorch.loggers.WandbLogger`, offline by default (no machine here reaches
    the internet; ``wandb sync runs/wandb/offline-run-*`` uploads later). Set ``offline: false`` to log live.

    Args:
        project: wandb project.
        name: run name (the benchmark runner passes the run id).
        group: run group (the benchmark runner passes the sweep name).
        save_dir: where wandb writes its files.
        offline: log to disk only.
    """

    def __init__(
        self,
        project: str = "tsdiffusion",
        name: str | None = None,
        group: str | None = None,
        save_dir: str = "runs",
        offline: bool = True,
        log_model: bool = False,
    ):
        super().__init__(
            project=project, name=name, group=group, save_dir=save_dir, offline=offline, log_model=log_model
        )

"""Load a finished run (its record's config and ``checkpoints/last.ckpt``) back into a task and its data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def load_run(run_dir: str | Path, ckpt: str | Path | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(task with the checkpoint's weights in eval mode, its DataModule set up for ``test``, the record).

    The config comes from the run's ``metrics.json`` (the exact configuration that produced the numbers);
    ``ckpt`` defaults to ``<run_dir>/checkpoints/last.ckpt`` (the one the record was tested with).
    """
    import inspect

    import torch
    from lightning.pytorch import Trainer

    from tsdiffusion.cli import TSDiffusionCLI

    run_dir = Path(run_dir)
    record = json.loads((run_dir / "metrics.json").read_text())
    fit_args = set(inspect.signature(Trainer.fit).parameters) - {"self", "model", "datamodule"}
    fit_only = {*fit_args, "config"}  # ckpt_path, weights_only, ... (arguments of `fit`, not of the classes)
    cfg = {k: v for k, v in record["config"].items() if k not in fit_only}
    cfg["trainer"] = {**cfg.get("trainer", {}), "logger": False, "enable_progress_bar": False}
    cli = TSDiffusionCLI(args=cfg, run=False)
    ckpt_path = Path(ckpt) if ckpt else Path(record.get("ckpt_path") or "")
    if not ckpt_path.is_file():
        ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    cli.model.load_state_dict(state)
    cli.model.eval()
    cli.datamodule.setup("test")
    return cli.model, cli.datamodule, record

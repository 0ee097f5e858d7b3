"""Build or load a model: the one way the CLI, the benchmark runner, the Python API and the notebooks do it.

    task, datamodule, trainer, config = instantiate("experiments/quick/csdi_physionet.yaml")
    task, datamodule, record = load_run("runs/benchmarks/quick/runs/<run id>")

Both go through the parser of :class:`tsdiffusion.cli.TSDiffusionCLI`, so a config means here exactly what it
means to ``tsdiffusion fit --config``: the same defaults, the same data-to-model links (``data.num_features`` ->
the denoiser's ``num_features``), the same seed handling and the same errors for a misspelt key.
"""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
import yaml
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import LightningCLI

from tsdiffusion.cli import TSDiffusionCLI
from tsdiffusion.errors import CheckpointError
from tsdiffusion.records import RECORD_NAME

ConfigLike = str | Path | Mapping[str, Any]


class Built(NamedTuple):
    """What :func:`instantiate` returns. ``config`` is the complete config (every default filled in, the linked
    ``num_features`` included): saved as a yaml, it rebuilds the same model with ``tsdiffusion fit --config``."""

    task: LightningModule
    datamodule: LightningDataModule
    trainer: Trainer | None
    config: dict[str, Any]


def read_config(config: ConfigLike) -> dict[str, Any]:
    """A config in the CLI's format (``model``, ``data``, ``trainer``, ``seed_everything``) from a yaml file or
    a mapping (deep-copied)."""
    if isinstance(config, Mapping):
        return copy.deepcopy(dict(config))
    path = Path(config)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping with 'model' and 'data', got {type(loaded).__name__}")
    return loaded


def _subcommand_keys() -> set[str]:
    """The arguments of the Trainer methods behind ``fit``/``test``/... (``ckpt_path``, ``weights_only``, ...)
    and ``config``: the config a run saves holds them, and building a model has no use for them."""
    keys = {"config"}
    for name, skipped in LightningCLI.subcommands().items():
        keys |= set(inspect.signature(getattr(Trainer, name)).parameters) - skipped - {"self"}
    return keys


class _Builder(TSDiffusionCLI):
    """The CLI without a subcommand: parses a config, then builds the task and data (and a trainer if asked)."""

    def __init__(self, config: dict[str, Any], *, build: bool, trainer: bool = False):
        self._build, self._with_trainer = build, trainer
        super().__init__(args=config, run=False, parser_kwargs={"exit_on_error": False})

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, {k: v for k, v in args.items() if k not in _subcommand_keys()})

    def instantiate_classes(self) -> None:
        if not self._build:
            return
        if self._with_trainer:
            super().instantiate_classes()
            return
        self.config_init = self.parser.instantiate_classes(self.config)
        self.datamodule = self._get(self.config_init, "data")
        self.model = self._get(self.config_init, "model")
        self.trainer = None

    def complete(self) -> dict[str, Any]:
        config = self.config.clone()
        config.data = None if isinstance(config.data, LightningDataModule) else config.data
        return yaml.safe_load(self.parser.dump(config, skip_none=False, skip_check=True))


def complete_config(config: ConfigLike) -> dict[str, Any]:
    """The config with every default filled in, checked by the CLI's parser without building anything (a key
    that no class accepts is an error that names it)."""
    return _Builder(read_config(config), build=False).complete()


def instantiate(config: ConfigLike, *, datamodule: LightningDataModule | None = None, trainer: bool = True) -> Built:
    """Build the task, its DataModule and (``trainer=True``) the Trainer of a config, as ``tsdiffusion fit``
    does, seeding with the config's ``seed_everything``. Weights are freshly initialised (a ``ckpt_path`` in
    the config is not read: :func:`load_run` loads a trained run).

    Args:
        config: a yaml path or a mapping in the CLI's format.
        datamodule: a DataModule built elsewhere (e.g. from a DataFrame) that replaces the config's ``data``;
            the model's ``num_features`` is linked from it all the same.
        trainer: also build the Trainer of ``config["trainer"]`` with the CLI's checkpoint and RNG callbacks.
    """
    cfg = read_config(config)
    data = cfg.get("data")
    if datamodule is not None:
        cfg["data"] = datamodule
    with warnings.catch_warnings():  # jsonargparse cannot write an injected DataModule into a yaml: not needed
        warnings.filterwarnings("ignore", message="Unable to serialize instance")
        builder = _Builder(cfg, build=True, trainer=trainer)
        return _built(builder, data if datamodule is not None else None)


def _built(builder: _Builder, data: Any) -> Built:
    full = builder.complete()
    if data is not None:
        full["data"] = copy.deepcopy(data)
    denoiser = full["model"]["init_args"].get("denoiser")
    if isinstance(denoiser, dict):  # the value the link gave (data.num_features), so the yaml stands alone
        denoiser.setdefault("init_args", {})["num_features"] = int(builder.datamodule.num_features)
    return Built(builder.model, builder.datamodule, builder.trainer, full)


def load_run(run_dir: str | Path, ckpt: str | Path | None = None) -> tuple[Any, Any, dict[str, Any]]:
    """(task with the checkpoint's weights in eval mode, its DataModule set up for ``test``, the record).

    The config comes from the run's ``metrics.json`` (the exact configuration that produced its numbers); the
    checkpoint is ``ckpt``, else the record's ``ckpt_path`` when that file exists, else
    ``<run_dir>/checkpoints/last.ckpt``.
    """
    run_dir = Path(run_dir)
    path = run_dir / RECORD_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no result record (a run writes it when it is tested)")
    record = json.loads(path.read_text())
    cfg = copy.deepcopy(record["config"])
    cfg["trainer"] = {**(cfg.get("trainer") or {}), "logger": False, "enable_progress_bar": False}
    builder = _Builder(cfg, build=True)
    task, datamodule = builder.model, builder.datamodule
    ckpt_path = Path(ckpt) if ckpt else Path(record.get("ckpt_path") or "")
    if not ckpt_path.is_file():
        ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    if not ckpt_path.is_file():
        raise CheckpointError(f"{run_dir}: no checkpoint ({ckpt or record.get('ckpt_path')} nor {ckpt_path})")
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False)["state_dict"]
    task.load_state_dict(state)
    task.eval()
    datamodule.setup("test")
    return task, datamodule, record


__all__ = ["Built", "complete_config", "instantiate", "load_run", "read_config"]

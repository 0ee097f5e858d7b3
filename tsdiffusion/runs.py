"""Build or load a model: the one way the CLI, the benchmark runner, the Python API and the notebooks do it.

    task, datamodule, trainer, config = instantiate("experiments/quick/csdi_physionet.yaml")
    task, datamodule, record = load_run("runs/benchmarks/quick/runs/<run id>")

Both go through the parser of :class:`ConfigCLI`, the base of the command line's
:class:`tsdiffusion.cli.TSDiffusionCLI`, so a config means here exactly what it means to
``tsdiffusion fit --config``: the same defaults, the same data-to-model links (``data.num_features`` -> the
denoiser's ``num_features``), the same seed handling and the same errors for a misspelt key. This module
imports nothing from :mod:`tsdiffusion.cli`.
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
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, _get_module_type, _InstantiatorFn

from tsdiffusion.data.datamodule import TSDataModule
from tsdiffusion.errors import CheckpointError
from tsdiffusion.hardware import trainer_precision
from tsdiffusion.records import RECORD_NAME
from tsdiffusion.rng_state import RNGStateCallback, check_ckpt_path
from tsdiffusion.tasks.base import DiffusionTask

ConfigLike = str | Path | Mapping[str, Any]

#: Task arguments renamed since records were written (old -> new), so that older run folders still load.
RENAMED_TASK_ARGS = {"denoise_steps": "reconstruction_steps"}

TRAINER_DEFAULTS = {
    "logger": {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": "runs", "name": "tsdiffusion"},
    },
    "log_every_n_steps": 10,
}


class _ModelInstantiator(_InstantiatorFn):
    """Lightning's model instantiator, minus the link into the denoiser when a task is given a ``baseline``
    instead (:mod:`tsdiffusion.baselines`): that link has no target, and Lightning's hparams bookkeeping would
    fail on it."""

    def __call__(self, class_type, *args, applied_instantiation_links: dict, **kwargs):
        if kwargs.get("denoiser") is None:
            links = applied_instantiation_links.items()
            applied_instantiation_links = {k: v for k, v in links if ".denoiser." not in k}
        return super().__call__(class_type, *args, applied_instantiation_links=applied_instantiation_links, **kwargs)


_BATCH_LIMITS = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches")


def _batch_limits_int_first(parser) -> None:
    """Lightning types ``limit_*_batches`` as ``float | int``; jsonargparse tries the types in that order, so
    ``limit_test_batches: 1`` (one batch) was read as ``1.0`` (every batch). With ``int`` first a whole number
    is a count of batches and a fraction a share, as Lightning documents."""
    for action in parser._actions:
        if action.dest.startswith("trainer.") and action.dest.split(".", 1)[1] in _BATCH_LIMITS:
            action._typehint = int | float | None


class ConfigCLI(LightningCLI):
    """What a config means: LightningCLI with the data-to-model links, the forced checkpoint/RNG callbacks, the
    precision that follows the machine and the run arguments (``test_after_fit``, ``record_dir``). The command
    (:class:`tsdiffusion.cli.TSDiffusionCLI`) adds its hooks and result records; :func:`instantiate` and
    :func:`load_run` build through it without a subcommand."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("seed_everything_default", 1)
        kwargs.setdefault("trainer_defaults", TRAINER_DEFAULTS)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(DiffusionTask, TSDataModule, *args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        _batch_limits_int_first(parser)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # save_on_train_epoch_end: Lightning's default saves only after validation, so with
        # check_val_every_n_epoch > 1 (or a max_time stop) last.ckpt lagged the trained model by up to that many
        # epochs, and test_after_fit tested the stale weights
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.filename": "epoch{epoch:03d}",
                             "checkpoint.auto_insert_metric_name": False,
                             "checkpoint.save_on_train_epoch_end": True})  # fmt: skip
        parser.add_lightning_class_args(RNGStateCallback, "rng_state")
        parser.link_arguments(
            "data.num_features", "model.init_args.denoiser.init_args.num_features", apply_on="instantiate"
        )
        parser.add_argument("--test_after_fit", type=bool, default=False, help="test the last checkpoint after fit")
        parser.add_argument("--record_dir", type=str | None, default=None,
                            help="where test writes metrics.json (default: the run's log folder)")  # fmt: skip

    def before_instantiate_classes(self) -> None:
        """A ``trainer.precision`` left unset follows the machine (:func:`tsdiffusion.hardware.trainer_precision`:
        bf16 autocast where bf16 matrix products are native, AMX / AVX512-BF16 / a bf16 GPU, float32 elsewhere),
        written into the config so the saved ``config.yaml`` and the result record name the precision used. An
        explicit ``--trainer.precision 32-true`` keeps float32."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        trainer = config.get("trainer") if config is not None else None
        if trainer is not None:
            trainer["precision"] = trainer_precision(trainer.get("precision"), trainer.get("accelerator"))
        check_ckpt_path(config.get("ckpt_path") if config is not None else None)

    def _add_instantiators(self) -> None:
        self.parser.add_instantiator(_ModelInstantiator(cli=self, key="model"), _get_module_type(self._model_class),
                                     subclasses=self.subclass_mode_model)  # fmt: skip
        self.parser.add_instantiator(_InstantiatorFn(cli=self, key="data"), _get_module_type(self._datamodule_class),
                                     subclasses=self.subclass_mode_data)  # fmt: skip

    def _parse_ckpt_path(self) -> None:
        """Lightning would overwrite the config with the hyperparameters stored in ``--ckpt_path``, silently
        discarding command-line overrides such as ``--model.init_args.sampler ddim``. Here the config (e.g. the
        run's saved ``config.yaml``) plus explicit overrides is the single source of truth."""


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


class _Builder(ConfigCLI):
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
    init = (cfg.get("model") or {}).get("init_args") or {}
    for old, new in RENAMED_TASK_ARGS.items():
        if old in init:
            init[new] = init.pop(old)
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


__all__ = ["Built", "ConfigCLI", "complete_config", "instantiate", "load_run", "read_config"]

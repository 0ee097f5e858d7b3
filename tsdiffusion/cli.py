"""The command line: ``tsdiffusion fit | validate | test | predict --config FILE.yaml`` (LightningCLI).

- sizes that come from the data reach the model by ``link_arguments`` (``data.num_features`` ->
  ``model.init_args.denoiser.init_args.num_features``);
- ``--test_after_fit true`` tests the last checkpoint when ``fit`` ends;
- every ``test`` writes a result record ``metrics.json`` (see :mod:`tsdiffusion.records`) in its run folder;
- a checkpoint (``last.ckpt``) is saved every epoch with the random state, so ``fit --ckpt_path last.ckpt``
  resumes exactly; the saved ``config.yaml`` reproduces the run.

In Python, :func:`tsdiffusion.runs.instantiate` (a config) and :func:`tsdiffusion.runs.load_run` (a finished
run) build the same objects through this class's parser. This module imports the benchmark runner only inside
:func:`main` (``tsdiffusion benchmark ...``), and the runner never imports it back.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, _get_module_type, _InstantiatorFn

from tsdiffusion.callbacks import RNGStateCallback, check_ckpt_path
from tsdiffusion.data.datamodule import TSDataModule
from tsdiffusion.errors import cli_errors
from tsdiffusion.hardware import trainer_precision
from tsdiffusion.records import RECORD_NAME, make_record, write_json_atomic
from tsdiffusion.tasks.base import DiffusionTask

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


class TSDiffusionCLI(LightningCLI):
    """LightningCLI with the data-to-model links, the forced checkpoint/RNG callbacks and result records."""

    def __init__(self, *args, **kwargs):
        self._start = time.perf_counter()
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

    # -- hooks ----------------------------------------------------------------------------------
    def after_fit(self) -> None:
        if self.config.fit.test_after_fit and not self.trainer.fast_dev_run:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="last")
            self.write_record(self.trainer.ckpt_path)
        elif self.config.fit.test_after_fit:
            self.trainer.test(self.model, datamodule=self.datamodule)

    def after_test(self) -> None:
        self.write_record(self.trainer.ckpt_path or self.config.test.ckpt_path)

    # -- records --------------------------------------------------------------------------------
    def run_config(self) -> dict:
        parser = self._parser(self.subcommand)
        return yaml.safe_load(parser.dump(self.config[self.subcommand], skip_none=False, skip_check=True))

    def write_record(self, ckpt_path: str | None) -> Path | None:
        if self.trainer.fast_dev_run or not self.trainer.is_global_zero:
            return None
        cfg = self.run_config()
        metrics = {k: v for k, v in self.trainer.callback_metrics.items() if k.startswith("test/")}
        hp, dm = self.model.hparams, self.datamodule
        record = make_record(
            task=type(self.model).__name__,
            dataset=getattr(dm, "name", type(dm).__name__),
            model=type(self.model.baseline or self.model.denoiser).__name__,
            metrics=metrics,
            config=cfg,
            seed=cfg.get("seed_everything"),
            wall_time_s=time.perf_counter() - self._start,
            sampler=hp.get("sampler"),
            sample_steps=hp.get("sample_steps"),
            num_samples=hp.get("num_samples"),
            ckpt_path=str(ckpt_path) if ckpt_path else None,
            data=getattr(dm, "record_info", lambda: {})(),
        )
        folder = Path(cfg.get("record_dir") or self.trainer.log_dir or ".")
        path = write_json_atomic(folder / RECORD_NAME, record)
        print(f"result record: {path}", file=sys.stderr)
        return path


@cli_errors  # project errors: one line and exit code 2 or 1; `--debug` / TSDIFFUSION_DEBUG=1: the traceback
def main(argv: list[str] | None = None) -> None:
    """Console entry point: ``tsdiffusion benchmark ...`` goes to the runner, the rest to LightningCLI."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "benchmark":
        from tsdiffusion.benchmark import main as benchmark_main

        benchmark_main(args[1:])
        return
    if args and args[0] == "curve":  # the speed/quality curve of a finished run (tsdiffusion.curve)
        from tsdiffusion.curve import main as curve_main

        curve_main(args[1:])
        return
    TSDiffusionCLI(args=argv)  # None: LightningCLI reads sys.argv itself


if __name__ == "__main__":
    main()

"""The command line: ``tsdiffusion fit | validate | test | predict --config FILE.yaml`` (LightningCLI).

- sizes that come from the data reach the model by ``link_arguments`` (``data.num_features`` ->
  ``model.init_args.denoiser.init_args.num_features``);
- ``--test_after_fit true`` tests the last checkpoint when ``fit`` ends;
- every ``test`` writes a result record ``metrics.json`` (see :mod:`tsdiffusion.records`) in its run folder;
- a checkpoint (``last.ckpt``) is saved every epoch with the random state, so ``fit --ckpt_path last.ckpt``
  resumes exactly; the saved ``config.yaml`` reproduces the run.

What a config means (defaults, links, callbacks, precision) is :class:`tsdiffusion.runs.ConfigCLI`, the base of
this class, through which :func:`tsdiffusion.runs.instantiate` (a config) and :func:`tsdiffusion.runs.load_run`
(a finished run) build the same objects in Python; this class adds the subcommand hooks and the records.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import yaml

from tsdiffusion.records import RECORD_NAME, make_record, write_json_atomic
from tsdiffusion.runs import ConfigCLI


class TSDiffusionCLI(ConfigCLI):
    """The ``tsdiffusion fit | validate | test | predict`` command: :class:`tsdiffusion.runs.ConfigCLI` plus
    ``test_after_fit`` and a result record after every test."""

    def __init__(self, *args, **kwargs):
        self._start = time.perf_counter()
        super().__init__(*args, **kwargs)

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

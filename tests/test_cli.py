"""The command line: fit saves a reproducible config and checkpoints, test restores and reproduces metrics,
bad configs are rejected, and resumption from a checkpoint is exact."""

import json
from argparse import ArgumentError
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from tiny_config import csv_logger
from tiny_config import tiny_config as shared_tiny_config

from tsdiffusion.cli import TSDiffusionCLI
from tsdiffusion.data import PhysioNetDataModule
from tsdiffusion.denoisers import CSDIDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.rng_state import RNGStateCallback
from tsdiffusion.runs import instantiate, load_run
from tsdiffusion.tasks import ImputationTask


def tiny_config(tmp_path: Path, **trainer) -> Path:
    """The shared tiny config (tests/tiny_config.py) with seed 3, a CSV logger, 2 epochs, 2 heads, 3 samples."""
    task = {"denoiser": {"init_args": {"heads": 2}}, "num_samples": 3, "sample_steps": 3, "val_loss_steps": 2}
    overrides = {"seed_everything": 3, "trainer": {"max_epochs": 2, "logger": csv_logger(tmp_path)},
                 "model": {"init_args": task}}  # fmt: skip
    return shared_tiny_config(tmp_path, overrides, **trainer)


def run_cli(*args: str) -> TSDiffusionCLI:
    return TSDiffusionCLI(args=list(args))


def test_fit_saves_config_and_checkpoint_and_test_reproduces_metrics(tmp_path):
    cli = run_cli("fit", "--config", str(tiny_config(tmp_path)), "--test_after_fit", "true")
    run_dir = Path(cli.trainer.log_dir)
    assert (run_dir / "config.yaml").exists() and (run_dir / "checkpoints" / "last.ckpt").exists()
    assert cli.model.denoiser.num_features == 35  # linked from data.num_features
    record = json.loads((run_dir / "metrics.json").read_text())
    assert record["task"] == "ImputationTask" and record["dataset"] == "physionet" and record["seed"] == 3
    assert record["model"] == "CSDIDenoiser" and record["wall_time_s"] > 0 and "crps" in record["metrics"]
    assert record["metrics"]["crps"] > 0
    # the saved config + checkpoint reproduce the test metrics in a fresh CLI run
    cli2 = run_cli("test", "--config", str(run_dir / "config.yaml"),
                   "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
                   "--record_dir", str(tmp_path / "rerun"))  # fmt: skip
    again = json.loads((tmp_path / "rerun" / "metrics.json").read_text())
    assert again["metrics"] == pytest.approx(record["metrics"], rel=1e-9)
    assert cli2.trainer.state.fn == "test"


def test_invalid_config_key_is_rejected(tmp_path, capsys):
    cfg = yaml.safe_load(tiny_config(tmp_path).read_text())
    cfg["model"]["init_args"]["num_sampels"] = 5
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit) as err:
        run_cli("fit", "--config", str(bad))
    assert err.value.code != 0
    assert "num_sampels" in capsys.readouterr().err


def test_invalid_option_value_is_rejected(tmp_path, capsys):
    with pytest.raises(SystemExit):
        run_cli("fit", "--config", str(tiny_config(tmp_path)), "--model.init_args.sampler", "euler")
    assert "euler" in capsys.readouterr().err


class StopAfter(L.Callback):
    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_train_epoch_end(self, trainer, pl_module):
        if trainer.current_epoch + 1 >= self.epochs:
            trainer.should_stop = True


def _fit(tmp_path: Path, name: str, stop_after: int | None = None, ckpt_path: str | None = None):
    L.seed_everything(7)
    dm = PhysioNetDataModule(path="embedded", max_records=40, cache_dir=str(tmp_path / "cache"), batch_size=8)
    task = ImputationTask(
        CSDIDenoiser(35, channels=8, layers=1, heads=2, diffusion_embedding_dim=16, time_embedding_dim=16,
                     feature_embedding_dim=4),
        GaussianDiffusion(num_steps=10), val_loss_steps=2, lr_milestones=(0.5,),
    )  # fmt: skip
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / name, save_last=True)
    callbacks = [ckpt, RNGStateCallback()] + ([StopAfter(stop_after)] if stop_after else [])
    trainer = L.Trainer(
        max_epochs=4, accelerator="cpu", deterministic=True, logger=False, enable_progress_bar=False,
        enable_model_summary=False, limit_train_batches=3, limit_val_batches=1, callbacks=callbacks,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, datamodule=dm, ckpt_path=ckpt_path)
    return task, trainer


def test_resume_from_last_checkpoint_gives_the_same_weights(tmp_path):
    full, _ = _fit(tmp_path, "full")
    _, stopped = _fit(tmp_path, "part", stop_after=2)
    assert stopped.current_epoch == 2
    resumed, trainer = _fit(tmp_path, "part2", ckpt_path=str(tmp_path / "part" / "last.ckpt"))
    assert trainer.current_epoch == 4
    assert resumed.lr_schedulers().last_epoch == 4 and resumed.lr_schedulers().get_last_lr()[0] == pytest.approx(1e-4)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_last_checkpoint_holds_the_final_weights_when_validation_is_sparse(tmp_path):
    # 3 epochs, validation every 2nd: Lightning's default would leave last.ckpt at epoch 1 (the last validation)
    cfg = tiny_config(tmp_path, max_epochs=3, check_val_every_n_epoch=2)
    cli = run_cli("fit", "--config", str(cfg))
    ckpt = torch.load(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == cli.trainer.global_step == 6
    for name, value in cli.model.state_dict().items():
        torch.testing.assert_close(ckpt["state_dict"][name], value, rtol=0, atol=0, msg=name)


def test_test_command_honours_overrides_over_checkpoint_hparams(tmp_path):
    cli = run_cli("fit", "--config", str(tiny_config(tmp_path)))
    run_dir = Path(cli.trainer.log_dir)
    cli2 = run_cli(
        "test", "--config", str(run_dir / "config.yaml"), "--ckpt_path", str(run_dir / "checkpoints" / "last.ckpt"),
        "--model.init_args.sampler", "ddpm", "--model.init_args.num_samples", "2", "--record_dir", str(tmp_path / "o"),
    )  # fmt: skip
    assert cli2.model.hparams.sampler == "ddpm" and cli2.model.hparams.num_samples == 2
    record = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert record["sampler"] == "ddpm" and record["num_samples"] == 2 and record["ckpt_path"].endswith("last.ckpt")


def test_load_run_and_instantiate_rebuild_what_the_cli_trained(tmp_path):
    cli = run_cli("fit", "--config", str(tiny_config(tmp_path)), "--test_after_fit", "true")
    run_dir = Path(cli.trainer.log_dir)
    task, datamodule, record = load_run(run_dir)  # the record's config + checkpoints/last.ckpt
    assert record["metrics"]["crps"] > 0 and not task.training and datamodule.num_features == 35
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    for name, value in task.state_dict().items():
        torch.testing.assert_close(value, ckpt[name], rtol=0, atol=0, msg=name)
    built = instantiate(run_dir / "config.yaml", trainer=False)  # the saved config builds the same model
    assert type(built.task) is type(cli.model) and built.trainer is None
    assert built.config["model"]["init_args"]["denoiser"]["init_args"]["num_features"] == 35
    assert built.task.state_dict().keys() == task.state_dict().keys()
    with pytest.raises(ArgumentError, match="num_sampels"):  # the CLI's checks, as an exception
        instantiate({**yaml.safe_load(tiny_config(tmp_path).read_text()), "num_sampels": 2})


def test_a_whole_number_batch_limit_is_a_count_not_a_share(tmp_path):
    # Lightning types limit_*_batches as float | int: read float-first, `limit_test_batches: 1` became 1.0 (all)
    cli = TSDiffusionCLI(args=["--config", str(tiny_config(tmp_path)), "--trainer.limit_train_batches", "0.5"],
                         run=False)  # fmt: skip
    assert cli.config.trainer.limit_test_batches == 1 and isinstance(cli.config.trainer.limit_test_batches, int)
    assert cli.trainer.limit_test_batches == 1 and isinstance(cli.trainer.limit_test_batches, int)
    assert cli.trainer.limit_train_batches == 0.5

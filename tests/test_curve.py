"""The speed/quality curve (tsdiffusion.cli.curve) of a tiny run trained for a few steps in tmp_path."""

import csv
import json
import math
from pathlib import Path

import pytest
from tiny_config import csv_logger, tiny_config

from tsdiffusion.cli import TSDiffusionCLI, main
from tsdiffusion.cli.curve import (
    _mean_se,
    evaluate_sampler,
    fixed_windows,
    markdown_table,
    read_csv,
    speed_quality_curve,
)
from tsdiffusion.runs import load_run


def _tiny_run(tmp_path: Path) -> Path:
    task = {"denoiser": {"init_args": {"heads": 2}}, "process": {"init_args": {"num_steps": 8}}, "num_samples": 3,
            "sample_steps": 3, "val_loss_steps": 2, "plot_windows": 0}  # fmt: skip
    trainer = {"max_epochs": 1, "limit_train_batches": 3, "logger": csv_logger(tmp_path)}
    data = {"batch_size": 4, "eval_batch_size": 2}
    overrides = {"seed_everything": 3, "trainer": trainer, "model": {"init_args": task}, "data": {"init_args": data}}
    path = tiny_config(tmp_path, overrides)
    cli = TSDiffusionCLI(args=["fit", "--config", str(path), "--test_after_fit", "true"])
    return Path(cli.trainer.log_dir)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return _tiny_run(tmp_path_factory.mktemp("curve"))


def test_mean_se():
    assert _mean_se([1.0, 3.0]) == (2.0, 1.0)  # std 1.414 / sqrt(2)
    assert math.isnan(_mean_se([1.0])[1])


@pytest.mark.slow
def test_curve_of_a_tiny_run(tiny_run):
    run = tiny_run
    assert (run / "metrics.json").exists() and (run / "checkpoints" / "last.ckpt").exists()
    main(["curve", "--run", str(run), "--samplers", "ddim", "ddpm", "dpmpp_sde", "--steps", "2", "8", "20",
          "--num_samples", "4", "--repeats", "2", "--max_batches", "1"])  # fmt: skip
    rows = list(csv.DictReader(open(run / "curve.csv")))
    # steps above the 8 training steps are dropped: 3 samplers x {2, 8}
    assert [(r["sampler"], int(r["steps"])) for r in rows] == [
        ("ddim", 2), ("ddim", 8), ("ddpm", 2), ("ddpm", 8), ("dpmpp_sde", 2), ("dpmpp_sde", 8)]  # fmt: skip
    for r in rows:
        assert float(r["calls"]) == pytest.approx(int(r["steps"]))  # one network call per step and sample path
        assert float(r["crps"]) > 0 and float(r["crps_sum"]) > 0 and float(r["crps_se"]) >= 0
        assert float(r["wall_s"]) > 0 and int(r["windows"]) == 2
    ref = rows[1]  # ddim at the most steps is the reference of the differences
    assert float(ref["d_crps"]) == 0 and float(ref["d_crps_se"]) == 0
    assert (run / "curve.png").stat().st_size > 1000
    back = read_csv(run / "curve.csv")
    assert back[0]["steps"] == 2 and back[0]["crps"] == pytest.approx(float(rows[0]["crps"]))
    assert "ΔCRPS vs ddim-8" in (run / "curve.md").read_text()
    assert json.loads((run / "metrics.json").read_text())["task"] == "ImputationTask"


@pytest.mark.slow
def test_same_streams_make_configurations_reproducible_and_differences_paired(tiny_run):
    task, dm, _ = load_run(tiny_run)
    windows = fixed_windows(dm, 1)
    one = fixed_windows(dm, max_windows=1)
    assert len(one) == 1 and len(one[0]["observed"]) == 1 and len(one[0]["target_mask"]) == 1
    a = evaluate_sampler(task, windows, "ddpm", 4, num_samples=4, repeats=3)
    b = evaluate_sampler(task, windows, "ddpm", 4, num_samples=4, repeats=3)
    assert a["crps"] == b["crps"] and a["crps_sum"] == b["crps_sum"]  # fixed seeds per window and repeat
    assert len(set(a["crps"])) == 3  # the repeats are independent sample sets
    assert task.hparams.sampler == "ddim" and task.hparams.sample_steps == 3  # passed as arguments, never set
    rows = speed_quality_curve(task, windows, ("ddim",), (2, 8), num_samples=4, repeats=2)
    assert len(rows) == 2 and rows[1]["d_crps"] == 0
    # the paired difference is the mean of per-repeat differences
    assert rows[0]["d_crps"] == pytest.approx(rows[0]["crps"] - rows[1]["crps"])
    assert "| ddim | 2 |" in markdown_table(rows)

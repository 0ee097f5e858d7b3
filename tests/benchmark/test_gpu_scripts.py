"""The prepared device scripts (``benchmarks/scripts/gpu_*.sh``) on CPU: the config a GPU call would run, and the
smoke mode.

``benchmarks/scripts/gpu_reproduce_csdi.sh``: ``DRY=1`` resolves the paper run's config without running it (it must be
``experiments/imputation/physionet/csdi_10.yaml`` with only device and memory knobs added); ``SMOKE=1 DEVICE=cpu``
trains and scores on the embedded subset, and its record's config may differ from the paper run's only by the smoke
knobs. ``benchmarks/scripts/gpu_official_checkpoint.sh`` has no test here: its smoke mode still needs set-a.tar.gz and
the official ``model.pth`` (sha256-checked on load), neither of which the repository holds.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "scripts" / "gpu_reproduce_csdi.sh"
PAPER_CONFIG = ROOT / "experiments" / "imputation" / "physionet" / "csdi_10.yaml"

# what SMOKE=1 DEVICE=cpu may change: the smoke knobs and the device (accelerator, precision)
SMOKE_KEYS = {
    "data.init_args.path",
    "data.init_args.max_records",
    "trainer.max_epochs",
    "trainer.limit_train_batches",
    "model.init_args.num_samples",
    "model.init_args.sample_steps",
    "trainer.accelerator",
    "trainer.precision",
}
# folders, which follow the OUT/RUNS/CACHE of each call
PATH_KEYS = {"record_dir", "data.init_args.cache_dir", "trainer.logger.init_args.save_dir", "trainer.default_root_dir"}


def run_script(root: Path, **env: str) -> subprocess.CompletedProcess:
    """The script with every output folder under ``root`` (no wheels installed, one thread)."""
    full = {
        **os.environ,
        "OUT": str(root / "out"),
        "RUNS": str(root / "runs"),
        "CACHE": str(root / "cache"),
        "WHEELS": str(root / "no_wheels"),
        "MPLCONFIGDIR": str(root / "mpl"),
        "VERSION": "v0",
        "PY": sys.executable,
        "OMP_NUM_THREADS": "1",
        **env,
    }
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a.b.c": leaf} of a nested config."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        out.update(flatten(value, name + ".") if isinstance(value, dict) and value else {name: value})
    return out


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    """The resolved config and the command of the GPU run (DRY=1, default DEVICE=cuda: nothing is run)."""
    root = tmp_path_factory.mktemp("dry")
    run_script(root, DRY="1")
    config = yaml.safe_load((root / "out" / "config_resolved.yaml").read_text())
    return config, (root / "out" / "command.txt").read_text()


def test_gpu_run_is_the_paper_config(paper_run: tuple[dict, str]) -> None:
    config, command = paper_run
    trainer, data = config["trainer"], config["data"]["init_args"]
    model = config["model"]["init_args"]
    # the paper's budget and protocol: 200 epochs of batch 16, Adam 1e-3 x0.1 at 75%/90%, 10% held out, fold 0
    assert (trainer["max_epochs"], trainer["limit_train_batches"], data["batch_size"]) == (200, None, 16)
    assert (model["lr"], model["lr_milestones"], model["lr_gamma"]) == (0.001, [0.75, 0.9], 0.1)
    assert (data["missing_ratio"], data["fold"], data["seed"], data["protocol"]) == (0.1, 0, 1, "csdi")
    assert data["max_records"] is None and data["path"] == ".gpu_inputs/set-a.tar.gz"
    # scored on the whole test fold with 100 DDPM-50 samples
    assert trainer["limit_test_batches"] is None and config["test_after_fit"] is True
    assert (model["num_samples"], model["sampler"], model["sample_steps"]) == (100, "ddpm", None)
    assert model["process"]["init_args"]["num_steps"] == 50
    assert (trainer["accelerator"], trainer["precision"]) == ("gpu", "bf16-mixed")
    # every setting of the paper config is kept, except the rows per sampler call (a memory bound)
    resolved = flatten(config)
    changed = {k for k, v in flatten(yaml.safe_load(PAPER_CONFIG.read_text())).items() if resolved.get(k) != v}
    assert changed == {"model.init_args.sample_batch_size"}
    assert model["sample_batch_size"] == 100 * data["eval_batch_size"]
    assert "--config experiments/imputation/physionet/csdi_10.yaml" in command


@pytest.mark.slow
def test_smoke_mode_writes_a_record_of_the_paper_config(paper_run: tuple[dict, str], tmp_path: Path) -> None:
    proc = run_script(tmp_path, SMOKE="1", DEVICE="cpu")
    out = tmp_path / "out"
    assert {"metrics.json", "training_log.csv", "config.yaml", "last.ckpt", "env.txt", "fit.log"} <= {
        p.name for p in out.iterdir()
    }
    record = json.loads((out / "metrics.json").read_text())
    crps = record["metrics"]["crps"]
    assert isinstance(crps, float) and math.isfinite(crps) and crps > 0
    assert "non_finite" not in record["flags"]
    assert (record["num_samples"], record["sampler"], record["sample_steps"]) == (2, "ddpm", 2)
    # the run differs from the GPU run only by the smoke knobs and the device
    ran, paper = flatten(record["config"]), flatten(paper_run[0])
    assert {k for k in ran.keys() | paper.keys() if ran.get(k) != paper.get(k)} <= SMOKE_KEYS | PATH_KEYS
    assert all(Path(ran[k]).is_relative_to(tmp_path) for k in PATH_KEYS)  # Lightning and the cache write here
    assert (ran["trainer.max_epochs"], ran["trainer.limit_train_batches"]) == (1, 2)
    assert ran["data.init_args.path"] == "embedded" and ran["data.init_args.max_records"] == 25
    status = json.loads((out / "status.json").read_text())
    assert status["complete"] and status["stopped_by"] == "max_epochs" and status["global_step"] == 2
    assert status["crps"] == crps and '"complete": true' in proc.stdout

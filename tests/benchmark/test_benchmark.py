"""The benchmark runner: spec expansion and ids, local sweeps (real tiny runs and a stand-in CLI), kill and
resume, failures, aggregation against hand-made records, and the SLURM submission (without a cluster)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from tiny_config import tiny_config

from tsdiffusion.benchmark import parse_spec, report, run_sweep
from tsdiffusion.benchmark.executors import LocalExecutor, SlurmExecutor, SlurmOptions, cpu_slots, gpu_slots
from tsdiffusion.benchmark.run_folder import build_command, read_status, run_dir
from tsdiffusion.benchmark.spec import SpecError, expand, load_spec
from tsdiffusion.cli import main

ROOT = Path(__file__).resolve().parents[2]

# A stand-in for ``python -m tsdiffusion.cli`` (no torch import, so it costs milliseconds): it reads the
# JSON "config", appends its argv to <record_dir>/calls.txt, writes checkpoints/last.ckpt, hangs when the
# config says so and it was not resumed (--ckpt_path), fails when the config says so, else writes a record.
FAKE_CLI = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    argv = sys.argv[1:]
    opt = lambda name: argv[argv.index(name) + 1] if name in argv else None
    cfg = json.loads(Path(opt("--config")).read_text())
    out, ckpt = Path(opt("--record_dir")), Path(opt("--checkpoint.dirpath"))
    with open(out / "calls.txt", "a") as f:
        f.write(" ".join(argv) + "\\n")
    if cfg.get("fail"):
        sys.exit("Traceback (most recent call last):\\nValueError: broken config")
    ckpt.mkdir(parents=True, exist_ok=True)
    (ckpt / "last.ckpt").write_text("weights")
    if cfg.get("hang") and opt("--ckpt_path") is None:
        time.sleep(120)
    seed = int(opt("--seed_everything"))
    record = {"task": "FakeTask", "dataset": "fake", "model": "FakeDenoiser", "seed": seed,
              "config": {"data": {"init_args": {"path": "x"}}}, "metrics": {"crps": 0.1 * seed}}
    (out / "metrics.json.tmp").write_text(json.dumps(record))
    os.replace(out / "metrics.json.tmp", out / "metrics.json")
    """
)


@pytest.fixture
def fake(tmp_path):
    """(launcher argv, write_config(name, **cfg) -> path) for the stand-in CLI."""
    script = tmp_path / "fake_cli.py"
    script.write_text(FAKE_CLI)

    def config(name: str, **cfg) -> str:
        path = tmp_path / f"{name}.yaml"
        path.write_text(json.dumps(cfg))
        return str(path)

    return [sys.executable, str(script)], config


def write_spec(tmp_path: Path, **spec) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def calls(folder: Path) -> list[str]:
    return (folder / "calls.txt").read_text().splitlines() if (folder / "calls.txt").exists() else []


# -- spec ---------------------------------------------------------------------------------------------


def test_spec_expansion_and_stable_ids(tmp_path):
    raw = {
        "name": "abl",
        "configs": ["a/x.yaml", "b/y.yaml"],
        "seeds": [1, 2, 3],
        "grid": {"model.init_args.sample_steps": [5, 10], "model.init_args.sampler": ["ddpm", "ddim"]},
        "overrides": {"trainer.max_epochs": 2},
    }
    runs = expand(parse_spec(raw))
    assert len(runs) == 2 * 2 * 2 * 3
    assert len({r.id for r in runs}) == len(runs)
    assert [r.id for r in runs] == [r.id for r in expand(parse_spec(dict(raw)))]  # same spec -> same ids
    first = runs[0]
    assert first.id.startswith("a-x-s1-") and first.overrides["trainer.max_epochs"] == 2
    assert first.grid == {"model.init_args.sample_steps": 5, "model.init_args.sampler": "ddpm"}
    assert first.setting() == "sample_steps=5, sampler=ddpm"
    # a different budget is a different experiment: new ids; the seed is part of the id
    other = expand(parse_spec({**raw, "overrides": {"trainer.max_epochs": 3}}))
    assert not {r.id for r in runs} & {r.id for r in other}
    assert len({r.id.rsplit("-", 1)[1] for r in runs if r.config == "a/x.yaml" and r.grid == first.grid}) == 3
    with pytest.raises(SpecError, match="unknown keys"):
        parse_spec({**raw, "seed": [1]})
    with pytest.raises(SpecError, match="duplicate"):
        expand(parse_spec({**raw, "seeds": [1, 1]}))
    with pytest.raises(SpecError, match="non-empty list"):
        parse_spec({**raw, "grid": {"model.init_args.lr": 0.1}})


def test_command_resume_logger_and_slots(tmp_path):
    cfg = tmp_path / "exp.yaml"
    cfg.write_text("trainer:\n  max_epochs: 1\n")
    spec = load_spec(
        write_spec(
            tmp_path,
            name="s",
            configs=[str(cfg)],
            grid={"model.init_args.eta": [0.5]},
            overrides={"trainer.limit_train_batches": 2, "data.init_args.fold": None},
        )
    )
    run = expand(spec)[0]
    folder = run_dir(tmp_path / "sweep", run)
    cmd = build_command(run, spec, folder)
    joined = " ".join(cmd)
    assert cmd[1:4] == ["-m", "tsdiffusion.cli", "fit"] and f"--config {cfg.resolve()}" in joined
    for part in [
        "--seed_everything 1",
        "--model.init_args.eta 0.5",
        "--trainer.limit_train_batches 2",
        "--data.init_args.fold null",
        "--test_after_fit true",
        f"--record_dir {folder}",
        f"--checkpoint.dirpath {folder / 'checkpoints'}",
        f"--trainer.logger.init_args.save_dir {folder / 'logs'}",
    ]:
        assert part in joined
    assert "--ckpt_path" not in cmd and "--trainer.devices" not in cmd
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.ckpt").write_text("x")
    cmd = build_command(run, spec, folder, logger="wandb", devices=2)
    assert cmd[-2:] == ["--ckpt_path", str(folder / "checkpoints" / "last.ckpt")]
    logger = json.loads(cmd[cmd.index("--trainer.logger") + 1])
    assert logger["class_path"] == "tsdiffusion.loggers.WandbLogger"
    assert logger["init_args"] == {"save_dir": str(folder / "logs"), "name": run.id, "group": "s"}
    assert cmd[cmd.index("--trainer.devices") + 1] == "2"
    assert gpu_slots([0, 1, 2, 3, 4], 2) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    assert cpu_slots(2, cores=4)[1] == {
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
    }
    assert "CUDA_VISIBLE_DEVICES" not in os.environ or os.environ["CUDA_VISIBLE_DEVICES"] != "0,1"


# -- sweeps with the stand-in CLI ------------------------------------------------------------------------


def test_failing_run_is_recorded_and_the_others_finish(tmp_path, fake, capsys):
    launcher, config = fake
    spec = write_spec(tmp_path, name="f", configs=[config("ok"), config("broken", fail=True)], seeds=[1, 2])
    out = tmp_path / "sweep"
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", str(spec), "--out", str(out), "--workers", "2", "--launcher", " ".join(launcher)])
    assert exit_.value.code == 1
    states = {f.name: read_status(f) for f in (out / "runs").iterdir()}
    assert sorted(s["state"] for s in states.values()) == ["done", "done", "failed", "failed"]
    failed = [s for s in states.values() if s["state"] == "failed"]
    assert all("ValueError: broken config" in s["error_tail"] and s["returncode"] == 1 for s in failed)
    table = capsys.readouterr().out  # the printed summary (results.txt); results.md has every metric
    assert any(x.split()[:4] == ["fake", "fake", "Fake", "2"] and "0.15 ± 0.071" in x for x in table.splitlines())
    assert "Not included: 2 run(s) not done" in table and "broken-s1-" in table
    assert "| FakeTask | fake | FakeDenoiser | ok | – | 2 | 0.15 ± 0.071 |" in (out / "results.md").read_text()


def test_killed_sweep_resumes_without_redoing_finished_runs(tmp_path, fake):
    launcher, config = fake
    spec_path = write_spec(tmp_path, name="k", configs=[config("fast"), config("slow", hang=True)], seeds=[1, 2])
    out = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "tsdiffusion.benchmark",
        str(spec_path),
        "--out",
        str(out),
        "--workers",
        "2",
        "--launcher",
        " ".join(launcher),
        "--no-report",
    ]
    proc = subprocess.Popen(cmd, cwd=tmp_path, start_new_session=True, stderr=subprocess.DEVNULL)
    runs = expand(load_spec(spec_path))
    fast, slow = [run_dir(out, r) for r in runs[:2]], [run_dir(out, r) for r in runs[2:]]
    deadline = time.time() + 45
    while time.time() < deadline:  # both fast runs done, both slow runs hanging after their checkpoint
        ready = [read_status(f).get("state") for f in fast] == ["done", "done"] and all(
            (f / "checkpoints" / "last.ckpt").exists() for f in slow
        )
        if ready:
            break
        time.sleep(0.2)
    assert ready, "the sweep did not reach the kill point"
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its children die without cleaning up
    proc.wait()
    assert [read_status(f)["state"] for f in slow] == ["running", "running"]
    before = {f: (f / "metrics.json").read_text() for f in fast}

    progress = run_sweep(load_spec(spec_path), out, LocalExecutor(cpu_slots(2), poll_s=0.05), entry=launcher)
    assert (progress.done, progress.failed, progress.total) == (4, 0, 4)
    for f in fast:  # finished runs were not started again and their results are untouched
        assert len(calls(f)) == 1 and (f / "metrics.json").read_text() == before[f]
    for f in slow:  # unfinished runs restarted from their last checkpoint
        first, second = calls(f)
        assert "--ckpt_path" not in first and second.endswith(f"--ckpt_path {f / 'checkpoints' / 'last.ckpt'}")
        assert read_status(f)["attempts"] == 2
    for f in fast + slow:
        assert json.loads((f / "metrics.json").read_text())["metrics"]["crps"] > 0
    assert not list(out.rglob("*.tmp"))
    md = report(out)
    assert "| FakeTask | fake | FakeDenoiser | fast | – | 2 | 0.15 ± 0.071 |" in md
    assert "| FakeTask | fake | FakeDenoiser | slow | – | 2 | 0.15 ± 0.071 |" in md


# -- aggregation ----------------------------------------------------------------------------------------


def _fake_run(sweep: Path, rid: str, config: str, setting: str, crps: float | None, state: str = "done") -> None:
    folder = sweep / "runs" / rid
    folder.mkdir(parents=True)
    (folder / "run.json").write_text(json.dumps({"id": rid, "config": config, "setting": setting}))
    (folder / "status.json").write_text(json.dumps({"state": state, "error": "exit code 1"}))
    if crps is not None:
        record = {
            "task": "ImputationTask",
            "dataset": "physionet",
            "model": "CSDIDenoiser",
            "seed": 1,
            "config": {"data": {"init_args": {"missing_ratio": 0.1, "path": "set-a.tar.gz"}}},
            "metrics": {"crps": crps, "mae_median": 2 * crps},
        }
        (folder / "metrics.json").write_text(json.dumps(record))


def test_report_mean_std_and_reference(tmp_path):
    sweep = tmp_path / "sweep"
    for i, v in enumerate([0.2, 0.4, 0.6]):
        _fake_run(sweep, f"a{i}", "exp/csdi_10.yaml", "sample_steps=5", v)
    _fake_run(sweep, "b0", "exp/csdi_10.yaml", "sample_steps=10", 0.3)
    _fake_run(sweep, "c0", "exp/csdi_10.yaml", "sample_steps=10", None, state="failed")
    ref = tmp_path / "reference.yaml"
    ref.write_text(
        yaml.safe_dump(
            {
                "sources": {"csdi": {"paper": "Tashiro et al. 2021 (CSDI)"}},
                "entries": [
                    {
                        "source": "csdi",
                        "table": "Table 2",
                        "task": "ImputationTask",
                        "dataset": "physionet",
                        "model": "CSDIDenoiser",
                        "where": {"config.data.init_args.missing_ratio": 0.1},
                        "metrics": {"crps": 0.238},
                    },
                    {
                        "source": "csdi",
                        "table": "Table 2",
                        "task": "ImputationTask",
                        "dataset": "physionet",
                        "model": "CSDIDenoiser",
                        "where": {"config.data.init_args.missing_ratio": 0.5},
                        "metrics": {"crps": 0.330},
                    },
                ],
            }
        )
    )
    md = report(sweep, reference=ref)
    assert "| ImputationTask | physionet | CSDIDenoiser | csdi_10 | sample_steps=5 | 3 | 0.4 ± 0.2 | 0.238 [1] |" in md
    assert "| sample_steps=10 | 1 | 0.3 | 0.238 [1] | 0.6 |" in md  # one seed: no std
    assert "[1] Tashiro et al. 2021 (CSDI), Table 2 (missing_ratio=0.1)" in md and "0.33" not in md
    assert "`c0`: failed exit code 1" in md
    import csv

    rows = list(csv.DictReader((sweep / "results.csv").open()))
    row = next(r for r in rows if r["setting"] == "sample_steps=5" and r["metric"] == "mae_median")
    assert math.isclose(float(row["mean"]), 0.8) and math.isclose(float(row["std"]), 0.4)
    assert row["n"] == "3" and row["reference"] == ""
    assert (sweep / "results.md").read_text() == md and (sweep / "results.png").stat().st_size > 1000


# -- SLURM ----------------------------------------------------------------------------------------------


def test_slurm_submission_without_a_cluster(tmp_path, fake, monkeypatch):
    submitit = pytest.importorskip("submitit")
    launcher, config = fake
    bin_dir = tmp_path / "bin"  # stand-ins for srun / sbatch: sbatch keeps the script and answers a job id
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = load_spec(write_spec(tmp_path, name="cluster", configs=[config("ok")], seeds=[1, 2]))
    opts = SlurmOptions(partition="gpu", time_min=30, devices_per_run=2, nodes=2, cpus_per_task=4, mem_gb=64)
    ex = SlurmExecutor(tmp_path / "slurm", opts, cluster="slurm", wait=False)
    run_sweep(spec, tmp_path / "sweep", ex, devices=2, num_nodes=2, entry=launcher)
    script = (tmp_path / "submitted.sh").read_text()
    for line in [
        "#SBATCH --partition=gpu",
        "#SBATCH --time=30",
        "#SBATCH --nodes=2",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --cpus-per-task=4",
        "#SBATCH --mem=64GB",
        "#SBATCH --array=0-1%2",
        "#SBATCH --job-name=cluster",
    ]:
        assert line in script
    folders = [run_dir(tmp_path / "sweep", r) for r in expand(spec)]
    assert [read_status(f)["job_id"] for f in folders] == ["4242_0", "4242_1"]
    pickled = sorted((tmp_path / "slurm").glob("*_submitted.pkl"))
    assert len(pickled) == 2
    job = submitit.helpers.DelayedSubmission.load(pickled[0])
    folder, command = job.args
    assert type(job.function).__name__ == "SlurmRun" and folder == str(folders[0])
    assert command[command.index("--trainer.devices") + 1] == "2"
    assert command[command.index("--trainer.num_nodes") + 1] == "2"
    # submitit's debug executor runs the same job function here: the runs finish and are recorded
    debug = SlurmExecutor(tmp_path / "slurm_debug", SlurmOptions(), cluster="debug", poll_s=0.01)
    progress = run_sweep(spec, tmp_path / "sweep", debug, entry=launcher)
    assert progress.done == 2 and [read_status(f)["state"] for f in folders] == ["done", "done"]


# -- real tiny runs -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """4 real runs (2 seeds x 2 sampler settings) on 2 CPU workers: (spec, sweep folder, progress)."""
    root = tmp_path_factory.mktemp("tiny_sweep")
    spec = load_spec(
        write_spec(
            root,
            name="tiny",
            configs=[str(tiny_config(root, max_epochs=1))],
            seeds=[1, 2],
            grid={"model.init_args.sample_steps": [1, 2]},
        )
    )
    out = root / "sweep"
    progress = run_sweep(spec, out, LocalExecutor(cpu_slots(2), poll_s=0.2))
    return spec, out, progress


def test_sweep_of_tiny_runs_on_two_workers(tiny_sweep):
    spec, out, progress = tiny_sweep
    assert (progress.done, progress.failed, progress.total) == (4, 0, 4)
    for run in expand(spec):
        folder = run_dir(out, run)
        record = json.loads((folder / "metrics.json").read_text())
        assert record["task"] == "ImputationTask" and record["seed"] == run.seed
        assert record["sample_steps"] == run.grid["model.init_args.sample_steps"]
        assert math.isfinite(record["metrics"]["crps"])
        assert (folder / "checkpoints" / "last.ckpt").is_file() and list((folder / "logs").rglob("config.yaml"))
        assert read_status(folder)["attempts"] == 1
    md = report(out)
    assert md.count("| ImputationTask | physionet (embedded) | CSDIDenoiser | tiny | sample_steps=") == 2
    logs = {f: f.read_text() for f in out.rglob("log.txt")}
    again = run_sweep(spec, out, LocalExecutor(cpu_slots(2)))  # a rerun of a finished sweep starts nothing
    assert (again.done, again.total) == (4, 4)
    assert {f: f.read_text() for f in out.rglob("log.txt")} == logs


def test_quickstart_notebook_runs(tiny_sweep, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    _, out, _ = tiny_sweep
    kernels = tmp_path / "jupyter" / "kernels" / "tsdiffusion-test"  # a kernel running this interpreter
    kernels.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (kernels / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": "test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("TSDIFFUSION_SWEEP_DIR", str(out))
    monkeypatch.setenv("TSDIFFUSION_NUM_SAMPLES", "2")
    nb = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="tsdiffusion-test", timeout=120, resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    text = " ".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/markdown", "")) for o in outputs)
    assert "| ImputationTask | physionet (embedded) |" in text and "samples (8, 2, 48, 35)" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 1

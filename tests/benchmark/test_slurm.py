"""The SLURM executor: job scripts that follow each run's resources (a stand-in ``sbatch``), one-line errors, and
against a real single-node SLURM (``tests/benchmark/slurm_fixture.py``): a 2-run sweep as a job array equal to the local
executor's, ``--no-wait`` then ``report``, queue status lines, preemption (submitit's requeue signal) and
``scancel`` followed by a rerun, each ending with the weights and metrics of an uninterrupted run."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from slurm_fixture import slurm  # noqa: F401 (the session fixture)
from tiny_config import tiny_config

from tsdiffusion.benchmark import run_sweep
from tsdiffusion.benchmark.executors import (
    LocalExecutor,
    Resources,
    SlurmError,
    SlurmExecutor,
    SlurmOptions,
    cpu_slots,
    run_resources,
)
from tsdiffusion.benchmark.run_folder import read_status, run_dir
from tsdiffusion.benchmark.spec import expand, load_spec
from tsdiffusion.cli.benchmark import main

EPOCHS = 12  # enough that a signal sent when the first checkpoint appears lands mid-training


def write_spec(root: Path, name: str, configs: list[str], seeds=(1, 2)) -> Path:
    path = root / f"spec_{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "configs": configs, "seeds": list(seeds)}))
    return path


def stand_ins(tmp_path: Path, monkeypatch, squeue_error: str | None = None, squeue_out: str | None = None) -> Path:
    """A stand-in ``sbatch`` on PATH that keeps every job script in ``<tmp>/scripts`` and answers job ids 100,
    101, ...; ``srun`` does nothing; ``scancel`` appends its arguments to ``<tmp>/scancel.txt``; ``squeue``
    fails with ``squeue_error`` or prints ``squeue_out`` when given. Returns the scripts dir."""
    bin_dir, scripts = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    scripts.mkdir()
    sbatch = f"""#!/bin/sh
n=$(ls {scripts} | wc -l); id=$((100 + n))
cp "$1" {scripts}/$id.sh
echo "Submitted batch job $id"
"""
    (bin_dir / "sbatch").write_text(sbatch)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "scancel").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scancel.txt\n')
    if squeue_error:
        (bin_dir / "squeue").write_text(f"#!/bin/sh\necho '{squeue_error}' >&2\nexit 1\n")
    if squeue_out:
        (bin_dir / "squeue").write_text(f"#!/bin/sh\nprintf '{squeue_out}'\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return scripts


def sbatch_lines(script: Path) -> list[str]:
    return [ln for ln in script.read_text().splitlines() if ln.startswith("#SBATCH")]


def error_line(stderr: str) -> str:
    """The one error line at the end of a failed sweep's stderr (after its progress lines), checked to be alone."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and sum("error" in ln for ln in lines) == 1, stderr
    assert lines[-1].startswith("tsdiffusion benchmark: error: "), stderr
    return lines[-1]


LAUNCHER = f"{sys.executable} -c pass"  # submitted runs never start in the stand-in tests


# -- job scripts and errors without a cluster ---------------------------------------------------------


def test_job_scripts_follow_the_runs_resources(tmp_path, monkeypatch, capsys):
    scripts = stand_ins(tmp_path, monkeypatch)
    cpu = tiny_config(tmp_path, max_epochs=EPOCHS)
    gpu, ddp = tmp_path / "gpu.yaml", tmp_path / "ddp.yaml"
    gpu.write_text(yaml.safe_dump({"trainer": {"accelerator": "gpu", "devices": 2}}))
    ddp.write_text(yaml.safe_dump({"trainer": {"accelerator": "gpu", "devices": 2, "num_nodes": 2}}))
    base = ["--executor", "slurm", "--cluster", "slurm", "--no-wait", "--launcher", LAUNCHER, "--cpus-per-task", "1"]

    def submit(name: str, configs: list[Path], *extra: str, seeds=(1, 2)) -> tuple[int, list[list[str]]]:
        for f in scripts.iterdir():
            f.unlink()
        spec = write_spec(tmp_path, name, [str(c) for c in configs], seeds)
        code = main([str(spec), "--out", str(tmp_path / name), *base, *extra])
        return code, [sbatch_lines(f) for f in sorted(scripts.glob("*.sh"))]

    # a CPU config: no GPU request, one task per node; the issue's `--devices-per-run 0` is CPU as well
    for name, extra in (("cpu", ["--partition", "debug"]), ("cpu0", ["--devices-per-run", "0"])):
        code, (lines,) = submit(name, [cpu], *extra)
        assert code == 0 and {"#SBATCH --ntasks-per-node=1", "#SBATCH --nodes=1"} <= set(lines)
        assert not [ln for ln in lines if "gpu" in ln or "gres" in ln]
        assert {"#SBATCH --requeue", "#SBATCH --signal=USR2@90", "#SBATCH --array=0-1%2"} <= set(lines)
    command = json.loads(next((tmp_path / "cpu0" / "runs").glob("*/run.json")).read_text())["command"]
    assert command[command.index("--trainer.accelerator") + 1] == "cpu"
    # a sweep mixing a CPU and a 2-GPU config: one array each, GPUs and tasks only where Lightning uses them
    code, (gpu_lines, cpu_lines) = submit("mixed", [gpu, cpu], seeds=[1])
    assert code == 0 and {"#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2"} <= set(gpu_lines)
    assert "#SBATCH --ntasks-per-node=1" in cpu_lines and not [ln for ln in cpu_lines if "gpu" in ln]
    # multi-node DDP from the config (2 nodes x 2 GPUs, srun starts one task per GPU), or from the options
    for name, configs, extra in (
        ("ddp", [ddp], ["--nodes", "2"]),
        ("ddp2", [cpu], ["--devices-per-run", "2", "--nodes", "2"]),
    ):
        code, (lines,) = submit(name, configs, *extra, seeds=[1])
        assert code == 0 and {"#SBATCH --gpus-per-node=2", "#SBATCH --ntasks-per-node=2", "#SBATCH --nodes=2"} <= set(
            lines
        )
    assert "srun" in next(scripts.glob("*.sh")).read_text()
    # --nodes must agree with the runs (trainer.num_nodes): one line, nothing submitted
    code, scripts_written = submit("nodes", [ddp], seeds=[1])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and scripts_written == [] and "--nodes 1 but run" in err[-1]


def test_resources_from_command_and_config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"trainer": {"accelerator": "gpu", "devices": [0, 1, 2]}}))
    assert run_resources(["fit", "--config", str(cfg)]) == Resources(1, 3, 3)
    assert run_resources(["fit", "--config", str(cfg), "--trainer.accelerator=cpu", "--trainer.devices", "1"]) == (
        Resources(1, 1, 0)
    )
    assert run_resources(["fit"]) == Resources(1, 1, 0)  # accelerator auto: no GPU requested
    with pytest.raises(SlurmError, match="--devices-per-run"):
        run_resources(["fit", "--trainer.accelerator", "gpu", "--trainer.devices", "auto"])


def test_missing_sbatch_says_how_to_run_locally(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no SLURM commands at all
    spec = write_spec(tmp_path, "nos", [str(tiny_config(tmp_path, max_epochs=EPOCHS))])
    assert main([str(spec), "--out", str(tmp_path / "out"), "--executor", "slurm", "--launcher", LAUNCHER]) == 2
    err = error_line(capsys.readouterr().err)
    assert "SLURM is not available" in err and "--executor local" in err
    assert [read_status(f)["state"] for f in (tmp_path / "out" / "runs").iterdir()] == ["pending", "pending"]


def test_squeue_failure_is_one_line_and_runs_stay_pending(tmp_path, monkeypatch):
    stand_ins(tmp_path, monkeypatch, squeue_error="slurm_load_jobs error: Unable to contact slurm controller")
    spec = load_spec(write_spec(tmp_path, "q", [str(tiny_config(tmp_path, max_epochs=EPOCHS))]))
    ex = SlurmExecutor(tmp_path / "slurm", SlurmOptions(cpus_per_task=1), poll_s=0.01, max_queue_failures=3)
    out = io.StringIO()
    with pytest.raises(SlurmError) as err:
        run_sweep(spec, tmp_path / "sweep", ex, entry=LAUNCHER.split(), stream=out)
    message = str(err.value)
    assert "\n" not in message and message.startswith("squeue -j 100 failed: slurm_load_jobs error: Unable to contact")
    assert "tsdiffusion benchmark report" in message  # the jobs go on; how to collect them later
    assert out.getvalue().count("warning: squeue -j 100 failed") == 2
    statuses = [read_status(run_dir(tmp_path / "sweep", r)) for r in expand(spec)]
    assert [(s["state"], s["job_id"]) for s in statuses] == [("pending", "100_0"), ("pending", "100_1")]


def test_a_job_slurm_never_starts_is_cancelled_and_failed(tmp_path, monkeypatch):
    # job 100_0 pends with a reason that waiting does not cure; 100_1 has left the queue without a status
    stand_ins(tmp_path, monkeypatch, squeue_out="100_0|PENDING|PartitionConfig\\n")
    spec = load_spec(write_spec(tmp_path, "never", [str(tiny_config(tmp_path, max_epochs=EPOCHS))]))
    ex = SlurmExecutor(tmp_path / "slurm", SlurmOptions(partition="cpu", cpus_per_task=1), poll_s=0.01)
    progress = run_sweep(spec, tmp_path / "sweep", ex, entry=LAUNCHER.split(), stream=io.StringIO())
    assert (progress.done, progress.failed) == (0, 2)
    never, gone = [read_status(run_dir(tmp_path / "sweep", r)) for r in expand(spec)]
    assert never["error"].startswith("job 100_0 cannot start (SLURM: PartitionConfig) and was cancelled")
    assert "--partition=cpu" in never["error"] and "--ntasks-per-node=1" in never["error"]
    assert (tmp_path / "scancel.txt").read_text().split() == ["100_0"]
    assert gone["error"] == "job 100_1 left the queue before the run finished; the next sweep resumes it"


# -- a real SLURM ------------------------------------------------------------------------------------------


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(poll_s)
    return value


def folders(spec_path: Path, sweep: Path) -> list[Path]:
    return [run_dir(sweep, r) for r in expand(load_spec(spec_path))]


def final_state(folder: Path) -> tuple[dict, dict]:
    """(weights of checkpoints/last.ckpt, metrics.json's metrics) of a finished run."""
    import torch

    ckpt = torch.load(folder / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    return ckpt["state_dict"], json.loads((folder / "metrics.json").read_text())["metrics"]


def reproducible(mp: pytest.MonkeyPatch) -> None:
    """One thread, and MKL's results independent of memory alignment (without it, two processes of the same run
    can differ in the last bits, which Adam turns into visibly different weights), for every run started while
    set: SLURM jobs inherit the environment (sbatch exports it), local runs too."""
    mp.setenv("OMP_NUM_THREADS", "1")
    mp.setenv("MKL_NUM_THREADS", "1")
    mp.setenv("MKL_CBWR", "COMPATIBLE")


def results(sweep: Path) -> dict[tuple[str, ...], tuple[float, float]]:
    """``results.csv`` of a report: (task, dataset, model, config, setting, metric, n) -> (mean, std)."""
    with open(sweep / "results.csv") as f:
        keys = ("task", "dataset", "model", "config", "setting", "metric", "n")
        return {tuple(r[k] for k in keys): (float(r["mean"]), float(r["std"] or "nan")) for r in csv.DictReader(f)}


def assert_same_run(a: Path, b: Path, rel: float = 0.0) -> None:
    import torch

    (wa, ma), (wb, mb) = final_state(a), final_state(b)
    assert wa.keys() == wb.keys() and ma.keys() == mb.keys()
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=rel, atol=rel / 10), k
    for k in ma:
        assert ma[k] == pytest.approx(mb[k], rel=rel, abs=1e-12), k


@pytest.fixture(scope="module")
def cpu_sweep(slurm, tmp_path_factory):  # noqa: F811 (the fixture)
    """The 2-run tiny sweep submitted with ``--no-wait`` to the real SLURM (and, meanwhile, run by the local
    executor for comparison), then reported: (spec path, SLURM sweep dir, local sweep dir, submit output)."""
    root = tmp_path_factory.mktemp("slurm_sweep")
    spec = write_spec(root, "tiny", [str(tiny_config(root, max_epochs=EPOCHS))])
    out = root / "sweep"
    argv = [str(spec), "--out", str(out), "--executor", "slurm", "--partition", "debug", "--cpus-per-task", "1"]
    argv += ["--mem-gb", "1", "--time-min", "10", "--no-wait"]
    with pytest.MonkeyPatch.context() as mp:
        reproducible(mp)
        err = io.StringIO()
        mp.setattr(sys, "stderr", err)
        assert main(argv) == 0
        local = root / "local"
        run_sweep(load_spec(spec), local, LocalExecutor(cpu_slots(1, cores=1), poll_s=0.2))
    wait_until(lambda: all(read_status(f)["state"] in ("done", "failed") for f in folders(spec, out)), 600,
               "the SLURM runs", poll_s=0.5)  # fmt: skip
    return spec, out, local, err.getvalue()


@pytest.mark.slurm
@pytest.mark.slow
def test_sweep_on_slurm_equals_the_local_sweep(cpu_sweep, capsys):
    spec, out, local, submitted = cpu_sweep
    assert "submitted 2 jobs to slurm" in submitted and "tsdiffusion benchmark report" in submitted
    runs = folders(spec, out)
    statuses = [read_status(f) for f in runs]
    assert [s["state"] for s in statuses] == ["done", "done"], statuses
    (array,) = {s["job_id"].split("_")[0] for s in statuses}  # one job array
    assert sorted(s["job_id"] for s in statuses) == [f"{array}_0", f"{array}_1"]
    # the CPU job script: no GPU request, one task, the partition asked for
    (script,) = (out / "slurm").glob("*_submission.sh")
    lines = sbatch_lines(script)
    assert {"#SBATCH --partition=debug", "#SBATCH --ntasks-per-node=1", "#SBATCH --cpus-per-task=1"} <= set(lines)
    assert not [ln for ln in lines if "gpu" in ln or "gres" in ln]
    # `tsdiffusion benchmark report` later: the same results as the local executor's report, same metrics
    assert main(["report", str(out)]) == 0
    table = capsys.readouterr().out
    print(table, file=sys.__stderr__)  # shown with -s: the sweep's table from the real SLURM run
    assert main(["report", str(local)]) == 0
    rows = [results(sweep) for sweep in (out, local)]
    assert rows[0].keys() == rows[1].keys() and {m for *_, m, _ in rows[0]} >= {"crps", "mae_median"}
    for key, (mean, std) in rows[0].items():
        assert (mean, std) == pytest.approx(rows[1][key], rel=1e-5, abs=1e-9, nan_ok=True), key
    for f in runs:
        assert_same_run(f, run_dir(local, next(r for r in expand(load_spec(spec)) if run_dir(out, r) == f)), 1e-5)


@pytest.mark.slurm
@pytest.mark.slow
def test_preemption_and_scancel_resume_to_the_uninterrupted_result(cpu_sweep, slurm):  # noqa: F811
    """Seed 1 gets submitit's requeue signal (USR2) mid-training: it is requeued and resumes; seed 2 is
    cancelled mid-training: the sweep marks it failed, and rerunning the sweep resumes it from its checkpoint
    without touching seed 1. Both end with the weights and metrics of the uninterrupted runs."""
    spec, reference, _, _ = cpu_sweep
    out = reference.parent / "preempted"
    ex = SlurmExecutor(out / "slurm", SlurmOptions(partition="debug", cpus_per_task=1, time_min=10), poll_s=0.2)
    stream = io.StringIO()
    sweep = threading.Thread(target=run_sweep, args=(load_spec(spec), out, ex), kwargs={"stream": stream})
    with pytest.MonkeyPatch.context() as mp:
        reproducible(mp)
        sweep.start()
        try:
            requeued, cancelled = folders(spec, out)
            for folder, signal_args in ((requeued, ["--signal=USR2"]), (cancelled, [])):
                wait_until(
                    lambda f=folder: (f / "checkpoints" / "last.ckpt").exists(), 300, f"a checkpoint in {folder}"
                )
                slurm.run("scancel", *signal_args, read_status(folder)["job_id"])
        finally:
            sweep.join(timeout=600)
    lines = stream.getvalue()
    assert re.search(r"slurm: [12] pending", lines) and re.search(r"slurm: 0 pending, [12] running", lines), lines
    assert "pending (BeginTime)" in lines  # the requeued job waits to start again
    s1, s2 = read_status(requeued), read_status(cancelled)
    assert s1["state"] == "done" and s1["attempts"] == 2, s1
    assert s2["state"] == "failed" and ("stopped by SLURM" in s2["error"] or "CANCELLED" in s2["error"]), s2
    log1 = (requeued / "log.txt").read_text()
    assert "requeue signal: stopped" in log1 and log1.count("--ckpt_path") == 1
    assert not (cancelled / "metrics.json").exists()
    # rerunning the sweep resumes the cancelled run from its checkpoint and leaves the finished one alone
    with pytest.MonkeyPatch.context() as mp:
        reproducible(mp)
        again = run_sweep(load_spec(spec), out, ex, stream=io.StringIO())
    assert (again.done, again.failed) == (2, 0)
    assert (requeued / "log.txt").read_text() == log1
    log2 = (cancelled / "log.txt").read_text().split("=== attempt")
    assert len(log2) == 3 and "--ckpt_path" not in log2[1] and "--ckpt_path" in log2[2]
    for folder in (requeued, cancelled):
        assert_same_run(
            folder, run_dir(reference, next(r for r in expand(load_spec(spec)) if run_dir(out, r) == folder))
        )


@pytest.mark.slurm
def test_slurm_refusals_are_one_line(slurm, tmp_path, capsys):  # noqa: F811
    spec = write_spec(tmp_path, "refused", [str(tiny_config(tmp_path, max_epochs=EPOCHS))])
    base = [str(spec), "--out", str(tmp_path / "out"), "--executor", "slurm", "--cpus-per-task", "1"]
    cases = [
        (["--partition", "debug", "--devices-per-run", "1"], "--gpus-per-node=1", "gres"),  # a GPU on a CPU cluster
        (["--partition", "nope"], "--partition=nope", "invalid partition"),
        (["--partition", "debug", "--cpus-per-task", "64"], "--cpus-per-task=64", "more processors requested"),
        (["--partition", "debug", "--mem-gb", "100000"], "--mem=100000GB", "memory specification"),
    ]
    for extra, option, words in cases:
        assert main([*base, "--launcher", LAUNCHER, *extra]) == 2
        err = error_line(capsys.readouterr().err)
        assert err.startswith("tsdiffusion benchmark: error: sbatch refused the jobs") and option in err, err
        assert words in err.lower(), err
        statuses = [read_status(f) for f in folders(spec, tmp_path / "out")]
        assert all(s["state"] == "pending" and s["job_id"] is None and s["error"] in err for s in statuses)
    assert slurm.run("squeue", "-h").strip() == ""  # nothing was queued

"""The error surface (issue 30): the project's errors share a base and keep their builtin bases; the command
line prints them as one line (plus a hint) with exit code 2 (input) or 1 (a failed run), ``--debug`` or
``TSDIFFUSION_DEBUG=1`` shows the traceback, and other exceptions keep theirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tsdiffusion import errors
from tsdiffusion.errors import (
    BatchError,
    CheckpointError,
    ConfigError,
    DataError,
    DataSourceError,
    TrainingDivergedError,
    TSDiffusionError,
    failure_line,
    run_cli,
)

ROOT = Path(__file__).resolve().parents[1]


def test_existing_errors_share_the_base_and_keep_their_names_bases_and_import_paths():
    from tsdiffusion.batch import BatchError as batch_error
    from tsdiffusion.benchmark.executors.slurm_options import SlurmError
    from tsdiffusion.benchmark.runner import SweepLockedError
    from tsdiffusion.benchmark.spec import SpecError
    from tsdiffusion.data.download import DataSourceError as download_error
    from tsdiffusion.data.frame import FrameDataError
    from tsdiffusion.data.gluonts import ContextTooLongError, GluonTSFormatError
    from tsdiffusion.data.physionet import RecordParseError
    from tsdiffusion.data.time_features import FrequencyError
    from tsdiffusion.data.ucr import TSFormatError
    from tsdiffusion.tasks.base import TrainingDivergedError as diverged

    assert batch_error is BatchError and download_error is DataSourceError and diverged is TrainingDivergedError
    builtin = {
        FrameDataError: ValueError, TSFormatError: ValueError, GluonTSFormatError: ValueError, BatchError: ValueError,
        SpecError: ValueError, FrequencyError: ValueError, ContextTooLongError: ValueError, ConfigError: ValueError,
        DataSourceError: RuntimeError, RecordParseError: RuntimeError, TrainingDivergedError: RuntimeError,
        SlurmError: RuntimeError, SweepLockedError: RuntimeError,
    }  # fmt: skip
    for cls, base in builtin.items():
        assert issubclass(cls, TSDiffusionError) and issubclass(cls, base), cls
    assert {c.exit_code for c in (FrameDataError, RecordParseError, SpecError, BatchError, CheckpointError)} == {2}
    assert TrainingDivergedError.exit_code == SweepLockedError.exit_code == 1
    missing = errors.DataFileNotFoundError("x.csv: file not found")
    assert isinstance(missing, FileNotFoundError) and isinstance(missing, DataSourceError)


def _raise(exc: BaseException):
    def main(argv):
        main.argv = argv
        raise exc

    return main


def test_run_cli_prints_one_line_and_a_hint_and_exits_with_the_class_code(capsys, monkeypatch):
    monkeypatch.setenv(errors.DEBUG_ENV, "")  # recorded, so run_cli setting it is undone too
    main = _raise(ConfigError("window_length must be >= 1,\n  got 0", hint="use a positive length"))
    with pytest.raises(SystemExit) as exit_:
        run_cli(main, ["fit", "--debugger", "x"])
    assert exit_.value.code == 2 and main.argv == ["fit", "--debugger", "x"]
    assert capsys.readouterr().err == "error: window_length must be >= 1, got 0\nhint: use a positive length\n"
    with pytest.raises(SystemExit) as exit_:
        run_cli(_raise(TrainingDivergedError("loss = nan at step 2")), [])
    assert exit_.value.code == 1 and capsys.readouterr().err == "error: loss = nan at step 2\n"


def test_run_cli_finds_a_project_error_a_library_raised_from(capsys, monkeypatch):
    """jsonargparse re-raises a constructor's error as ``ValueError(...) from err``: the one line is ``err``'s."""
    monkeypatch.setenv(errors.DEBUG_ENV, "")  # recorded, so run_cli setting it is undone too
    try:
        raise DataError("a.csv, line 3: bad")
    except DataError as inner:
        outer = ValueError("Does not validate against any of the Union subtypes ...")
        outer.__cause__ = inner
    with pytest.raises(SystemExit) as exit_:
        run_cli(_raise(outer), [])
    assert exit_.value.code == 2 and capsys.readouterr().err == "error: a.csv, line 3: bad\n"


def test_other_exceptions_and_debug_keep_the_traceback(monkeypatch):
    monkeypatch.setenv(errors.DEBUG_ENV, "")  # recorded, so run_cli setting it is undone too
    with pytest.raises(KeyError):  # not a project error: unchanged
        run_cli(_raise(KeyError("bug")), [])
    try:  # raised while handling a project error, not from it: a different failure
        raise DataError("a.csv: bad")
    except DataError:
        try:
            raise ZeroDivisionError("in cleanup")
        except ZeroDivisionError as err:
            second = err
    with pytest.raises(ZeroDivisionError):
        run_cli(_raise(second), [])
    main = _raise(DataSourceError("x: missing"))
    with pytest.raises(DataSourceError):
        run_cli(main, ["fit", "--debug", "--config", "c.yaml"])
    assert main.argv == ["fit", "--config", "c.yaml"]  # the flag never reaches the parser
    assert os.environ[errors.DEBUG_ENV] == "1"  # child processes (DDP ranks, sweeps) inherit debugging
    monkeypatch.setenv(errors.DEBUG_ENV, "0")
    with pytest.raises(SystemExit):
        run_cli(_raise(DataSourceError("x")), [])
    monkeypatch.setenv(errors.DEBUG_ENV, "1")
    with pytest.raises(DataSourceError):
        run_cli(_raise(DataSourceError("x")), [])


def test_run_cli_strips_debug_from_sys_argv_when_reading_it(monkeypatch):
    monkeypatch.setenv(errors.DEBUG_ENV, "")  # recorded, so run_cli setting it is undone too
    monkeypatch.setattr(sys, "argv", ["tsdiffusion", "fit", "--debug", "--config", "c.yaml"])
    seen = []
    run_cli(lambda argv: seen.append((argv, list(sys.argv))), None)
    assert seen == [(None, ["tsdiffusion", "fit", "--config", "c.yaml"])]


def test_failure_line_is_the_error_line_not_the_hint_nor_later_output():
    log = "Seed set to 1\nsome warning\nerror: a.csv, line 3: bad\nhint: fix it\nresult record: none\n"
    assert failure_line(log) == "error: a.csv, line 3: bad"
    parser = "usage: tsdiffusion [-h]\ntsdiffusion: error: Parser key 'model': unknown\n"
    assert failure_line(parser) == "tsdiffusion: error: Parser key 'model': unknown"
    traceback = "x: error: a warning\nTraceback (most recent call last):\n  File ...\nKeyError: 'bug'\n"
    assert failure_line(traceback) == "KeyError: 'bug'"
    assert failure_line("") == "" and failure_line("last\n\n") == "last"


# -- the command, as a user runs it --------------------------------------------------------------------------


def _tsdiffusion(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop(errors.DEBUG_ENV, None)
    cmd = [sys.executable, "-m", "tsdiffusion.cli", *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


DIVERGING = (
    "fit", "--config", str(ROOT / "experiments/quick/timegrad_exchange.yaml"), "--model.init_args.lr", "10000",
    "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0", "--test_after_fit", "false",
    "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
)  # fmt: skip


@pytest.mark.slow
def test_diverging_run_prints_one_line_and_exits_1(tmp_path):
    """The issue's run (lr 10000) stops at step 2 with ``error: ...`` and a hint, no traceback, exit code 1;
    with ``--debug`` the traceback ends in TrainingDivergedError."""
    run = _tsdiffusion(tmp_path, *DIVERGING, "--trainer.default_root_dir", str(tmp_path / "a"))
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    lines = run.stderr.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("error: ")] == [lines[-2]], run.stderr[-3000:]
    assert "training loss" in lines[-2] and "at optimisation step 2" in lines[-2]
    assert lines[-1].startswith("hint: lower the learning rate (model.init_args.lr=10000)")
    debug = _tsdiffusion(tmp_path, *DIVERGING[:3], "--debug", *DIVERGING[3:], "--trainer.default_root_dir",
                         str(tmp_path / "b"))  # fmt: skip
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "tsdiffusion.errors.TrainingDivergedError: TimeGradTask: training loss" in debug.stderr
    assert "\nerror: " not in debug.stderr


def test_bad_input_file_prints_one_line_and_exits_2(tmp_path):
    """A data file that pandas would read silently changed: refused before any model is built, exit code 2."""
    (tmp_path / "dup.csv").write_text("timestamp,a,a\n2021-01-01,1,2\n2021-01-02,3,4\n")
    config = ROOT / "experiments/own_data/csdi_imputation.yaml"
    run = _tsdiffusion(tmp_path, "fit", "--config", str(config), "--data.init_args.path", "dup.csv")
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        "error: dup.csv, line 1: columns 2 and 3 are both named 'a' (pandas would rename the second to 'a.1'); "
        "give every column its own name"
    )
    assert "Traceback" not in run.stderr


STAND_IN = """
import sys
sys.path.insert(0, {root!r})
from tsdiffusion.errors import DataError, run_cli

def main(argv):
    print("Seed set to 1", flush=True)
    raise DataError("data.csv, line 3: column 'a': non-numeric value 'x'", hint="fix line 3")

run_cli(main)
"""


def test_sweep_failure_line_is_the_runs_error_line(tmp_path, capsys, monkeypatch):
    """A run that fails with a project error: the runner's FAILED line carries its one-line message (not the
    hint, not a traceback), and status.json the exit code 2."""
    import json

    import yaml

    from tsdiffusion.benchmark.run_folder import read_status
    from tsdiffusion.cli import main

    monkeypatch.setenv(errors.DEBUG_ENV, "")
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN.format(root=str(ROOT)))
    (tmp_path / "c.yaml").write_text(json.dumps({}))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "e", "configs": [str(tmp_path / "c.yaml")], "seeds": [1]}))
    with pytest.raises(SystemExit) as exit_:
        main(["benchmark", str(spec), "--out", str(tmp_path / "sweep"), "--workers", "1", "--no-report",
              "--launcher", f"{sys.executable} {script}"])  # fmt: skip
    assert exit_.value.code == 1
    failed = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("FAILED")]
    assert len(failed) == 1 and ": error: data.csv, line 3: column 'a': non-numeric value 'x' (log: " in failed[0]
    (status,) = [read_status(f) for f in (tmp_path / "sweep" / "runs").iterdir()]
    assert status["state"] == "failed" and status["returncode"] == 2

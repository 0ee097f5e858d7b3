"""One run's folder: its command line, its status file, its log, and running it as a subprocess.

Layout of ``<sweep_dir>/runs/<run id>/``::

    run.json        what the run is (config, seed, overrides, command)
    status.json     pending | running | done | failed (+ error tail, exit code, attempts), written atomically
    log.txt         the child's stdout and stderr (appended over attempts)
    metrics.json    the result record written by ``tsdiffusion fit --test_after_fit true --record_dir``
    checkpoints/    last.ckpt (resume point) and per-epoch checkpoints
    logs/           the logger's folder (CSV or wandb) with the saved config.yaml

A run is ``done`` only when its process exited with 0 *and* ``metrics.json`` exists. Anything else is
unfinished; rerunning the sweep restarts it from ``checkpoints/last.ckpt`` when there is one.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml

from tsdiffusion.benchmark.spec import Run, SweepSpec, override_args
from tsdiffusion.records import RECORD_NAME, write_json_atomic

State = Literal["pending", "running", "done", "failed"]
LoggerChoice = Literal["config", "csv", "wandb"]
STATUS_NAME = "status.json"
LOG_NAME = "log.txt"
ERROR_TAIL_LINES = 25


def run_dir(sweep_dir: Path, run: Run) -> Path:
    return Path(sweep_dir) / "runs" / run.id


def last_checkpoint(folder: Path) -> Path | None:
    ckpt = Path(folder) / "checkpoints" / "last.ckpt"
    return ckpt if ckpt.is_file() else None


# -- status ---------------------------------------------------------------------------------------


def read_status(folder: Path) -> dict[str, Any]:
    """The run's status (``{"state": "pending"}`` when it never started)."""
    path = Path(folder) / STATUS_NAME
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {"state": "pending"}


def write_status(folder: Path, state: State, **fields: Any) -> dict[str, Any]:
    """Write ``status.json`` atomically, keeping the attempt counter and earlier fields not overwritten."""
    old = read_status(folder)
    status = {k: v for k, v in old.items() if k in ("attempts", "job_id", "started")}
    status.update(state=state, updated=_now(), host=socket.gethostname(), **fields)
    write_json_atomic(Path(folder) / STATUS_NAME, status)
    return status


def is_done(folder: Path) -> bool:
    return read_status(folder).get("state") == "done" and (Path(folder) / RECORD_NAME).is_file()


def error_tail(log: Path, lines: int = ERROR_TAIL_LINES) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# -- command line ---------------------------------------------------------------------------------


def config_logger(config: Path) -> Any:
    """``trainer.logger`` as the experiment yaml sets it (None when it does not)."""
    cfg = yaml.safe_load(Path(config).read_text()) or {}
    return (cfg.get("trainer") or {}).get("logger")


def logger_args(choice: LoggerChoice, folder: Path, config: Path, run: Run, sweep_name: str) -> list[str]:
    """CLI arguments that put the run's logger inside its folder.

    ``config`` keeps the yaml's logger (or the CLI's default CSV logger) and only moves its ``save_dir``; a
    yaml with ``logger: false`` stays without one; a list of loggers is replaced by a CSV logger. ``csv``
    and ``wandb`` replace the logger; wandb runs are named by the run id and grouped by the sweep name
    (offline by default, see :class:`tsdiffusion.loggers.WandbLogger`).
    """
    save_dir = str(folder / "logs")
    current = config_logger(config)
    if choice == "config" and current is False:
        return []
    if choice == "config" and (current in (None, True) or isinstance(current, dict)):
        return ["--trainer.logger.init_args.save_dir", save_dir]
    if choice == "wandb":
        logger = {
            "class_path": "tsdiffusion.loggers.WandbLogger",
            "init_args": {"save_dir": save_dir, "name": run.id, "group": sweep_name},
        }
    else:
        logger = {
            "class_path": "lightning.pytorch.loggers.CSVLogger",
            "init_args": {"save_dir": save_dir, "name": "csv"},
        }
    return ["--trainer.logger", json.dumps(logger)]


def build_command(
    run: Run,
    spec: SweepSpec,
    folder: Path,
    *,
    logger: LoggerChoice = "config",
    devices: int | None = None,
    num_nodes: int = 1,
    entry: Sequence[str] | None = None,
) -> list[str]:
    """``python -m tsdiffusion.cli fit --config C --seed_everything N <overrides> ...`` for one run.

    ``devices``: GPUs per run (``--trainer.accelerator gpu --trainer.devices n``, DDP when n > 1); 0 runs on
    one CPU device; None leaves the accelerator to the config. ``entry`` replaces ``python -m tsdiffusion.cli``
    (a wrapper, or a stand-in in tests). Resumes from ``checkpoints/last.ckpt`` when it exists.
    """
    config = spec.resolve(run.config)
    cmd = [*(entry or [sys.executable, "-m", "tsdiffusion.cli"]), "fit", "--config", str(config)]
    cmd += ["--seed_everything", str(run.seed), *override_args(run.overrides)]
    cmd += ["--test_after_fit", "true", "--record_dir", str(folder)]
    cmd += ["--trainer.default_root_dir", str(folder), "--checkpoint.dirpath", str(folder / "checkpoints")]
    cmd += logger_args(logger, folder, config, run, spec.name)
    if devices == 0:  # CPU asked for explicitly (``--devices-per-run 0``)
        cmd += ["--trainer.accelerator", "cpu", "--trainer.devices", "1"]
    if devices:
        cmd += ["--trainer.accelerator", "gpu", "--trainer.devices", str(devices)]
        cmd += ["--trainer.num_nodes", str(num_nodes)] if num_nodes > 1 else []
    ckpt = last_checkpoint(folder)
    return [*cmd, "--ckpt_path", str(ckpt)] if ckpt else cmd


def describe_run(run: Run, spec: SweepSpec, folder: Path, command: list[str]) -> None:
    """Write ``run.json`` (what the run is and how it was started) into the run's folder."""
    info = {
        "id": run.id,
        "sweep": spec.name,
        "config": run.config,
        "seed": run.seed,
        "overrides": run.overrides,
        "grid": run.grid,
        "setting": run.setting(),
        "command": command,
    }
    write_json_atomic(folder / "run.json", info)


# -- execution ------------------------------------------------------------------------------------


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the child gets SIGTERM when the sweep process dies, so no orphan keeps writing a run folder."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def start_run(folder: Path, command: list[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
    """Mark the run ``running`` and start its process, stdout and stderr appended to ``log.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    attempts = int(read_status(folder).get("attempts", 0)) + 1
    log = open(folder / LOG_NAME, "a")
    log.write(f"\n=== attempt {attempts} at {_now()} on {socket.gethostname()}\n$ {' '.join(command)}\n")
    log.flush()
    child_env = {**os.environ, **(env or {})}
    preexec = _die_with_parent if sys.platform.startswith("linux") else None
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=child_env, preexec_fn=preexec)
    proc.log_file = log  # type: ignore[attr-defined]
    proc.started = time.perf_counter()  # type: ignore[attr-defined]
    write_status(
        folder,
        "running",
        attempts=attempts,
        pid=proc.pid,
        started=_now(),
        devices=(env or {}).get("CUDA_VISIBLE_DEVICES"),
    )
    return proc


def finish_run(folder: Path, proc: subprocess.Popen) -> dict[str, Any]:
    """Record the outcome of a finished process: ``done`` needs exit code 0 and a ``metrics.json``."""
    proc.log_file.close()  # type: ignore[attr-defined]
    wall = round(time.perf_counter() - proc.started, 1)  # type: ignore[attr-defined]
    code = proc.returncode
    if code == 0 and (folder / RECORD_NAME).is_file():
        return write_status(folder, "done", returncode=0, wall_time_s=wall)
    why = f"exit code {code}" if code != 0 else f"exit code 0 but no {RECORD_NAME} was written"
    return write_status(
        folder,
        "failed",
        returncode=code,
        wall_time_s=wall,
        error=why,
        error_tail=error_tail(folder / LOG_NAME),
    )

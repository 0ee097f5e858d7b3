"""Running a sweep: its plan (:func:`plan`, ``sweep.json``), the lock that keeps two sweep processes off one
folder, and the runs handed to an executor; done runs are skipped, the others resume from their last checkpoint.
The command line, ``tsdiffusion benchmark``, is :mod:`tsdiffusion.cli.benchmark`.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tsdiffusion.benchmark.executors import (
    Item,
    LocalExecutor,
    Progress,
    SlurmExecutor,
)
from tsdiffusion.benchmark.run_folder import (
    LoggerChoice,
    build_command,
    describe_run,
    is_done,
    last_checkpoint,
    read_status,
    run_dir,
    write_json_atomic,
    write_status,
)
from tsdiffusion.benchmark.spec import Run, SweepSpec, expand
from tsdiffusion.errors import SweepLockedError


@contextmanager
def sweep_lock(sweep_dir: Path):
    """An exclusive ``flock`` on ``<sweep_dir>/.lock`` for the lifetime of a sweep (released on any exit)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / ".lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise SweepLockedError(f"{sweep_dir} is in use by another sweep process") from err
        f.write(str(os.getpid()))
        f.flush()
        yield


def default_sweep_dir(spec: SweepSpec) -> Path:
    return Path("runs") / "benchmarks" / spec.name


def plan(spec: SweepSpec, sweep_dir: Path) -> list[tuple[Run, Path, str]]:
    """Every run with its folder and what the sweep will do with it: ``skip`` (done), ``run``, ``resume``."""
    out = []
    for run in expand(spec):
        folder = run_dir(sweep_dir, run)
        action = "skip" if is_done(folder) else ("resume" if last_checkpoint(folder) else "run")
        out.append((run, folder, action))
    return out


def plan_table(rows: list[tuple[Run, Path, str]]) -> str:
    """A plain-text table of the plan (``--dry-run``)."""
    header = ("run id", "config", "seed", "setting", "state", "action")
    body = [
        (r.id, r.config, str(r.seed), r.setting() or "-", read_status(f).get("state", "pending"), a) for r, f, a in rows
    ]
    widths = [max(len(x[i]) for x in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in [header, *body]]
    todo = sum(a != "skip" for *_, a in rows)
    return "\n".join([*lines, f"{len(rows)} runs, {todo} to run, {len(rows) - todo} done"])


def write_plan(spec: SweepSpec, sweep_dir: Path, runs: list[Run]) -> None:
    ref = spec.reference_path()
    write_json_atomic(
        sweep_dir / "sweep.json",
        {
            "name": spec.name,
            "spec": str(spec.path) if spec.path else None,
            "reference": str(ref) if ref else None,
            "configs": list(spec.configs),
            "baselines": list(spec.baselines),
            "seeds": list(spec.seeds),
            "grid": spec.grid,
            "overrides": spec.overrides,
            "notes": list(spec.notes),
            "variants": spec.variants,
            "ablation": spec.ablation,
            "runs": [{"id": r.id, "config": r.config, "seed": r.seed, "setting": r.setting()} for r in runs],
        },
    )


def run_sweep(
    spec: SweepSpec,
    sweep_dir: Path,
    executor: LocalExecutor | SlurmExecutor,
    *,
    logger: LoggerChoice = "config",
    devices: int | None = None,
    num_nodes: int = 1,
    skip_failed: bool = False,
    entry: Sequence[str] | None = None,
    stream: Any = None,
) -> Progress:
    """Run every unfinished run of ``spec`` in ``sweep_dir`` with ``executor``; returns the final counts."""
    with sweep_lock(sweep_dir):
        rows = plan(spec, sweep_dir)
        write_plan(spec, sweep_dir, [r for r, _, _ in rows])
        items = []
        for run, folder, action in rows:
            if action == "skip" or (skip_failed and read_status(folder).get("state") == "failed"):
                continue
            folder.mkdir(parents=True, exist_ok=True)
            cmd = build_command(run, spec, folder, logger=logger, devices=devices, num_nodes=num_nodes, entry=entry)
            describe_run(run, spec, folder, cmd)
            if read_status(folder).get("state") != "failed":
                write_status(folder, "pending")
            items.append(Item(run, folder, cmd))
        progress = Progress(total=len(rows), done=sum(a == "skip" for *_, a in rows), stream=stream)
        progress.show(f"sweep {spec.name}: {len(rows)} runs, {len(items)} to run, folder {sweep_dir}")
        if isinstance(executor, SlurmExecutor):
            executor.run(items, progress, name=spec.name)
        else:
            executor.run(items, progress)
        return progress

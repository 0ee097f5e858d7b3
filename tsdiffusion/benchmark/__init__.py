"""The benchmark runner: sweeps of experiment configs x override grids x seeds, run locally (one run per GPU
group or N CPU workers) or on SLURM (submitit), resumable, and reported against published numbers.

``tsdiffusion benchmark SPEC.yaml [--gpus auto | --workers N | --executor slurm] [--dry-run]``,
``tsdiffusion benchmark report SWEEP_DIR``; see :mod:`tsdiffusion.benchmark.spec` for the spec format.
A finished run loads back with :func:`tsdiffusion.runs.load_run`. The package imports neither torch nor the
CLI (each run is a ``python -m tsdiffusion.cli`` subprocess), so ``cli -> benchmark`` is the only edge.
"""

from __future__ import annotations

from collections.abc import Sequence

from tsdiffusion.benchmark.executors import LocalExecutor, Progress, SlurmError, SlurmExecutor, SlurmOptions
from tsdiffusion.benchmark.report import collect, group_records, report
from tsdiffusion.benchmark.runner import main as _main
from tsdiffusion.benchmark.runner import plan, run_sweep
from tsdiffusion.benchmark.spec import Run, SweepSpec, expand, load_spec, parse_spec, run_id


def main(argv: Sequence[str] | None = None) -> None:
    """``tsdiffusion benchmark ...``; exits with status 1 when a run of the sweep is not done."""
    code = _main(argv)
    if code:
        raise SystemExit(code)


__all__ = [
    "LocalExecutor",
    "Progress",
    "Run",
    "SlurmError",
    "SlurmExecutor",
    "SlurmOptions",
    "SweepSpec",
    "collect",
    "expand",
    "group_records",
    "load_spec",
    "main",
    "parse_spec",
    "plan",
    "report",
    "run_id",
    "run_sweep",
]

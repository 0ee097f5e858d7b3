"""The benchmark runner: sweeps of experiment configs x override grids x seeds, run locally (one run per GPU
group or N CPU workers) or on SLURM (submitit), resumable, and reported against published numbers.

``tsdiffusion benchmark SPEC.yaml [--gpus auto | --workers N | --executor slurm] [--dry-run]``,
``tsdiffusion benchmark report SWEEP_DIR``; see :mod:`tsdiffusion.benchmark.spec` for the spec format.
The command line is :mod:`tsdiffusion.cli.benchmark`; a finished run loads back with
:func:`tsdiffusion.runs.load_run`. The package imports neither torch nor the CLI (each run is a
``python -m tsdiffusion.cli`` subprocess): ``cli -> benchmark`` is the only edge.
"""

from __future__ import annotations

from tsdiffusion.benchmark.collect import collect, group_records
from tsdiffusion.benchmark.executors import LocalExecutor, Progress, SlurmError, SlurmExecutor, SlurmOptions
from tsdiffusion.benchmark.report import report
from tsdiffusion.benchmark.runner import plan, run_sweep
from tsdiffusion.benchmark.spec import Run, SweepSpec, expand, load_spec, parse_spec, run_id

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
    "parse_spec",
    "plan",
    "report",
    "run_id",
    "run_sweep",
]

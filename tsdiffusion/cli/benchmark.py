"""``tsdiffusion benchmark SPEC.yaml [options]`` and ``tsdiffusion benchmark report SWEEP_DIR``.

A sweep folder (default ``runs/benchmarks/<spec name>``) holds ``sweep.json`` (the expanded plan),
``runs/<run id>/`` (one folder per run, see :mod:`tsdiffusion.benchmark.run_folder`) and the report files.
Rerunning the same spec on the same folder skips ``done`` runs and resumes the others from their last
checkpoint; a lock file keeps two sweep processes off one folder.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from tsdiffusion.benchmark.ablation import has_ablation, parse_references, write_ablation
from tsdiffusion.benchmark.collect import sweep_notes
from tsdiffusion.benchmark.executors import (
    LocalExecutor,
    SlurmError,
    SlurmExecutor,
    SlurmOptions,
    cpu_slots,
    gpu_slots,
    parse_gpus,
)
from tsdiffusion.benchmark.report import load_sweep, report
from tsdiffusion.benchmark.runner import default_sweep_dir, plan, plan_table, run_sweep
from tsdiffusion.benchmark.spec import load_spec
from tsdiffusion.benchmark.summary import summary_markdown


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsdiffusion benchmark",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("spec", help="sweep spec yaml (see benchmarks/specs/quick.yaml)")
    p.add_argument("--out", type=Path, help="sweep folder (default runs/benchmarks/<name>)")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--gpus", help="GPU ids '0,1,2,3' or 'auto' (one run per GPU group); default: auto")
    p.add_argument("--workers", type=int, default=1, help="concurrent runs on CPU when no GPU is used")
    p.add_argument("--threads", type=int, help="torch threads per CPU run (default: the cores / workers)")
    p.add_argument(
        "--devices-per-run",
        type=int,
        help="GPUs per run (DDP inside a run when > 1; 0: CPU); default 1 on local GPUs, on SLURM what each "
        "config's trainer asks for (no GPU for CPU configs)",
    )
    p.add_argument(
        "--logger",
        choices=("config", "csv", "wandb"),
        default="config",
        help="config: the yaml's logger in the run folder; wandb: offline, group=sweep, name=run id",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    p.add_argument("--skip-failed", action="store_true", help="do not retry runs that failed before")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--metrics", help="comma-separated metrics for the Markdown table")
    p.add_argument("--launcher", help="command that replaces 'python -m tsdiffusion.cli' for each run")
    s = p.add_argument_group("slurm (submitit)")
    s.add_argument("--partition")
    s.add_argument("--time-min", type=int, default=240)
    s.add_argument("--nodes", type=int, default=1, help="nodes per run (multi-node DDP)")
    s.add_argument("--cpus-per-task", type=int, default=8)
    s.add_argument("--mem-gb", type=int)
    s.add_argument("--account")
    s.add_argument("--qos")
    s.add_argument("--constraint")
    s.add_argument("--array-parallelism", type=int, default=64)
    s.add_argument("--no-wait", action="store_true", help="return after submitting")
    s.add_argument("--cluster", help=argparse.SUPPRESS)  # submitit cluster override: debug | local (tests)
    return p


def _report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tsdiffusion benchmark report",
        description="aggregate a sweep folder into results.md / .csv / .png",
    )
    p.add_argument("sweep_dir", type=Path)
    p.add_argument("--reference", type=Path, help="reference yaml (default: the sweep's)")
    p.add_argument("--metrics", help="comma-separated metrics for the Markdown table")
    p.add_argument(
        "--markdown",
        action="store_true",
        help="print the summary as Markdown (mean ± std over seeds, best in bold, machine and dates), ready to "
        "paste into a README; default: the plain-text summary (120 columns)",
    )
    p.add_argument(
        "--ablation",
        nargs="?",
        const="",
        metavar="FACTOR=LEVEL,...",
        help="also print the ablation table (tsdiffusion.benchmark.ablation, also in ablation.md/.csv/.png and "
        "results.md); reference levels: these, else the spec's 'ablation:', else each factor's first level",
    )
    return p


def print_summary(sweep_dir: Path, reference: Path | None = None, metrics: list[str] | None = None,
                  as_markdown: bool = False, ablation: str | None = None) -> int:  # fmt: skip
    """Write the report files and print the summary table (text, or Markdown for a README); returns the
    number of flagged runs (left out of the means)."""
    report(sweep_dir, reference, metrics)
    groups, records, _, entries, flagged, _ = load_sweep(sweep_dir, reference)
    if as_markdown:
        print(summary_markdown(groups, entries, records, flagged, sweep_notes(sweep_dir)), end="")
    else:
        print((sweep_dir / "results.txt").read_text(), end="")
    if ablation is not None or has_ablation(sweep_dir):  # the spec's `ablation:` or --ablation
        print("\n" + write_ablation(sweep_dir, parse_references(ablation), metrics), end="")
    if flagged:
        print(f"warning: {len(flagged)} run(s) flagged (exploded samples or non-finite metrics), left out of the "
              "table's means; see 'Flagged' above", file=sys.stderr)  # fmt: skip
    return len(flagged)


def _executor(args: argparse.Namespace, sweep_dir: Path) -> tuple[LocalExecutor | SlurmExecutor, int | None]:
    """The executor and the GPUs per run (None: CPU, the config decides)."""
    if args.executor == "slurm":
        opts = SlurmOptions(
            partition=args.partition,
            time_min=args.time_min,
            devices_per_run=args.devices_per_run,
            nodes=args.nodes,
            cpus_per_task=args.cpus_per_task,
            mem_gb=args.mem_gb,
            array_parallelism=args.array_parallelism,
            account=args.account,
            qos=args.qos,
            constraint=args.constraint,
        )
        ex = SlurmExecutor(sweep_dir / "slurm", opts, cluster=args.cluster, wait=not args.no_wait)
        return ex, args.devices_per_run
    gpus = parse_gpus(args.gpus or ("auto" if args.workers <= 1 else None)) if args.devices_per_run != 0 else []
    if gpus:
        return LocalExecutor(gpu_slots(gpus, args.devices_per_run or 1)), args.devices_per_run or 1
    cores = args.threads * args.workers if args.threads else None
    return LocalExecutor(cpu_slots(args.workers, cores)), None


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tsdiffusion benchmark``; returns 0 when every run is done, 1 otherwise."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        args = _report_parser().parse_args(argv[1:])
        metrics = args.metrics.split(",") if args.metrics else None
        print_summary(args.sweep_dir, args.reference, metrics, args.markdown, args.ablation)
        return 0
    args = _parser().parse_args(argv)
    spec = load_spec(args.spec)
    sweep_dir = (args.out or default_sweep_dir(spec)).resolve()
    if args.dry_run:
        print(plan_table(plan(spec, sweep_dir)))
        return 0
    executor, devices = _executor(args, sweep_dir)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a kill stops the children as Ctrl-C does
    try:
        progress = run_sweep(
            spec,
            sweep_dir,
            executor,
            logger=args.logger,
            devices=devices,
            num_nodes=args.nodes,
            skip_failed=args.skip_failed,
            entry=shlex.split(args.launcher) if args.launcher else None,
        )
    except KeyboardInterrupt:
        print(f"interrupted; rerun the same command to resume ({sweep_dir})", file=sys.stderr)
        return 130
    except SlurmError as err:  # one line: the option and SLURM's message, no traceback
        print(f"tsdiffusion benchmark: error: {err}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not args.no_report and not (args.executor == "slurm" and args.no_wait):
        print_summary(sweep_dir, metrics=args.metrics.split(",") if args.metrics else None)
        print(f"report: {sweep_dir}/results.md (every metric), results.csv, results.png; Markdown for a README: "
              f"tsdiffusion benchmark report {sweep_dir} --markdown", file=sys.stderr)  # fmt: skip
    submitted_only = args.executor == "slurm" and args.no_wait  # the jobs go on; `report` collects them later
    return 0 if progress.done == progress.total or submitted_only else 1

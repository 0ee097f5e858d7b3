"""Where runs execute: local slots (one run per GPU group, or N CPU workers) or SLURM through submitit.

An executor gets ``(run, folder, command)`` items whose folders are not ``done`` and runs them; every run's
outcome lands in its ``status.json``, so a failing run never stops the others. On SLURM, the resources of a
job follow its run (GPUs only when the run trains on GPUs), preempted jobs are requeued and resume from the
run's last checkpoint, and SLURM's refusals come back as one-line :class:`SlurmError` messages.
"""

from tsdiffusion.benchmark.executors.local import LocalExecutor, cpu_slots, gpu_slots, parse_gpus
from tsdiffusion.benchmark.executors.progress import Item, Progress
from tsdiffusion.benchmark.executors.slurm import CANNOT_START, ENDED, NOT_AVAILABLE, SlurmExecutor, queue_states
from tsdiffusion.benchmark.executors.slurm_job import SlurmRun, resume_command
from tsdiffusion.benchmark.executors.slurm_options import (
    Resources,
    SlurmError,
    SlurmOptions,
    run_resources,
    sbatch_error,
)

__all__ = [
    "CANNOT_START",
    "ENDED",
    "NOT_AVAILABLE",
    "Item",
    "LocalExecutor",
    "Progress",
    "Resources",
    "SlurmError",
    "SlurmExecutor",
    "SlurmOptions",
    "SlurmRun",
    "cpu_slots",
    "gpu_slots",
    "parse_gpus",
    "queue_states",
    "resume_command",
    "run_resources",
    "sbatch_error",
]

"""What a SLURM job asks for: the resources of its run (:func:`run_resources`), the submitit parameters
(:class:`SlurmOptions`), and SLURM's refusals as one line naming the option (:func:`sbatch_error`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tsdiffusion.errors import SchedulerError


class SlurmError(SchedulerError):
    """SLURM refused a command or could not be asked; the message is one line with SLURM's own words."""


@dataclass(frozen=True)
class Resources:
    """What one run asks SLURM for: nodes, tasks per node (one per Lightning device) and GPUs per node."""

    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0


def _option(command: Sequence[str], name: str) -> str | None:
    """The value of the last ``name VALUE`` or ``name=VALUE`` in ``command`` (None when absent)."""
    value = None
    for i, arg in enumerate(command):
        if arg == name and i + 1 < len(command):
            value = command[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _config_trainer(command: Sequence[str]) -> dict[str, Any]:
    """The ``trainer`` section of the ``--config`` files in ``command`` (later files override earlier ones)."""
    trainer: dict[str, Any] = {}
    for i, arg in enumerate(command):
        path = command[i + 1] if arg == "--config" and i + 1 < len(command) else None
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else path
        if path and Path(path).is_file():
            cfg = yaml.safe_load(Path(path).read_text()) or {}
            trainer.update((cfg.get("trainer") if isinstance(cfg, dict) else None) or {})
    return trainer


def _device_count(devices: Any) -> int | None:
    """Lightning's ``devices`` as a number (``2``, ``"2"``, ``[0, 1]``, ``"0,1"``); None for auto / -1."""
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, int) and not isinstance(devices, bool) and devices > 0:
        return devices
    return None


def run_resources(command: Sequence[str]) -> Resources:
    """The SLURM resources one run needs, read from its command line and the ``--config`` files it names.

    ``trainer.accelerator: gpu`` (or ``cuda``) asks for ``trainer.devices`` GPUs per node; any other
    accelerator (cpu, auto) for none, so CPU partitions work. Every Lightning device is one task (``srun``
    starts the DDP ranks, Lightning reads SLURM's variables), on ``trainer.num_nodes`` nodes.

    >>> run_resources(["fit", "--trainer.accelerator", "gpu", "--trainer.devices", "2"])
    Resources(nodes=1, tasks_per_node=2, gpus_per_node=2)
    >>> run_resources(["fit", "--trainer.accelerator", "cpu"])
    Resources(nodes=1, tasks_per_node=1, gpus_per_node=0)
    """
    trainer = _config_trainer(command)

    def get(key: str) -> Any:
        value = _option(command, f"--trainer.{key}")
        return yaml.safe_load(value) if value is not None else trainer.get(key)

    accelerator = str(get("accelerator") or "auto").lower()
    devices, count = get("devices"), _device_count(get("devices"))
    gpu = accelerator in ("gpu", "cuda")
    if gpu and count is None:
        raise SlurmError(
            f"trainer.devices is {devices!r} with accelerator {accelerator!r}: SLURM needs a number of GPUs per "
            "run, pass --devices-per-run N"
        )
    nodes = int(get("num_nodes") or 1)
    return Resources(nodes=nodes, tasks_per_node=count or 1, gpus_per_node=(count or 0) if gpu else 0)


@dataclass
class SlurmOptions:
    """SLURM options per run (submitit parameters). GPUs, tasks and nodes follow each run (see
    :func:`run_resources`); ``devices_per_run`` (GPUs per run, 0 for CPU, None: as each config says) and
    ``nodes`` are what the sweep's command lines ask Lightning for."""

    partition: str | None = None
    time_min: int = 240
    devices_per_run: int | None = None
    nodes: int = 1
    cpus_per_task: int = 8
    mem_gb: int | None = None
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None

    def parameters(self, name: str, resources: Resources | None = None) -> dict[str, Any]:
        """The ``AutoExecutor.update_parameters`` arguments for runs that need ``resources``."""
        if resources is None:
            gpus = self.devices_per_run or 0
            resources = Resources(self.nodes, max(1, gpus), gpus)
        params: dict[str, Any] = {
            "name": name,
            "timeout_min": self.time_min,
            "nodes": resources.nodes,
            "tasks_per_node": resources.tasks_per_node,
            "cpus_per_task": self.cpus_per_task,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_additional_parameters": {"requeue": True},  # preempted / failed-node jobs come back
        }
        if resources.gpus_per_node:
            params["gpus_per_node"] = resources.gpus_per_node
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        extra = {
            "slurm_partition": self.partition,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
        }
        params.update({k: v for k, v in extra.items() if v})
        return params


#: words in SLURM's refusal -> the sbatch option it is about and the submitit parameter that set it
_SBATCH_OPTIONS = (
    ("gres", "--gpus-per-node", "gpus_per_node"),
    ("gpu", "--gpus-per-node", "gpus_per_node"),
    ("partition", "--partition", "slurm_partition"),
    ("account", "--account", "slurm_account"),
    ("qos", "--qos", "slurm_qos"),
    ("feature", "--constraint", "slurm_constraint"),
    ("constraint", "--constraint", "slurm_constraint"),
    ("time limit", "--time", "timeout_min"),
    ("--time", "--time", "timeout_min"),
    ("processors", "--cpus-per-task", "cpus_per_task"),
    ("memory", "--mem", "mem_gb"),
    ("ntasks-per-node", "--ntasks-per-node", "tasks_per_node"),
    ("cpus-per-task", "--cpus-per-task", "cpus_per_task"),
    ("node count", "--nodes", "nodes"),
)
_RESOURCE_OPTIONS = (
    ("--nodes", "nodes"),
    ("--ntasks-per-node", "tasks_per_node"),
    ("--cpus-per-task", "cpus_per_task"),
    ("--mem", "mem_gb"),
    ("--gpus-per-node", "gpus_per_node"),
    ("--partition", "slurm_partition"),
)


def _flag(option: str, key: str, params: dict[str, Any]) -> str:
    value = params.get(key)
    value = f"{value}GB" if key == "mem_gb" and value else value
    return f"{option}={value}" if value is not None else f"{option} (not set)"


def sbatch_error(err: BaseException, params: dict[str, Any]) -> str:
    """One line from a failed submission: SLURM's message and the option(s) it is about."""
    text = str(err)
    lines = [ln.strip() for ln in text.splitlines() if "error:" in ln]
    message = "; ".join(ln.split("error:", 1)[1].strip() for ln in lines) or (text.strip().splitlines() or [""])[-1]
    low = message.lower()
    options = [_flag(o, k, params) for word, o, k in _SBATCH_OPTIONS if word in low]
    if not options and ("node configuration" in low or "resource" in low):
        options = [_flag(o, k, params) for o, k in _RESOURCE_OPTIONS if k in params]
    options = list(dict.fromkeys(options))
    return f"sbatch refused the jobs ({' '.join(options) or 'see the options above'}): {message}"

"""Where runs execute: local slots (one run per GPU group, or N CPU workers) or SLURM through submitit.

An executor gets ``(run, folder, command)`` items whose folders are not ``done`` and runs them; every run's
outcome lands in its ``status.json``, so a failing run never stops the others. On SLURM, the resources of a
job follow its run (GPUs only when the run trains on GPUs), preempted jobs are requeued and resume from the
run's last checkpoint, and SLURM's refusals come back as one-line :class:`SlurmError` messages.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tsdiffusion.benchmark.runs import (
    LOG_NAME,
    error_tail,
    finish_run,
    last_checkpoint,
    read_status,
    start_run,
    write_status,
)
from tsdiffusion.benchmark.spec import Run


@dataclass(frozen=True)
class Item:
    """A run to execute: its folder and command line."""

    run: Run
    folder: Path
    command: list[str]


# -- progress -------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Counts of a sweep's runs, printed to stderr as ``done d | running r | failed f | left l``."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    start: float = field(default_factory=time.perf_counter)
    stream: Any = None

    def line(self) -> str:
        left = self.total - self.done - self.failed - self.running
        elapsed = time.perf_counter() - self.start
        return (
            f"[{elapsed:6.0f}s] done {self.done} | running {self.running} | failed {self.failed} "
            f"| left {left} (of {self.total})"
        )

    def show(self, message: str | None = None) -> None:
        out = self.stream or sys.stderr
        if message:
            print(message, file=out)
        print(self.line(), file=out, flush=True)

    def finished(self, item: Item, status: dict[str, Any]) -> None:
        """Count a finished run (the executor keeps ``running`` up to date) and print its outcome."""
        if status["state"] == "done":
            self.done += 1
            self.show(f"done    {item.run.id} ({status.get('wall_time_s', 0):.0f}s)")
        else:
            self.failed += 1
            last = (status.get("error_tail") or status.get("error") or "").strip().splitlines()[-1:]
            self.show(f"FAILED  {item.run.id}: {' '.join(last) or status.get('error')} (log: {item.folder}/log.txt)")


# -- local ----------------------------------------------------------------------------------------


def gpu_slots(gpus: Sequence[int], devices_per_run: int) -> list[dict[str, str]]:
    """Split GPU ids into groups of ``devices_per_run``; each group is one slot's ``CUDA_VISIBLE_DEVICES``.

    >>> gpu_slots([0, 1, 2, 3], 2)
    [{'CUDA_VISIBLE_DEVICES': '0,1'}, {'CUDA_VISIBLE_DEVICES': '2,3'}]
    """
    if devices_per_run < 1 or len(gpus) < devices_per_run:
        raise ValueError(f"{len(gpus)} GPUs cannot hold runs of {devices_per_run} devices")
    groups = [gpus[i : i + devices_per_run] for i in range(0, len(gpus) - devices_per_run + 1, devices_per_run)]
    return [{"CUDA_VISIBLE_DEVICES": ",".join(map(str, g))} for g in groups]


def cpu_slots(workers: int, cores: int | None = None) -> list[dict[str, str]]:
    """``workers`` CPU slots; each child sees no GPU and gets an equal share of the cores as threads."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    threads = str(max(1, (cores or os.cpu_count() or 1) // workers))
    return [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}] * workers


def parse_gpus(value: str | None) -> list[int]:
    """``"0,1,3"`` -> [0, 1, 3]; ``"auto"`` -> every visible GPU; None or ``""`` -> []."""
    if not value:
        return []
    if value == "auto":
        import torch

        return list(range(torch.cuda.device_count()))
    return [int(g) for g in value.split(",") if g.strip()]


class LocalExecutor:
    """Runs items as child processes on this machine, one per slot (the slot's env is the child's only).

    Args:
        slots: one environment per concurrent run (see :func:`gpu_slots`, :func:`cpu_slots`).
        poll_s: how often finished children are collected.
    """

    def __init__(self, slots: Sequence[dict[str, str]], poll_s: float = 0.5):
        if not slots:
            raise ValueError("LocalExecutor needs at least one slot")
        self.slots, self.poll_s = list(slots), poll_s

    def run(self, items: Sequence[Item], progress: Progress) -> None:
        queue, running = list(items), {}  # slot index -> (item, process)
        try:
            while queue or running:
                for slot in [s for s in range(len(self.slots)) if s not in running]:
                    if not queue:
                        break
                    item = queue.pop(0)
                    running[slot] = (item, start_run(item.folder, item.command, self.slots[slot]))
                    progress.running += 1
                    progress.show(f"started {item.run.id} (slot {slot})")
                time.sleep(self.poll_s)
                for slot, (item, proc) in list(running.items()):
                    if proc.poll() is not None:
                        del running[slot]
                        progress.running -= 1
                        progress.finished(item, finish_run(item.folder, proc))
        finally:
            self._stop(running)

    @staticmethod
    def _stop(running: dict) -> None:
        """On an interrupt: stop the children; their runs stay unfinished and resume on the next sweep."""
        for _, proc in running.values():
            proc.terminate()
        for item, proc in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.log_file.close()
            write_status(item.folder, "pending", note="interrupted: the sweep was stopped", returncode=proc.returncode)


# -- SLURM ----------------------------------------------------------------------------------------

ENDED = frozenset(
    {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT"}
)
#: pending reasons that do not go away by waiting: the job asks for what its partition or account cannot give
CANNOT_START = frozenset(
    {"BadConstraints", "InvalidAccount", "InvalidQOS", "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit"}
)
NOT_AVAILABLE = (
    "SLURM is not available here (no `sbatch` on PATH): submit from a login node of your cluster, or run the "
    "sweep on this machine with `--executor local` (the default; `--workers N` runs N CPU runs at once)"
)


class SlurmError(RuntimeError):
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
    return Resources(nodes=nodes, tasks_per_node=count or 1, gpus_per_node=count if gpu else 0)


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


def _one_line(text: str) -> str:
    return " ".join(ln.strip() for ln in text.strip().splitlines() if ln.strip())


def queue_states(job_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason)}`` of the jobs still known to SLURM (``squeue``; finished jobs stay listed
    for ``MinJobAge`` seconds, then vanish). Array tasks appear as ``<array id>_<index>``."""
    arrays = sorted({str(j).split("_")[0] for j in job_ids})
    cmd = ["squeue", "-h", "-r", "--states=all", "-o", "%i|%T|%r", "-j", ",".join(arrays)]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise SlurmError(NOT_AVAILABLE) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"squeue -j {','.join(arrays)} did not answer within 120 s") from None
    if out.returncode != 0:
        message = _one_line(out.stderr or out.stdout)
        if "invalid job id" in message.lower():  # every job of ours has left the controller's memory
            return {}
        raise SlurmError(f"squeue -j {','.join(arrays)} failed: {message or f'exit code {out.returncode}'}")
    states = {}
    for line in out.stdout.splitlines():
        job_id, state, reason = [*line.split("|"), "", ""][:3]
        states[job_id.strip()] = (state.strip(), reason.strip())
    return states


def resume_command(folder: Path, command: Sequence[str]) -> list[str]:
    """``command`` with ``--ckpt_path <folder>/checkpoints/last.ckpt`` when that exists and none is given."""
    ckpt = last_checkpoint(folder)
    return [*command, "--ckpt_path", str(ckpt)] if ckpt and "--ckpt_path" not in command else list(command)


def _job_id() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def _requeue_signal() -> signal.Signals:
    """submitit's preemption signal (``--signal=USR2@90`` unless ``SUBMITIT_PREEMPT_SIGNAL`` says another)."""
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _stop_child(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM (Lightning stops at the next batch), then SIGKILL after ``grace_s``; polls, never blocks."""
    for sig_send, wait_s in ((proc.terminate, grace_s), (proc.kill, 10.0)):
        if proc.poll() is not None:
            return
        sig_send()
        deadline = time.monotonic() + wait_s
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)


class SlurmRun:
    """What a SLURM job runs: one run to completion on its node, resumable and checkpointable.

    The job starts from ``checkpoints/last.ckpt`` when the folder has one (a requeued or restarted job goes on
    where the last attempt saved). The run itself writes ``last.ckpt`` at the end of every training epoch with
    the random state, so a resumed run ends with the same weights and metrics as an uninterrupted one.

    Preemption: on submitit's requeue signal (``USR2``, sent ``signal_delay_s`` before the time limit or by
    ``scancel --signal=USR2``), submitit calls :meth:`checkpoint`: the run's process is stopped, the run
    becomes ``pending`` and submitit requeues the job, which resumes from the last epoch's checkpoint (the
    work of the interrupted epoch is redone; exact resumption needs an epoch boundary). The run's process
    does not see that signal (it is blocked there), so it never dies halfway through writing a checkpoint.
    ``SIGTERM`` (``scancel``, the time limit, preemption without requeue) stops the run; it is marked
    ``failed`` with the reason and the next sweep resumes it from its checkpoint.

    Only task 0 (``SLURM_PROCID``) writes the status and ``log.txt``; the other tasks are the other DDP ranks
    and log to ``log.rank<N>.txt``.
    """

    grace_s = 60.0

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._terminated = False

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def __call__(self, folder: str, command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
        path = Path(folder)
        command = resume_command(path, command)
        rank = int(os.environ.get("SLURM_PROCID", "0"))
        if rank != 0:
            with open(path / f"log.rank{rank}.txt", "a") as log:
                code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
            return {"state": "done" if code == 0 else "failed", "returncode": code, "rank": rank}
        previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            write_status(path, "running", job_id=_job_id())
            blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {_requeue_signal()})  # the child inherits the mask
            try:
                self._proc = start_run(path, command, env)
            finally:
                signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
            while self._proc.poll() is None:  # polling: submitit's handler may stop the child meanwhile
                time.sleep(0.5)
            status = finish_run(path, self._proc)
            if self._terminated and status["state"] != "done":
                why = "stopped by SLURM (SIGTERM: scancel, time limit or preemption); the next sweep resumes it"
                status = write_status(path, "failed", error=why, error_tail=status.get("error_tail", ""))
            return status
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        self._terminated = True
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def checkpoint(self, folder: str, command: list[str], env: dict[str, str] | None = None):
        """Called by submitit on the requeue signal: stop the run, mark it ``pending``, requeue the job."""
        from submitit.helpers import DelayedSubmission

        path, proc = Path(folder), self._proc
        if proc is not None:
            _stop_child(proc, self.grace_s)
            proc.log_file.close()  # type: ignore[attr-defined]
        with open(path / LOG_NAME, "a") as log:
            log.write(f"\n=== requeue signal: stopped (exit {proc and proc.returncode}); the job is requeued\n")
        write_status(path, "pending", job_id=_job_id(), note="preempted: requeued, resumes from checkpoints/last.ckpt")
        return DelayedSubmission(SlurmRun(), folder, command, env)


class SlurmExecutor:
    """Submits the items as submitit job arrays (one per kind of resources, see :func:`run_resources`); each
    job runs :class:`SlurmRun` on its node. While waiting it prints the queue's pending / running counts.

    Args:
        folder: submitit's folder (job scripts, pickles, SLURM logs), usually ``<sweep_dir>/slurm``.
        options: SLURM options per run.
        cluster: submitit's ``cluster`` (None or ``"slurm"``: SLURM; ``"debug"`` or ``"local"`` for tests).
        wait: wait for the jobs and show progress; otherwise return after submitting.
        make_executor: builds the submitit executor (tests inject one).
        poll_s: seconds between two looks at the queue.
        max_queue_failures: consecutive ``squeue`` failures before giving up waiting (the jobs go on).
    """

    def __init__(
        self,
        folder: Path,
        options: SlurmOptions,
        cluster: str | None = None,
        wait: bool = True,
        make_executor: Callable[..., Any] | None = None,
        poll_s: float = 10.0,
        max_queue_failures: int = 30,
    ):
        self.folder, self.options, self.cluster, self.wait = Path(folder), options, cluster, wait
        self.make_executor, self.poll_s, self.max_queue_failures = make_executor, poll_s, max_queue_failures

    @property
    def real_slurm(self) -> bool:
        return self.make_executor is None and self.cluster in (None, "slurm")

    def executor(self, name: str, resources: Resources | None = None):
        if self.make_executor is not None:
            return self.make_executor(self.folder)
        try:
            import submitit
        except ImportError as err:  # pragma: no cover - depends on the install
            raise SlurmError("the slurm executor needs submitit: pip install 'tsdiffusion[slurm]'") from err
        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster or "slurm")
        ex.update_parameters(**self.options.parameters(name, resources))
        return ex

    def groups(self, items: Sequence[Item]) -> dict[Resources, list[Item]]:
        """The items grouped by the resources they need (one job array each)."""
        groups: dict[Resources, list[Item]] = {}
        for item in items:
            res = run_resources(item.command)
            if self.options.nodes != res.nodes:
                raise SlurmError(
                    f"--nodes {self.options.nodes} but run {item.run.id} trains on {res.nodes} node(s) "
                    "(trainer.num_nodes): give --devices-per-run with --nodes, or set trainer.num_nodes in its config"
                )
            groups.setdefault(res, []).append(item)
        return groups

    def submit(self, items: Sequence[Item], name: str) -> list[tuple[Any, Item]]:
        """Submit the items; each run's status becomes ``pending`` with its job id. A refusal raises
        :class:`SlurmError` (one line) and leaves the runs it concerns ``pending`` with that error."""
        if self.real_slurm and not shutil.which("sbatch"):
            raise SlurmError(NOT_AVAILABLE)
        submitted: list[tuple[Any, Item]] = []
        for res, group in self.groups(items).items():
            ex = self.executor(name, res)
            try:
                with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's stderr on failure
                    with ex.batch():
                        jobs = [ex.submit(SlurmRun(), str(item.folder), item.command) for item in group]
            except Exception as err:
                message = sbatch_error(err, self.options.parameters(name, res))
                for item in group:
                    item.folder.mkdir(parents=True, exist_ok=True)
                    write_status(item.folder, "pending", job_id=None, error=message)
                raise SlurmError(message) from None
            for item, job in zip(group, jobs):
                item.folder.mkdir(parents=True, exist_ok=True)
                write_status(item.folder, "pending", job_id=str(job.job_id), submitted=True)
            submitted += zip(jobs, group)
        return submitted

    def run(self, items: Sequence[Item], progress: Progress, name: str = "tsdiffusion") -> list:
        if not items:
            return []
        submitted = self.submit(items, name)
        ids = sorted({str(job.job_id).split("_")[0] for job, _ in submitted})
        progress.show(f"submitted {len(submitted)} jobs to {self.cluster or 'slurm'} (job {', '.join(ids)}, folder "
                      f"{self.folder})")  # fmt: skip
        if not self.wait:
            sweep = self.folder.parent
            report_cmd = f"tsdiffusion benchmark report {sweep}"
            progress.show(f"not waiting: `squeue -j {','.join(ids)}` shows them, `{report_cmd}` collects the results")
            return [job for job, _ in submitted]
        if self.real_slurm:
            self._wait_queue(submitted, progress)
        else:
            self._wait_submitit(submitted, progress)
        return [job for job, _ in submitted]

    def _wait_queue(self, submitted: list[tuple[Any, Item]], progress: Progress) -> None:
        """Follow the jobs with ``squeue`` until every one has ended; print the queue when it changes."""
        waiting = {str(job.job_id): item for job, item in submitted}
        failures, shown, shown_at = 0, "", 0.0
        while waiting:
            try:
                states = queue_states(waiting)
                failures = 0
            except SlurmError as err:
                failures += 1
                if failures >= self.max_queue_failures:
                    raise SlurmError(f"{err} ({failures} times; the jobs go on, `tsdiffusion benchmark report "
                                     f"{self.folder.parent}` collects them later)") from None  # fmt: skip
                progress.show(f"warning: {err}; retrying")
                time.sleep(self.poll_s)
                continue
            for job_id, item in list(waiting.items()):
                state, reason = states.get(job_id, ("GONE", ""))
                if state in ENDED or state == "GONE" or (state == "PENDING" and reason in CANNOT_START):
                    del waiting[job_id]
                    progress.running = sum(states.get(j, ("",))[0] == "RUNNING" for j in waiting)
                    status = (
                        self._ended(job_id, item, state)
                        if state != "PENDING"
                        else self._unstartable(job_id, item, reason)
                    )
                    progress.finished(item, status)
            counts = Counter(states.get(j, ("?", ""))[0] for j in waiting)
            reasons = sorted({states[j][1] for j in waiting if j in states and states[j][0] == "PENDING"} - {"None"})
            progress.running = counts["RUNNING"]
            why = f" ({', '.join(reasons)})" if reasons else ""
            line = f"slurm: {counts['PENDING']} pending{why}, {counts['RUNNING']} running"
            other = {s: n for s, n in counts.items() if s not in ("PENDING", "RUNNING")}
            line += "".join(f", {n} {s.lower()}" for s, n in sorted(other.items()))
            if waiting and (line != shown or time.monotonic() - shown_at > 300):
                progress.show(line)
                shown, shown_at = line, time.monotonic()
            if waiting:
                time.sleep(self.poll_s)

    def _wait_submitit(self, submitted: list[tuple[Any, Item]], progress: Progress) -> None:
        """submitit's own job states (its ``debug`` and ``local`` clusters in tests)."""
        waiting = dict(submitted)
        while waiting:
            for job, item in list(waiting.items()):
                if job.done():
                    del waiting[job]
                    status = read_status(item.folder)
                    if status.get("state") not in ("done", "failed"):
                        try:
                            job.result()
                            error = "the job ended without a final status"
                        except Exception as err:
                            error = f"job {job.job_id} failed: {_one_line(str(err))[-500:]}"
                        status = write_status(item.folder, "failed", error=error, error_tail=error)
                    progress.finished(item, status)
            progress.running = sum(read_status(i.folder).get("state") == "running" for i in waiting.values())
            if waiting:
                time.sleep(self.poll_s)

    def _unstartable(self, job_id: str, item: Item, reason: str) -> dict[str, Any]:
        """Cancel a job SLURM will never start (``reason`` in :data:`CANNOT_START`); its run becomes failed."""
        subprocess.run(["scancel", job_id], capture_output=True, timeout=60)
        params = self.options.parameters("", run_resources(item.command))
        flags = " ".join(_flag(o, k, params) for o, k in _RESOURCE_OPTIONS if k in params)
        error = f"job {job_id} cannot start (SLURM: {reason}) and was cancelled; it asks for {flags}"
        return write_status(item.folder, "failed", error=error, error_tail=error)

    def _ended(self, job_id: str, item: Item, state: str) -> dict[str, Any]:
        """The run's status once its job has ended; a job that died before writing one marks it failed."""
        status = read_status(item.folder)
        if status.get("state") in ("done", "failed"):
            return status
        ended = "left the queue" if state == "GONE" else f"ended {state}"
        error = f"job {job_id} {ended} before the run finished; the next sweep resumes it"
        log = self.folder / f"{job_id}_0_log.err"
        return write_status(item.folder, "failed", error=error, error_tail=error_tail(log) or error)

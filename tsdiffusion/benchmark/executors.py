"""Where runs execute: local slots (one run per GPU group, or N CPU workers) or SLURM through submitit.

An executor gets ``(run, folder, command)`` items whose folders are not ``done`` and runs them; every run's
outcome lands in its ``status.json``, so a failing run never stops the others.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsdiffusion.benchmark.runs import execute_run, finish_run, read_status, start_run, write_status
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


@dataclass
class SlurmOptions:
    """SLURM resources per run (submitit parameters). ``devices_per_run`` GPUs and as many tasks per node
    (one DDP rank per task, Lightning reads SLURM's variables); ``nodes`` > 1 for multi-node DDP."""

    partition: str | None = None
    time_min: int = 240
    devices_per_run: int = 1
    nodes: int = 1
    cpus_per_task: int = 8
    mem_gb: int | None = None
    array_parallelism: int = 64
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None

    def parameters(self, name: str) -> dict[str, Any]:
        """The ``AutoExecutor.update_parameters`` arguments."""
        params: dict[str, Any] = {
            "name": name,
            "timeout_min": self.time_min,
            "nodes": self.nodes,
            "tasks_per_node": self.devices_per_run,
            "gpus_per_node": self.devices_per_run,
            "cpus_per_task": self.cpus_per_task,
            "slurm_array_parallelism": self.array_parallelism,
        }
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


class SlurmExecutor:
    """Submits every item as one job of a submitit job array; the job runs :func:`execute_run` on its node.

    Args:
        folder: submitit's folder (job scripts, pickles, SLURM logs), usually ``<sweep_dir>/slurm``.
        options: resources per run.
        cluster: submitit's ``cluster`` (None: SLURM when available; ``"debug"`` or ``"local"`` for tests).
        wait: wait for the jobs and show progress; otherwise return after submitting.
        make_executor: builds the submitit executor (tests inject one).
    """

    def __init__(
        self,
        folder: Path,
        options: SlurmOptions,
        cluster: str | None = None,
        wait: bool = True,
        make_executor: Callable[..., Any] | None = None,
        poll_s: float = 10.0,
    ):
        self.folder, self.options, self.cluster, self.wait = Path(folder), options, cluster, wait
        self.make_executor, self.poll_s = make_executor, poll_s

    def executor(self, name: str):
        if self.make_executor is not None:
            return self.make_executor(self.folder)
        try:
            import submitit
        except ImportError as err:  # pragma: no cover - depends on the install
            raise SystemExit("the slurm executor needs submitit: pip install 'tsdiffusion[slurm]'") from err
        ex = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        ex.update_parameters(**self.options.parameters(name))
        return ex

    def submit(self, items: Sequence[Item], name: str) -> list:
        """Submit the items as one array; each run's status becomes ``pending`` with its job id."""
        ex = self.executor(name)
        with ex.batch():
            jobs = [ex.submit(execute_run, str(item.folder), item.command) for item in items]
        for item, job in zip(items, jobs):
            item.folder.mkdir(parents=True, exist_ok=True)
            write_status(item.folder, "pending", job_id=str(job.job_id), submitted=True)
        return jobs

    def run(self, items: Sequence[Item], progress: Progress, name: str = "tsdiffusion") -> list:
        jobs = self.submit(items, name)
        progress.show(f"submitted {len(jobs)} jobs to {self.cluster or 'slurm'} (folder {self.folder})")
        if not self.wait:
            return jobs
        pending = dict(zip(jobs, items))
        while pending:
            for job, item in list(pending.items()):
                if job.done():
                    del pending[job]
                    progress.finished(item, self._outcome(job, item))
            states = [read_status(i.folder).get("state") for i in pending.values()]
            progress.running = states.count("running")
            if pending:
                time.sleep(self.poll_s)
        return jobs

    @staticmethod
    def _outcome(job, item: Item) -> dict[str, Any]:
        """The run's status after its job ended; a job that died before writing one is marked failed."""
        status = read_status(item.folder)
        if status.get("state") in ("done", "failed"):
            return status
        try:
            job.result()
            error = "the job ended without a final status"
        except Exception as err:
            error = f"job {job.job_id} failed: {err}"
        return write_status(item.folder, "failed", error=error, error_tail=error[-2000:])

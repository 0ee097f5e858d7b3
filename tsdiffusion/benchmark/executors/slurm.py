"""The SLURM executor: runs submitted as submitit job arrays (one per kind of resources), followed with
``squeue`` until they end; jobs SLURM will never start are cancelled and their runs failed."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tsdiffusion.benchmark.executors.progress import Item, Progress
from tsdiffusion.benchmark.executors.slurm_job import SlurmRun
from tsdiffusion.benchmark.executors.slurm_options import (
    _RESOURCE_OPTIONS,
    Resources,
    SlurmError,
    SlurmOptions,
    _flag,
    run_resources,
    sbatch_error,
)
from tsdiffusion.benchmark.run_folder import error_tail, read_status, write_status

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

"""What a SLURM job runs on its node: :class:`SlurmRun`, one run to completion, resumable and requeued on
preemption."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tsdiffusion.benchmark.run_folder import LOG_NAME, finish_run, last_checkpoint, start_run, write_status


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

"""The local executor: one run per slot (a group of GPUs, or a share of the CPU cores) as child processes."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

from tsdiffusion.benchmark.executors.progress import Item, Progress
from tsdiffusion.benchmark.run_folder import finish_run, start_run, write_status


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
        queue = list(items)
        running: dict[int, tuple[Item, subprocess.Popen]] = {}  # slot index -> (item, process)
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

"""What an executor runs (:class:`Item`) and the sweep's progress line (:class:`Progress`)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsdiffusion.benchmark.spec import Run
from tsdiffusion.errors import failure_line


@dataclass(frozen=True)
class Item:
    """A run to execute: its folder and command line."""

    run: Run
    folder: Path
    command: list[str]


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
            why = failure_line(status.get("error_tail") or status.get("error") or "")  # a run's `error: ...` line
            self.show(f"FAILED  {item.run.id}: {why or status.get('error')} (log: {item.folder}/log.txt)")

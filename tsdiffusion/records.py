"""Result records: one ``metrics.json`` per evaluated run, the unit every table is recomputed from.

Schema::

    {"task", "dataset", "model", "config", "seed", "metrics": {name: value}, "wall_time_s", "machine",
     "date", "sampler", "num_samples", "sample_steps", "ckpt_path", "data": {...}}
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

RECORD_NAME = "metrics.json"


def machine_info() -> str:
    """A one-line description of the machine: CPU/GPU, cores, torch version."""
    import torch  # here, not at the top: the sweep process writes files with this module without torch

    if torch.cuda.is_available():
        dev = f"{torch.cuda.device_count()}x {torch.cuda.get_device_name(0)}"
    else:
        cpu = platform.processor() or platform.machine()
        dev = f"CPU {cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    return f"{dev}; torch {torch.__version__}; python {platform.python_version()}; {platform.system()}"


def _plain(value: Any) -> Any:
    if hasattr(value, "numel") and hasattr(value, "tolist"):  # a tensor
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


def make_record(
    *,
    task: str,
    dataset: str,
    model: str,
    metrics: dict[str, Any],
    config: dict[str, Any] | str | None,
    seed: int | None,
    wall_time_s: float,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble a record; metric names lose their ``test/`` prefix; NaN becomes null."""
    clean = {k.split("/", 1)[-1]: _plain(v) for k, v in sorted(metrics.items())}
    record = {
        "task": task,
        "dataset": dataset,
        "model": model,
        "config": config,
        "seed": seed,
        "metrics": clean,
        "wall_time_s": round(float(wall_time_s), 3),
        "machine": machine_info(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record.update({k: _plain(v) for k, v in extra.items()})
    return record


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write ``text`` to a temporary file in the same folder, then rename: readers never see a partial file,
    and two writers never share a temporary name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """:func:`write_text_atomic` of ``obj`` as indented JSON (values JSON cannot hold are written as strings)."""
    return write_text_atomic(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_records(paths: list[str | Path]) -> list[dict[str, Any]]:
    """Load every ``metrics.json`` under the given files or folders."""
    out = []
    for p in map(Path, paths):
        files = sorted(p.rglob(RECORD_NAME)) if p.is_dir() else [p]
        out.extend(json.loads(f.read_text()) for f in files)
    return out

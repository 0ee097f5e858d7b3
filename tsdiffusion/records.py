"""Result records: one ``metrics.json`` per evaluated run, the unit every table is recomputed from.

Schema::

    {"task", "dataset", "model", "config", "seed", "metrics": {name: value}, "wall_time_s", "machine",
     "cpu", "date", "baseline", "flags": {name: count}, "sampler", "num_samples", "sample_steps", "ckpt_path",
     "data": {...}}

``baseline`` is the class name of the task's non-learned baseline (:mod:`tsdiffusion.baselines`), null for a
trained model. ``flags`` lists what makes a run's numbers untrustworthy: metrics logged as ``flag_<name>`` by
the task (e.g. ``flag_extreme_samples``: sampled values far outside the data's range, see
:meth:`tsdiffusion.tasks.base.DiffusionTask.test_step`) with a non-zero count, and ``non_finite`` (the names
of metrics that are NaN or infinite). The benchmark report keeps flagged runs out of its means.
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

from tsdiffusion.streams import STREAMS_VERSION

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


def cpu_model() -> str:
    """The CPU's model name as ``lscpu`` prints it (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def record_flags(metrics: dict[str, Any]) -> dict[str, Any]:
    """``{name: count}`` of the non-zero ``flag_<name>`` metrics, plus ``non_finite``: the metrics that are
    NaN or infinite (None or a string after :func:`_plain`)."""
    flags: dict[str, Any] = {}
    for key, value in metrics.items():
        if key.startswith("flag_"):
            if value:
                flags[key.removeprefix("flag_")] = value
        elif value is None or isinstance(value, str):
            flags.setdefault("non_finite", []).append(key)
    return flags


def baseline_name(config: dict[str, Any] | str | None) -> str | None:
    """The class name of ``model.init_args.baseline`` in a run's config, None for a trained model."""
    init = config.get("model", {}).get("init_args", {}) if isinstance(config, dict) else {}
    spec = init.get("baseline") if isinstance(init, dict) else None
    if not spec:
        return None
    path = spec.get("class_path", "") if isinstance(spec, dict) else str(spec)
    return path.rsplit(".", 1)[-1] or None


def _plain(value: Any) -> Any:
    if hasattr(value, "numel") and hasattr(value, "tolist"):  # a tensor
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else str(value)
    return value


#: How a record's evaluation draws were made: per-window streams (:mod:`tsdiffusion.streams`), so its scores do not
#: depend on the evaluation batch size, the sample chunking, the workers or the number of ranks.
RANDOM_DRAWS = {"scheme": "per-window streams", "version": STREAMS_VERSION, "batch_invariant": True}


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
    """Assemble a record; metric names lose their ``test/`` prefix; NaN becomes null; ``flag_*`` metrics move
    to ``flags`` (:func:`record_flags`)."""
    clean = {k.split("/", 1)[-1]: _plain(v) for k, v in sorted(metrics.items())}
    flags = record_flags(clean)
    clean = {k: v for k, v in clean.items() if not k.startswith("flag_")}
    record = {
        "task": task,
        "dataset": dataset,
        "model": model,
        "config": config,
        "seed": seed,
        "metrics": clean,
        "wall_time_s": round(float(wall_time_s), 3),
        "machine": machine_info(),
        "cpu": cpu_model(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "baseline": baseline_name(config),
        "flags": flags,
        "random_draws": RANDOM_DRAWS,
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
    out: list[dict[str, Any]] = []
    for p in map(Path, paths):
        files = sorted(p.rglob(RECORD_NAME)) if p.is_dir() else [p]
        out.extend(json.loads(f.read_text()) for f in files)
    return out

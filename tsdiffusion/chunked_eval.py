"""Resumable evaluation by chunks of records, with exact aggregation (the full-fold PhysioNet run of issue 27).

A run is a folder holding one JSON file per finished chunk of records, ``records_FIRST-LAST.json``, written
atomically (a temporary file renamed into place), so a killed run loses at most the chunk it was in and a
restarted one skips every record already in a chunk file. Each chunk file holds

* the run's ``config`` (sampler, steps, samples, seed, precision, ...): every chunk of a folder must have the
  same, so chunks of different runs never mix;
* one row per record of metric *sum states* (the quantile-loss sums of :class:`QuantileCRPS`, the sum of
  ``|y|``, and the absolute and squared errors of the sample median, each a float64 sum over the record's scored
  points, and their count), so the aggregate over any set of chunks is the metric of those records computed
  at once, not a mean of chunk means;
* its metadata: torch version, threads, machine type (``lscpu``), git commit, wall and CPU seconds, start and end.

Each record's random draws come from its own generator seeded by :func:`record_seed` ``(seed, index)``, so the
numbers do not depend on the chunk size, the order in which chunks ran or on which run did them: a resumed run
gives what an uninterrupted one gives (``tests/test_chunked_eval.py``). :func:`aggregate` sums the rows in
record order with ``math.fsum`` (correctly rounded, so independent of the order too).
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from tsdiffusion.metrics import QuantileCRPS, sample_quantiles
from tsdiffusion.records import write_json_atomic

CHUNK_PATTERN = re.compile(r"^records_(\d+)-(\d+)\.json$")
SUM_KEYS = ("abs_target", "abs_err", "sq_err", "n")


def record_seed(seed: int, index: int) -> int:
    """The seed of record ``index``'s generator: distinct for every (seed, index) with index < 1_000_003, and
    ``seed + index`` for seed 0 (the convention of ``eval_official_checkpoint.py``)."""
    return 1_000_003 * int(seed) + int(index)


def record_sums(samples: Tensor, target: Tensor, mask: Tensor, crps: QuantileCRPS | None = None) -> dict:
    """Sum states of one record. samples (1, S, L, K), target and mask (1, L, K), normalised units.

    ``qloss``: Σ_i m_i 2|(Q_q,i - y_i)(1{y_i <= Q_q,i} - q)| per quantile level q; ``abs_target``: Σ m |y|;
    ``abs_err`` / ``sq_err``: Σ m |median - y| and Σ m (median - y)^2; ``n``: Σ m.
    """
    crps = crps or QuantileCRPS()
    mask = mask.bool()
    crps.reset()
    crps.update(samples, target, mask)
    err = (sample_quantiles(samples, [0.5])[0] - target)[mask].double()
    return {"qloss": crps.qloss.tolist(), "abs_target": crps.abs_target.item(), "abs_err": err.abs().sum().item(),
            "sq_err": err.pow(2).sum().item(), "n": int(mask.sum())}  # fmt: skip


def aggregate(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """CRPS, MAE and RMSE (of the median) over the records of ``rows`` from their sum states, exactly."""
    rows = sorted(rows, key=lambda r: r["index"])
    if not rows:
        raise ValueError("aggregate: no records")
    levels = len(rows[0]["qloss"])
    qloss = [math.fsum(r["qloss"][j] for r in rows) for j in range(levels)]
    tot = {k: math.fsum(r[k] for r in rows) for k in SUM_KEYS}
    return {
        "records": len(rows),
        "targets": int(tot["n"]),
        "crps": math.fsum(qloss) / levels / tot["abs_target"],
        "mae_median": tot["abs_err"] / tot["n"],
        "rmse_median": math.sqrt(tot["sq_err"] / tot["n"]),
        "seconds": math.fsum(r.get("seconds", 0.0) for r in rows),
    }


def machine_type() -> str:
    """The CPU model and its vector / matrix units, e.g. ``"AMD EPYC; 2 CPUs; AVX2, no AVX-512, no bf16 units"``."""
    model, cpus = platform.processor() or platform.machine(), os.cpu_count()
    if shutil.which("lscpu"):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
        model = fields.get("Model name", model).strip()
        cpus = fields.get("CPU(s)", cpus)
    from tsdiffusion.hardware import cpu_flags

    flags = cpu_flags()
    units = ["AVX-512" if "avx512f" in flags else ("AVX2" if "avx2" in flags else "no AVX2")]
    if "avx512f" not in flags:
        units.append("no AVX-512")
    bf16 = [n for n, f in (("AMX", "amx_bf16"), ("AVX512-BF16", "avx512_bf16")) if f in flags]
    units.append("bf16: " + "+".join(bf16) if bf16 else "no bf16 units")
    return f"{model}; {str(cpus).strip()} CPUs; {', '.join(units)}"


def git_commit(path: str | Path = ".") -> str | None:
    """The commit checked out at ``path`` (with ``+dirty`` if the tree has changes), or None outside git."""
    try:
        run = lambda *a: subprocess.run(["git", *a], cwd=path, capture_output=True, text=True, check=True).stdout
        head = run("rev-parse", "--short=12", "HEAD").strip()
        dirty = run("status", "--porcelain", "--untracked-files=no", "--", "tsdiffusion").strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def chunk_name(indices: Sequence[int]) -> str:
    return f"records_{min(indices):04d}-{max(indices):04d}.json"


class ChunkedRun:
    """One run's folder of chunk files. ``config``: what makes its numbers (compared with every chunk's)."""

    def __init__(self, folder: str | Path, config: Mapping[str, Any]) -> None:
        self.folder, self.config = Path(folder), json.loads(json.dumps(dict(config)))

    def chunks(self) -> list[dict]:
        """Every chunk file of the folder, checked against ``config``."""
        out = []
        for path in sorted(self.folder.glob("records_*.json")):
            if not CHUNK_PATTERN.match(path.name):
                continue
            chunk = json.loads(path.read_text())
            if chunk["config"] != self.config:
                diff = {k: (chunk["config"].get(k), v) for k, v in self.config.items() if chunk["config"].get(k) != v}
                raise ValueError(f"{path}: made with another config (chunk, this run): {diff}")
            out.append(chunk)
        return out

    def rows(self) -> dict[int, dict]:
        """Record index -> its row, over all chunks (a record in two chunks must have the same sums)."""
        rows: dict[int, dict] = {}
        for chunk in self.chunks():
            for row in chunk["rows"]:
                old = rows.setdefault(row["index"], row)
                if {k: v for k, v in old.items() if k != "seconds"} != {k: v for k, v in row.items() if k != "seconds"}:
                    raise ValueError(f"{self.folder}: record {row['index']} is in two chunks with different sums")
        return rows

    def run(
        self,
        indices: Sequence[int],
        evaluate: Callable[[int], dict],
        chunk_size: int,
        *,
        metadata: Mapping[str, Any] | None = None,
        max_chunks: int | None = None,
        log: Callable[[str], None] | None = print,
        on_chunk: Callable[[Path], None] | None = None,
    ) -> list[Path]:
        """Evaluate the records of ``indices`` that no chunk holds yet, ``chunk_size`` at a time (at most
        ``max_chunks`` chunks), writing each chunk file when its last record is done. ``evaluate(index)``
        returns the record's row (sum states; ``seconds`` is added). Returns the chunk files written."""
        self.folder.mkdir(parents=True, exist_ok=True)
        done = self.rows()
        todo = [i for i in indices if i not in done]
        total, already = len(indices), len(indices) - len(todo)
        written: list = []
        spent, started_at = 0.0, time.perf_counter()
        meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": machine_type(),
                "python": platform.python_version(), "commit": git_commit(Path(__file__).parent),
                **dict(metadata or {})}  # fmt: skip
        for start in range(0, len(todo), chunk_size):
            if max_chunks is not None and len(written) >= max_chunks:
                break
            part = todo[start : start + chunk_size]
            began, wall0, cpu0 = _now(), time.perf_counter(), time.process_time()
            rows = []
            for i in part:
                t0 = time.perf_counter()
                row = {"index": int(i), **evaluate(i)}
                rows.append({**row, "seconds": time.perf_counter() - t0})
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            chunk = {"config": self.config, "rows": rows,
                     "meta": {**meta, "wall_s": wall, "cpu_s": cpu, "started": began, "finished": _now(),
                              "load_avg": os.getloadavg() if hasattr(os, "getloadavg") else None}}  # fmt: skip
            path = write_json_atomic(self.folder / chunk_name(part), chunk)
            written.append(path)
            spent += wall
            if log is not None:
                so_far = aggregate([*done.values(), *self._rows(written)])
                name, n = self.config.get("name", self.folder.name), start + len(part)
                log(progress_line(name, already + n, total, spent / n, so_far))
            if on_chunk is not None:
                on_chunk(path)
        if log is not None and not written:
            log(f"[{self.config.get('name', self.folder.name)}] {already}/{total} records already done "
                f"({time.perf_counter() - started_at:.0f} s)")  # fmt: skip
        return written

    @staticmethod
    def _rows(paths: Iterable[Path]) -> list[dict]:
        return [row for p in paths for row in json.loads(p.read_text())["rows"]]

    def summary(self, indices: Sequence[int] | None = None) -> dict[str, Any]:
        """The aggregate over the records done (of ``indices`` if given), with wall / CPU time over chunks."""
        chunks = self.chunks()
        rows = self.rows()
        if indices is not None:
            rows = {i: r for i, r in rows.items() if i in set(indices)}
        out = aggregate(rows.values())
        out["wall_s_chunks"] = math.fsum(c["meta"]["wall_s"] for c in chunks)
        out["cpu_s_chunks"] = math.fsum(c["meta"]["cpu_s"] for c in chunks)
        out["machines"] = sorted({c["meta"]["machine"] for c in chunks})
        out["torch"] = sorted({c["meta"]["torch"] for c in chunks})
        out["chunks"] = len(chunks)
        return out


def progress_line(name: str, done: int, total: int, seconds_per_record: float, summary: Mapping[str, Any]) -> str:
    """``[name] 24/799 records (3.0%), 41.2 s/record this run, ETA 8h 52m (2026-12-08 06:10 UTC), CRPS so far ...``"""
    left = (total - done) * seconds_per_record
    eta = datetime.now(timezone.utc) + timedelta(seconds=left)
    return (f"[{name}] {done}/{total} records ({100 * done / max(total, 1):.1f}%), {seconds_per_record:.1f} "
            f"s/record this run, ETA {_duration(left)} ({eta:%Y-%m-%d %H:%M} UTC); CRPS so far "
            f"{summary['crps']:.4f} over {summary['records']} records")  # fmt: skip


def _duration(seconds: float) -> str:
    m = int(seconds // 60)
    d, h, m = m // 1440, m // 60 % 24, m % 60
    return (f"{d}d " if d else "") + (f"{h}h " if d or h else "") + f"{m}m"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def imputation_evaluator(
    task, dataset, seed: int, *, autocast_dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> Callable[[int], dict]:
    """``evaluate(index)`` for :meth:`ChunkedRun.run`: record ``index`` of ``dataset`` imputed by ``task.sample``
    (``task.hparams.num_samples`` samples, held-out points ``target_mask``) with the generator of
    :func:`record_seed` ``(seed, index)``, scored by :func:`record_sums`; the denoiser under autocast in
    ``autocast_dtype`` if given (float32 otherwise)."""
    from torch.utils.data import default_collate

    crps, device = QuantileCRPS(), torch.device(device)

    def evaluate(index: int) -> dict:
        batch = {k: v.to(device) for k, v in default_collate([dataset[index]]).items()}
        gen = torch.Generator(device=device).manual_seed(record_seed(seed, index))
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            drawn = task.sample(batch, task.eval_cond_mask(batch), generator=gen).float()
        return record_sums(drawn, batch["observed"], batch["target_mask"], crps)

    return evaluate

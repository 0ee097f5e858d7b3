"""The official CSDI PhysioNet checkpoint on the fold-0 test records, resumable by chunk of records (issue 27).

    # the full fold with DPM-Solver++(2M)-10, one chunk file per 8 records, each committed as it is written:
    nice -n 19 python benchmarks/reference/eval_fullfold.py --data /work/shared/data/physionet2012/set-a.tar.gz \
        --checkpoint /work/ref/CSDI/save/pretrained/model.pth --run dpmpp:10 --commit
    # the sampler check: the first 64 records with DPM-Solver++(2M)-10 and DDPM-50, chunks interleaved:
    ... --run dpmpp:10 --run ddpm:50 --records 64 --chunk-size 4
    # each run's CRPS on the records all runs have done, against the first run's (the sampler decision):
    ... --run ddpm:50 --run dpmpp:10 --run dpmpp:5 --records 64 --compare
    # the record (and the partial summary) from the chunks committed so far, no sampling:
    ... --run dpmpp:10 --aggregate

Each ``--run SAMPLER:STEPS`` has its own folder ``<results>/<name>/`` (name: sampler, steps, samples, held-out
ratio, seed, precision) of chunk files ``records_FIRST-LAST.json`` (:mod:`tsdiffusion.chunked_eval`): per-record
metric sum states, the run's config and each chunk's metadata (torch, threads, machine type from lscpu, commit,
wall and CPU seconds). A killed run restarted with the same command continues with the first record no chunk
holds; records draw from generators seeded by (seed, record index), so the numbers do not depend on chunking or
interruptions. Several ``--run`` go chunk by chunk in turn, so a stopped check compares the samplers on the same
records. ``--aggregate`` writes ``<results>/<name>/summary.json`` and the record
``benchmarks/results/imputation/physionet/csdi_official_<name>.json`` (``PARTIAL`` in its note until all 799).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from tsdiffusion.chunked_eval import ChunkedRun, git_commit, imputation_evaluator, machine_type
from tsdiffusion.hardware import precision_policy
from tsdiffusion.records import make_record, write_json_atomic

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks/results/imputation/physionet"
FOLD_RECORDS = 799


def run_config(sampler: str, steps: int | None, args: argparse.Namespace, precision: str, sha: str) -> dict:
    """What makes a run's numbers: chunks of one folder must share it."""
    prec = "bf16" if precision.startswith("bf16") else "fp32"
    name = f"{sampler}{steps or 50}_{args.samples}samples_{round(100 * args.missing_ratio)}pct_seed{args.seed}_{prec}"
    return {"name": name, "sampler": sampler, "steps": steps, "samples": args.samples, "seed": args.seed,
            "record_seed": "1_000_003 * seed + record index", "precision": precision,
            "missing_ratio": args.missing_ratio, "fold": 0, "data_seed": 1, "protocol": "csdi",
            "checkpoint_sha256": sha, "process": {"num_steps": 50, "schedule": "quad", "beta_end": 0.5}}  # fmt: skip


def commit_chunk(path: Path, tries: int = 20) -> None:
    """``git commit --only`` of one chunk file (other staged changes stay staged); retried while another git
    command holds the index lock."""
    rel = path.relative_to(ROOT)
    for _ in range(tries):
        add = subprocess.run(["git", "add", "--", str(rel)], cwd=ROOT, capture_output=True, text=True)
        msg = f"fullfold chunk {rel.parent.name}/{rel.name} (eval_fullfold.py --commit)"
        com = subprocess.run(["git", "commit", "-q", "-m", msg, "--only", "--", str(rel)], cwd=ROOT,
                             capture_output=True, text=True)  # fmt: skip
        if add.returncode == 0 and com.returncode == 0:
            return
        if "index.lock" not in add.stderr + com.stderr:
            print(f"commit of {rel} failed: {add.stderr}{com.stderr}", file=sys.stderr, flush=True)
            return
        time.sleep(3)


def write_record(run: ChunkedRun, config: dict, indices: list[int]) -> Path:
    """``summary.json`` in the run's folder and the record ``csdi_official_<name>.json`` one folder above it."""
    summary = run.summary(indices)
    write_json_atomic(run.folder / "summary.json", summary)
    n = summary["records"]
    yaml_config = (ROOT / "experiments/imputation/physionet/csdi_official_checkpoint.yaml").read_text()
    partial = n < FOLD_RECORDS
    done = sorted(run.rows().keys() & set(indices))
    spans = ", ".join(f"{a}-{b}" for a, b in _spans(done))
    note = (f"{f'PARTIAL: {n} of the' if partial else 'All'} {FOLD_RECORDS} fold-0 test records (indices {spans}) "
            f"of set-a ({round(100 * config['missing_ratio'])}% held out, CSDI's protocol); paper (DDPM-50, full "
            f"fold): CRPS 0.238 / MAE 0.217 / RMSE 0.498. Nothing trained: the authors' save/pretrained/model.pth "
            f"through our data pipeline, ImputationTask.sample and metrics (normalised units), aggregated exactly "
            f"from per-record sum states in {summary['chunks']} chunk files under "
            f"fullfold/{config['name']}/ "
            f"(benchmarks/reference/eval_fullfold.py). wall_time_s: the chunks' wall time summed, on "
            f"{'; '.join(summary['machines'])}, shared with other jobs (not an idle-machine figure).")  # fmt: skip
    record = make_record(
        task="ImputationTask", dataset="physionet", model="PretrainedCSDIDenoiser (official CSDI checkpoint)",
        metrics={k: summary[k] for k in ("crps", "mae_median", "rmse_median")}, config=yaml_config,
        seed=config["seed"], wall_time_s=summary["wall_s_chunks"], sampler=config["sampler"],
        sample_steps=config["steps"] or 50, num_samples=config["samples"], precision=config["precision"],
        cpu_time_s=summary["cpu_s_chunks"], machine_types=summary["machines"], torch_versions=summary["torch"],
        data={"fold": 0, "seed": 1, "missing_ratio": config["missing_ratio"], "test_records": n, "indices": spans,
              "test_records_in_fold": FOLD_RECORDS, "targets": summary["targets"]},
        note=note,
    )  # fmt: skip
    out = run.folder.parent.parent / f"csdi_official_{config['name']}.json"
    write_json_atomic(out, record)
    return out


def _spans(indices: list[int]) -> list[tuple[int, int]]:
    """Sorted indices -> runs of consecutive ones as (first, last)."""
    out: list[list[int]] = []
    for i in indices:
        if out and i == out[-1][1] + 1:
            out[-1][1] = i
        else:
            out.append([i, i])
    return [(a, b) for a, b in out]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="/work/shared/data/physionet2012/set-a.tar.gz", help="set-a.tar.gz")
    p.add_argument("--checkpoint", default=None, help="local copy of model.pth (default: download, sha256-checked)")
    p.add_argument("--results", type=Path, default=RESULTS / "fullfold")
    p.add_argument(
        "--run",
        action="append",
        default=None,
        metavar="SAMPLER:STEPS",
        help="e.g. dpmpp:10 or ddpm:50; repeat for several runs, chunks in turn (default dpmpp:10)",
    )
    p.add_argument("--records", type=int, default=FOLD_RECORDS, help="the first N test records of fold 0")
    p.add_argument("--first", type=int, default=0, help="start at this record (another process does the ones before)")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--missing-ratio", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--chunk-size", type=int, default=8)
    p.add_argument("--max-chunks", type=int, default=None, help="stop after this many chunks per run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto", help="auto (the machine's policy), 32-true or bf16-mixed")
    p.add_argument("--commit", action="store_true", help="git commit each chunk file as it is written")
    p.add_argument("--aggregate", action="store_true", help="no sampling: write summary.json and the record")
    p.add_argument(
        "--compare",
        action="store_true",
        help="no sampling: print each run's metrics on the records every run has done (first run = ref)",
    )
    p.add_argument("--cache-dir", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tsdiffusion.denoisers.pretrained import load_official_csdi_physionet, official_checkpoint_path

    ckpt = official_checkpoint_path(args.checkpoint, args.cache_dir)
    sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    precision = precision_policy(args.precision)
    specs = [(s.split(":")[0], int(s.split(":")[1]) if ":" in s else None) for s in (args.run or ["dpmpp:10"])]
    configs = [run_config(sampler, steps, args, precision, sha) for sampler, steps in specs]
    runs = [ChunkedRun(args.results / c["name"], c) for c in configs]
    indices = list(range(args.first, min(args.records, FOLD_RECORDS)))
    scored = list(range(min(args.records, FOLD_RECORDS)))  # what the record aggregates: all done of the first N
    if args.compare:  # the sampler decision: every run on the records all of them have done
        common = set(scored)
        for run in runs:
            common &= run.rows().keys()
        order = sorted(common)
        print(f"{len(order)} records done by all {len(runs)} runs (of the first {len(scored)}): {_spans(order)}")
        base = None
        for run, config in zip(runs, configs):
            s = run.summary(order) if order else {}
            crps = s.get("crps", float("nan"))
            base = crps if base is None else base
            print(
                f"  {config['name']:<44} CRPS {crps:.5f} ({100 * (crps / base - 1):+.2f}% vs the first run)  "
                f"MAE {s.get('mae_median', float('nan')):.5f}  RMSE {s.get('rmse_median', float('nan')):.5f}"
            )
        return
    if args.aggregate:
        for run, config in zip(runs, configs):
            if not run.rows().keys() & set(scored):
                print(f"{run.folder}: no records done yet", flush=True)
                continue
            out = write_record(run, config, scored)
            print(out, json.dumps(run.summary(scored)), flush=True)
        return

    from tsdiffusion.data import PhysioNetDataModule
    from tsdiffusion.tasks import ImputationTask

    dm = PhysioNetDataModule(path=args.data, missing_ratio=args.missing_ratio, cache_dir=args.cache_dir)
    dm.setup("test")
    dataset = dm.test_dataloader().dataset
    assert len(dataset) == FOLD_RECORDS, f"fold 0 has {len(dataset)} test records, expected {FOLD_RECORDS}"
    denoiser = load_official_csdi_physionet(ckpt)
    autocast = torch.bfloat16 if precision.startswith("bf16") else None
    evaluators = []
    ids = dm.record_ids["test"]
    for sampler, steps in specs:
        task = ImputationTask(denoiser, num_samples=args.samples, sampler=sampler, sample_steps=steps).eval()
        evaluate = imputation_evaluator(task, dataset, args.seed, autocast_dtype=autocast)
        evaluators.append(lambda i, f=evaluate, ids=ids: {"record_id": int(ids[i]), **f(i)})
    print(f"{machine_type()}; torch {torch.__version__}, {args.threads} thread(s), precision {precision}; runs "
          f"{[c['name'] for c in configs]} over records {indices[0]}-{indices[-1]}", flush=True)  # fmt: skip
    on_chunk = commit_chunk if args.commit else None
    meta = {"command": " ".join(sys.argv), "commit": git_commit(ROOT)}  # the code this process loaded
    chunks_done = [0] * len(runs)
    while True:  # one chunk of each run in turn
        progressed = False
        for n, (run, evaluate) in enumerate(zip(runs, evaluators)):
            if args.max_chunks is not None and chunks_done[n] >= args.max_chunks:
                continue
            written = run.run(indices, evaluate, args.chunk_size, max_chunks=1, on_chunk=on_chunk,
                              metadata=meta, log=lambda s: print(s, flush=True))  # fmt: skip
            chunks_done[n] += len(written)
            progressed |= bool(written)
        if not progressed:
            break
    for run, config in zip(runs, configs):
        print(write_record(run, config, scored), json.dumps(run.summary(scored)), flush=True)


if __name__ == "__main__":
    main()

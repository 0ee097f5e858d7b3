"""The official CSDI PhysioNet checkpoint through our data pipeline, sampler and metrics, record by record.

    python benchmarks/reference/eval_official_checkpoint.py --data /path/to/set-a.tar.gz --out runs/official \
        --sampler ddpm --records 64
    python benchmarks/reference/eval_official_checkpoint.py --data ... --out runs/official_dpmpp \
        --sampler dpmpp --steps 10 --bf16 --records 64

Fold 0 of set-a with CSDI's protocol (``PhysioNetDataModule``: seed 1, ``--missing-ratio`` held out); the test
records in order, one at a time, ``--samples`` imputations each (``ImputationTask.sample``, generator seeded by
``--seed`` + record index; with ``--batch-records N`` > 1, e.g. on a GPU, N records share one sampler call and
the generator of the first of them). Each finished record appends one JSON line of sum states to ``<out>/records.jsonl``
(quantile-loss sums of ``QuantileCRPS``, Σ|y|, and the absolute and squared errors of the median), so a stopped
run resumes where it was and the partial result is exact for the records done: ``<out>/summary.json`` holds CRPS,
MAE and RMSE (of the median, normalised units, as CSDI reports) over the records finished so far.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

from tsdiffusion.data import PhysioNetDataModule
from tsdiffusion.denoisers.pretrained import load_official_csdi_physionet
from tsdiffusion.metrics import QuantileCRPS, sample_quantiles
from tsdiffusion.tasks import ImputationTask


def record_sums(samples: torch.Tensor, batch: dict, crps: QuantileCRPS) -> dict:
    """Sum states of one record: samples (1, S, L, K) in normalised units."""
    target, mask = batch["observed"], batch["target_mask"].bool()
    crps.reset()
    crps.update(samples, target, mask)
    median = sample_quantiles(samples, [0.5])[0]
    err = (median - target)[mask].double()
    return {"qloss": crps.qloss.tolist(), "abs_target": crps.abs_target.item(), "abs_err": err.abs().sum().item(),
            "sq_err": err.pow(2).sum().item(), "n": int(mask.sum())}  # fmt: skip


def summarise(rows: list[dict]) -> dict:
    qloss = torch.tensor([r["qloss"] for r in rows], dtype=torch.float64).sum(0)
    abs_target, n = sum(r["abs_target"] for r in rows), sum(r["n"] for r in rows)
    return {
        "records": len(rows),
        "targets": n,
        "crps": (qloss.mean() / abs_target).item(),
        "mae_median": sum(r["abs_err"] for r in rows) / n,
        "rmse_median": (sum(r["sq_err"] for r in rows) / n) ** 0.5,
        "seconds": sum(r["seconds"] for r in rows),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="set-a.tar.gz (or its folder)")
    p.add_argument("--checkpoint", default=None, help="local copy of model.pth (default: download, sha256-checked)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--missing-ratio", type=float, default=0.1)
    p.add_argument("--records", type=int, default=799, help="the first N test records of fold 0")
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--sampler", default="ddpm", choices=("ddpm", "ddim", "dpmpp", "dpmpp_sde"))
    p.add_argument("--steps", type=int, default=None, help="denoiser calls (default: all 50)")
    p.add_argument("--bf16", action="store_true", help="denoiser under torch.autocast(cpu, bfloat16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--batch-records", type=int, default=1, help="records per sampler call (GPU: 16-64)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "args.json").write_text(json.dumps({k: str(v) for k, v in vars(args).items()}, indent=1))
    log = args.out / "records.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = {r["index"] for r in rows}

    dm = PhysioNetDataModule(path=args.data, missing_ratio=args.missing_ratio, cache_dir=args.cache_dir)
    dm.setup("test")
    dataset = dm.test_dataloader().dataset
    denoiser = load_official_csdi_physionet(args.checkpoint, cache_dir=args.cache_dir)
    device = torch.device(args.device)
    task = ImputationTask(denoiser, num_samples=args.samples, sampler=args.sampler, sample_steps=args.steps)
    task = task.to(device).eval()
    crps = QuantileCRPS().to(device)
    todo = [i for i in range(min(args.records, len(dataset))) if i not in done]
    for j in range(0, len(todo), args.batch_records):
        chunk = todo[j : j + args.batch_records]
        batch = {k: v.to(device) for k, v in default_collate([dataset[i] for i in chunk]).items()}
        gen = torch.Generator(device=device).manual_seed(args.seed + chunk[0])
        start = time.perf_counter()
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            drawn = task.sample(batch, task.eval_cond_mask(batch), generator=gen).float()
        seconds = (time.perf_counter() - start) / len(chunk)
        for n, i in enumerate(chunk):
            one = {k: v[n : n + 1] for k, v in batch.items()}
            row = {"index": i, "record_id": int(dm.record_ids["test"][i]),
                   **record_sums(drawn[n : n + 1], one, crps), "seconds": seconds}  # fmt: skip
            with log.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
        summary = summarise(sorted(rows, key=lambda r: r["index"]))
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
        print(json.dumps({"index": chunk[-1], **summary}), flush=True)


if __name__ == "__main__":
    main()

"""Turn a (partial) run of eval_official_checkpoint.py into a result record (tsdiffusion.records format).

python benchmarks/reference/write_official_record.py RUN_DIR benchmarks/results/imputation/physionet/NAME.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from tsdiffusion.denoisers.pretrained import OFFICIAL_CSDI_PHYSIONET_SHA256, OFFICIAL_CSDI_PHYSIONET_URL
from tsdiffusion.records import make_record, write_json_atomic

ROOT = Path(__file__).parents[2]


def main(run: Path, out: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    args = json.loads((run / "args.json").read_text())
    config = yaml.safe_load((ROOT / "experiments/imputation/physionet/csdi_official_checkpoint.yaml").read_text())
    n = summary["records"]
    steps = None if args["steps"] == "None" else int(args["steps"])
    record = make_record(
        task="ImputationTask", dataset="physionet", model="PretrainedCSDIDenoiser (official CSDI checkpoint)",
        metrics={k: summary[k] for k in ("crps", "mae_median", "rmse_median")}, config=config, seed=int(args["seed"]),
        wall_time_s=summary["seconds"], sampler=args["sampler"] + ("+bf16" if args["bf16"] == "True" else ""),
        sample_steps=steps, num_samples=int(args["samples"]),
        ckpt_path=f"{OFFICIAL_CSDI_PHYSIONET_URL} (sha256 {OFFICIAL_CSDI_PHYSIONET_SHA256})",
        data={"fold": 0, "seed": 1, "missing_ratio": float(args["missing_ratio"]), "test_records": n,
              "test_records_in_fold": 799, "targets": summary["targets"]},
        note=(f"PARTIAL: the first {n} of the 799 fold-0 test records of set-a only (not comparable to the paper's "
              f"full-fold CRPS 0.238 / MAE 0.217 / RMSE 0.498). Nothing trained: the authors' save/pretrained/"
              f"model.pth through our data pipeline, ImputationTask.sample and metrics (normalised units). "
              f"Command: python benchmarks/reference/eval_official_checkpoint.py --data set-a.tar.gz --out RUN "
              f"--sampler {args['sampler']} --samples {args['samples']} (record by record, resumable); "
              f"wall_time_s is the sampling time of these records on a heavily shared 2-core CPU."),
    )  # fmt: skip
    write_json_atomic(out, record)
    print(out, json.dumps(record["metrics"]), n, "records")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

"""The guided-vs-conditional comparison table from result records (metrics.json files).

    python benchmarks/scripts/guided/compare.py LABEL=PATH/metrics.json ... > table.md

One row per record: task, denoiser, guidance settings (scale, likelihood, Jacobian), sampler, CRPS, CRPS-sum,
the record's wall time (training + test, or test only for a `tsdiffusion test` of a trained checkpoint) and, for
the synthetic sets, the ratio to the exact optimal CRPS / CRPS-sum of the same windows (record data.optimal).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _row(label: str, path: Path) -> str:
    r = json.loads(path.read_text())
    m, args = r["metrics"], r["config"]["model"]["init_args"]
    guid = "-"
    base = args.get("base_forecaster")
    if base:
        name = base["class_path"].rsplit(".", 1)[-1] if isinstance(base, dict) else type(base).__name__
        guid = (f"refine {name}: {args['refine_method']} x{args['refine_iterations']}, "
                f"step {args['refine_step_size']}, prior {args['refine_prior_weight']}")  # fmt: skip
    elif "guidance" in args:
        guid = f"{args['guidance']} w={args['guidance_scale']} J={args.get('guidance_jacobian', 'network')}"
    opt = (r.get("data") or {}).get("optimal") or {}
    ratio = "-"
    if "crps" in opt and "crps_sum" in opt:
        ratio = f"{m['crps'] / opt['crps']:.2f} / {m['crps_sum'] / opt['crps_sum']:.2f}"
    sampler = f"{r.get('sampler')}-{r.get('sample_steps')} x{r.get('num_samples')}"
    return (f"| {label} | {r['task']} | {r['model']} | {guid} | {sampler} | {m['crps']:.4f} | {m['crps_sum']:.4f} | "
            f"{ratio} | {r['wall_time_s']:.0f} |")  # fmt: skip


def main(argv: list[str]) -> None:
    print("| run | task | denoiser | guidance | sampler | CRPS | CRPS-sum | ratio to optimum (CRPS / CRPS-sum) | "
          "record wall s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for arg in argv:
        label, _, path = arg.partition("=")
        print(_row(label, Path(path)))


if __name__ == "__main__":
    main(sys.argv[1:])

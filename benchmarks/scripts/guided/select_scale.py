"""Choose the guidance scale of a guided run on its VALIDATION windows (never the test windows).

    python benchmarks/scripts/guided/select_scale.py --run runs/<name>/version_0 --scales 0.5 1 2 4 8 \
        [--num_samples 16] [--repeats 2] [--out FILE.json]

Builds the run's task from its saved ``config.yaml`` and ``checkpoints/last.ckpt``, and for every scale draws
``num_samples`` samples per validation window with the task's sampler, ``repeats`` independent sample sets with
the same seeds for every scale (tsdiffusion.cli.curve.evaluate_sampler), and prints CRPS / CRPS-sum (mean and
standard error over the sample sets). The best scale by validation CRPS is printed last.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from tsdiffusion.cli.curve import _mean_se, evaluate_sampler
from tsdiffusion.runs import instantiate, read_config


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--scales", nargs="+", type=float, required=True)
    p.add_argument("--num_samples", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max_batches", type=int, default=None)
    p.add_argument("--jacobian", default=None, choices=["network", "identity"], help="default: the run's")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    run = Path(a.run)
    cfg = read_config(run / "config.yaml")  # the fit's saved config, less the fit-only keys (ckpt_path, ...)
    cfg = {k: v for k, v in cfg.items() if k in ("seed_everything", "trainer", "model", "data")}
    built = instantiate(cfg, trainer=False)
    task, dm = built.task, built.datamodule
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    task.load_state_dict(state)
    task.eval()
    dm.setup("validate")
    windows = [b for i, b in enumerate(dm.val_dataloader()) if a.max_batches is None or i < a.max_batches]
    hp = task.hparams
    if a.jacobian:
        hp.guidance_jacobian = a.jacobian
    results = []
    for w in a.scales:
        hp.guidance_scale = w
        t0 = time.perf_counter()
        res = evaluate_sampler(task, windows, hp.sampler, hp.sample_steps, a.num_samples, a.repeats)
        row = {"scale": w, "wall_s": time.perf_counter() - t0}
        for key in ("crps", "crps_sum"):
            row[key], row[f"{key}_se"] = _mean_se(res[key])
        results.append(row)
        print(json.dumps(row), flush=True)
    best = min(results, key=lambda r: r["crps"])
    print(f"best validation scale: {best['scale']} (CRPS {best['crps']:.5f} +- {best['crps_se']:.5f})")
    if a.out:
        Path(a.out).write_text(json.dumps({"run": str(run), "sampler": hp.sampler, "steps": hp.sample_steps,
                                           "guidance": hp.guidance, "jacobian": hp.guidance_jacobian,
                                           "num_samples": a.num_samples, "repeats": a.repeats,
                                           "windows": sum(len(b["observed"]) for b in windows),
                                           "results": results, "best": best["scale"]}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()

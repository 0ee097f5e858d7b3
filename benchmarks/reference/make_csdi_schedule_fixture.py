"""Golden fixture of CSDI's optimiser and learning-rate schedule, written by the reference's own ``utils.train``.

    python benchmarks/reference/make_csdi_schedule_fixture.py --checkout CSDI \
        --out tests/fixtures/reference/csdi_lr_schedule.json

``utils.train`` (ermongroup/CSDI 7f24a43) builds ``Adam(lr=config["lr"], weight_decay=1e-6)`` and
``MultiStepLR(milestones=[int(0.75 * epochs), int(0.9 * epochs)], gamma=0.1)`` stepped once per epoch. It runs here
on a one-parameter stand-in model and a one-batch loader (``itr_per_epoch = 1``) for several epoch budgets;
``torch.optim.Adam`` is wrapped in the reference's module so that every ``step()`` records the learning rate and
the optimiser's settings. Nothing else of the reference runs (no data, no CSDI model); the reference needs only
torch, numpy and tqdm (the project's venv has them). Checked by ``tests/tasks/test_csdi_schedule_reference.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import types
from pathlib import Path

import torch

BUDGETS = [1, 2, 3, 4, 5, 8, 10, 20, 50, 200]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkout", type=Path, required=True, help="ermongroup/CSDI at 7f24a43")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    sys.path.insert(0, str(args.checkout))
    sys.modules.setdefault("linear_attention_transformer", types.SimpleNamespace(LinearAttentionTransformer=None))
    import utils  # the reference's utils.py

    seen: list[dict] = []

    class RecordingAdam(torch.optim.Adam):
        def step(self, closure=None):
            g = self.param_groups[0]
            seen.append({"lr": g["lr"], "weight_decay": g["weight_decay"], "betas": list(g["betas"]), "eps": g["eps"]})
            return super().step(closure)

    utils.Adam = RecordingAdam

    class Stub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def forward(self, batch, is_train=1):
            return (self.w * batch).sum()

    sha = hashlib.sha256((args.checkout / "utils.py").read_bytes()).hexdigest()
    out = {"source": "ermongroup/CSDI 7f24a43 utils.train", "utils_sha256": sha, "lr": 1e-3, "budgets": {}}
    for epochs in BUDGETS:
        seen.clear()
        utils.train(Stub(), {"epochs": epochs, "lr": 1e-3, "itr_per_epoch": 1}, [torch.ones(1)])
        out["budgets"][str(epochs)] = {"lr_per_epoch": [s["lr"] for s in seen], "adam": seen[0] | {"lr": None}}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(args.out, {k: v["lr_per_epoch"][-3:] for k, v in out["budgets"].items()})


if __name__ == "__main__":
    main()

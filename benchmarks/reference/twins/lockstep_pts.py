"""Lockstep twin, reference side (issue 26): pytorch-ts 0.6.0 trains TimeGrad on exchange_rate_nips from a saved
initial state, on batches drawn by its own training loader, with the diffusion steps and noises fixed in advance,
so that ``lockstep_ours.py`` can repeat the same optimisation step by step.

    OMP_NUM_THREADS=1 /work/refenv/pts/bin/python benchmarks/reference/twins/lockstep_pts.py --out DIR [--dropout 0]

Writes ``DIR/lockstep.pt``: the initial and final ``TimeGradTrainingNetwork`` state dicts, the batches (pytorch-ts
field names), the per-step diffusion steps ``t`` (B*T,) and noises (B*T, 1, K), the loss and learning rate of every
step. Training is ``pts.Trainer.__call__`` itself (Adam + OneCycleLR, no clipping); only
``GaussianDiffusion.log_prob`` is replaced by the same computation with the pre-drawn ``t`` and noise.

``--fixture`` writes the golden fixture ``tests/fixtures/reference/timegrad_training.pt`` instead (5 steps of 4
windows, dropout 0; only the state-dict keys the converters map), checked by
``tests/tasks/test_timegrad_training_reference.py``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from timegrad_pts import DATA, load_dataset


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, required=True, help="a folder; with --fixture the fixture's file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--max-lr", type=float, default=1e-2)
    ap.add_argument("--fixture", action="store_true", help="write the test fixture (5 steps of 4 windows)")
    args = ap.parse_args(argv)
    if args.fixture:
        args.steps, args.batch_size, args.dropout = 5, 4, 0.0

    from gluonts.dataset.multivariate_grouper import MultivariateGrouper
    from gluonts.transform import SelectFields
    from pts import Trainer
    from pts.dataset.loader import TransformedIterableDataset
    from pts.model.time_grad import TimeGradEstimator
    from pts.model.utils import get_module_forward_input_names

    torch.set_num_threads(1)
    random.seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset(DATA, Path(tmp))
        K = int(ds.metadata.feat_static_cat[0].cardinality)
        H = ds.metadata.prediction_length
        train = MultivariateGrouper(max_target_dim=K)(ds.train)
    trainer = Trainer(
        device="cpu",
        epochs=1,
        learning_rate=1e-3,
        maximum_learning_rate=args.max_lr,
        num_batches_per_epoch=args.steps,
        batch_size=args.batch_size,
    )
    est = TimeGradEstimator(
        target_dim=K,
        prediction_length=H,
        context_length=H,
        cell_type="LSTM",
        input_size=K * 2 + K + 4,
        freq=ds.metadata.freq,
        loss_type="l2",
        scaling=True,
        diff_steps=100,
        beta_end=0.1,
        beta_schedule="linear",
        dropout_rate=args.dropout,
        trainer=trainer,
    )
    net = est.create_training_network(torch.device("cpu"))
    init = {k: v.clone() for k, v in net.state_dict().items()}
    names = get_module_forward_input_names(net)
    it = iter(
        TransformedIterableDataset(
            train,
            est.create_transformation() + est.create_instance_splitter("training") + SelectFields(names),
            is_train=True,
        )
    )
    batches = []
    for _ in range(args.steps):
        items = [next(it) for _ in range(args.batch_size)]
        batches.append({k: torch.as_tensor(np.stack([np.asarray(i[k]) for i in items])) for k in names})
    batches = [{k: (v.float() if v.is_floating_point() else v) for k, v in b.items()} for b in batches]
    T = est.context_length + est.prediction_length
    g = torch.Generator().manual_seed(1000 + args.seed)
    draws = [
        (
            torch.randint(0, 100, (args.batch_size * T,), generator=g),
            torch.randn(args.batch_size * T, 1, K, generator=g),
        )
        for _ in range(args.steps)
    ]
    queue = list(draws)
    diffusion = net.diffusion

    def log_prob(x, cond, *a, **kw):
        if diffusion.scale is not None:
            x = x / diffusion.scale
        B, T_, _ = x.shape
        t, noise = queue.pop(0)
        return diffusion.p_losses(x.reshape(B * T_, 1, -1), cond.reshape(B * T_, 1, -1), t, noise=noise)

    diffusion.log_prob = log_prob
    losses, lrs = [], []
    net.register_forward_hook(lambda m, i, o: losses.append(float(o[0])))
    import torch.optim.lr_scheduler as sched

    step0 = sched.OneCycleLR.step

    def step(self, *a, **kw):
        lrs.append(self.optimizer.param_groups[0]["lr"])
        return step0(self, *a, **kw)

    sched.OneCycleLR.step = step
    trainer(net=net, train_iter=batches)
    lrs = lrs[1:]  # the first call is OneCycleLR's constructor; call k + 1 follows step k, whose lr it records
    if args.fixture:
        import importlib.metadata

        keep = lambda sd: {k: v for k, v in sd.items() if k.startswith(("denoise_fn.", "rnn.", "embed.", "proj_dist"))}
        ones = ("past_observed_values", "future_observed_values")
        assert all(b[k].eq(1).all() for b in batches for k in ones)
        assert all(b["past_is_pad"].eq(0).all() for b in batches)
        batches = [{k: v for k, v in b.items() if k not in (*ones, "past_is_pad")} for b in batches]  # all observed
        draws = [(t.to(torch.uint8), noise) for t, noise in draws]
        versions = {p: importlib.metadata.version(p) for p in ("pytorchts", "gluonts", "torch")}
        torch.save({"init": keep(init), "final": keep(net.state_dict()), "batches": batches, "draws": draws,
                    "losses": losses, "lrs": lrs, "args": vars(args) | {"out": None},
                    "meta": {"writer": "benchmarks/reference/twins/lockstep_pts.py --fixture", "versions": versions}},
                   args.out)  # fmt: skip
        print(args.out, "losses", losses, "lrs", lrs)
        return
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "init": init,
            "final": net.state_dict(),
            "batches": batches,
            "draws": draws,
            "losses": losses,
            "lrs": lrs,
            "args": vars(args),
        },
        args.out / "lockstep.pt",
    )
    print("losses", [round(x, 4) for x in losses[:5]], "...", [round(x, 4) for x in losses[-5:]])
    print("mean first 10 / last 10:", np.mean(losses[:10]), np.mean(losses[-10:]))


if __name__ == "__main__":
    main()

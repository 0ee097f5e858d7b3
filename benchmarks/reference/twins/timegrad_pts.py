"""The reference side of the TimeGrad twins (issue 26): pytorch-ts 0.6.0's own TimeGradEstimator, end to end.

    PTS=/work/refenv/pts/bin/python          # made by benchmarks/reference/twins/setup_pytorchts.sh
    OMP_NUM_THREADS=1 $PTS benchmarks/reference/twins/timegrad_pts.py --seed 1 --out DIR

Runs only in the pytorch-ts venv (gluonts 0.9.10); never imports tsdiffusion. What it does, as the TimeGrad
example notebook (``examples/Time-Grad-Electricity.ipynb`` of pytorch-ts) does it:

* data: the GluonTS-layout copy of exchange_rate_nips (``exchange_rate_nips_gluonts.tar.gz`` in shared/data; the
  same numbers as the canonical GP-copula tarball), ``MultivariateGrouper`` for train (one 8-dim series) and
  test (5 rolling dates);
* model: ``TimeGradEstimator`` with the estimator's defaults for freq "B" (lags [1, 2], the Fourier time features
  of ``pts.feature``: cos/sin of day of week and day of year, 4 values, so ``input_size = 8 * 2 + 8 + 4 = 28``),
  LSTM 2 x 40, dropout 0.1, conditioning 100, 8 residual layers x 8 channels, dilation cycle 2, 100 linear
  steps to beta 0.1, context = prediction = 30;
* training: ``pts.Trainer(epochs=20, num_batches_per_epoch=100, batch_size=64, learning_rate=1e-3)``: Adam, weight
  decay 1e-6, and ``OneCycleLR`` with its default ``maximum_learning_rate=1e-2`` (so the peak learning rate is
  1e-2, not 1e-3), no gradient clipping (``clip_gradient=None``); windows from ``ExpectedNumInstanceSampler``;
* scoring: 100 samples per test date, ``MultivariateEvaluator(quantiles=0.05..0.95, target_agg_funcs={"sum"})``:
  CRPS = ``mean_wQuantileLoss``, CRPS-sum = ``m_sum_mean_wQuantileLoss``.

``--load-state FILE`` skips training and scores a ``TimeGradTrainingNetwork`` state dict (pytorch-ts names; e.g.
our weights converted by ``run_twins.py``) with this same pipeline. Writes ``DIR/record.json`` (metrics, config,
seed, versions, times) and ``DIR/state_dict.pt`` (the trained network, pytorch-ts names).
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

DATA = Path("/work/shared/data/exchange_rate/exchange_rate_nips_gluonts.tar.gz")


def load_dataset(tarball: Path, workdir: Path):
    from gluonts.dataset.common import load_datasets

    with tarfile.open(tarball) as tar:
        tar.extractall(workdir)
    root = next(p.parent for p in workdir.rglob("metadata.json"))
    return load_datasets(metadata=root, train=root / "train", test=root / "test")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--max-lr", type=float, default=1e-2, help="pts.Trainer maximum_learning_rate (its default)")
    ap.add_argument("--cell", default="LSTM")
    ap.add_argument("--samples", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--load-state", type=Path, help="score this TimeGradTrainingNetwork state dict, no training")
    args = ap.parse_args(argv)

    import gluonts
    import pts
    from gluonts.dataset.multivariate_grouper import MultivariateGrouper
    from gluonts.evaluation import MultivariateEvaluator
    from gluonts.evaluation.backtest import make_evaluation_predictions
    from pts import Trainer
    from pts.model.time_grad import TimeGradEstimator

    torch.set_num_threads(args.threads)
    random.seed(args.seed)
    np.random.seed(args.seed)  # noqa: NPY002  (gluonts 0.9's samplers draw from the global state)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_dataset(args.data, Path(tmp))
        K = int(dataset.metadata.feat_static_cat[0].cardinality)
        H = dataset.metadata.prediction_length
        train = MultivariateGrouper(max_target_dim=K)(dataset.train)
        test = MultivariateGrouper(num_test_dates=len(dataset.test) // len(dataset.train), max_target_dim=K)(
            dataset.test
        )
        freq = dataset.metadata.freq

    estimator = TimeGradEstimator(
        target_dim=K, prediction_length=H, context_length=H, cell_type=args.cell, input_size=K * 2 + K + 4,
        freq=freq, loss_type="l2", scaling=True, diff_steps=100, beta_end=0.1, beta_schedule="linear",
        num_parallel_samples=args.samples,
        trainer=Trainer(device="cpu", epochs=args.epochs, learning_rate=args.lr, maximum_learning_rate=args.max_lr,
                        num_batches_per_epoch=args.batches, batch_size=args.batch_size),
    )  # fmt: skip
    t0 = time.time()
    if args.load_state is None:
        # prefetch_factor=None: torch 2.x refuses a prefetch factor without worker processes (pts passes 2)
        out = estimator.train_model(train, num_workers=0, prefetch_factor=None)
        net, predictor = out.trained_net, out.predictor
        torch.save(net.state_dict(), args.out / "state_dict.pt")
    else:
        net = estimator.create_training_network(torch.device("cpu"))
        net.load_state_dict(torch.load(args.load_state))
        predictor = estimator.create_predictor(estimator.create_transformation(), net, torch.device("cpu"))
    train_s = time.time() - t0

    t0 = time.time()
    torch.manual_seed(args.seed)
    forecast_it, ts_it = make_evaluation_predictions(dataset=test, predictor=predictor, num_samples=args.samples)
    forecasts, targets = list(forecast_it), list(ts_it)
    evaluator = MultivariateEvaluator(quantiles=(np.arange(20) / 20.0)[1:], target_agg_funcs={"sum": np.sum})
    agg, _ = evaluator(iter(targets), iter(forecasts), num_series=len(test))
    eval_s = time.time() - t0
    record = {
        "side": "reference (pytorch-ts 0.6.0)",
        "trained_by": "reference" if args.load_state is None else str(args.load_state),
        "scored_by": "reference",
        "seed": args.seed,
        "crps": float(agg["mean_wQuantileLoss"]),
        "crps_sum": float(agg["m_sum_mean_wQuantileLoss"]),
        "metrics": {k: float(v) for k, v in agg.items() if np.isscalar(v)},
        "config": {k: v for k, v in vars(args).items() if k != "out"} | {
            "lags_seq": estimator.lags_seq, "time_features": [repr(f) for f in estimator.time_features],
            "input_size": estimator.input_size, "context_length": estimator.context_length, "freq": freq,
        },
        "train_s": round(train_s, 1),
        "eval_s": round(eval_s, 1),
        "versions": {"pytorchts": getattr(pts, "__version__", "0.6.0"), "gluonts": gluonts.__version__,
                     "torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()},
        "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} thread(s)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    if args.load_state is None:
        record["state_dict"] = str(args.out / "state_dict.pt")
    (args.out / "record.json").write_text(json.dumps(record, indent=1, default=str))
    print(json.dumps({k: record[k] for k in ("seed", "crps", "crps_sum", "train_s", "eval_s")}))


if __name__ == "__main__":
    main()

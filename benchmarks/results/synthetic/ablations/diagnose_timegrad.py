"""Where does a TimeGrad run's gap to the optimum come from: the one-step conditional p(x_t | h_t) or the
autoregressive roll-out? (issue 29)

For every test window of the synthetic forecasting set and every horizon step p, the model's one-step law given the
TRUE history (teacher forcing: h_p from the observed values before p) is sampled S times and compared with the exact
one-step law (Kalman filter, tsdiffusion.metrics.optimal.posterior with the window cut at p + 1); the multi-step
forecast (the test protocol: history only up to the horizon start) is compared with the exact horizon marginals.
Reported in normalised units, per horizon step: MSE of the sample mean and mean sample variance, each over the
optimum's (a spread ratio < 1 = under-dispersed), and the 90% coverage.

    python benchmarks/results/synthetic/ablations/diagnose_timegrad.py RUN_DIR [RUN_DIR ...] [--samples 100]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from tsdiffusion.metrics.optimal import posterior

from tsdiffusion.masking import forecast_mask
from tsdiffusion.runs import load_run


def exact_one_step(dm, split="test"):
    """(W, H, K) mean and variance of y_p given y_{<p} (normalised units), every horizon step p of every window."""
    sp, (loc, scale) = dm.splits[split], dm.loc_scale
    H, L = dm.prediction_length, dm.seq_len
    mu, var = np.zeros((len(sp.values), H, dm.num_features)), np.zeros((len(sp.values), H, dm.num_features))
    for w, (values, start) in enumerate(zip(sp.values, sp.start)):
        for j, p in enumerate(range(L - H, L)):
            y = values[: p + 1]
            cond = np.ones(y.shape, bool)
            cond[p] = False
            post = posterior(dm.model.ssm, y, cond, ~cond, dm.model.mean(np.arange(start, start + p + 1)))
            mu[w, j], var[w, j] = (post.mean - loc) / scale, np.diag(post.cov) / scale**2
    return mu, var


def exact_horizon(dm, split="test"):
    ps = dm.posteriors(split, "normalised")
    H, K = dm.prediction_length, dm.num_features
    mu = np.stack([p.mean.reshape(H, K) for p in ps])
    var = np.stack([np.diag(p.cov).reshape(H, K) for p in ps])
    return mu, var


def summarise(samples, mu, var, truth):
    """samples (W, S, H, K); exact mean / var and truth (W, H, K) -> per-horizon-step ratios and coverage."""
    m, v = samples.mean(1), samples.var(1, ddof=1)
    lo, hi = np.quantile(samples, 0.05, axis=1), np.quantile(samples, 0.95, axis=1)
    return {
        "mse_ratio": (((m - truth) ** 2).mean((0, 2)) / ((mu - truth) ** 2).mean((0, 2))).tolist(),
        "mean_error_over_exact_var": (((m - mu) ** 2).mean((0, 2)) / var.mean((0, 2))).tolist(),
        "spread_ratio": (v.mean((0, 2)) / var.mean((0, 2))).tolist(),
        "coverage_90": ((truth >= lo) & (truth <= hi)).mean((0, 2)).tolist(),
    }


@torch.no_grad()
def one_step_samples(task, batch, S, gen):
    """(W, S, H, K): x_p ~ p(. | h_p) with h_p from the true values before p, for every horizon step p."""
    x, tf, ids = task._inputs(batch)
    W, L, K = x.shape
    H = int((~forecast_mask(batch).bool()).any(-1)[0].sum())
    pos = torch.arange(task.encoder.max_lag, L)
    hidden, _ = task.encoder(x, pos, tf, ids)  # teacher forcing: h_p sees x_{<p} only
    h = hidden[:, -H:]  # (W, H, C)
    h = h.repeat_interleave(S, 0).reshape(W * S * H, 1, -1)
    x_T = torch.randn((W * S * H, 1, K), generator=gen)
    out = task._chain(x_T, h, gen).reshape(W, S, H, K)
    return out.numpy()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--samples", type=int, default=100)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for run in args.runs:
        task, dm, _ = load_run(run)
        task.eval()
        dm.setup("test")
        batch = next(iter(dm.test_dataloader()))
        assert len(batch["observed"]) == dm.num_test_windows, "one test batch expected (eval_batch_size >= windows)"
        gen = torch.Generator().manual_seed(0)
        truth = batch["observed"][:, -dm.prediction_length :].numpy()
        mu1, var1 = exact_one_step(dm)
        one = summarise(one_step_samples(task, batch, args.samples, gen), mu1, var1, truth)
        muh, varh = exact_horizon(dm)
        multi = task.sample(batch, forecast_mask(batch), args.samples, gen)[:, :, -dm.prediction_length :]
        multi = summarise(multi.numpy(), muh, varh, truth)
        results[run] = {"one_step": one, "multi_step": multi}
        for name, r in (("one-step (teacher forcing)", one), ("multi-step (test protocol)", multi)):
            print(f"{run}\n  {name}: mean over horizon: MSE ratio {np.mean(r['mse_ratio']):.3f}, "
                  f"spread ratio {np.mean(r['spread_ratio']):.3f}, coverage90 {np.mean(r['coverage_90']):.3f}, "
                  f"mean error / exact var {np.mean(r['mean_error_over_exact_var']):.3f}")  # fmt: skip
            print("    spread ratio by horizon step:", " ".join(f"{v:.2f}" for v in r["spread_ratio"]))
    print(json.dumps(results))


if __name__ == "__main__":
    main()

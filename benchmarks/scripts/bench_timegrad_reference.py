"""TimeGrad: ours against pytorch-ts 0.6 at the same config, interleaved in one run (issue 16, items 3-4).

    python benchmarks/scripts/bench_timegrad_reference.py --tgvenv /work/scratch/tgvenv --repeats 3

Two persistent worker processes, one per environment: ours (this interpreter, ``tsdiffusion``) and the reference
(``TGVENV/bin/python``: pytorch-ts 0.6.0, gluonts 0.9.10, the project's torch through a ``.pth`` file, see
tests/fixtures/reference/README.md). The driver asks them in turn (ours fp32, ours bf16, pytorch-ts, ours fp32,
...) for one timed call and reads back the worker's own CPU seconds (``time.process_time``, 1 thread), so that
load from other processes on a shared machine changes neither side's figure; medians after one warm-up call each.

Config (TimeGrad on electricity_nips, experiments/forecasting/electricity/timegrad.yaml = pytorch-ts's):
K=370 series, lags [1, 24, 168], context 24, prediction 24, 4 time features, LSTM 2 x 40 (dropout 0.1),
embedding 1 per series, conditioning 100, eps-network 8 residual layers x 8 channels, dilation cycle 2,
100 linear diffusion steps 1e-4..0.1, Adam 1e-3 (weight decay 1e-6), gradient clipping at 10.

- train: one training step on a batch of B=64 windows (48 = context + prediction steps modelled per window):
  forward (loss), backward, clip, Adam step;
- forecast: 100 samples of the 24-step horizon for ``--forecast-windows`` windows, ancestral DDPM with all 100
  steps (24 x 100 eps-network calls on 100 x windows rows), pytorch-ts's ``TimeGradPredictionNetwork`` with
  ``num_parallel_samples=100`` and ours ``TimeGradTask.sample``.
Synthetic inputs of these sizes (speed does not depend on the values); no accuracy figure here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

K, LAGS, CONTEXT, PRED, F_TIME, B_TRAIN = 370, [1, 24, 168], 24, 24, 4, 64
HISTORY = CONTEXT + max(LAGS)
ROOT = Path(__file__).resolve().parents[2]


# -- workers: build once, answer "train" / "forecast" lines with CPU seconds ------------------------------
def ours_worker(bf16: bool, windows: int):
    import contextlib

    import torch

    from tsdiffusion.denoisers.timegrad import TimeGradDenoiser
    from tsdiffusion.diffusion import GaussianDiffusion
    from tsdiffusion.tasks.forecasting import TimeGradTask

    den = TimeGradDenoiser(K, cond_dim=100, residual_layers=8, residual_channels=8, dilation_cycle=2)
    process = GaussianDiffusion(100, "linear", 1e-4, 0.1, prediction="eps")
    task = TimeGradTask(den, process, num_time_features=F_TIME, lags=LAGS, cell="LSTM", rnn_layers=2, rnn_hidden=40,
                        rnn_dropout=0.1, lr=1e-3, weight_decay=1e-6, num_samples=100, sampler="ddpm")  # fmt: skip
    task.log = lambda *a, **k: None
    opt = torch.optim.Adam(task.parameters(), lr=1e-3, weight_decay=1e-6)
    amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def batch(n: int) -> dict:
        g = torch.Generator().manual_seed(0)
        L = HISTORY + PRED
        target = torch.zeros(n, L, K)
        target[:, -PRED:] = 1
        return {"observed": torch.rand(n, L, K, generator=g) + 0.5, "observed_mask": torch.ones(n, L, K),
                "target_mask": target, "time_features": torch.rand(n, L, F_TIME, generator=g) - 0.5,
                "feature_ids": torch.arange(K).expand(n, K),
                "timepoints": torch.arange(L).float().expand(n, L)}  # fmt: skip

    train_batch, test_batch = batch(B_TRAIN), batch(windows)

    def train() -> None:
        task.train()
        opt.zero_grad()
        with amp():
            loss = task.training_step(train_batch, 0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.parameters(), 10.0)
        opt.step()

    def forecast() -> None:
        task.eval()
        with amp():
            out = task.sample(test_batch, task.eval_cond_mask(test_batch), num_samples=100)
        assert out.shape == (windows, 100, HISTORY + PRED, K), out.shape

    return {"train": train, "forecast": forecast}


def pts_worker(windows: int):
    import torch
    from pts.model.time_grad import TimeGradPredictionNetwork, TimeGradTrainingNetwork

    kw = dict(input_size=K * len(LAGS) + K + F_TIME, num_layers=2, num_cells=40, cell_type="LSTM",
              history_length=HISTORY, context_length=CONTEXT, prediction_length=PRED, dropout_rate=0.1,
              lags_seq=list(LAGS), target_dim=K, conditioning_length=100, diff_steps=100, loss_type="l2",
              beta_end=0.1, beta_schedule="linear", residual_layers=8, residual_channels=8, dilation_cycle_length=2,
              scaling=True)  # fmt: skip
    net = TimeGradTrainingNetwork(**kw)
    pred = TimeGradPredictionNetwork(num_parallel_samples=100, **kw)
    pred.load_state_dict(net.state_dict())  # pytorch-ts's copy_parameters
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-6)  # pytorch-ts Trainer

    def batch(n: int, future: bool) -> dict:
        g = torch.Generator().manual_seed(0)
        out = {"target_dimension_indicator": torch.arange(K).expand(n, K).clone(),
               "past_time_feat": torch.rand(n, HISTORY, F_TIME, generator=g) - 0.5,
               "past_target_cdf": torch.rand(n, HISTORY, K, generator=g) + 0.5,
               "past_observed_values": torch.ones(n, HISTORY, K), "past_is_pad": torch.zeros(n, HISTORY),
               "future_time_feat": torch.rand(n, PRED, F_TIME, generator=g) - 0.5}  # fmt: skip
        if future:
            out |= {"future_target_cdf": torch.rand(n, PRED, K, generator=g) + 0.5,
                    "future_observed_values": torch.ones(n, PRED, K)}  # fmt: skip
        return out

    train_batch, test_batch = batch(B_TRAIN, True), batch(windows, False)

    def train() -> None:  # pytorch-ts's Trainer loop body
        net.train()
        opt.zero_grad()
        loss = net(**train_batch)[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()

    def forecast() -> None:
        pred.eval()
        with torch.no_grad():
            out = pred(**test_batch)
        assert out.shape == (windows, 100, PRED, K), out.shape

    return {"train": train, "forecast": forecast}


def serve(which: str, windows: int) -> None:
    """Build, then answer each stdin line (a job name) with one JSON line of its CPU seconds."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    jobs = pts_worker(windows) if which == "pts" else ours_worker(which == "ours-bf16", windows)
    print(json.dumps({"ready": which, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        t0 = time.process_time()
        jobs[line.strip()]()
        print(json.dumps({"cpu_s": time.process_time() - t0}), flush=True)


# -- the driver ------------------------------------------------------------------------------------------
def start(python: str, which: str, windows: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([python, __file__, "--serve", which, "--forecast-windows", str(windows)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    ready = json.loads(proc.stdout.readline())
    print(ready, flush=True)
    return proc


def ask(proc: subprocess.Popen, job: str) -> float:
    proc.stdin.write(job + "\n")
    proc.stdin.flush()
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"worker {proc.args} died on {job!r}")
    return json.loads(line)["cpu_s"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tgvenv", default="/work/scratch/tgvenv", help="venv with pytorchts==0.6.0")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--forecast-repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--forecast-windows", type=int, default=1)
    p.add_argument("--jobs", nargs="+", default=["train", "forecast"], choices=("train", "forecast"))
    p.add_argument("--variants", nargs="+", default=["ours-fp32", "ours-bf16", "pts"])
    p.add_argument("--out", default=None, help="JSON file (default benchmarks/results/speed/<machine>/timegrad.json)")
    p.add_argument("--serve", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args.serve, args.forecast_windows)
        return
    sys.path.insert(0, str(ROOT / "benchmarks" / "scripts"))
    from bench_speed import OUT, cpu_name, load, machine_type

    command = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    res = {"machine": machine_type(), "cpu": cpu_name(), "threads": 1, "clock": "cpu (worker process_time)",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_start": load(), "command": command,
           "config": {"K": K, "lags": LAGS, "context": CONTEXT, "prediction": PRED, "time_features": F_TIME,
                      "train_batch": B_TRAIN, "forecast_windows": args.forecast_windows, "samples": 100,
                      "diffusion_steps": 100, "rnn": "LSTM 2 x 40", "eps_network": "8 x 8, dilation cycle 2"},
           "times": {}}  # fmt: skip
    pythons = {"pts": f"{args.tgvenv}/bin/python"}
    procs = {v: start(pythons.get(v, sys.executable), v, args.forecast_windows) for v in args.variants}
    try:
        for job in args.jobs:
            repeats = args.forecast_repeats or args.repeats if job == "forecast" else args.repeats
            times = {v: [] for v in procs}
            for v, proc in procs.items():  # warm-up
                w = ask(proc, job)
                print(f"{job} warm-up {v}: {w:.2f} s", flush=True)
            for r in range(repeats):
                for v, proc in procs.items():
                    times[v].append(ask(proc, job))
                print(f"{job} repeat {r}: " + ", ".join(f"{v} {t[-1]:.2f} s" for v, t in times.items()), flush=True)
            med = {v: statistics.median(t) for v, t in times.items()}
            res["times"][job] = {"all_cpu_s": times, "median_cpu_s": med}
            if "pts" in med:
                res["times"][job]["speedup_vs_pytorch_ts"] = {v: med["pts"] / s for v, s in med.items() if v != "pts"}
            print(job, json.dumps(res["times"][job]), flush=True)
    finally:
        for proc in procs.values():
            proc.stdin.close()
            proc.wait(timeout=60)
    res["load_end"] = load()
    out = Path(args.out) if args.out else OUT / machine_type() / "timegrad.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res["times"], indent=1))


if __name__ == "__main__":
    main()

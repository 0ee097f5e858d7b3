"""Golden fixture from the reference TimeGrad (pytorch-ts 0.6.0), for tests/denoisers/test_reference_equivalence.py.

    REFVENV/bin/python benchmarks/reference/make_timegrad_fixtures.py

REFVENV: a virtual environment with ``pytorchts==0.6.0`` (installed ``--no-deps``), ``gluonts==0.9.10`` and
``setuptools<60`` (see tests/fixtures/reference/README.md); never the project's environment.

With fixed seeds, in float32 on CPU, a small ``TimeGradTrainingNetwork`` (K=6 series, LSTM 2 x 8, lags [1, 3],
context 8, prediction 4, 2 time features, conditioning 10, 100 linear steps 1e-4..0.1, 8 residual layers x 8
channels) in eval mode, every parameter perturbed by seeded noise (std 0.05, so that the zero-initialised output
weight does not make the output trivial), and one batch of B=2:

* ``state``: the network's state dict (reference names);
* ``forward`` on the batch (the training loss), with its diffusion steps and noise captured by replaying the
  seeded draws, the scale (``MeanScaler``), the RNN outputs, the conditioning ``distr_args``, the eps-network's
  input and output, the loss and every parameter gradient;
* ``p_sample_loop`` on the first 3 rows' conditioning with a given noise sequence (``x_T``, then one draw per step
  t = 99..0; the draw at t = 0 is multiplied by 0), its output.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import platform
from pathlib import Path

import torch

B, K, CONTEXT, PRED, LAGS, TIME_FEATS, COND = 2, 6, 8, 4, [1, 3], 2, 10
HISTORY = CONTEXT + max(LAGS)


def network():
    from pts.model.time_grad import TimeGradTrainingNetwork

    input_size = K * len(LAGS) + K * 1 + TIME_FEATS  # lags, one embedding value per series, time features
    net = TimeGradTrainingNetwork(
        input_size=input_size, num_layers=2, num_cells=8, cell_type="LSTM", history_length=HISTORY,
        context_length=CONTEXT, prediction_length=PRED, dropout_rate=0.1, lags_seq=list(LAGS), target_dim=K,
        conditioning_length=COND, diff_steps=100, loss_type="l2", beta_end=0.1, beta_schedule="linear",
        residual_layers=8, residual_channels=8, dilation_cycle_length=2, scaling=True,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return net.eval()


def make_batch(gen: torch.Generator) -> dict[str, torch.Tensor]:
    level = 1 + 4 * torch.rand(B, 1, K, generator=gen)
    past = level * (1 + 0.3 * torch.randn(B, HISTORY, K, generator=gen)).abs()
    future = level * (1 + 0.3 * torch.randn(B, PRED, K, generator=gen)).abs()
    return {
        "target_dimension_indicator": torch.arange(K).expand(B, K).clone(),
        "past_time_feat": torch.randn(B, HISTORY, TIME_FEATS, generator=gen),
        "past_target_cdf": past,
        "past_observed_values": torch.ones(B, HISTORY, K),
        "past_is_pad": torch.zeros(B, HISTORY),
        "future_time_feat": torch.randn(B, PRED, TIME_FEATS, generator=gen),
        "future_target_cdf": future,
        "future_observed_values": torch.ones(B, PRED, K),
    }


def training(net, batch: dict, seed: int) -> dict:
    rows = B * (CONTEXT + PRED)
    torch.manual_seed(seed)
    t = torch.randint(0, net.diffusion.num_timesteps, (rows,))
    noise = torch.randn(rows, 1, K)
    seen = {}
    eps_forward, rnn_forward = net.denoise_fn.forward, net.rnn.forward

    def eps(inputs, time, cond):
        seen["eps_input"], seen["eps_cond"], seen["eps_t"] = inputs.detach().clone(), cond.detach().clone(), time
        seen["eps_output"] = eps_forward(inputs, time, cond)
        return seen["eps_output"]

    def rnn(inputs, state=None):
        seen["rnn_input"] = inputs.detach().clone()
        out = rnn_forward(inputs, state)
        seen["rnn_output"] = out[0].detach().clone()
        return out

    net.denoise_fn.forward, net.rnn.forward = eps, rnn
    torch.manual_seed(seed)
    loss = net(**{k: v.clone() for k, v in batch.items()})[0]
    del net.denoise_fn.forward, net.rnn.forward
    net.zero_grad()
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in net.named_parameters() if p.grad is not None}
    assert torch.equal(seen["eps_t"], t), "the replayed diffusion steps differ from forward's"
    return {"t": t, "noise": noise, "scale": net.diffusion.scale.detach().clone(), "loss": loss.detach(),
            "grads": grads, **{k: v.detach() for k, v in seen.items() if k != "eps_t"}}  # fmt: skip


def chain(net, cond: torch.Tensor, seed: int) -> dict:
    from pts.modules import gaussian_diffusion

    steps = net.diffusion.num_timesteps
    noise = torch.randn(steps + 1, *cond.shape[:-1], K, generator=torch.Generator().manual_seed(seed))
    draws = iter(noise)
    randn = gaussian_diffusion.torch.randn

    def replay(*shape, **kwargs):
        shape = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        x = next(draws)
        assert tuple(x.shape) == tuple(shape), f"unexpected draw {tuple(shape)}"
        return x.clone()

    gaussian_diffusion.torch.randn = replay
    try:
        net.diffusion.scale = None
        sample = net.diffusion.p_sample_loop((*cond.shape[:-1], K), cond)
    finally:
        gaussian_diffusion.torch.randn = randn
    assert next(draws, None) is None, "p_sample_loop drew fewer noise tensors than expected"
    return {"cond": cond, "noise": noise, "sample": sample}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parents[2] / "tests" / "fixtures" / "reference")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = network()
    batch = make_batch(torch.Generator().manual_seed(1))
    fixture = {"state": net.state_dict(), "batch": batch, "loss": training(net, batch, 2)}
    fixture["chain"] = chain(net, fixture["loss"]["eps_cond"][:3].detach(), 3)
    fixture["meta"] = {
        "source": "pytorch-ts (zalandoresearch/pytorch-ts) TimeGradTrainingNetwork",
        "config": {
            "K": K,
            "context": CONTEXT,
            "prediction": PRED,
            "lags": LAGS,
            "time_features": TIME_FEATS,
            "conditioning_length": COND,
            "num_layers": 2,
            "num_cells": 8,
            "diff_steps": 100,
            "beta_end": 0.1,
            "schedule": "linear",
            "residual_layers": 8,
            "residual_channels": 8,
            "dilation_cycle_length": 2,
            "time_emb_dim": 16,
            "residual_hidden": 64,
        },
        "python": platform.python_version(),
        **{name: importlib.metadata.version(name) for name in ("pytorchts", "gluonts", "torch", "numpy")},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "timegrad.pt"
    torch.save(fixture, path)
    print(json.dumps(fixture["meta"]), f"-> {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

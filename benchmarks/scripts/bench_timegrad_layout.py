"""Does a channel-first layout speed up TimeGrad's eps-network? (issue 16: the profile's suggestion, measured)

    python benchmarks/scripts/bench_timegrad_layout.py [--threads 2] [--repeats 5] [--out FILE.json]

The project's :class:`tsdiffusion.denoisers.TimeGradDenoiser` keeps activations channel-last (N, K', C) and writes
its convolutions as Linear layers; the profile of the 100-sample forecast showed sigmoid/tanh on strided
channel-last views. This script runs the same weights channel-first (N, C, K') with ``F.conv1d`` (circular padding,
dilation, contiguous gate/filter halves), checks both give the same output, and times both, interleaved call by
call, on TimeGrad's electricity sizes (K = 370, 8 blocks x 8 channels): a forecast call (100 rows, no grad) and a
training call (3072 rows, forward + backward), float32 and bf16 autocast. Prints medians (ms) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch
import torch.nn.functional as F

from tsdiffusion.denoisers import TimeGradDenoiser


def eps_channel_first(net: TimeGradDenoiser, x: torch.Tensor, cond: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """``net._eps`` channel-first: x, cond (N, 1, K + 4) circularly padded; step (N, D) -> (N, 1, K)."""
    C = net.input_projection.weight.shape[0]
    w_in, b_in = net.input_projection.weight.view(1, C, 1), net.input_projection.bias.view(1, C, 1)
    h = F.leaky_relu(torch.addcmul(b_in, w_in, x), 0.4)
    skip: torch.Tensor | float = 0.0
    for blk in net.blocks:
        d = blk.dilation
        y = h + blk.step_projection(step).unsqueeze(-1)
        w = blk.dilated_conv.weight.view(2 * C, 3, C).transpose(1, 2)  # Linear (tap, channel) -> Conv1d taps
        y = F.conv1d(F.pad(y, (d, d), mode="circular"), w, blk.dilated_conv.bias, dilation=d)
        y = torch.addcmul(y + blk.cond_projection.bias.view(1, -1, 1), blk.cond_projection.weight.view(1, -1, 1), cond)
        gate, filt = y.chunk(2, dim=1)
        z = torch.sigmoid(gate) * torch.tanh(filt)
        y = F.leaky_relu(F.conv1d(z, blk.output_projection.weight.unsqueeze(-1), blk.output_projection.bias), 0.4)
        residual, s = y.chunk(2, dim=1)
        h = (h + residual) / math.sqrt(2.0)
        skip = s + skip
    w_skip = net.skip_projection.weight.view(C, 3, C).transpose(1, 2)
    h = F.leaky_relu(F.conv1d(skip / math.sqrt(len(net.blocks)), w_skip, net.skip_projection.bias), 0.4)
    return F.conv1d(h, net.output_projection.weight.view(1, 3, C).transpose(1, 2), net.output_projection.bias)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    K = 370
    net = TimeGradDenoiser(K)
    torch.nn.init.normal_(net.output_projection.weight)  # zero-initialised: make the output depend on the input
    rows = []
    for N, grad in [(100, False), (3072, True)]:
        x, c, step = torch.randn(N, K + 4, 1), torch.randn(N, K + 4, 1), torch.randn(N, 64)
        xf, cf = x.transpose(1, 2).contiguous(), c.transpose(1, 2).contiguous()
        with torch.no_grad():
            diff = (eps_channel_first(net, xf, cf, step).transpose(1, 2) - net._eps(x, c, step)).abs().max().item()
        for prec in ("fp32", "bf16"):
            fns = {"channel-last (ours)": lambda x=x, c=c, s=step: net._eps(x, c, s),
                   "channel-first conv1d": lambda x=xf, c=cf, s=step: eps_channel_first(net, x, c, s)}  # fmt: skip
            times: dict[str, list[float]] = {k: [] for k in fns}
            for i in range(a.repeats + 1):  # first round: warm-up
                for name, fn in fns.items():
                    net.zero_grad(set_to_none=True)
                    t0 = time.perf_counter()
                    with torch.autocast("cpu", torch.bfloat16, enabled=prec == "bf16"), torch.set_grad_enabled(grad):
                        out = fn()
                        if grad:
                            out.float().square().mean().backward()
                    if i:
                        times[name].append(time.perf_counter() - t0)
            med = {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}
            row = {"rows": N, "backward": grad, "precision": prec, "max_abs_diff": diff,
                   **{f"{k} ms": v for k, v in med.items()},
                   "first/last": med["channel-first conv1d"] / med["channel-last (ours)"]}  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    if a.out:
        meta = {"cpu": platform.processor() or platform.machine(), "torch": torch.__version__, "threads": a.threads,
                "repeats": a.repeats, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}  # fmt: skip
        with open(a.out, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

"""Speed and memory of CSDIDenoiser against the original CSDI layout, at the paper and forecasting sizes.

    python benchmarks/scripts/bench_csdi_denoiser.py                      # 2 threads, every case
    python benchmarks/scripts/bench_csdi_denoiser.py --cases paper --repeats 20
    python benchmarks/scripts/bench_csdi_denoiser.py --threads 1 --clock cpu   # on a machine shared with others

Each (case, model) runs in a fresh subprocess, so that its peak resident memory (``ru_maxrss``,
counted from just before the first call) is its own; the subprocess sets ``MALLOC_MMAP_THRESHOLD_``
so that glibc returns freed tensors to the system and the peak is that of live tensors. Times are
medians over ``--repeats`` calls after one warm-up call; "fwd+bwd" is a training call: forward in
train mode (dropout on), the loss ``out.square().mean()`` and its backward. ``--clock cpu`` times
with ``time.process_time`` (CPU seconds of the process): with one thread, the cost of a call
without the time spent waiting for a core that other processes hold. GFLOP: one forward, as
``torch.utils.flop_counter`` counts it (matrix products, attention included).

Models:
    ours         CSDIDenoiser, as configured (attention dropout 0.1, as CSDI)
    ours-ad0     CSDIDenoiser with attention_dropout=0: memory-efficient attention kernels in training
    ours-ckpt    ours-ad0 with checkpointing=True (each residual layer recomputed in the backward)
    reference    the original CSDI layout built from nn.TransformerEncoder and Conv1d
                 (``ReferenceCSDI`` of tests/denoisers/test_denoiser_csdi.py, proven equal to ours there)
    pypots       PyPOTS's CsdiDiffusionModel (pypots 1.5) with the side information built as PyPOTS
                 does; only when the ``pypots`` package can be found (its layers file needs only torch)

Cases (B, L, K; num_features):
    paper           16, 48, 35; 35        PhysioNet imputation (CSDI's config)
    forecast-train   8, 192, 64; 370      electricity training: 64 sampled series, 168 + 24 steps
    forecast-infer   S, 192, 963; 963     traffic test window, S = --samples in one batch, forward only
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from tsdiffusion.denoisers.csdi import CSDIDenoiser

ROOT = Path(__file__).resolve().parents[2]
CASES = {  # name: (B, L, K, num_features, train)
    "paper": (16, 48, 35, 35, True),
    "forecast-train": (8, 192, 64, 370, True),
    "forecast-infer": (None, 192, 963, 963, False),
}
MODELS = ("ours", "ours-ad0", "ours-ckpt", "reference", "pypots")
# What runs by default. Attention dropout holds (S x S) weights (and a mask and a dropped copy) for the
# backward: at forecast-train that is ~7 GB for ours, reference and pypots, so they run only when named
# in --models. forecast-infer is eval mode (no dropout): one model; the reference would hold 5.7 GB of
# (K x K) weights per sample and layer.
DEFAULT_MODELS = {
    "paper": ("reference", "pypots", "ours", "ours-ad0", "ours-ckpt"),
    "forecast-train": ("ours-ad0", "ours-ckpt"),
    "forecast-infer": ("ours",),
}


def load_reference() -> type[nn.Module]:
    path = ROOT / "tests" / "denoisers" / "test_denoiser_csdi.py"
    spec = importlib.util.spec_from_file_location("_csdi_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ReferenceCSDI


def pypots_csdi_folder() -> Path | None:
    """The folder of PyPOTS's CSDI modules (``pypots/nn/modules/csdi``), or None without pypots."""
    spec = importlib.util.find_spec("pypots")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(spec.submodule_search_locations[0]) / "nn" / "modules" / "csdi"


def load_pypots_layers():
    """PyPOTS's CSDI layers module, loaded alone (the package's __init__ imports far more), or None."""
    folder = pypots_csdi_folder()
    if folder is None:
        return None
    layers_spec = importlib.util.spec_from_file_location("_pypots_csdi_layers", folder / "layers.py")
    module = importlib.util.module_from_spec(layers_spec)
    layers_spec.loader.exec_module(module)
    return module


def pypots_side_info(timepoints: Tensor, feature_ids: Tensor, cond_mask: Tensor, embedding: nn.Embedding) -> Tensor:
    """Side information as PyPOTS's ``_CSDI.get_side_info``: time (128) + feature (16) embeddings + mask.

    timepoints (B, L), feature_ids (B, K), cond_mask (B, L, K) -> (B, 145, K, L).
    """
    B, L, K = cond_mask.shape
    pos = timepoints.unsqueeze(-1)
    pe = torch.zeros(B, L, 128)
    div = 1 / torch.pow(10000.0, torch.arange(0, 128, 2) / 128)
    pe[..., 0::2], pe[..., 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    feature = embedding(feature_ids).unsqueeze(1).expand(-1, L, -1, -1)
    side = torch.cat([pe.unsqueeze(2).expand(-1, -1, K, -1), feature], dim=-1).permute(0, 3, 2, 1)
    return torch.cat([side, cond_mask.transpose(1, 2).unsqueeze(1)], dim=1)


class PyPOTSDenoiser(nn.Module):
    """PyPOTS's CSDI denoiser with our call signature: side information built as PyPOTS's ``_CSDI``
    (time embedding, feature embedding and mask concatenated), then ``CsdiDiffusionModel``."""

    def __init__(self, layers_module, num_features: int) -> None:
        super().__init__()
        self.embed_layer = nn.Embedding(num_features, 16)
        self.diff_model = layers_module.CsdiDiffusionModel(50, 128, 2, 128 + 16 + 1, 64, 8, 4)

    def forward(self, x_t: Tensor, t: Tensor, cond: dict) -> Tensor:
        side = pypots_side_info(cond["timepoints"], cond["feature_ids"], cond["cond_mask"], self.embed_layer)
        mask = cond["cond_mask"].transpose(1, 2)
        x = torch.stack([mask * cond["observed"].transpose(1, 2), (1 - mask) * x_t.transpose(1, 2)], dim=1)
        return self.diff_model(x, side, t).transpose(1, 2)


def build(model: str, num_features: int) -> nn.Module:
    if model == "ours":
        return CSDIDenoiser(num_features)
    if model == "ours-ad0":
        return CSDIDenoiser(num_features, attention_dropout=0.0)
    if model == "ours-ckpt":
        return CSDIDenoiser(num_features, attention_dropout=0.0, checkpointing=True)
    if model == "reference":
        return load_reference()(num_features)
    return PyPOTSDenoiser(load_pypots_layers(), num_features)


def make_inputs(B: int, L: int, K: int, num_features: int) -> tuple[Tensor, Tensor, dict]:
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(B, L, K, generator=g) < 0.7).float()
    cond = {
        "observed": torch.randn(B, L, K, generator=g) * mask,
        "cond_mask": mask,
        "timepoints": torch.arange(L, dtype=torch.float32).expand(B, L),
        "feature_ids": torch.stack([torch.randperm(num_features, generator=g)[:K] for _ in range(B)]),
    }
    return torch.randn(B, L, K, generator=g), torch.randint(0, 50, (B,), generator=g), cond


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _median_ms(fn, repeats: int, clock) -> float:
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return 1e3 * statistics.median(times)


def count_gflop(model_name: str, B: int, L: int, K: int, num_features: int) -> float:
    """FLOPs of one forward, counted on the meta device, where attention decomposes into matrix
    products that the counter sees (it has no formula for the fused CPU kernel)."""
    x_t, t, cond = make_inputs(B, L, K, num_features)
    meta = {k: v.to("meta") for k, v in cond.items()}
    with torch.device("meta"), torch.no_grad(), FlopCounterMode(display=False) as counter:
        model = build(model_name, num_features).train()  # train: the reference's eval fast path is fused too
        model(x_t.to("meta"), t.to("meta"), meta)
    return counter.get_total_flops() / 1e9


def run_child(case: str, model_name: str, samples: int, repeats: int, threads: int, clock_name: str) -> dict:
    torch.set_num_threads(threads)
    clock = time.process_time if clock_name == "cpu" else time.perf_counter
    torch.manual_seed(0)
    B, L, K, num_features, train = CASES[case]
    B = samples if B is None else B
    model = build(model_name, num_features)
    x_t, t, cond = make_inputs(B, L, K, num_features)
    rss_before = _rss_mib()
    row = {"case": case, "model": model_name, "B": B, "L": L, "K": K}
    row["params"] = sum(p.numel() for p in model.parameters())

    def forward() -> None:
        with torch.no_grad():
            model.eval()(x_t, t, cond)

    def train_step() -> None:
        model.train()(x_t, t, cond).square().mean().backward()

    row["gflop"] = count_gflop(model_name, B, L, K, num_features)
    row["fwd_ms"] = _median_ms(forward, repeats, clock)
    if train:
        train_step()
        row["fwdbwd_ms"] = _median_ms(train_step, repeats, clock)
    row["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before
    return row


HEADER = (
    f"{'case':<15}{'model':<11}{'B':>4}{'L':>5}{'K':>5}{'params':>9}{'GFLOP':>8}{'fwd ms':>10}{'fwd GF/s':>10}"
    f"{'% peak':>8}{'fwd+bwd ms':>12}{'peak MiB':>10}{'vs ref':>8}{'vs pypots':>10}"
)


def matmul_peak_gflops(threads: int, n: int = 2048, repeats: int = 5) -> float:
    """This CPU's practical float32 peak: the best GFLOP/s of an n x n matrix product on ``threads`` threads."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def format_row(r: dict, ref: dict | None, pypots: dict | None, peak: float) -> str:
    """One table line; "vs ref" / "vs pypots": that model's time over this one's (fwd+bwd, else fwd);
    "% peak": forward GFLOP/s over the measured matrix-product peak (wall clock only)."""
    key = "fwdbwd_ms" if "fwdbwd_ms" in r else "fwd_ms"
    speedup = f"{ref[key] / r[key]:.2f}x" if ref else "-"
    vs_pypots = f"{pypots[key] / r[key]:.2f}x" if pypots else "-"
    fb = f"{r['fwdbwd_ms']:.0f}" if "fwdbwd_ms" in r else "-"
    rate = r["gflop"] / r["fwd_ms"] * 1e3
    return (
        f"{r['case']:<15}{r['model']:<11}{r['B']:>4}{r['L']:>5}{r['K']:>5}{r['params']:>9,}{r['gflop']:>8.1f}"
        f"{r['fwd_ms']:>10.0f}{rate:>10.1f}{100 * rate / peak:>7.0f}%{fb:>12}{r['peak_mib']:>10.0f}{speedup:>8}"
        f"{vs_pypots:>10}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    parser.add_argument("--models", help="comma-separated, of: " + ", ".join(MODELS) + " (default: per case)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--samples", type=int, default=1, help="batch of the forecast-infer case")
    parser.add_argument("--child", nargs=2, metavar=("CASE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_child(*args.child, args.samples, args.repeats, args.threads, args.clock)))
        return
    have_pypots = load_pypots_layers() is not None
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    peak = matmul_peak_gflops(args.threads)
    print(
        f"torch {torch.__version__}, {args.threads} threads, {args.clock} clock, median of {args.repeats}, "
        f"load {load}, matmul peak {peak:.0f} GFLOP/s (2048^2 float32)"
    )
    print(HEADER, flush=True)
    for case in args.cases.split(","):
        ref = pypots = None
        for model in args.models.split(",") if args.models else DEFAULT_MODELS[case]:
            if model == "pypots" and not have_pypots:
                continue
            cmd = [sys.executable, __file__, "--child", case, model]
            cmd += ["--samples", str(args.samples), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            cmd += ["--clock", args.clock]
            env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
            out = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
            if out.returncode:
                print(f"{case} {model}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(out.stdout.strip().splitlines()[-1])
            ref = row if model == "reference" else ref
            pypots = row if model == "pypots" else pypots
            print(format_row(row, ref, pypots, peak), flush=True)


if __name__ == "__main__":
    main()

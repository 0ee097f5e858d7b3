# ruff: noqa  (a record of the script that produced the files here, run from /work/scratch/16b)
"""Profile CSDIDenoiser training step and sampling call (torch.profiler, CPU, record_shapes).

python profile_csdi.py --which after|before --out DIR
"""

import argparse, contextlib, importlib, sys, time
from pathlib import Path
import torch
from torch.profiler import profile, ProfilerActivity

sys.path.insert(0, "/work/scratch/16b")
CONFIGS = {  # name: (B, L, K, num_features, attention)
    "physionet": (16, 48, 35, 35, "softmax"),
    "electricity": (8, 192, 64, 370, "linear"),
}


def make_inputs(B, L, K, nf, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand(B, L, K, generator=g) < 0.7).float()
    cond = {
        "observed": torch.randn(B, L, K, generator=g) * mask,
        "cond_mask": mask,
        "timepoints": torch.arange(L, dtype=torch.float32).expand(B, L),
        "feature_ids": torch.stack([torch.randperm(nf, generator=g)[:K] for _ in range(B)]),
    }
    return torch.randn(B, L, K, generator=g), torch.randint(0, 50, (B,), generator=g), cond


def get_cls(which):
    if which == "before":
        return importlib.import_module("csdi_before").CSDIDenoiser
    from tsdiffusion.denoisers.csdi import CSDIDenoiser

    return CSDIDenoiser


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--which", default="after")
    ap.add_argument("--out", default="/work/main/benchmarks/results/speed/profiles")
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS))
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--kinds", nargs="*", default=["train", "sample"])
    a = ap.parse_args()
    torch.set_num_threads(2)
    cls = get_cls(a.which)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in a.configs:
        B, L, K, nf, att = CONFIGS[name]
        torch.manual_seed(0)
        net = cls(nf, attention=att)
        x, t, cond = make_inputs(B, L, K, nf)
        for prec in ("fp32", "bf16"):
            ac = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if prec == "bf16" else contextlib.nullcontext

            def train():
                net.train()
                with ac():
                    loss = net(x, t, cond).float().square().mean()
                loss.backward()
                net.zero_grad(set_to_none=True)

            def sample():
                net.eval()
                with torch.no_grad(), ac():
                    net(x, t, cond)

            for kind, fn in (("train", train), ("sample", sample)):
                if kind not in a.kinds:
                    continue
                fn()
                with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                    t0 = time.perf_counter()
                    for _ in range(a.iters):
                        fn()
                    ms = (time.perf_counter() - t0) / a.iters * 1e3
                head = (
                    f"# {a.which}: CSDIDenoiser {name} (B={B}, L={L}, K={K}, attention={att}) {kind} {prec}, "
                    f"{a.iters} calls, {ms:.1f} ms/call under the profiler, 2 threads, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
                )
                txt = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=40)
                shp = prof.key_averages(group_by_input_shape=True).table(
                    sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=30, max_shapes_column_width=70
                )
                (out / f"{a.which}_{name}_{kind}_{prec}.txt").write_text(head + txt + "\n\n# by input shape\n" + shp)
                print(head.strip(), flush=True)


if __name__ == "__main__":
    main()

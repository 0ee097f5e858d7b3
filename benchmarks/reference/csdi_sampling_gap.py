"""Where does the reference's CRPS differ from ours with the official checkpoint? (issue 15, first paragraph)

    python benchmarks/reference/csdi_sampling_gap.py --checkout CSDI --data set-a.tar.gz metric
    python benchmarks/reference/csdi_sampling_gap.py --checkout CSDI --data set-a.tar.gz chain   # 16 records, 1 sample
    python benchmarks/reference/csdi_sampling_gap.py --checkout CSDI --data set-a.tar.gz dropout --samples 8

``metric``: the reference's ``calc_quantile_CRPS`` and our ``QuantileCRPS`` on the same samples (no data needed).
``chain``: the first fold-0 test batch of set-a (16 records) through the reference's data code (run from a scratch
folder holding ``data/physio/set-a``, as it expects) and ours: inputs compared; the official checkpoint in both
models; the denoiser at t = 0, 10, 49; ``impute`` and our ``sample_ddpm`` with the same noise sequence.
``dropout``: ours on the same records, the denoiser in eval mode and in train mode (dropout 0.1, what
``CSDI_base.evaluate`` runs with unless the caller put the model in eval mode), same sampling generator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types
from pathlib import Path

import torch
import yaml

from tsdiffusion.data import PhysioNetDataModule
from tsdiffusion.denoisers.pretrained import load_official_csdi_physionet
from tsdiffusion.diffusion import GaussianDiffusion, sample_ddpm
from tsdiffusion.metrics import QuantileCRPS, sample_quantiles
from tsdiffusion.tasks import ImputationTask


def reference(checkout: Path):
    sys.path.insert(0, str(checkout))
    sys.modules.setdefault("linear_attention_transformer", types.SimpleNamespace(LinearAttentionTransformer=None))
    import main_model
    import utils

    return main_model, utils


def metric(args) -> None:
    _, utils = reference(args.checkout)
    gen = torch.Generator().manual_seed(0)
    for S in (20, 100):
        y = torch.randn(16, 48, 35, generator=gen)
        s = y[:, None] + 0.7 * torch.randn(16, S, 48, 35, generator=gen) + 0.2
        m = (torch.rand(16, 48, 35, generator=gen) < 0.1).float()
        ours = QuantileCRPS()
        ours.update(s, y, m)
        ref = utils.calc_quantile_CRPS(y, s, m, 0, 1)
        print(json.dumps({"S": S, "reference": ref, "ours": ours.compute().item()}))


def our_batch(args, n: int) -> dict:
    dm = PhysioNetDataModule(path=str(args.data), cache_dir=args.cache_dir, batch_size=16)
    dm.setup("test")
    return {k: v[:n] for k, v in next(iter(dm.test_dataloader())).items()}


def chain(args) -> None:
    main_model, _ = reference(args.checkout)
    from dataset_physio import get_dataloader

    here = os.getcwd()
    os.chdir(args.workdir)  # the reference reads ./data/physio/set-a
    _, _, loader = get_dataloader(seed=1, nfold=0, batch_size=16, missing_ratio=0.1)
    os.chdir(here)
    rb, ob = next(iter(loader)), our_batch(args, 16)
    target = rb["observed_mask"].float() - rb["gt_mask"].float()
    for name, a, b in [("values", ob["observed"], rb["observed_data"]), ("target mask", ob["target_mask"], target)]:
        print(name, "max diff", (a.float() - b.float()).abs().max().item())
    config = yaml.safe_load((args.checkout / "config" / "base.yaml").read_text())
    config["model"]["is_unconditional"] = 0
    ref = main_model.CSDI_Physio(config, "cpu").eval()
    ref.load_state_dict(torch.load(args.checkout / "save" / "pretrained" / "model.pth", map_location="cpu"))
    den = load_official_csdi_physionet(args.checkpoint)
    data, _, tp, gt, _, _ = ref.process_data(rb)
    side = ref.get_side_info(tp, gt)
    cm = gt.transpose(1, 2)
    cond = {"observed": ob["observed"] * cm, "cond_mask": cm, "timepoints": ob["timepoints"]}
    x = torch.randn(data.shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for t in (0, 10, 49):
            r = ref.diffmodel(ref.set_input_to_diffmodel(x, data, gt), side, torch.tensor([t]))
            o = den(x.transpose(1, 2), torch.full((16,), t), cond)
            print("denoiser t", t, "max abs diff", (r.transpose(1, 2) - o).abs().max().item())
    noise = torch.randn(50, *data.shape, generator=torch.Generator().manual_seed(123))
    draws = iter(noise)
    randn_like, torch.randn_like = torch.randn_like, lambda like, **kw: next(draws).clone()
    with torch.no_grad():
        theirs = ref.impute(data, gt, side, 1)[:, 0].transpose(1, 2)
    torch.randn_like = randn_like
    process, ours_noise = GaussianDiffusion(), [n.transpose(1, 2) for n in noise[1:]] + [torch.zeros_like(cm)]
    process._noise_like = lambda x, generator=None: ours_noise.pop(0)
    ours = sample_ddpm(process, lambda x, t: den(x, t, cond), noise[0].transpose(1, 2))
    d = (ours - theirs)[target.transpose(1, 2).bool()]
    print("chain on the held-out targets: max abs diff", d.abs().max().item(), "targets", d.numel())


def dropout(args) -> None:
    batch = our_batch(args, args.records)
    den = load_official_csdi_physionet(args.checkpoint)
    task = ImputationTask(den, num_samples=args.samples).eval()
    cm, tm = task.eval_cond_mask(batch), batch["target_mask"].bool()
    for seed in args.seeds:
        for mode in ("eval", "train"):
            den.train(mode == "train")
            torch.manual_seed(1000 + seed)  # the dropout draws
            start = time.perf_counter()
            s = task.sample(batch, cm, generator=torch.Generator().manual_seed(seed))
            crps = QuantileCRPS()
            crps.update(s, batch["observed"], tm)
            mae = (sample_quantiles(s, [0.5])[0] - batch["observed"])[tm].abs().mean().item()
            print(json.dumps({"seed": seed, "denoiser": mode, "records": args.records, "samples": args.samples,
                              "targets": int(tm.sum()), "crps": crps.compute().item(), "mae_median": mae,
                              "seconds": round(time.perf_counter() - start, 1)}), flush=True)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("metric", "chain", "dropout"))
    p.add_argument("--checkout", type=Path, required=True, help="a copy of ermongroup/CSDI at 7f24a43")
    p.add_argument("--data", type=Path, help="set-a.tar.gz")
    p.add_argument("--workdir", type=Path, default=Path("."), help="holds data/physio/set-a for the reference")
    p.add_argument("--checkpoint", default=None, help="model.pth (default: the checkout's save/pretrained)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--records", type=int, default=16)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    args.checkpoint = args.checkpoint or str(args.checkout / "save" / "pretrained" / "model.pth")
    torch.set_num_threads(1)
    {"metric": metric, "chain": chain, "dropout": dropout}[args.what](args)


if __name__ == "__main__":
    main()

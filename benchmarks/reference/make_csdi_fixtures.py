"""Golden fixtures from the reference CSDI code (ermongroup/CSDI), for tests/denoisers/test_reference_equivalence.py.

    python benchmarks/reference/make_csdi_fixtures.py --checkout /path/to/CSDI --variant imputation
    REFVENV/bin/python benchmarks/reference/make_csdi_fixtures.py --checkout /path/to/CSDI --variant forecasting

``--checkout`` is a copy of the reference repository (commit 7f24a43); nothing of it is installed: it goes on
``sys.path`` for this process only. The imputation model (softmax attention, ``nn.TransformerEncoderLayer``)
needs only torch; ``diff_models.py`` imports ``linear_attention_transformer`` at the top, so when that package
is absent a stand-in module is put in its place (the softmax model never calls it). The forecasting model
(``is_linear: True``) needs the real package: run it with an interpreter that has it (see
tests/fixtures/reference/README.md).

Everything runs in float32 on CPU with the reference's own functions and fixed seeds, on a small model
(channels 16, 2 layers, 4 heads) and one batch (B=2, K=5, L=12):

* ``state``: the reference model's ``state_dict`` (reference names; the tests convert them);
* the batch: values, observed mask, conditioning mask (``get_randmask`` for imputation; for forecasting
  ``sample_features`` picks ``feature_id`` and the test-pattern mask), time points;
* the training loss of ``calc_loss`` with its diffusion steps ``t`` and noise (captured by replaying the seeded
  draws), the denoiser output ``predicted`` and every parameter gradient of that loss (model in ``eval()``
  mode: dropout off, which is the only way two implementations can draw the same function);
* ``impute`` with one sample and a given noise sequence (``x_T`` then one draw per step t = 49..1, injected in
  place of ``torch.randn_like``): the reference's input ``(1 - cond_mask) x_t`` and denoiser output at every
  step, and the final sample.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import json
import platform
import sys
import types
from pathlib import Path

import numpy as np
import torch

B, K, L = 2, 5, 12
NUM_STEPS = 50
SMALL = {"layers": 2, "channels": 16, "nheads": 4, "diffusion_embedding_dim": 32}
EMB = {"timeemb": 16, "featureemb": 8}


def import_reference(checkout: Path, need_linear: bool) -> types.SimpleNamespace:
    """The reference's ``main_model`` from ``checkout`` (a stand-in for ``linear_attention_transformer`` if absent)."""
    sys.path.insert(0, str(checkout))
    try:
        importlib.import_module("linear_attention_transformer")
    except ImportError as err:
        if need_linear:
            msg = "the forecasting model needs linear_attention_transformer (see the fixtures README)"
            raise SystemExit(msg) from err

        def unavailable(*args, **kwargs):
            raise RuntimeError("linear_attention_transformer stand-in: not installed")

        sys.modules["linear_attention_transformer"] = types.SimpleNamespace(LinearAttentionTransformer=unavailable)
    return importlib.import_module("main_model")


def perturb(model: torch.nn.Module, seed: int) -> None:
    """Add seeded noise (std 0.05) to every parameter: the reference zero-initialises the output weight, which
    would make the output constant and most gradients 0, and its LayerNorms start at 1 / 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def reference_config(is_linear: bool) -> dict:
    diffusion = {**SMALL, "beta_start": 1e-4, "beta_end": 0.5, "num_steps": NUM_STEPS, "schedule": "quad",
                 "is_linear": is_linear}  # fmt: skip
    model = {"is_unconditional": False, "target_strategy": "random", **EMB}
    if is_linear:
        model["num_sample_features"] = 3
    return {"diffusion": diffusion, "model": model}


def make_batch(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """One batch in the reference's layout (B, L, K)."""
    observed_mask = (torch.rand(B, L, K, generator=gen) < 0.8).float()
    observed_data = torch.randn(B, L, K, generator=gen) * observed_mask
    gt_mask = observed_mask * (torch.rand(B, L, K, generator=gen) < 0.7).float()
    return {
        "observed_data": observed_data,
        "observed_mask": observed_mask,
        "gt_mask": gt_mask,
        "timepoints": torch.arange(L, dtype=torch.float32).expand(B, L).clone(),
    }


def replay_loss(model, data, cond_mask, observed_mask, side_info, seed: int) -> dict[str, torch.Tensor]:
    """``calc_loss`` (training branch) under ``seed``; its t and noise captured by replaying the same draws."""
    torch.manual_seed(seed)
    t = torch.randint(0, model.num_steps, [len(data)])
    noise = torch.randn_like(data)
    captured = {}
    forward = model.diffmodel.forward

    def recording(x, cond_info, step):
        captured["total_input"], captured["predicted"] = x.detach().clone(), forward(x, cond_info, step)
        return captured["predicted"]

    model.diffmodel.forward = recording
    torch.manual_seed(seed)
    loss = model.calc_loss(data, cond_mask, observed_mask, side_info, is_train=1)
    del model.diffmodel.forward
    model.zero_grad()
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    return {"t": t, "noise": noise, "loss": loss.detach(), "predicted": captured["predicted"].detach(),
            "total_input": captured["total_input"], "grads": grads}  # fmt: skip


def replay_chain(model, data, cond_mask, side_info, seed: int) -> dict[str, torch.Tensor]:
    """``impute`` with one sample and a fixed noise sequence; every step's input and output recorded."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(NUM_STEPS, *data.shape, generator=gen)  # x_T, then the draws at t = 49..1
    draws = iter(noise)
    inputs, outputs, steps = [], [], []
    forward = model.diffmodel.forward

    def recording(x, cond_info, step):
        out = forward(x, cond_info, step)
        inputs.append(x[:, 1].clone()), outputs.append(out.clone()), steps.append(int(step[0]))
        return out

    model.diffmodel.forward = recording
    randn_like = torch.randn_like
    torch.randn_like = lambda like, **kwargs: next(draws).clone()
    try:
        with torch.no_grad():
            sample = model.impute(data, cond_mask, side_info, 1)[:, 0]
    finally:
        torch.randn_like = randn_like
        del model.diffmodel.forward
    if next(draws, None) is not None:
        raise RuntimeError("impute drew fewer noise tensors than expected")
    return {"noise": noise, "steps": torch.tensor(steps), "inputs": torch.stack(inputs),
            "outputs": torch.stack(outputs), "sample": sample}  # fmt: skip


def imputation(main_model) -> dict:
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 (the reference draws from numpy's global state)
    model = main_model.CSDI_Physio(reference_config(False), "cpu", target_dim=K).eval()
    perturb(model, 4)
    batch = make_batch(torch.Generator().manual_seed(1))
    data, observed_mask, tp, gt_mask, _, _ = model.process_data(batch)
    cond_mask = model.get_randmask(observed_mask)  # the training mask (torch and numpy draws, seeded above)
    side = model.get_side_info(tp, cond_mask)
    out = {"batch": batch, "cond_mask": cond_mask, "loss": replay_loss(model, data, cond_mask, observed_mask, side, 2)}
    eval_side = model.get_side_info(tp, gt_mask)
    out["chain"] = replay_chain(model, data, gt_mask, eval_side, 3)
    return {"state": model.state_dict(), **out}


def forecasting(main_model) -> dict:
    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 (the reference draws from numpy's global state)
    model = main_model.CSDI_Forecasting(reference_config(True), "cpu", target_dim=K).eval()
    perturb(model, 4)
    batch = make_batch(torch.Generator().manual_seed(1))
    horizon = 4  # the last 4 steps are forecast: gt_mask is the observed mask on the context only
    batch["gt_mask"] = batch["observed_mask"].clone()
    batch["gt_mask"][:, L - horizon :] = 0
    data, observed_mask, tp, gt_mask, _, _, feature_id = model.process_data(batch)
    sub = model.sample_features(data, observed_mask, feature_id, gt_mask)  # numpy draws, seeded above
    s_data, s_mask, s_feature_id, s_gt = sub
    cond_mask = model.get_test_pattern_mask(s_mask, s_gt)
    side = model.get_side_info(tp, cond_mask, s_feature_id)
    out = {"batch": batch, "feature_id": s_feature_id, "cond_mask": cond_mask,
           "loss": replay_loss(model, s_data, cond_mask, s_mask, side, 2)}  # fmt: skip
    model.target_dim = model.target_dim_base  # evaluation: all features (as ``evaluate``)
    out["chain"] = replay_chain(model, data, gt_mask, model.get_side_info(tp, gt_mask), 3)
    return {"state": model.state_dict(), **out}


def versions(checkout: Path) -> dict:
    """Interpreter and package versions, and sha256 of the reference files used (the checkout may be an export)."""
    info = {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": np.__version__}
    for name in ("main_model.py", "diff_models.py"):
        info[f"sha256 {name}"] = hashlib.sha256((checkout / name).read_bytes()).hexdigest()
    lat = sys.modules.get("linear_attention_transformer")
    if isinstance(lat, types.ModuleType):
        info["linear_attention_transformer"] = importlib.metadata.version("linear_attention_transformer")
    return info


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkout", type=Path, required=True, help="a copy of ermongroup/CSDI (commit 7f24a43)")
    p.add_argument("--variant", choices=("imputation", "forecasting"), required=True)
    p.add_argument("--out", type=Path, default=Path(__file__).parents[2] / "tests" / "fixtures" / "reference")
    p.add_argument("--commit", default="7f24a43", help="the checkout's commit, recorded in the fixture")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    main_model = import_reference(args.checkout.resolve(), need_linear=args.variant == "forecasting")
    fixture = imputation(main_model) if args.variant == "imputation" else forecasting(main_model)
    config = reference_config(args.variant == "forecasting")
    meta = {"source": "ermongroup/CSDI", "commit": args.commit, "variant": args.variant, "config": config}
    fixture["meta"] = {**meta, **versions(args.checkout)}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"csdi_{args.variant}.pt"
    torch.save(fixture, path)
    print(json.dumps(fixture["meta"]), f"-> {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

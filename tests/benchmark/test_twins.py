"""The twin harness's weight conversions (benchmarks/reference/twins/run_twins.py, issue 26), on the pytorch-ts
state dict of the TimeGrad golden fixture (no reference code needed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def load_run_twins():
    spec = importlib.util.spec_from_file_location("run_twins", ROOT / "benchmarks/reference/twins/run_twins.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ours_to_pts_fills_both_copies_of_the_eps_network():
    """pytorch-ts's state dict names its eps-network twice (``denoise_fn.*`` and ``diffusion.denoise_fn.*``, one
    module): both must carry our weights, else ``load_state_dict`` lets the template's second copy win (the first
    harness run scored our RNN with pytorch-ts's eps-network that way). Round trip: ours -> pytorch-ts -> ours."""
    twins = load_run_twins()
    template = torch.load(ROOT / "tests/fixtures/reference/timegrad.pt", weights_only=False)["state"]
    ours = {k: v + 1.0 for k, v in twins.pts_to_ours(template).items()}  # weights that differ from the template's
    pts = twins.ours_to_pts(ours, template)
    assert set(pts) == set(template)
    schedule = {k for k in template if k.startswith("diffusion.") and not k.startswith("diffusion.denoise_fn.")}
    for key in set(template) - schedule - {"scaler.minimum_scale"}:
        assert not torch.equal(pts[key], template[key]), key
    for key in (k for k in template if k.startswith("diffusion.denoise_fn.")):
        torch.testing.assert_close(pts[key], pts[key.removeprefix("diffusion.")], rtol=0, atol=0)
    back = twins.pts_to_ours(pts)
    assert set(back) == set(ours)
    for key, value in ours.items():
        torch.testing.assert_close(back[key], value, rtol=0, atol=0)

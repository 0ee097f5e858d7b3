"""1-D U-Net shapes, reproducible generation, generation scores on known cases, generation configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tsdiffusion.denoisers.unet1d import UNet1DDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.metrics import generation as gen_scores
from tsdiffusion.plots import plot_generation
from tsdiffusion.tasks.generation import GenerationTask

ROOT = Path(__file__).resolve().parents[2]


def _randomise_output(net: UNet1DDenoiser) -> None:
    """The output conv and each residual block's last conv start at zero (the network starts as a zero map and
    every block as the identity, so the step/class embedding has no effect yet); give them weights to test the
    paths."""
    for name, p in net.named_parameters():
        if name.endswith("weight") and (name.startswith("output") or "conv2" in name):
            torch.nn.init.normal_(p, std=0.1)


# -- U-Net -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("L", [1, 7, 24, 33])
@pytest.mark.parametrize("mults,blocks", [((1,), 1), ((1, 2), 2), ((1, 2, 2, 2), 1)])
def test_unet_shapes_odd_lengths_and_depths(L, mults, blocks):
    torch.manual_seed(0)
    net = UNet1DDenoiser(3, channels=8, channel_mults=mults, blocks_per_level=blocks, heads=2)
    _randomise_output(net)
    x = torch.randn(2, L, 3, requires_grad=True)
    out = net(x, torch.tensor([0, 9]), {})
    assert out.shape == (2, L, 3) and torch.isfinite(out).all()
    out.sum().backward()
    assert x.grad.abs().sum() > 0
    assert net.features(x, torch.tensor([0, 9]), {}).shape[0] == 2


def test_unet_uses_conditioning_channels_and_labels():
    torch.manual_seed(0)
    net = UNet1DDenoiser(2, channels=8, channel_mults=(1, 2), heads=2, num_classes=3).eval()
    _randomise_output(net)
    x, t = torch.randn(2, 10, 2), torch.tensor([1, 1])
    base = {"label": torch.tensor([0, 0])}
    given = base | {"observed": torch.randn(2, 10, 2), "cond_mask": torch.ones(2, 10, 2)}
    assert not torch.allclose(net(x, t, base), net(x, t, given))
    assert not torch.allclose(net(x, t, base), net(x, t, {"label": torch.tensor([2, 2])}))
    with pytest.raises(KeyError, match="label"):
        net(x, t, {})
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        net(x, t, {"label": torch.tensor([0, 3])})


# -- generation ---------------------------------------------------------------------------------------------


def _task(class_conditional: bool = False, sampler: str = "ddpm") -> GenerationTask:
    torch.manual_seed(0)
    net = UNet1DDenoiser(2, channels=8, channel_mults=(1, 2), heads=2, num_classes=2 if class_conditional else 0)
    _randomise_output(net)
    return GenerationTask(
        net, GaussianDiffusion(num_steps=10, schedule="linear", beta_end=0.2), class_conditional=class_conditional,
        sampler=sampler, sample_steps=5,
    )  # fmt: skip


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_generation_is_reproducible_with_a_seeded_generator(sampler):
    task = _task(sampler=sampler)
    a = task.generate(4, 11, generator=torch.Generator().manual_seed(3))
    b = task.generate(4, 11, generator=torch.Generator().manual_seed(3))
    c = task.generate(4, 11, generator=torch.Generator().manual_seed(4))
    assert a.shape == (4, 11, 2) and torch.equal(a, b) and not torch.allclose(a, c)


def test_class_conditional_generation_needs_and_uses_labels():
    task = _task(class_conditional=True)
    with pytest.raises(ValueError, match="labels"):
        task.generate(2, 8)
    g = lambda: torch.Generator().manual_seed(0)
    zero = task.generate(2, 8, torch.tensor([0, 0]), generator=g())
    one = task.generate(2, 8, torch.tensor([1, 1]), generator=g())
    assert not torch.allclose(zero, one)
    with pytest.raises(ValueError, match="num_classes"):
        GenerationTask(UNet1DDenoiser(1, channels=8, channel_mults=(1,)), class_conditional=True)


def test_training_conditions_on_nothing():
    task = _task()
    batch = {"observed": torch.randn(2, 5, 2), "observed_mask": torch.ones(2, 5, 2)}
    assert task.train_cond_mask(batch).sum() == 0 and task.eval_cond_mask(batch).sum() == 0


# -- scores -------------------------------------------------------------------------------------------------


def _sines(n: int, L: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(L)[None, :, None]
    return np.sin(0.5 * t * rng.uniform(0.8, 1.2, (n, 1, 2)) + rng.uniform(0, 6, (n, 1, 2))).astype(np.float32)


FAST = {"iterations": 60, "lr": 1e-2, "batch_size": 256}


def test_discriminative_score_identical_sets_near_zero_different_sets_large():
    real = _sines(100)
    assert gen_scores.discriminative_score(real, real.copy(), **FAST) <= 0.1
    far = real + 2.0  # clearly different: shifted by two amplitudes
    assert gen_scores.discriminative_score(real, far, **FAST) >= 0.4


def test_predictive_score_prefers_realistic_training_data():
    real, other = _sines(100, seed=0), _sines(100, seed=1)
    noise = np.random.default_rng(0).normal(size=real.shape).astype(np.float32)
    assert gen_scores.predictive_score(real, other, **FAST) < gen_scores.predictive_score(real, noise, **FAST)


def test_marginal_and_acf_distances_known_cases():
    real = _sines(50)
    assert gen_scores.marginal_distance(real, real).max() == 0.0
    assert np.allclose(gen_scores.marginal_distance(real, real + 10.0), 1.0)  # disjoint supports
    assert gen_scores.acf_distance(real, real) == 0.0
    shuffled = gen_scores.baseline_sets(real)["shuffled"]
    assert gen_scores.marginal_distance(real, shuffled).max() < 1e-6  # same values, other order
    assert gen_scores.acf_distance(real, shuffled) > 0.2


def test_autocorrelation_of_a_known_signal():
    x = np.tile(np.array([1.0, -1.0]), 8)[None, :, None]  # alternating: acf(1) = -1, acf(2) = +1
    acf = gen_scores.autocorrelation(x, 2)
    assert acf[0, 0] == pytest.approx(-15 / 16) and acf[1, 0] == pytest.approx(14 / 16)


def test_scores_with_baselines_and_plots(tmp_path):
    real = _sines(40)
    scores = gen_scores.scores_with_baselines(real, _sines(40, seed=2), iterations=10, lr=1e-2, batch_size=256)
    for name in ("discriminative", "predictive", "marginal", "acf"):
        assert {name, f"baseline_shuffled_{name}", f"baseline_noise_{name}"} <= scores.keys()
    assert scores["baseline_noise_acf"] > scores["acf"]
    paths = plot_generation(real, real[::-1].copy(), tmp_path)
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)
    with pytest.raises(ValueError, match="NaN"):
        gen_scores.marginal_distance(real, np.full_like(real, np.nan))

"""The denoiser contract: declared capabilities, the Unconditional wrapper, tasks that read them, and the anomaly
reconstruction rule on the samplers' start step (scores equal to the loop it replaced)."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange
from torch import nn

import tsdiffusion.denoisers as denoisers
from tsdiffusion.batch import repeat_batch
from tsdiffusion.denoisers import (
    Capabilities,
    CSDIDenoiser,
    Denoiser,
    TimeGradDenoiser,
    TimeGradEncoder,
    UNet1DDenoiser,
    capabilities_of,
)
from tsdiffusion.diffusion import GaussianDiffusion, Unconditional, conditioned, timesteps
from tsdiffusion.tasks import AnomalyTask, DiffusionTask, GenerationTask, RepresentationTask, make_cond

torch.set_default_dtype(torch.float32)


def small_csdi(unconditional: bool = False) -> CSDIDenoiser:
    torch.manual_seed(0)
    net = CSDIDenoiser(3, channels=8, layers=1, heads=2, diffusion_embedding_dim=16, time_embedding_dim=8,
                       feature_embedding_dim=4, unconditional=unconditional).eval()  # fmt: skip
    with torch.no_grad():  # the output layer starts at zero: make the output depend on the input
        net.output_projection2.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return net


def small_unet(**kw) -> UNet1DDenoiser:
    return UNet1DDenoiser(3, channels=8, channel_mults=(1,), heads=2, **kw)


class Plain(nn.Module):
    """A module with the denoiser signature that declares nothing."""

    def forward(self, x_t, t, cond):
        return x_t


# -- declared capabilities ----------------------------------------------------------------------------------
@pytest.mark.parametrize(("make", "expected"), [
    (lambda: small_csdi(), Capabilities(conditional=True)),
    (lambda: small_csdi(unconditional=True), Capabilities(conditional=False)),
    (lambda: small_unet(), Capabilities(conditional=True, features=True)),
    (lambda: small_unet(num_classes=4, use_cond_channels=False), Capabilities(False, num_classes=4, features=True)),
    (lambda: TimeGradDenoiser(3, cond_dim=4, residual_layers=1, residual_channels=4), Capabilities(conditional=True)),
])  # fmt: skip
def test_every_denoiser_declares_what_it_can_do(make, expected):
    net = make()
    assert capabilities_of(net) == expected and isinstance(net, Denoiser)
    assert hasattr(net, "features") == expected.features


def test_every_exported_denoiser_class_is_covered():
    """A new denoiser exported from tsdiffusion.denoisers must declare capabilities (the parametrised test above)."""
    classes = {name for name in denoisers.__all__ if name.endswith("Denoiser") and name != "Denoiser"}
    assert classes == {"CSDIDenoiser", "TimeGradDenoiser", "UNet1DDenoiser"}
    # declared as a property or class attribute, so the class itself shows it
    assert all(hasattr(getattr(denoisers, name), "capabilities") for name in classes)


@pytest.mark.parametrize("module", [Plain(), TimeGradEncoder(3, 2, lags=[1])])
def test_a_module_without_capabilities_gets_a_clear_error(module):
    assert not isinstance(module, Denoiser)
    with pytest.raises(TypeError, match=rf"{type(module).__name__} declares no capabilities.*protocol\.py"):
        capabilities_of(module)


def test_tasks_read_capabilities_not_attributes():
    with pytest.raises(TypeError, match="Plain declares no capabilities"):
        RepresentationTask(Plain())
    with pytest.raises(TypeError, match="Plain declares no capabilities"):
        GenerationTask(Plain(), class_conditional=True)
    with pytest.raises(TypeError, match="no features"):
        RepresentationTask(small_csdi())
    with pytest.raises(ValueError, match="num_classes > 0"):  # CSDI declares no labels (it ignored them before too)
        GenerationTask(small_csdi(), class_conditional=True)
    batch = {"observed": torch.randn(2, 5, 3), "observed_mask": torch.ones(2, 5, 3)}
    with pytest.raises(TypeError, match="Plain declares no capabilities"):
        DiffusionTask(Plain(), GaussianDiffusion(5), num_samples=2).sample(batch, batch["observed_mask"])
    assert Capabilities(True) == Capabilities(conditional=True, num_classes=0, features=False)
    with pytest.raises(ValueError, match="num_classes must be >= 0"):
        Capabilities(True, num_classes=-1)


# -- the unconditional wrapper ------------------------------------------------------------------------------
def old_denoise_fn(process, denoiser):
    """DiffusionTask.denoise_fn before the wrapper (commit 9591578), verbatim but for self."""
    if not getattr(denoiser, "unconditional", False):
        return denoiser

    def fn(x_t, t, c):
        noise = torch.randn_like(x_t)
        noisy_obs = process.q_sample(c["observed"], t, noise)
        return denoiser(c["cond_mask"] * noisy_obs + (1 - c["cond_mask"]) * x_t, t, c)

    return fn


def test_unconditional_wrapper_equals_the_old_path():
    p, net = GaussianDiffusion(20, "quad"), small_csdi(unconditional=True)
    g = torch.Generator().manual_seed(3)
    x_t, obs = torch.randn(4, 6, 3, generator=g), torch.randn(4, 6, 3, generator=g)
    cond = {"observed": obs, "cond_mask": (torch.rand(4, 6, 3, generator=g) > 0.5).float()}
    t = torch.tensor([0, 5, 12, 19])
    torch.manual_seed(7)
    old = old_denoise_fn(p, net)(x_t, t, cond)
    torch.manual_seed(7)
    new = conditioned(p, net)(x_t, t, cond)
    torch.testing.assert_close(new, old, rtol=0, atol=0)
    # the known values reach the network noised to step t: at t = 0 almost exactly the observations
    assert not torch.equal(new, net(x_t, t, cond))
    wrapped = conditioned(p, net)
    assert isinstance(wrapped, Unconditional) and capabilities_of(wrapped) == Capabilities(conditional=True)
    conditional = small_csdi()
    assert conditioned(p, conditional) is conditional and DiffusionTask(conditional).denoise_fn({}) is conditional
    assert isinstance(DiffusionTask(net).denoise_fn({}), Unconditional)


def test_unconditional_wrapper_with_a_generator_reproduces_and_ignores_unknown_values():
    p, net = GaussianDiffusion(20, "quad"), small_csdi(unconditional=True)
    x_t, t = torch.randn(2, 6, 3), torch.tensor([3, 15])
    cond = {"observed": torch.randn(2, 6, 3), "cond_mask": torch.zeros(2, 6, 3)}
    a = Unconditional(p, net, torch.Generator().manual_seed(1))(x_t, t, cond)
    b = Unconditional(p, net, torch.Generator().manual_seed(2))(x_t, t, cond)
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # nothing known: the draw does not enter
    torch.testing.assert_close(a, net(x_t, t, cond), rtol=0, atol=0)


# -- anomaly reconstruction on the samplers' start step -------------------------------------------------------
def old_reconstruction_score(task, batch, generator):
    """AnomalyTask.reconstruction_score + denoise_from before the samplers took a start step (commit 9591578)."""
    hp, p = task.hparams, task.process
    t_star = p.num_steps // 5 if hp.noise_step is None else hp.noise_step
    S, x0 = hp.num_samples, batch["observed"]
    rows = repeat_batch(batch, S)
    cond = make_cond(rows, torch.zeros_like(rows["observed"]))
    noise = torch.randn(rows["observed"].shape, device=x0.device, generator=generator)
    x_t = p.q_sample(rows["observed"], torch.full_like(noise[:, 0, 0], t_star).long(), noise)
    fn = old_denoise_fn(p, task.denoiser)
    seq = timesteps(t_star + 1, min(hp.reconstruction_steps or t_star + 1, t_star + 1))
    for t, s in zip(seq, [*seq[1:], -1]):
        out = fn(x_t, torch.full_like(x_t[:, 0, 0], t).long(), cond)
        if hp.sampler == "ddim":
            x_t = p.ddim_step(out, x_t, t, s=s, eta=hp.eta, generator=generator)
        else:
            x_t = p.ddpm_step(out, x_t, t, s=s, generator=generator)
    median = rearrange(x_t, "(b s) l k -> b s l k", s=S).median(dim=1).values
    return (median - x0).abs()


@pytest.mark.parametrize("unconditional", [False, True])
@pytest.mark.parametrize(
    ("sampler", "reconstruction_steps", "eta", "noise_step"),
    [("ddpm", None, 0.0, None), ("ddpm", 3, 0.0, 7), ("ddim", 30, 0.0, 9), ("ddim", 4, 0.7, 5)],
)
def test_reconstruction_scores_equal_the_replaced_loop(unconditional, sampler, reconstruction_steps, eta, noise_step):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(3, 12, 3, generator=g) > 0.1).float()
    batch = {"observed": torch.randn(3, 12, 3, generator=g) * mask, "observed_mask": mask,
             "timepoints": torch.arange(12.0).expand(3, 12)}  # fmt: skip
    task = AnomalyTask(
        small_csdi(unconditional),
        GaussianDiffusion(20, "quad"),
        scoring="reconstruction",
        num_samples=4,
        sampler=sampler,
        eta=eta,
        reconstruction_steps=reconstruction_steps,
        noise_step=noise_step,
    )
    torch.manual_seed(11)  # the unconditional wrapper draws from the global generator, as before
    new = task.reconstruction_score(batch, torch.Generator().manual_seed(5))
    torch.manual_seed(11)
    old = old_reconstruction_score(task, batch, torch.Generator().manual_seed(5))
    assert new.shape == (3, 12, 3) and new.abs().sum() > 0
    # same draws, same steps; to float rounding only, since the chain runs through CSDIDenoiser.bind (the
    # conditioning's projections computed once per chain, summed in another order)
    torch.testing.assert_close(new, old, rtol=1e-5, atol=1e-6)

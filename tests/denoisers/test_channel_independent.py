"""ChannelIndependent: each series denoised by the shared univariate network, exactly as a loop over series would."""

from __future__ import annotations

import pytest
import torch

from tsdiffusion.denoisers import Capabilities, ChannelIndependent, Denoiser, UNet1DDenoiser, capabilities_of
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.tasks.guided import GuidedForecastingTask


def _inner(**kw) -> UNet1DDenoiser:
    torch.manual_seed(0)
    net = UNet1DDenoiser(1, channels=8, channel_mults=(1, 2), heads=2, **kw).eval()
    with torch.no_grad():  # the output layer starts at zero: make the output depend on the input
        net.output.weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    return net


def test_equals_a_loop_over_series_with_per_series_conditioning():
    net = ChannelIndependent(_inner(use_cond_channels=True), num_features=3)
    B, L, K = 2, 12, 3
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(B, L, K, generator=g), torch.tensor([3, 40])
    mask = (torch.rand(B, L, K, generator=g) > 0.5).float()
    cond = {"observed": torch.randn(B, L, K, generator=g) * mask, "cond_mask": mask, "timepoints": torch.randn(B, L)}
    out = net(x, t, cond)
    assert out.shape == (B, L, K)
    for b in range(B):
        for k in range(K):
            one = {"observed": cond["observed"][b : b + 1, :, k : k + 1], "cond_mask": mask[b : b + 1, :, k : k + 1],
                   "timepoints": cond["timepoints"][b : b + 1]}  # fmt: skip
            ref = net.denoiser(x[b : b + 1, :, k : k + 1], t[b : b + 1], one)
            torch.testing.assert_close(out[b : b + 1, :, k : k + 1], ref, rtol=1e-5, atol=1e-6)


def test_any_number_of_series_and_features_averaged_over_them():
    net = ChannelIndependent(_inner(use_cond_channels=False))
    x = torch.randn(2, 8, 5)
    assert net(x, torch.tensor([1, 2]), {}).shape == (2, 8, 5)
    assert net(x[..., :2], torch.tensor([1, 2]), {}).shape == (2, 8, 2)
    feats = net.features(x, torch.tensor([1, 2]), {})
    per_series = net.denoiser.features(x[0].T.unsqueeze(-1), torch.tensor([1] * 5), {})
    torch.testing.assert_close(feats[0], per_series.mean(0), rtol=1e-5, atol=1e-6)


def test_declares_the_inner_capabilities_and_refuses_a_multivariate_inner():
    net = ChannelIndependent(_inner(use_cond_channels=False))
    assert isinstance(net, Denoiser) and capabilities_of(net) == Capabilities(conditional=False, features=True)
    with pytest.raises(ValueError, match=r"num_features=3.*one series"):
        ChannelIndependent(UNet1DDenoiser(3, channels=8, channel_mults=(1,), heads=2))


def test_guided_forecasting_task_trains_and_samples_with_it():
    net = ChannelIndependent(_inner(use_cond_channels=False), num_features=4)
    task = GuidedForecastingTask(net, GaussianDiffusion(num_steps=10), guidance="mse", guidance_jacobian="identity",
                                 num_train_features=2, num_samples=3, sampler="ddim", sample_steps=4)  # fmt: skip
    B, L, K = 2, 16, 4
    batch = {"observed": torch.randn(B, L, K), "observed_mask": torch.ones(B, L, K),
             "target_mask": torch.zeros(B, L, K)}  # fmt: skip
    batch["target_mask"][:, 12:] = 1
    loss = task.training_step(batch, 0)
    loss.backward()
    assert torch.isfinite(loss) and net.denoiser.input.weight.grad is not None
    cond_mask = 1 - batch["target_mask"]
    draws = task.sample(batch, cond_mask, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (B, 3, L, K)
    torch.testing.assert_close(draws[:, :, :12], batch["observed"][:, None, :12].expand(B, 3, 12, K))

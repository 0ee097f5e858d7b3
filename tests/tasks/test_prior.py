"""``prior=``: diffusion around a baseline's point estimate (CARD-style residual diffusion).

The chain does not depend on the data (only on the conditioning values, which the denoiser sees raw either
way), so with the same denoiser, noise and generator, samples with a prior are samples without it plus the
prior at the hidden positions, exactly; the training loss is the plain loss of ``observed - prior``."""

from __future__ import annotations

import pytest
import torch

from tsdiffusion.baselines import InterpolationImputer, SamplingBaseline, SeasonalNaive
from tsdiffusion.denoisers import CSDIDenoiser, TimeGradDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.fill import interpolate
from tsdiffusion.tasks import ImputationTask, TimeGradTask
from tsdiffusion.tasks.base import make_cond

L_, K = 10, 3


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(L_, dtype=torch.float32)
    observed = torch.sin(t / 2)[None, :, None] + 0.1 * torch.randn(4, L_, K, generator=g)
    target = (torch.rand(4, L_, K, generator=g) < 0.3).float()
    return {"observed": observed, "observed_mask": torch.ones(4, L_, K), "target_mask": target}


def _task(prior=None, scale: float = 1.0) -> ImputationTask:
    torch.manual_seed(0)
    denoiser = CSDIDenoiser(K, channels=8, layers=1, heads=1, diffusion_embedding_dim=8, time_embedding_dim=8,
                            feature_embedding_dim=4)  # fmt: skip
    torch.nn.init.normal_(denoiser.output_projection2.weight, std=0.3)  # the zero init would hide the inputs
    process = GaussianDiffusion(num_steps=8, prediction="v")
    return ImputationTask(denoiser, process, num_samples=3, prior=prior, prior_scale=scale, plot_windows=0,
                          plot_calibration=False).eval()  # fmt: skip


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_samples_are_the_plain_chain_plus_the_prior_at_hidden_positions(scale: float) -> None:
    batch = _batch()
    cond_mask = batch["observed_mask"] * (1 - batch["target_mask"])
    plain, around = _task(), _task(InterpolationImputer(), scale)
    a = plain.sample(batch, cond_mask, generator=torch.Generator().manual_seed(1))
    b = around.sample(batch, cond_mask, generator=torch.Generator().manual_seed(1))
    fill = interpolate(batch["observed"] * cond_mask, cond_mask).unsqueeze(1)
    hidden = (1 - cond_mask).unsqueeze(1).expand_as(a) > 0
    torch.testing.assert_close(b[hidden], (scale * a + fill)[hidden], rtol=0, atol=1e-6)
    torch.testing.assert_close(b[~hidden], a[~hidden], rtol=0, atol=0)  # conditioning values kept as given
    assert (b[hidden] - a[hidden]).abs().max() > 0.1  # the prior did move the samples


def test_training_loss_is_the_loss_of_the_scaled_residual() -> None:
    batch, task = _batch(1), _task(InterpolationImputer(), 0.25)
    cond_mask = batch["observed_mask"] * (1 - batch["target_mask"])
    residual = task.residual_target(batch, cond_mask)
    fill = InterpolationImputer().point(batch, cond_mask)
    torch.testing.assert_close(residual, (batch["observed"] - fill) / 0.25)
    assert residual[cond_mask > 0].abs().max() == 0  # interpolation passes through the conditioning values
    loss_mask = batch["observed_mask"] * (1 - cond_mask)
    task.train_cond_mask = lambda b: cond_mask  # the training step's own random mask, fixed here
    cond = make_cond(batch, cond_mask)
    with torch.no_grad():
        torch.manual_seed(5)
        got = task.training_step(batch, 0)
        torch.manual_seed(5)
        expected = task.process.loss(task.denoiser, residual, cond, loss_mask)
        torch.manual_seed(5)
        raw = task.process.loss(task.denoiser, batch["observed"], cond, loss_mask)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert not torch.isclose(got, raw)


def test_default_point_is_a_fixed_seed_median_of_samples() -> None:
    class Noisy(SamplingBaseline):
        def sample(self, batch, cond_mask, num_samples, generator=None):
            B, L, K = batch["observed"].shape
            return torch.randn(B, num_samples, L, K, generator=generator)

    batch = _batch()
    cond_mask = torch.ones_like(batch["observed"])
    first, again = Noisy().point(batch, cond_mask), Noisy().point(batch, cond_mask)
    assert torch.equal(first, again)
    expected = torch.randn(4, 9, L_, K, generator=torch.Generator().manual_seed(0)).median(dim=1).values
    assert torch.equal(first, expected)


def test_prior_is_refused_where_it_has_no_meaning() -> None:
    denoiser = CSDIDenoiser(K, channels=8, layers=1, heads=1)
    with pytest.raises(ValueError, match="prior"):
        ImputationTask(baseline=InterpolationImputer(), prior=InterpolationImputer())
    with pytest.raises(ValueError, match="prior"):
        TimeGradTask(TimeGradDenoiser(K), prior=SeasonalNaive(4))
    with pytest.raises(ValueError, match="prior_scale"):
        ImputationTask(denoiser, prior=InterpolationImputer(), prior_scale=0.0)
    assert ImputationTask(denoiser, prior=InterpolationImputer()).prior is not None

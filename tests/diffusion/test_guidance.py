"""Observation self-guidance and refinement (tsdiffusion.diffusion.guidance) on an analytic Gaussian case.

Data x0 ~ N(0, Sigma) in D = 3 dimensions, shaped (N, L=3, K=1). The exact noise predictor is linear,
``eps(x_t, t) = sigma_t (abar_t Sigma + sigma_t^2 I)^-1 x_t``, and so is ``x0_hat = E[x0 | x_t]``. Observing the
first coordinate, ``p(y | x_t) = N(y; x0_hat_0, v_t)`` exactly, with ``v_t = Var(x0_0 | x_t)`` independent of x_t.
Hence mean-square guidance with the scale ``w_t = 1 / v_t`` IS the exact conditional score (Bayes' rule), and
every sampler must draw the exact conditional law N(mu_c, Sigma_c) of the other coordinates (up to its
discretisation error): this checks the gradient, its sigma_t scaling and the conversion to eps units.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from tsdiffusion.diffusion import GaussianDiffusion, sample
from tsdiffusion.diffusion.guidance import (
    denoising_energy,
    draw_guided_samples,
    guided,
    observation_log_likelihood,
    quantile_levels,
    refine,
)

SIGMA = torch.tensor([[1.0, 0.8, 0.5], [0.8, 1.0, 0.6], [0.5, 0.6, 1.0]], dtype=torch.float64)
Y_OBS = 1.5


def _process(prediction: str = "eps", num_steps: int = 100) -> GaussianDiffusion:
    """Linear betas with abar_{N-1} ~ e^-10, so that x_T ~ N(0, I) holds."""
    return GaussianDiffusion(
        num_steps, schedule="linear", beta_start=1e-4, beta_end=20 / num_steps, prediction=prediction
    )


def _exact_denoiser(process: GaussianDiffusion):
    """The exact denoiser of N(0, SIGMA) in the process's prediction units: (N, 3, 1), (N,) -> (N, 3, 1)."""
    a = process.alphas_cumprod.view(-1, 1, 1)
    eps_of_x = (1 - a).sqrt() * torch.linalg.inv(a * SIGMA + (1 - a) * torch.eye(3, dtype=torch.float64))

    def fn(x_t, t):
        a_t = process.alphas_cumprod[t].view(-1, 1, 1)
        x = x_t.double()
        eps = eps_of_x[t] @ x  # (N, 3, 3) @ (N, 3, 1)
        if process.prediction == "x0":
            eps = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        elif process.prediction == "v":
            eps = a_t.sqrt() * eps - (1 - a_t).sqrt() * (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        return eps.to(x_t.dtype)

    return fn


def _posterior_var0(process: GaussianDiffusion, t):
    """Var(x0_0 | x_t) per step t (N,): [Sigma - abar Sigma (abar Sigma + (1 - abar) I)^-1 Sigma]_00."""
    a = process.alphas_cumprod[t].view(-1, 1, 1)
    cov = a * SIGMA + (1 - a) * torch.eye(3, dtype=torch.float64)
    post = SIGMA - a * SIGMA @ torch.linalg.solve(cov, SIGMA.expand_as(cov))
    return post[:, 0, 0]


def _conditional():
    """Exact law of (x_1, x_2) given x_0 = Y_OBS."""
    s_oo, s_uo, s_uu = SIGMA[0, 0], SIGMA[1:, 0], SIGMA[1:, 1:]
    return s_uo / s_oo * Y_OBS, s_uu - torch.outer(s_uo, s_uo) / s_oo


def _obs(n: int):
    observed = torch.zeros(n, 3, 1, dtype=torch.float64)
    observed[:, 0] = Y_OBS
    mask = torch.zeros_like(observed)
    mask[:, 0] = 1
    return observed, mask


@pytest.mark.parametrize(
    ("sampler", "num_steps", "prediction", "atol"),
    # ancestral DDPM converges slowly in the number of steps (its prior covariance is 4% low at 100 steps)
    [
        pytest.param("ddpm", 400, "eps", 0.05, marks=pytest.mark.slow),
        ("ddim", 100, "x0", 0.03),
        ("dpmpp", 100, "v", 0.03),
        ("dpmpp_sde", 200, "eps", 0.03),
    ],
)
def test_exact_likelihood_scale_draws_the_exact_conditional(sampler, num_steps, prediction, atol):
    process, steps = _process(prediction, num_steps), None
    n = 4000
    observed, mask = _obs(n)
    fn = guided(process, _exact_denoiser(process), observed, mask,
                scale=lambda t: 1 / _posterior_var0(process, t))  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, 3, 1, dtype=torch.float64, generator=gen)
    x = sample(process, fn, x_T, sampler, steps=steps, generator=gen)[..., 0]
    mu_c, cov_c = _conditional()
    assert (x[:, 0] - Y_OBS).abs().max() < 0.02  # the observed coordinate is pinned
    se = (torch.diagonal(cov_c) / n).sqrt()
    assert torch.all((x[:, 1:].mean(0) - mu_c).abs() < 4 * se + 0.01), (x[:, 1:].mean(0), mu_c)
    assert torch.allclose(torch.cov(x[:, 1:].T), cov_c, atol=atol), (torch.cov(x[:, 1:].T), cov_c)
    # without guidance the same chain draws the prior, whose mean of x_1 is 0, far from mu_c = 1.2
    x_free = sample(process, _exact_denoiser(process), x_T, sampler, steps=steps,
                    generator=torch.Generator().manual_seed(0))[..., 0]  # fmt: skip
    assert (x_free[:, 1].mean() - mu_c[0]).abs() > 0.5


def test_scale_zero_is_the_unguided_sampler_bit_for_bit():
    process = _process()
    observed, mask = _obs(64)
    x_T = torch.randn(64, 3, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for sampler in ("ddpm", "ddim", "dpmpp_sde"):
        ref = sample(process, _exact_denoiser(process), x_T, sampler, steps=20,
                     generator=torch.Generator().manual_seed(2))  # fmt: skip
        fn = guided(process, _exact_denoiser(process), observed, mask, scale=0.0)
        out = sample(process, fn, x_T, sampler, steps=20, generator=torch.Generator().manual_seed(2))
        assert torch.equal(out, ref), sampler


def test_constant_scale_pins_the_observation_more_as_it_grows():
    """TSDiff's unit-variance likelihood with a constant scale: the spread of the observed coordinate around y
    shrinks monotonically with the scale (w = 0 is the prior, Var = 1 plus the offset y^2)."""
    process = _process()
    n = 2000
    observed, mask = _obs(n)
    x_T = torch.randn(n, 3, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    rms = []
    for w in (0.0, 1.0, 10.0, 100.0):
        fn = guided(process, _exact_denoiser(process), observed, mask, scale=w)
        x = sample(process, fn, x_T, "ddim", steps=50)[..., 0]
        rms.append(float((x[:, 0] - Y_OBS).pow(2).mean().sqrt()))
    assert rms[0] == pytest.approx(math.sqrt(1 + Y_OBS**2), rel=0.05)
    assert all(b < a for a, b in itertools.pairwise(rms)), rms
    assert rms[-1] < 0.1


def test_guidance_reads_only_masked_entries_and_an_empty_mask_changes_nothing():
    process = _process()
    x_t = torch.randn(16, 3, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    t = torch.full((16,), 40)
    observed, mask = _obs(16)
    base = _exact_denoiser(process)
    out = guided(process, base, observed, mask, scale=5.0)(x_t, t)
    other = observed.clone()
    other[:, 1:] = 123.0  # values where mask is 0 must not matter
    assert torch.equal(guided(process, base, other, mask, scale=5.0)(x_t, t), out)
    assert not torch.allclose(out, base(x_t, t))
    assert torch.equal(guided(process, base, observed, torch.zeros_like(mask), scale=5.0)(x_t, t), base(x_t, t))


def test_log_likelihoods_against_hand_formulas():
    x0 = torch.tensor([[0.0, 2.0, 5.0]]).view(1, 3, 1)
    y = torch.tensor([[1.0, 1.0, 1.0]]).view(1, 3, 1)
    m = torch.tensor([[1.0, 1.0, 0.0]]).view(1, 3, 1)
    assert observation_log_likelihood(x0, y, m, "mse").item() == pytest.approx(-0.5 * (1 + 1))
    # pinball: u = y - x0 = (1, -1): kappa = 0.9 -> 0.9 * 1 + 0.1 * 1
    q = torch.tensor([0.9])
    assert observation_log_likelihood(x0, y, m, "quantile", q).item() == pytest.approx(-1.0)
    x = x0.clone().requires_grad_(True)
    observation_log_likelihood(x, y, m, "quantile", q).sum().backward()
    # d/dx0 of -rho(y - x0): +kappa below the observation, -(1 - kappa) above it, 0 where unobserved
    assert torch.allclose(x.grad.flatten(), torch.tensor([0.9, -0.1, 0.0]))
    assert torch.allclose(quantile_levels(3), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    with pytest.raises(ValueError, match="mse"):
        observation_log_likelihood(x0, y, m, "l1")


def test_quantile_guidance_orders_the_samples_by_their_level():
    """Strong quantile guidance pins x_0 near y; the samples with high levels kappa are pulled from below with
    weight kappa and pushed from above with 1 - kappa, so they end above those with low levels."""
    process = _process()
    B, S = 200, 4
    observed, mask = _obs(B)
    cond = {"observed": observed}
    den = lambda x, t, c: _exact_denoiser(process)(x, t)
    draws = draw_guided_samples(process, den, cond, observed, mask, S, scale=3.0, kind="quantile",
                                sampler="ddim", steps=30, generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert draws.shape == (B, S, 3, 1)
    by_level = draws[:, :, 0, 0].mean(0)  # mean of x_0 per quantile level
    assert torch.all(by_level.diff() > 0), by_level
    assert by_level[0] < Y_OBS < by_level[-1]


def test_draw_guided_samples_shapes_random_masks_chunks_and_scale_zero():
    torch.manual_seed(0)
    process = GaussianDiffusion(num_steps=10)
    B, S, L, K = 3, 4, 6, 2
    net = torch.nn.Linear(K, K)
    den = lambda x, t, c: net(x) * (1 + t.view(-1, 1, 1) / 10)
    observed = torch.randn(B, L, K)
    mask = (torch.rand(B, L, K) < 0.5).float()
    cond = {"observed": observed * mask, "cond_mask": mask}
    kw = dict(sampler="ddim", steps=5)
    a = draw_guided_samples(process, den, cond, observed, mask, S, scale=2.0, max_batch=5,
                            generator=torch.Generator().manual_seed(1), **kw)  # fmt: skip
    b = draw_guided_samples(process, den, cond, observed, mask, S, scale=2.0,
                            generator=torch.Generator().manual_seed(1), **kw)  # fmt: skip
    assert a.shape == (B, S, L, K)
    assert torch.isfinite(a).all()
    from tsdiffusion.diffusion import draw_samples

    ref = draw_samples(process, den, cond, (B, L, K), S,
                       generator=torch.Generator().manual_seed(1), **kw)  # fmt: skip
    zero = draw_guided_samples(process, den, cond, observed, mask, S, scale=0.0,
                               generator=torch.Generator().manual_seed(1), **kw)  # fmt: skip
    assert torch.equal(zero, ref)
    assert not torch.allclose(b, zero)


def test_guidance_works_under_inference_mode():
    process = _process()
    observed, mask = _obs(8)
    with torch.inference_mode():
        x_T = torch.randn(8, 3, 1, dtype=torch.float64)
        fn = guided(process, _exact_denoiser(process), observed, mask, scale=1.0)
        out = sample(process, fn, x_T, "ddim", steps=5)
    assert out.shape == (8, 3, 1)


def test_refine_ml_moves_toward_the_conditional_mean_and_keeps_the_observation():
    process = _process()
    n = 256
    observed, mask = _obs(n)
    init = torch.zeros(n, 3, 1, dtype=torch.float64)
    init[:, 0] = 0.0  # the observation is missed
    init[:, 1:] = -3.0  # far from the conditional mean (1.2, 0.75)
    assert torch.equal(refine(process, _exact_denoiser(process), init, observed, mask, iterations=0), init)
    # observation term only: gradient descent on 1/2 (y - x)^2 reaches y, unobserved entries untouched
    obs_only = refine(process, _exact_denoiser(process), init, observed, mask, iterations=40, step_size=0.3,
                      method="ml", prior_weight=0.0)  # fmt: skip
    assert torch.allclose(obs_only[:, 0], observed[:, 0], atol=1e-5)
    assert torch.equal(obs_only[:, 1:], init[:, 1:])
    out = refine(process, _exact_denoiser(process), init, observed, mask, iterations=300, step_size=0.02,
                 method="ml", generator=torch.Generator().manual_seed(6))  # fmt: skip
    mu_c, _ = _conditional()
    before = (init[:, 1:, 0] - mu_c).norm(dim=1).mean()
    after = (out[:, 1:, 0] - mu_c).norm(dim=1).mean()
    assert after < 0.5 * before, (before, after)
    # the observed entry settles between y (the observation term) and the prior's mode 0 (the energy term)
    assert 0 < (Y_OBS - out[:, 0, 0]).mean() < 0.5 * Y_OBS
    lang = refine(process, _exact_denoiser(process), init, observed, mask, iterations=5, step_size=0.01,
                  generator=torch.Generator().manual_seed(7))  # fmt: skip
    assert lang.shape == init.shape and lang.std(0)[1:].min() > 0  # Langevin noise spreads identical inits


def test_denoising_energy_is_lower_for_data_than_for_outliers():
    process = _process()
    gen = torch.Generator().manual_seed(8)
    data = (torch.linalg.cholesky(SIGMA) @ torch.randn(3, 4000, dtype=torch.float64, generator=gen)).T[..., None]
    e_data = denoising_energy(process, _exact_denoiser(process), data, gen).mean()
    e_out = denoising_energy(process, _exact_denoiser(process), data * 4, gen).mean()
    assert e_out > 2 * e_data


def _tiny_batch(B=2, L=12, K=3):
    gen = torch.Generator().manual_seed(9)
    observed = torch.randn(B, L, K, generator=gen)
    target = torch.zeros(B, L, K)
    target[:, -4:] = 1
    return {"observed": observed, "observed_mask": torch.ones(B, L, K), "target_mask": target}


@pytest.mark.slow
def test_guided_tasks_train_unconditionally_and_sample_with_guidance_or_refinement():
    from tsdiffusion.baselines import SeasonalNaive
    from tsdiffusion.denoisers import CSDIDenoiser, UNet1DDenoiser
    from tsdiffusion.tasks.guided import GuidedForecastingTask, GuidedImputationTask

    torch.manual_seed(0)
    unet = UNet1DDenoiser(3, channels=8, channel_mults=(1,), attention=False, use_cond_channels=False)
    process = GaussianDiffusion(num_steps=10)
    task = GuidedForecastingTask(unet, process, num_samples=3, sampler="ddim", sample_steps=4, guidance_scale=2.0,
                                 num_train_features=None)  # fmt: skip
    batch = _tiny_batch()
    assert torch.equal(task.train_cond_mask(batch), torch.zeros_like(batch["observed"]))
    assert torch.isfinite(task.training_step(batch, 0))
    cond_mask = 1 - batch["target_mask"]
    with torch.inference_mode():  # as Lightning's test loop
        draws = task.sample(batch, cond_mask, generator=torch.Generator().manual_seed(1))
    assert draws.shape == (2, 3, 12, 3)
    assert torch.equal(draws[:, :, :8], batch["observed"][:, None, :8].expand(-1, 3, -1, -1))
    task.base_forecaster, task.hparams.refine_iterations = SeasonalNaive(season_length=2), 3
    refined = task.sample(batch, cond_mask, generator=torch.Generator().manual_seed(1))
    assert refined.shape == (2, 3, 12, 3) and torch.isfinite(refined).all()
    csdi = CSDIDenoiser(3, channels=8, layers=1, heads=2, diffusion_embedding_dim=16, time_embedding_dim=16,
                        feature_embedding_dim=4, unconditional=True)  # fmt: skip
    imp = GuidedImputationTask(csdi, process, num_samples=2, sampler="dpmpp", sample_steps=3, guidance="quantile")
    random_mask = (torch.rand(2, 12, 3, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    out = imp.sample(batch, random_mask)
    assert out.shape == (2, 2, 12, 3)
    with pytest.raises(ValueError, match="unconditional"):
        GuidedForecastingTask(UNet1DDenoiser(3, channels=8, channel_mults=(1,), attention=False), process)


def test_identity_jacobian_is_exact_for_white_data_and_needs_no_backward_pass():
    """For x0 ~ N(0, I), x0_hat = E[x0 | x_t] = sqrt(abar_t) x_t exactly, so ``jacobian="identity"`` equals the
    network gradient; it never differentiates through the denoiser (the denoiser here forbids it)."""
    process = _process()
    observed, mask = _obs(32)
    x_t = torch.randn(32, 3, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(10))
    white = lambda x, t: (1 - process.alphas_cumprod[t].view(-1, 1, 1)).sqrt() * x  # eps of N(0, I)
    for t in (99, 50, 5):
        tt = torch.full((32,), t)
        net = guided(process, white, observed, mask, scale=3.0)(x_t, tt)
        no_grad = lambda x, t: white(x, t).detach() if not x.requires_grad else pytest.fail("backward pass")
        ident = guided(process, no_grad, observed, mask, scale=3.0, jacobian="identity")(x_t, tt)
        assert torch.allclose(net, ident, atol=1e-12), t
    # with correlated data the two differ (identity is then an approximation)
    base = _exact_denoiser(process)
    tt = torch.full((32,), 50)
    a = guided(process, base, observed, mask, scale=3.0)(x_t, tt)
    b = guided(process, base, observed, mask, scale=3.0, jacobian="identity")(x_t, tt)
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="jacobian"):
        guided(process, base, observed, mask, jacobian="none")

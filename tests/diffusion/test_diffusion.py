"""Diffusion core: schedules, forward process, posteriors, prediction types, samplers (float64 references)."""

import math

import numpy as np
import pytest
import torch

from tsdiffusion.diffusion import (
    GaussianDiffusion,
    draw_samples,
    make_betas,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_dpmpp,
    timesteps,
)

torch.set_default_dtype(torch.float32)


# -- schedules ------------------------------------------------------------------------------------
def test_schedules_match_their_definitions():
    quad = make_betas("quad", 50, 1e-4, 0.5).numpy()
    np.testing.assert_allclose(quad, np.linspace(1e-2, 0.5**0.5, 50) ** 2, rtol=1e-12)
    lin = make_betas("linear", 100, 1e-4, 0.1)
    assert lin.dtype == torch.float64 and lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.1)
    cos = make_betas("cosine", 1000).numpy()
    f = lambda t: np.cos((t / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    abar = np.cumprod(1 - cos)
    np.testing.assert_allclose(abar[:900], f(np.arange(1, 901)) / f(0), rtol=1e-9)
    assert cos.max() <= 0.999
    with pytest.raises(ValueError, match="unknown schedule"):
        make_betas("sigmoid", 10)


# -- forward process ------------------------------------------------------------------------------
@pytest.mark.parametrize("t", [0, 10, 49])
def test_q_sample_moments_match_closed_form(t):
    p = GaussianDiffusion(50, "quad", 1e-4, 0.5).double()
    n = 200_000
    x0 = torch.full((n, 1, 1), 2.0, dtype=torch.float64)
    g = torch.Generator().manual_seed(t)
    x_t = p.q_sample(x0, torch.full((n,), t), torch.randn(x0.shape, generator=g, dtype=torch.float64))
    abar = float(np.cumprod(1 - make_betas("quad", 50, 1e-4, 0.5).numpy())[t])
    mean, var = math.sqrt(abar) * 2.0, 1 - abar
    assert abs(x_t.mean().item() - mean) < 5 * math.sqrt(var / n)
    assert abs(x_t.var().item() - var) < 5 * var * math.sqrt(2 / n)


def test_posterior_matches_ho_et_al():
    p = GaussianDiffusion(100, "linear", 1e-4, 0.1).double()
    betas = np.linspace(1e-4, 0.1, 100)
    alphas, abar = 1 - betas, np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    x0, x_t = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2))
    t = np.array([1, 5, 50, 98, 99])
    ab_t, ab_prev = abar[t][:, None, None], abar[t - 1][:, None, None]
    b_t, a_t = betas[t][:, None, None], alphas[t][:, None, None]
    ref_mean = np.sqrt(ab_prev) * b_t / (1 - ab_t) * x0 + np.sqrt(a_t) * (1 - ab_prev) / (1 - ab_t) * x_t
    ref_var = (1 - ab_prev) / (1 - ab_t) * b_t
    mean, var = p.q_posterior(torch.tensor(x0), torch.tensor(x_t), torch.tensor(t))
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-10)
    np.testing.assert_allclose(var.numpy(), np.broadcast_to(ref_var, x0.shape), rtol=1e-10)
    # t = 0 goes to the data: mean = x0, variance 0
    mean0, var0 = p.q_posterior(torch.tensor(x0), torch.tensor(x_t), torch.zeros(5, dtype=torch.long))
    np.testing.assert_allclose(mean0.numpy(), x0, atol=1e-12)
    assert var0.abs().max() < 1e-12


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_prediction_conversions_round_trip(prediction):
    p = GaussianDiffusion(50, "quad", prediction=prediction).double()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 4, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(8, 4, 3, generator=g, dtype=torch.float64)
    t = torch.randint(0, 50, (8,), generator=g)
    x_t = p.q_sample(x0, t, eps)
    out = p.target(x0, eps, t)
    torch.testing.assert_close(p.predict_x0(out, x_t, t), x0, atol=1e-6, rtol=0)
    torch.testing.assert_close(p.predict_eps(out, x_t, t), eps, atol=1e-6, rtol=0)


def test_masked_loss_is_mean_over_mask():
    p = GaussianDiffusion(10, "linear", 1e-4, 0.2)
    x0 = torch.randn(4, 6, 3)
    mask = (torch.rand(4, 6, 3) > 0.5).float()
    t, noise = torch.randint(0, 10, (4,)), torch.randn(4, 6, 3)
    perfect = lambda x_t, t_, cond: noise
    assert p.loss(perfect, x0, {}, mask, t=t, noise=noise).item() == 0.0
    off = lambda x_t, t_, cond: noise + 2.0 * (1 - mask) + 1.0  # errors of 3 where mask = 0, 1 where mask = 1
    assert p.loss(off, x0, {}, mask, t=t, noise=noise).item() == pytest.approx(1.0)
    assert p.loss(off, x0, {}, torch.zeros_like(mask), t=t, noise=noise).item() == 0.0


# -- samplers against an analytic Gaussian case -----------------------------------------------------
MU, SIGMA = 1.5, 0.5


def optimal_output(p: GaussianDiffusion):
    """The exact E[target | x_t] for data ~ N(MU, SIGMA^2), in the process's prediction units."""

    def fn(x_t, t):
        a = p._abar(t, x_t)
        eps = (1 - a).sqrt() / (a * SIGMA**2 + 1 - a) * (x_t - a.sqrt() * MU)
        x0 = (x_t - (1 - a).sqrt() * eps) / a.sqrt()
        return p.target(x0, eps, t)

    return fn


def reference_moments(
    abar: np.ndarray, seq: list[int], sampler: str, eta: float = 1.0, start: tuple[float, float] = (0.0, 1.0)
) -> tuple[float, float]:
    """Propagate (mean, var) of x exactly through the discretised sampler, eps-form equations, float64.

    Every step is affine in x_t plus independent Gaussian noise: x_s = A x_t + b + sd * z. ``start``: the
    (mean, var) of x at ``seq[0]`` (N(0, 1) at T).
    """
    m, v = start
    for t, s in zip(seq, [*seq[1:], -1]):
        a_t, a_s = abar[t], (abar[s] if s >= 0 else 1.0)
        k = math.sqrt(1 - a_t) / (a_t * SIGMA**2 + 1 - a_t)  # eps_hat = k (x_t - sqrt(a_t) MU)
        eps_A, eps_b = k, -k * math.sqrt(a_t) * MU
        x0_A, x0_b = (1 - math.sqrt(1 - a_t) * eps_A) / math.sqrt(a_t), -math.sqrt(1 - a_t) * eps_b / math.sqrt(a_t)
        if sampler == "ddpm":  # x_s = c0 x0_hat + ct x_t + sqrt(beta_tilde) z, respaced beta = 1 - a_t / a_s
            beta = 1 - a_t / a_s
            c0, ct = math.sqrt(a_s) * beta / (1 - a_t), math.sqrt(1 - beta) * (1 - a_s) / (1 - a_t)
            A, b, sd2 = c0 * x0_A + ct, c0 * x0_b, beta * (1 - a_s) / (1 - a_t)
        else:  # DDIM eq. 12
            sig2 = eta**2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
            ce = math.sqrt(max(1 - a_s - sig2, 0.0))
            A, b, sd2 = math.sqrt(a_s) * x0_A + ce * eps_A, math.sqrt(a_s) * x0_b + ce * eps_b, sig2
        m, v = A * m + b, A * A * v + sd2
    return m, v


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize(("sampler", "steps"), [("ddpm", 100), ("ddpm", 50), ("ddpm", 20), ("ddim", 100), ("ddim", 10)])
def test_samplers_recover_gaussian_data(sampler, steps, prediction):
    p = GaussianDiffusion(100, "cosine", prediction=prediction).double()
    n = 20_000
    g = torch.Generator().manual_seed(steps)
    x_T = torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    fn = sample_ddpm if sampler == "ddpm" else sample_ddim
    x0 = fn(p, optimal_output(p), x_T, steps=steps, generator=g)
    m, v = reference_moments(p.alphas_cumprod.numpy(), timesteps(100, steps), sampler, eta=0.0)
    # the samples follow the exact law of the discretised chain ...
    assert abs(x0.mean().item() - m) < 5 * math.sqrt(v / n)
    assert abs(x0.var().item() - v) < 5 * v * math.sqrt(2 / n)
    # ... and that law is close to N(MU, SIGMA^2); the gap is the discretisation error, shrinking with steps
    assert abs(m - MU) < 1e-3
    assert abs(math.sqrt(v) - SIGMA) < (0.1 if steps <= 20 else 0.04)


def test_discretisation_error_shrinks_with_steps():
    abar = GaussianDiffusion(1000, "cosine").alphas_cumprod.numpy()
    gaps = [abs(math.sqrt(reference_moments(abar, timesteps(1000, s), "ddpm")[1]) - SIGMA) for s in (10, 100, 1000)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.01


def test_ddim_eta_one_single_steps_equal_ddpm():
    p = GaussianDiffusion(20, "linear", 1e-4, 0.3).double()
    x = torch.randn(6, 5, 2, dtype=torch.float64)
    out = torch.randn(6, 5, 2, dtype=torch.float64)
    a = p.ddim_step(out, x, 7, s=6, eta=1.0, generator=torch.Generator().manual_seed(3))
    b = p.ddpm_step(out, x, 7, s=6, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


def test_ddim_eta_zero_is_deterministic_and_generators_reproduce():
    p = GaussianDiffusion(50, "quad")
    fn = optimal_output(p)
    x_T = torch.randn(64, 4, 2)
    a = sample_ddim(p, fn, x_T, steps=10, generator=torch.Generator().manual_seed(0))
    b = sample_ddim(p, fn, x_T, steps=10, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    c = sample_ddpm(p, fn, x_T, steps=10, generator=torch.Generator().manual_seed(5))
    d = sample_ddpm(p, fn, x_T, steps=10, generator=torch.Generator().manual_seed(5))
    e = sample_ddpm(p, fn, x_T, steps=10, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(c, d, rtol=0, atol=0)
    assert not torch.allclose(c, e)


def test_timesteps():
    assert timesteps(50) == list(range(49, -1, -1))
    seq = timesteps(50, 7)
    assert seq[0] == 49 and seq[-1] == 0 and len(set(seq)) == 7 and seq == sorted(seq, reverse=True)
    assert timesteps(50, 1) == [49]
    with pytest.raises(ValueError, match="steps must be in"):
        timesteps(50, 51)


@pytest.mark.parametrize(("sampler", "max_batch"), [("ddpm", None), ("ddim", 5), ("ddpm", 1)])
def test_draw_samples_routes_conditioning_per_item(sampler, max_batch):
    """A perfect x0-predictor that returns cond['observed'] makes every sample equal its own item."""
    p = GaussianDiffusion(10, "linear", 1e-4, 0.2, prediction="x0")
    B, L, K, S = 3, 4, 2, 4
    obs = torch.arange(B, dtype=torch.float32).view(B, 1, 1).expand(B, L, K).contiguous()
    den = lambda x_t, t, cond: cond["observed"]
    out = draw_samples(p, den, {"observed": obs}, (B, L, K), S, sampler=sampler, steps=5, max_batch=max_batch)
    assert out.shape == (B, S, L, K)
    torch.testing.assert_close(out, obs.unsqueeze(1).expand(B, S, L, K), atol=1e-5, rtol=0)


# -- DPM-Solver++(2M) ------------------------------------------------------------------------------------
def affine_law(fn) -> tuple[float, float]:
    """A deterministic sampler with the exact Gaussian denoiser maps x_T affinely: x_0 = A x_T + b, so its
    output law from N(0, 1) is N(b, A^2), read off two evaluations (float64, no Monte Carlo)."""
    b = fn(torch.zeros(1, 1, 1, dtype=torch.float64)).item()
    return b, fn(torch.ones(1, 1, 1, dtype=torch.float64)).item() - b


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize(("schedule", "N"), [("cosine", 1000), ("quad", 50)])
def test_dpmpp_beats_ddim_at_the_same_steps(prediction, schedule, N):
    p = GaussianDiffusion(N, schedule, prediction=prediction).double()
    errs = {}
    for name, fn in (("dpmpp", sample_dpmpp), ("ddim", sample_ddim)):
        for steps in (10, 20, 40):
            m, sd = affine_law(lambda x, fn=fn, steps=steps: fn(p, optimal_output(p), x, steps=steps))
            errs[name, steps] = abs(sd - SIGMA) + abs(m - MU)
    for steps in (10, 20, 40):
        assert errs["dpmpp", steps] < errs["ddim", steps] / 2
    assert errs["dpmpp", 10] < 0.035 and errs["dpmpp", 20] < 0.015


def test_dpmpp_first_step_is_ddim():
    p = GaussianDiffusion(50, "quad").double()
    x_T = torch.randn(5, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(
        sample_dpmpp(p, optimal_output(p), x_T, steps=1), sample_ddim(p, optimal_output(p), x_T, steps=1)
    )
    seq = timesteps(50, 2)
    out = optimal_output(p)(x_T, torch.full((5,), seq[0]))
    expected_x1 = p.ddim_step(out, x_T, seq[0], s=seq[1])
    captured = []

    def fn(x, t):
        captured.append(x)
        return optimal_output(p)(x, t)

    sample_dpmpp(p, fn, x_T, steps=2)
    torch.testing.assert_close(captured[1], expected_x1)


def test_dpmpp_sde_single_steps_are_ddpm_and_recover_gaussian_data():
    p = GaussianDiffusion(100, "cosine").double()
    n = 20_000
    g = torch.Generator().manual_seed(0)
    x_T = torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    x0 = sample_dpmpp(p, optimal_output(p), x_T, steps=25, stochastic=True, generator=g)
    assert abs(x0.mean().item() - MU) < 5 * SIGMA / math.sqrt(n)
    assert abs(x0.std().item() - SIGMA) < 0.02
    # with the exact denoiser both multistep terms agree, and the first step from T is DDPM's, draw for draw
    seq = timesteps(100, 25)
    fn = optimal_output(p)
    captured = []
    sample_dpmpp(p, lambda x, t: captured.append(x) or fn(x, t), x_T[:8], steps=25, stochastic=True,
                 generator=torch.Generator().manual_seed(4))  # fmt: skip
    expected = p.ddpm_step(fn(x_T[:8], torch.full((8,), seq[0])), x_T[:8], seq[0], s=seq[1],
                           generator=torch.Generator().manual_seed(4))  # fmt: skip
    torch.testing.assert_close(captured[1], expected)


@pytest.mark.parametrize("sampler", ["dpmpp", "dpmpp_sde"])
def test_draw_samples_with_dpmpp(sampler):
    p = GaussianDiffusion(10, "linear", 1e-4, 0.2, prediction="x0")
    B, L, K, S = 2, 3, 2, 3
    obs = torch.arange(B, dtype=torch.float32).view(B, 1, 1).expand(B, L, K).contiguous()
    out = draw_samples(p, lambda x_t, t, cond: cond["observed"], {"observed": obs}, (B, L, K), S, sampler=sampler,
                       steps=4, max_batch=4)  # fmt: skip
    torch.testing.assert_close(out, obs.unsqueeze(1).expand(B, S, L, K), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        draw_samples(p, lambda x_t, t, cond: x_t, {"observed": obs}, (B, L, K), S, sampler="euler")


# -- samplers started from any step t_start ---------------------------------------------------------------
def marginal(p: GaussianDiffusion, t: int) -> tuple[float, float]:
    """(mean, var) of x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps for x0 ~ N(MU, SIGMA^2)."""
    a = p.alphas_cumprod[t].item()
    return math.sqrt(a) * MU, a * SIGMA**2 + 1 - a


@pytest.mark.parametrize(("sampler", "steps", "eta"), [("ddpm", None, 0.0), ("ddpm", 4, 0.0), ("ddim", 3, 0.0),
                                                       ("ddim", 50, 0.6)])  # fmt: skip
def test_sampler_from_t_start_is_the_chain_run_by_hand(sampler, steps, eta):
    p = GaussianDiffusion(20, "quad").double()
    fn, t_start = optimal_output(p), 9
    x = torch.randn(16, 5, 2, dtype=torch.float64)
    out = sample(p, fn, x, sampler, steps=steps, eta=eta, t_start=t_start, generator=torch.Generator().manual_seed(2))
    seq = timesteps(t_start + 1, min(steps or 10, 10))  # the grid over [0, t_start], steps capped at t_start + 1
    assert seq[0] == t_start and seq[-1] == 0
    g, ref = torch.Generator().manual_seed(2), x
    for t, s in zip(seq, [*seq[1:], -1]):
        o = fn(ref, torch.full((16,), t))
        ref = (p.ddpm_step(o, ref, t, s=s, generator=g) if sampler == "ddpm"
               else p.ddim_step(o, ref, t, s=s, eta=eta, generator=g))  # fmt: skip
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


@pytest.mark.parametrize(("t_start", "steps"), [(30, None), (30, 8), (60, 15)])
def test_ddpm_from_t_start_recovers_gaussian_data(t_start, steps):
    """x_{t_start} drawn from the data's marginal: the partial chain follows the law of the discretised chain."""
    p = GaussianDiffusion(100, "cosine").double()
    n, (m0, v0) = 20_000, marginal(p, t_start)
    g = torch.Generator().manual_seed(t_start)
    x = m0 + math.sqrt(v0) * torch.randn(n, 1, 1, generator=g, dtype=torch.float64)
    x0 = sample_ddpm(p, optimal_output(p), x, steps=steps, t_start=t_start, generator=g)
    seq = timesteps(t_start + 1, steps)
    m, v = reference_moments(p.alphas_cumprod.numpy(), seq, "ddpm", start=(m0, v0))
    assert abs(x0.mean().item() - m) < 5 * math.sqrt(v / n)
    assert abs(x0.var().item() - v) < 5 * v * math.sqrt(2 / n)
    assert abs(m - MU) < 1e-3 and abs(math.sqrt(v) - SIGMA) < (0.04 if steps is None else 0.1)  # discretisation


@pytest.mark.parametrize("t_start", [20, 50])
def test_ddim_and_dpmpp_from_t_start_map_the_marginal_to_the_data(t_start):
    """Deterministic samplers are affine in x_{t_start}: their output law from the marginal N(m0, v0) is exact."""
    p = GaussianDiffusion(100, "cosine").double()
    m0, v0 = marginal(p, t_start)
    errs = {}
    for name, fn in (("ddim", sample_ddim), ("dpmpp", sample_dpmpp)):
        b, A = affine_law(lambda x, fn=fn: fn(p, optimal_output(p), x, steps=8, t_start=t_start))
        m, sd = A * m0 + b, abs(A) * math.sqrt(v0)
        errs[name] = abs(sd - SIGMA) + abs(m - MU)
        if name == "ddim":  # against the exact propagation of DDIM's equations
            ref_m, ref_v = reference_moments(p.alphas_cumprod.numpy(), timesteps(t_start + 1, 8), "ddim", eta=0.0,
                                             start=(m0, v0))  # fmt: skip
            assert m == pytest.approx(ref_m, rel=1e-9) and sd == pytest.approx(math.sqrt(ref_v), rel=1e-9)
    assert errs["dpmpp"] < errs["ddim"] / 2 and errs["dpmpp"] < 0.01  # second order pays off on partial chains
    # from N - 1 the start argument changes nothing
    x = torch.randn(4, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(sample_dpmpp(p, optimal_output(p), x, steps=8, t_start=99),
                               sample_dpmpp(p, optimal_output(p), x, steps=8), rtol=0, atol=0)  # fmt: skip


def test_t_start_caps_steps_and_is_checked():
    p = GaussianDiffusion(20, "linear", 1e-4, 0.2)
    calls = []
    fn = lambda x, t: calls.append(int(t[0])) or torch.zeros_like(x)
    for name in ("ddpm", "ddim", "dpmpp"):
        calls.clear()
        sample(p, fn, torch.randn(2, 3, 1), name, steps=15, t_start=4)
        assert calls == [4, 3, 2, 1, 0], name
    with pytest.raises(ValueError, match="t_start must be a step in"):
        sample_ddpm(p, fn, torch.randn(2, 3, 1), t_start=20)


@pytest.mark.parametrize(("sampler", "max_batch"), [("ddpm", None), ("ddim", 4)])
def test_draw_samples_from_t_start_noises_x0_with_the_start_draw(sampler, max_batch):
    p = GaussianDiffusion(10, "linear", 1e-4, 0.2)
    B, L, K, S, t_start = 3, 4, 2, 2, 6
    x0 = torch.randn(B, L, K)
    den = lambda x_t, t, cond: x_t * 0.5 + cond["observed"]
    out = draw_samples(
        p,
        den,
        {"observed": x0},
        (B, L, K),
        S,
        sampler=sampler,
        steps=3,
        eta=0.3,
        max_batch=max_batch,
        t_start=t_start,
        x0=x0,
        generator=torch.Generator().manual_seed(1),
    )
    # by hand: chunks of rows (b s), each drawing z, then running the chain from q_sample(x0, t_start, z)
    g, rows, chunk = torch.Generator().manual_seed(1), x0.repeat_interleave(S, 0), max_batch or B * S
    ref = []
    for i in range(0, B * S, chunk):
        x0_c = rows[i : i + chunk]
        z = torch.randn(x0_c.shape, generator=g)
        x = p.q_sample(x0_c, torch.full((len(x0_c),), t_start), z)
        ref.append(sample(p, lambda x_t, t, c=x0_c: den(x_t, t, {"observed": c}), x, sampler, steps=3, eta=0.3,
                          t_start=t_start, generator=g))  # fmt: skip
    torch.testing.assert_close(out, torch.cat(ref).view(B, S, L, K), rtol=0, atol=0)
    with pytest.raises(ValueError, match="t_start and x0 go together"):
        draw_samples(p, den, {"observed": x0}, (B, L, K), S, t_start=t_start)

"""Conditioning an unconditional model at sampling time: observation self-guidance and refinement (TSDiff).

Kollovieh et al. 2023 ("Predict, Refine, Synthesize", NeurIPS; TSDiff) condition one unconditionally trained
diffusion model on observed values without retraining it.

**Observation self-guidance** (TSDiff §4.1). Bayes' rule for scores, ``grad log p_t(x_t | y) = grad log p_t(x_t)
+ grad log p(y | x_t)``, with ``p(y | x_t)`` approximated by a likelihood of the observed entries ``y`` centred on
the model's own prediction of the clean window, ``x0_hat(x_t, t)`` (:meth:`GaussianDiffusion.predict_x0`):

* ``mse``: a unit Gaussian, ``log p = -1/2 sum_obs (y - x0_hat)^2``;
* ``quantile``: an asymmetric Laplace at quantile level ``kappa`` (scale 1),
  ``log p = -sum_obs rho_kappa(y - x0_hat)``, ``rho_kappa(u) = max(kappa u, (kappa - 1) u)``; here (our choice of
  levels) the samples of one item get ``kappa_j = j / (S + 1)``, ``j = 1..S``, so together they spread over the
  quantiles.

Since ``score = -eps / sigma_t`` (``sigma_t = sqrt(1 - abar_t)``), the guided noise prediction is

    eps_guided = eps_theta(x_t, t) - w_t sigma_t grad_{x_t} log p(y | x_t),

with the guidance scale ``w_t`` (TSDiff's ``s``; a constant, or a function of the step). The gradient flows through
the denoiser (autograd). :func:`guided` wraps a denoise function ``(x_t, t) -> out`` into one that returns the
guided output in the process's prediction units (eps, x0 or v), so every sampler of
:mod:`tsdiffusion.diffusion.samplers` (DDPM, DDIM, DPM-Solver++ ODE/SDE) runs guided unchanged, with any
denoiser whose output does not depend on the conditioning values (the unconditional U-Net or CSDI).
``w_t = 0`` returns the unguided output bit for bit. ``jacobian="identity"`` replaces the network's Jacobian
``d x0_hat / d x_t`` by ``sqrt(abar_t) I`` (exact for white data; no backward pass): with an imperfectly trained
model and a schedule that ends near ``abar = 0`` (CSDI's 50 quad steps: ``abar_49 = 3.4e-5``) the network
Jacobian, amplified by ``1 / sqrt(abar_t)``, made guidance diverge in our CPU runs
(benchmarks/results/guided/README.md), while the identity form stayed stable for ``w`` in (0, 2).

For jointly Gaussian data, ``p(y | x_t)`` is exactly Gaussian with mean ``E[x0_obs | x_t] = x0_hat_obs`` and a
covariance that does not depend on ``x_t``; so with one observed entry and ``w_t = 1 / Var(x0_obs | x_t)`` the
guided score is the exact conditional score and every sampler draws from the exact conditional law
(tests/diffusion/test_guidance.py checks this). The unit-variance likelihood with a constant scale is TSDiff's
approximation.

**Refinement** (TSDiff §4.2). A base forecaster's samples are the initial guess ``y^(0)`` of the whole window;
the model's implicit density gives the energy

    E(y) = lambda * sum_t' || eps_theta(sqrt(abar_t') y + sigma_t' z, t') - z ||^2  -  log p(y_obs | y),

whose first term is the denoising loss (the diffusion model's bound on ``-log p_theta(y)``, up to weights and
constants), evaluated at one random step ``t'`` and draw ``z`` per iteration, and whose second term keeps ``y`` on
the observed values (the same Gaussian or asymmetric-Laplace likelihood). :func:`refine` takes gradient steps
(``ml``: ``y <- y - eta grad E``) or Langevin steps (``langevin``: ``+ sqrt(2 eta) xi``). Any callable base forecaster
fits: a :class:`tsdiffusion.baselines.SamplingBaseline`, a trained task's ``sample`` (TimeGrad), a function.

Tensors: x_t, observed, mask: (N, L, K) (one row per sample, ``(b s)``); draws: (B, S, L, K).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from tsdiffusion.diffusion.process import DenoiseFn, GaussianDiffusion
from tsdiffusion.diffusion.samplers import SamplerName, sample
from tsdiffusion.streams import Source, catch_up, randn, rows_of

GuidanceKind = Literal["mse", "quantile"]
RefineMethod = Literal["ml", "langevin"]
Jacobian = Literal["network", "identity"]
Scale = float | Callable[[Tensor], Tensor]
CondDenoiser = Callable[[Tensor, Tensor, Mapping[str, Tensor]], Tensor]


@contextlib.contextmanager
def _autograd() -> Iterator[None]:
    """Gradients on, also inside ``torch.no_grad`` and Lightning's ``inference_mode`` (test/predict loops)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def _rows(v: Tensor, x: Tensor) -> Tensor:
    """A per-row (N,) tensor shaped to broadcast against x (N, ...)."""
    return v.view(-1, *([1] * (x.dim() - 1)))


def quantile_levels(num_samples: int) -> Tensor:
    """The levels ``j / (S + 1)``, ``j = 1..S``, one per sample of an item (float64, (S,))."""
    return torch.arange(1, num_samples + 1, dtype=torch.float64) / (num_samples + 1)


def observation_log_likelihood(
    x0_hat: Tensor,
    observed: Tensor,
    mask: Tensor,
    kind: GuidanceKind = "mse",
    quantiles: Tensor | None = None,
) -> Tensor:
    """log p(observed | x0_hat) per row (N,), up to a constant, summed over the entries where ``mask`` is 1.

    ``mse``: unit Gaussian, ``-1/2 sum mask (y - x0_hat)^2``; ``quantile``: asymmetric Laplace (scale 1),
    ``-sum mask rho_kappa(y - x0_hat)`` with the level ``kappa`` of each row (``quantiles``: (N,), default 0.5).
    x0_hat, observed, mask: (N, ...).
    """
    u = (observed - x0_hat) * mask
    if kind == "mse":
        return -0.5 * u.pow(2).flatten(1).sum(1)
    if kind == "quantile":
        q = torch.full((u.shape[0],), 0.5) if quantiles is None else quantiles
        q = _rows(q.to(device=u.device, dtype=u.dtype), u)
        return -torch.maximum(q * u, (q - 1) * u).flatten(1).sum(1)
    raise ValueError(f"guidance kind must be 'mse' or 'quantile', got {kind!r}")


def _eps_to_out(process: GaussianDiffusion, d_eps: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
    """A change of the eps prediction at fixed x_t, in the process's prediction units.

    x0 = (x_t - sigma eps) / alpha  ->  d x0 = -sigma / alpha d eps;  v = alpha eps - sigma x0  ->  d v = d eps / alpha.
    """
    if process.prediction == "eps":
        return d_eps
    abar = _rows(process.alphas_cumprod[t.long()].to(d_eps.dtype), d_eps)
    if process.prediction == "x0":
        return -(1 - abar).sqrt() / abar.sqrt() * d_eps
    return d_eps / abar.sqrt()


def _scale_at(scale: Scale, t: Tensor, like: Tensor) -> Tensor:
    w = scale(t) if callable(scale) else torch.full(t.shape, float(scale), dtype=torch.float64, device=t.device)
    return _rows(torch.as_tensor(w, device=like.device).to(like.dtype).expand(t.shape), like)


def guided(
    process: GaussianDiffusion,
    denoise_fn: DenoiseFn,
    observed: Tensor,
    mask: Tensor,
    scale: Scale = 1.0,
    kind: GuidanceKind = "mse",
    quantiles: Tensor | None = None,
    jacobian: Jacobian = "network",
) -> DenoiseFn:
    """Observation self-guidance around ``denoise_fn(x_t, t) -> out`` (see the module docstring).

    observed, mask: (N, L, K), the values and where they are observed (1) for the N rows the sampler runs;
    scale: the guidance scale ``w``, a number or a function of the steps ``t`` (N,) -> (N,);
    kind: ``mse`` or ``quantile``; quantiles: (N,) levels of the quantile variant (default 0.5);
    jacobian: ``network`` (TSDiff): the gradient w.r.t. x_t through the denoiser (autograd, one backward pass
    per call); ``identity``: ``d x0_hat / d x_t`` replaced by ``sqrt(abar_t) I``, its value for data of identity
    covariance, so no backward pass through the network: then ``x0_hat_guided = x0_hat + w sigma_t^2 grad_x0
    log p`` (for ``mse`` and ``w = 1`` at high noise: the observed entries of x0_hat replaced by the observations).
    The network Jacobian of an imperfectly trained model is amplified by ``1 / sqrt(abar_t)`` at high noise
    (``x0_hat = (x_t - sigma_t eps) / sqrt(abar_t)``), which can make ``network`` guidance diverge there.
    Returns ``fn(x_t, t) -> out_guided`` (detached), in the same units as ``out``.
    """
    if kind not in ("mse", "quantile"):
        raise ValueError(f"guidance kind must be 'mse' or 'quantile', got {kind!r}")
    if jacobian not in ("network", "identity"):
        raise ValueError(f"guidance jacobian must be 'network' or 'identity', got {jacobian!r}")

    def fn(x_t: Tensor, t: Tensor) -> Tensor:
        with _autograd():
            obs, m = observed.clone().to(x_t.dtype), mask.clone().to(x_t.dtype)
            q = None if quantiles is None else quantiles.clone()
            if jacobian == "network":
                x = x_t.detach().clone().requires_grad_(True)
                t_ = t.clone()
                out = denoise_fn(x, t_)
                x0_hat = process.predict_x0(out, x, t_)
                log_lik = observation_log_likelihood(x0_hat, obs, m, kind, q).sum()
                (grad,) = torch.autograd.grad(log_lik, x)
            else:
                with torch.no_grad():
                    out = denoise_fn(x_t, t)
                x0_hat = process.predict_x0(out.detach(), x_t.detach(), t).clone().requires_grad_(True)
                log_lik = observation_log_likelihood(x0_hat, obs, m, kind, q).sum()
                (grad,) = torch.autograd.grad(log_lik, x0_hat)
                grad = grad * _rows(process.alphas_cumprod[t.long()].sqrt().to(x_t.dtype), x_t)
        sigma = _rows((1 - process.alphas_cumprod[t.long()]).sqrt().to(x_t.dtype), x_t)
        d_eps = -_scale_at(scale, t, x_t) * sigma * grad
        return out.detach() + _eps_to_out(process, d_eps, x_t, t)

    return fn


def draw_guided_samples(
    process: GaussianDiffusion,
    denoiser: CondDenoiser,
    cond: Mapping[str, Tensor],
    observed: Tensor,
    mask: Tensor,
    num_samples: int,
    *,
    scale: Scale = 1.0,
    kind: GuidanceKind = "mse",
    jacobian: Jacobian = "network",
    sampler: SamplerName = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    max_batch: int | None = None,
    generator: Source = None,
) -> Tensor:
    """Guided draws (B, S, L, K) from an unconditional ``denoiser(x_t, t, cond)``, as batched sampler calls.

    observed, mask: (B, L, K), the values to condition on and where they are (1); cond: (B, ...) tensors passed
    to the denoiser (side information; an unconditional denoiser ignores observed values). Rows are ``(b s)`` in
    chunks of at most ``max_batch``, x_T drawn from ``generator`` as :func:`draw_samples` does, so ``scale=0``
    gives its samples exactly. The quantile variant gives sample ``j`` of every item the level ``j / (S + 1)``.
    """
    B, L, K = observed.shape
    rows, device = B * num_samples, observed.device
    chunk = rows if max_batch is None else max(1, max_batch)
    levels = quantile_levels(num_samples).to(device)
    out, gen = [], generator
    for start in range(0, rows, chunk):
        r = torch.arange(start, min(start + chunk, rows), device=device)
        idx = r // num_samples
        c = {k: v[idx] for k, v in cond.items()}
        gen = rows_of(generator, slice(start, start + chunk))
        x_T = randn((len(idx), L, K), gen, device=device)
        base = lambda x, t, c=c: denoiser(x, t, c).to(x.dtype)
        fn = guided(process, base, observed[idx], mask[idx], scale, kind, levels[r % num_samples], jacobian)
        out.append(sample(process, fn, x_T, sampler, steps=steps, eta=eta, generator=gen))
    catch_up(generator, gen)
    return rearrange(torch.cat(out), "(b s) l k -> b s l k", s=num_samples)


def denoising_energy(process: GaussianDiffusion, denoise_fn: DenoiseFn, y: Tensor, generator: Source = None) -> Tensor:
    """The denoising loss of y (N, L, K) at one random step and draw per row: ``||eps_hat - z||^2`` (N,).

    Its expectation over steps is (up to weights and constants) the diffusion model's bound on ``-log p_theta(y)``.
    """
    t = process.draw_timesteps(y.shape[0], y.device, generator)
    z = randn(y.shape, generator, device=y.device, dtype=y.dtype)
    x_t = process.q_sample(y, t, z)
    eps = process.predict_eps(denoise_fn(x_t, t), x_t, t)
    return (eps - z).pow(2).flatten(1).sum(1)


def refine(
    process: GaussianDiffusion,
    denoise_fn: DenoiseFn,
    init: Tensor,
    observed: Tensor,
    mask: Tensor,
    *,
    iterations: int = 20,
    step_size: float = 0.01,
    method: RefineMethod = "langevin",
    prior_weight: float = 1.0,
    kind: GuidanceKind = "mse",
    quantiles: Tensor | None = None,
    generator: Source = None,
) -> Tensor:
    """Refine initial windows ``init`` (N, L, K) under ``E(y) = prior_weight * denoising_energy(y) - log p(y_obs|y)``.

    ``ml``: ``y <- y - step_size grad E`` (a maximum-likelihood point); ``langevin``:
    ``y <- y - step_size grad E + sqrt(2 step_size) xi`` (approximate samples of ``exp(-E)``). observed, mask:
    (N, L, K); kind/quantiles: the observation likelihood (:func:`observation_log_likelihood`).
    Returns the refined windows (N, L, K), detached; ``iterations=0`` returns ``init``.
    """
    if method not in ("ml", "langevin"):
        raise ValueError(f"refinement method must be 'ml' or 'langevin', got {method!r}")
    y = init.detach()
    with _autograd():
        obs, m = observed.clone().to(y.dtype), mask.clone().to(y.dtype)
        q = None if quantiles is None else quantiles.clone()
        y = y.clone()
        for _ in range(iterations):
            y.requires_grad_(True)
            energy = -observation_log_likelihood(y, obs, m, kind, q)
            if prior_weight:
                energy = energy + prior_weight * denoising_energy(process, denoise_fn, y, generator)
            (grad,) = torch.autograd.grad(energy.sum(), y)
            y = y.detach() - step_size * grad
            if method == "langevin":
                y = y + (2 * step_size) ** 0.5 * randn(y.shape, generator, device=y.device, dtype=y.dtype)
    return y.detach()

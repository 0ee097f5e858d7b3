"""The Bayes-optimal predictive law of a linear-Gaussian state-space model and its exact scores.

Model (float64 throughout), for one window of L steps and K series with a known deterministic mean m_t::

    x_0 ~ N(0, P0) (stationary),  x_{t+1} = A x_t + w_t,  w_t ~ N(0, Q)         state (D,)
    y_t = m_t + C x_t + v_t,      v_t ~ N(0, diag(R))                          observation (K,)

Given the observed entries of a window (any per-entry pattern), the law of the other entries is Gaussian.
:func:`kalman_smoother` (Kalman filter with per-entry missing observations + Rauch-Tung-Striebel smoother)
gives it; :func:`posterior` turns the smoother's output into the joint Gaussian of the target entries (mean
and full covariance, from the smoother gains); :func:`brute_force_posterior` conditions the window's joint
covariance directly (a reference for tests, O((L K)^3)). Forecasting is the case where the horizon has no
observation (smoothing with no later data is the h-step predictive).

:func:`optimal_scores` scores the optimal law on the realised targets exactly, in the form of the project's
metrics (:mod:`tsdiffusion.metrics.probabilistic`):

* ``crps``, ``crps_sum``: the 19-quantile CRPS (CSDI / GluonTS) with the exact Gaussian quantiles
  mu + sigma Phi^{-1}(q); the sum over the scored series of a step is Gaussian with variance 1^T Sigma_t 1;
* ``crps_fair`` / ``ncrps_fair``: the closed-form CRPS of a Gaussian (Gneiting & Raftery 2007), per point /
  normalised by sum |y| (a sampler's fair estimator is unbiased for it);
* ``energy_score`` (per window, over all its scored entries): no closed form; computed by 1-D quadrature,
  E||Z|| = 1/(2 sqrt(pi)) int_0^inf (1 - E exp(-s ||Z||^2)) s^{-3/2} ds with the Gaussian's closed-form
  E exp(-s ||Z||^2), by the trapezoidal rule in log s (:func:`gaussian_norm_mean`; relative error below 1e-10,
  checked in the tests by halving the step and against Monte Carlo);
* ``mse_mean``, ``mae_median``, ``rmse_median``, ``nmae_median``, ``nrmse_mean``: of the posterior mean
  (= median); ``coverage_50`` / ``coverage_90``: of the exact central intervals.

Dimension letters: L steps, K series, D state, N target entries of a window.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.linalg import solve_discrete_lyapunov
from scipy.special import ndtri
from scipy.stats import norm

from tsdiffusion.metrics.probabilistic import DEFAULT_QUANTILES


@dataclass(frozen=True)
class LinearGaussianSSM:
    """x_{t+1} = A x_t + w_t (w ~ N(0, Q)), y_t = m_t + C x_t + v_t (v ~ N(0, diag(R))), x_0 stationary.

    A, Q: (D, D); C: (K, D); R: (K,) observation noise variances. ``A`` must be stable (spectral radius < 1).
    """

    A: np.ndarray
    Q: np.ndarray
    C: np.ndarray
    R: np.ndarray

    def __post_init__(self) -> None:
        rho = float(np.abs(np.linalg.eigvals(self.A)).max())
        if rho >= 1:
            raise ValueError(f"LinearGaussianSSM: A must be stable, spectral radius {rho:.4f} >= 1")
        if self.C.shape[1] != self.A.shape[0] or self.R.shape != (self.C.shape[0],):
            raise ValueError(f"LinearGaussianSSM: shapes A {self.A.shape}, C {self.C.shape}, R {self.R.shape}")

    @property
    def num_series(self) -> int:
        return int(self.C.shape[0])

    @property
    def P0(self) -> np.ndarray:
        """(D, D) stationary state covariance: P0 = A P0 A^T + Q."""
        return solve_discrete_lyapunov(self.A, self.Q)

    def simulate(self, length: int, rng: np.random.Generator) -> np.ndarray:
        """One stationary path of the zero-mean part C x_t + v_t -> (length, K)."""
        D = self.A.shape[0]
        x = np.linalg.cholesky(self.P0) @ rng.standard_normal(D)
        chol_q = np.linalg.cholesky(self.Q)
        out = np.empty((length, self.num_series))
        for t in range(length):
            out[t] = self.C @ x + np.sqrt(self.R) * rng.standard_normal(self.num_series)
            x = self.A @ x + chol_q @ rng.standard_normal(D)
        return out

    def window_cov(self, length: int) -> np.ndarray:
        """(L K, L K) stationary covariance of a window's observations, ordered (t, k), t-major."""
        K = self.num_series
        lag_cov = [self.P0]  # Cov(x_{t+h}, x_t) = A^h P0
        for _ in range(1, length):
            lag_cov.append(self.A @ lag_cov[-1])
        cov = np.empty((length, K, length, K))
        for t in range(length):
            for s in range(t + 1):
                block = self.C @ lag_cov[t - s] @ self.C.T
                cov[t, :, s, :], cov[s, :, t, :] = block, block.T
        cov = cov.reshape(length * K, length * K)
        return cov + np.diag(np.tile(self.R, length))


# ----------------------------------------------------------------------------- Kalman smoother


@dataclass(frozen=True)
class Smoothed:
    """Output of :func:`kalman_smoother` for one window: smoothed means (L, D), covariances (L, D, D) and
    the RTS gains (L - 1, D, D), with Cov(x_t, x_s | y) = G_t ... G_{s-1} P_{s|L} for t < s."""

    mean: np.ndarray
    cov: np.ndarray
    gain: np.ndarray

    def cross_cov(self, t: int, s: int) -> np.ndarray:
        """Cov(x_t, x_s | observations) (D, D)."""
        if t > s:
            return self.cross_cov(s, t).T
        out = self.cov[s]
        for u in range(s - 1, t - 1, -1):
            out = self.gain[u] @ out
        return out


def kalman_smoother(ssm: LinearGaussianSSM, y: np.ndarray, mask: np.ndarray, mean: np.ndarray) -> Smoothed:
    """Kalman filter + RTS smoother of one window; an entry enters only where ``mask`` is true.

    y, mean: (L, K) observations and deterministic mean (y may hold anything where mask is false);
    mask: (L, K) bool. The filter starts from the stationary prior N(0, P0); the update uses the observed
    rows of C and R only (Joseph form).
    """
    L, D = len(y), ssm.A.shape[0]
    m_pred, P_pred = np.zeros(D), ssm.P0
    mf, Pf, mp, Pp = (np.empty((L, D)), np.empty((L, D, D)), np.empty((L, D)), np.empty((L, D, D)))
    eye = np.eye(D)
    for t in range(L):
        mp[t], Pp[t] = m_pred, P_pred
        obs = np.asarray(mask[t], dtype=bool)
        m, P = m_pred, P_pred
        if obs.any():
            Co, Ro = ssm.C[obs], ssm.R[obs]
            S = Co @ P @ Co.T + np.diag(Ro)
            gain = np.linalg.solve(S, Co @ P).T  # P Co^T S^-1 (S, P symmetric)
            m = m + gain @ (y[t, obs] - mean[t, obs] - Co @ m)
            IKC = eye - gain @ Co
            P = IKC @ P @ IKC.T + (gain * Ro) @ gain.T
        mf[t], Pf[t] = m, P
        m_pred, P_pred = ssm.A @ m, ssm.A @ P @ ssm.A.T + ssm.Q
    ms, Ps, G = mf.copy(), Pf.copy(), np.empty((max(L - 1, 0), D, D))
    for t in range(L - 2, -1, -1):
        G[t] = np.linalg.solve(Pp[t + 1], ssm.A @ Pf[t]).T  # Pf A^T Pp^-1
        ms[t] = mf[t] + G[t] @ (ms[t + 1] - mp[t + 1])
        Ps[t] = Pf[t] + G[t] @ (Ps[t + 1] - Pp[t + 1]) @ G[t].T
    return Smoothed(ms, 0.5 * (Ps + Ps.transpose(0, 2, 1)), G)


@dataclass(frozen=True)
class Posterior:
    """The joint Gaussian of the N target entries of one window, with their realised values.

    steps, series: (N,) positions in the window (t-major order); mean, value: (N,); cov: (N, N).
    """

    steps: np.ndarray
    series: np.ndarray
    mean: np.ndarray
    cov: np.ndarray
    value: np.ndarray

    @property
    def sd(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov), 0, None))

    def affine(self, loc: np.ndarray, scale: np.ndarray) -> Posterior:
        """The law of ``(y - loc[k]) / scale[k]`` (loc, scale: (K,)), e.g. a DataModule's normalised units."""
        lo, sc = loc[self.series], scale[self.series]
        cov = self.cov / sc[:, None] / sc[None, :]
        return Posterior(self.steps, self.series, (self.mean - lo) / sc, cov, (self.value - lo) / sc)


def _cross_covs(sm: Smoothed, times: np.ndarray) -> dict[tuple[int, int], np.ndarray]:
    """{(t, s): Cov(x_t, x_s | y)} for t <= s in ``times`` (sorted), one chain of gains per s."""
    wanted, out = set(times.tolist()), {}
    for s in times.tolist():
        block = sm.cov[s]
        out[(s, s)] = block
        for u in range(s - 1, int(times[0]) - 1, -1):
            block = sm.gain[u] @ block
            if u in wanted:
                out[(u, s)] = block
    return out


def posterior(
    ssm: LinearGaussianSSM, y: np.ndarray, cond_mask: np.ndarray, target_mask: np.ndarray, mean: np.ndarray
) -> Posterior:
    """Law of the ``target_mask`` entries of a window given its ``cond_mask`` entries, by the smoother.

    y, mean: (L, K); cond_mask, target_mask: (L, K) bool. Observation noise is independent across series
    and steps (diagonal R), so Cov(y_ti, y_sj | cond) = C_i Cov(x_t, x_s | cond) C_j^T + [t=s, i=j] R_i.
    """
    sm = kalman_smoother(ssm, y, cond_mask, mean)
    steps, series = np.nonzero(target_mask)
    mu = mean[steps, series] + np.einsum("nd,nd->n", ssm.C[series], sm.mean[steps])
    times = np.unique(steps)
    cross = _cross_covs(sm, times)
    cov = np.empty((len(steps), len(steps)))
    for a, t in enumerate(times):
        ia = np.flatnonzero(steps == t)
        for s in times[a:]:
            ib = np.flatnonzero(steps == s)
            block = ssm.C[series[ia]] @ cross[(t, s)] @ ssm.C[series[ib]].T
            cov[np.ix_(ia, ib)], cov[np.ix_(ib, ia)] = block, block.T
    cov[np.arange(len(steps)), np.arange(len(steps))] += ssm.R[series]
    return Posterior(steps, series, mu, cov, y[steps, series])


def brute_force_posterior(
    ssm: LinearGaussianSSM, y: np.ndarray, cond_mask: np.ndarray, target_mask: np.ndarray, mean: np.ndarray
) -> Posterior:
    """:func:`posterior` by conditioning the window's joint covariance (:meth:`LinearGaussianSSM.window_cov`)."""
    cov = ssm.window_cov(len(y))
    o, tgt = np.flatnonzero(cond_mask.ravel()), np.flatnonzero(target_mask.ravel())
    flat_y, flat_m = y.ravel(), mean.ravel()
    if len(o):
        w = np.linalg.solve(cov[np.ix_(o, o)], cov[np.ix_(o, tgt)])  # Σ_OO^-1 Σ_OT
        mu = flat_m[tgt] + w.T @ (flat_y[o] - flat_m[o])
        post = cov[np.ix_(tgt, tgt)] - cov[np.ix_(tgt, o)] @ w
    else:
        mu, post = flat_m[tgt], cov[np.ix_(tgt, tgt)]
    steps, series = np.divmod(tgt, y.shape[1])
    return Posterior(steps, series, mu, 0.5 * (post + post.T), flat_y[tgt])


# ----------------------------------------------------------------------------- exact scores


def quantile_loss_sums(
    mean: np.ndarray, sd: np.ndarray, y: np.ndarray, w: np.ndarray, levels: Sequence[float]
) -> np.ndarray:
    """Σ_i w_i 2 |(Q_q,i - y_i)(1{y_i <= Q_q,i} - q)| per level with the exact Gaussian quantiles -> (Q,)."""
    q = np.asarray(levels, dtype=np.float64)
    quant = mean[None] + sd[None] * ndtri(q)[:, None]
    loss = 2 * np.abs((quant - y[None]) * ((y[None] <= quant) - q[:, None]))
    return (loss * w[None]).sum(1)


def gaussian_crps(mean: np.ndarray, sd: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Closed-form CRPS of N(mean, sd^2) at y (Gneiting & Raftery 2007): sd [z(2Φ(z)-1) + 2φ(z) - 1/√π]."""
    sd = np.maximum(sd, 1e-300)
    z = (y - mean) / sd
    return sd * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / math.sqrt(math.pi))


def gaussian_norm_mean(offset: np.ndarray, cov: np.ndarray, step: float = 0.02, width: float = 70.0) -> float:
    """E||Z|| for Z ~ N(offset, cov), by 1-D quadrature (no sampling).

    ||z|| = 1/(2√π) ∫_0^∞ (1 - e^{-s||z||²}) s^{-3/2} ds, and E e^{-s||Z||²} = Π_j (1 + 2 s λ_j)^{-1/2}
    exp(-s Σ_j m_j² / (1 + 2 s λ_j)) with λ, U the eigen-decomposition of cov and m = U^T offset. With
    s = e^τ the integrand (1 - E e^{-s||Z||²}) e^{-τ/2} is smooth and decays exponentially on both sides;
    the trapezoidal rule on τ ∈ log(1/v) ± ``width`` (v = tr cov + ||offset||²) with ``step`` has a
    truncation error below e^{-width/2} relative and a discretisation error far below that.
    """
    lam, U = np.linalg.eigh(cov)
    lam = np.clip(lam, 0, None)
    m2 = (U.T @ offset) ** 2
    v = lam.sum() + m2.sum()
    if v <= 0:
        return 0.0
    tau = np.arange(-math.log(v) - width, -math.log(v) + width + step / 2, step)
    s = np.exp(tau)[:, None]
    two_s_lam = 2 * s * lam[None]
    log_mgf = -0.5 * np.log1p(two_s_lam).sum(1) - (s * m2[None] / (1 + two_s_lam)).sum(1)
    integrand = -np.expm1(log_mgf) * np.exp(-tau / 2)
    return float(np.trapezoid(integrand, tau) / (2 * math.sqrt(math.pi)))


def gaussian_energy_score(mean: np.ndarray, cov: np.ndarray, y: np.ndarray, step: float = 0.02) -> float:
    """ES(N(mean, cov), y) = E||X - y|| - 1/2 E||X - X'|| with X - X' ~ N(0, 2 cov), by quadrature."""
    return gaussian_norm_mean(mean - y, cov, step) - 0.5 * gaussian_norm_mean(np.zeros_like(mean), 2 * cov, step)


def optimal_scores(
    posteriors: Iterable[Posterior],
    num_series: int,
    levels: Sequence[float] = DEFAULT_QUANTILES,
) -> dict[str, float]:
    """Exact scores of the optimal law over a test set (one :class:`Posterior` per window), in the form of
    the project's metrics of the same names (see the module docstring). ``num_series``: K, for the CSDI
    weight (scored series of a step) / K of ``crps_sum``."""
    Q = len(levels)
    acc = {k: 0.0 for k in ("abs", "n", "sq", "ae", "crps", "in50", "in90", "es", "nwin", "abs_sum")}
    qloss, qloss_sum = np.zeros(Q), np.zeros(Q)
    z50, z90 = ndtri(0.75), ndtri(0.95)
    for p in posteriors:
        if len(p.value) == 0:
            continue
        sd, err = p.sd, p.mean - p.value
        ones = np.ones_like(sd)
        qloss += quantile_loss_sums(p.mean, sd, p.value, ones, levels)
        acc["abs"] += np.abs(p.value).sum()
        acc["n"] += len(p.value)
        acc["sq"] += (err**2).sum()
        acc["ae"] += np.abs(err).sum()
        acc["crps"] += gaussian_crps(p.mean, sd, p.value).sum()
        acc["in50"] += (np.abs(err) <= z50 * sd).sum()
        acc["in90"] += (np.abs(err) <= z90 * sd).sum()
        acc["es"] += gaussian_energy_score(p.mean, p.cov, p.value)
        acc["nwin"] += 1
        for t in np.unique(p.steps):
            i = np.flatnonzero(p.steps == t)
            w = np.array([len(i) / num_series])
            mu, var, z = p.mean[i].sum(), p.cov[np.ix_(i, i)].sum(), p.value[i].sum()
            qloss_sum += quantile_loss_sums(np.array([mu]), np.sqrt([max(var, 0.0)]), np.array([z]), w, levels)
            acc["abs_sum"] += w[0] * abs(z)
    n, total = acc["n"], acc["abs"]
    mse = acc["sq"] / n
    return {
        "crps": float(qloss.mean() / total),
        "crps_sum": float(qloss_sum.mean() / acc["abs_sum"]),
        "crps_fair": acc["crps"] / n,
        "ncrps_fair": acc["crps"] / total,
        "energy_score": acc["es"] / acc["nwin"],
        "coverage_50": acc["in50"] / n,
        "coverage_90": acc["in90"] / n,
        "mse_mean": mse,
        "mae_median": acc["ae"] / n,
        "rmse_median": math.sqrt(mse),
        "nmae_median": acc["ae"] / total,
        "nrmse_mean": math.sqrt(mse) / (total / n),
    }


def sample_posterior(p: Posterior, num_samples: int, rng: np.random.Generator) -> np.ndarray:
    """(S, N) draws from the posterior (Cholesky with a tiny jitter for numerically singular covariances)."""
    jitter = 1e-12 * max(float(np.diag(p.cov).max(initial=0.0)), 1.0)
    chol = np.linalg.cholesky(p.cov + jitter * np.eye(len(p.mean)))
    return p.mean[None] + rng.standard_normal((num_samples, len(p.mean))) @ chol.T


def sampled_scores(
    posts: Sequence[Posterior],
    truth: np.ndarray,
    targets: np.ndarray,
    metrics: Sequence[str],
    num_samples: int,
    repeats: int,
    rng: np.random.Generator,
) -> dict[str, dict[str, float | None]]:
    """Monte Carlo: the exact law scored by the project's metric classes from ``num_samples`` draws per window
    (what a perfect sampling model scores), ``repeats`` times -> {metric: {"mean", "se"}}.

    posts: the windows' posteriors; truth: (W, L, K) realised values (0 where missing); targets: (W, L, K) bool
    scored entries.
    """
    import torch

    from tsdiffusion.metrics import ProbabilisticMetrics

    runs = []
    for _ in range(repeats):
        scores = ProbabilisticMetrics(metrics)
        for w, p in enumerate(posts):
            draws = np.repeat(truth[w][None], num_samples, 0)
            draws[:, p.steps, p.series] = sample_posterior(p, num_samples, rng)
            mask = torch.from_numpy(targets[w])[None]
            scores.update(torch.from_numpy(draws)[None], torch.from_numpy(truth[w])[None], mask)
        runs.append({k: float(v) for k, v in scores.compute().items()})
    out = {}
    for k in runs[0]:
        v = np.array([r[k] for r in runs])
        out[k] = {"mean": float(v.mean()), "se": float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else None}
    return out

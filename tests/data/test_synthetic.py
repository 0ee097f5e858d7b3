"""The synthetic benchmarks with a known optimum: Kalman smoother vs brute-force conditioning, exact scores vs
Monte Carlo through the project's metric classes, and the DataModule's protocols."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from tsdiffusion.batch import check_batch
from tsdiffusion.data import SyntheticDataModule
from tsdiffusion.data.synthetic import seasonal_ssm
from tsdiffusion.data.windows import fixed_block_holdout_mask
from tsdiffusion.metrics import EnergyScore, PointError, QuantileCRPS, QuantileCRPSSum
from tsdiffusion.oracle import (
    Posterior,
    brute_force_posterior,
    gaussian_crps,
    gaussian_energy_score,
    gaussian_norm_mean,
    optimal_scores,
    posterior,
    sample_posterior,
)


def _window(L: int = 12, K: int = 3, seed: int = 0):
    model = seasonal_ssm(num_series=K, period=6, seed=seed)
    rng = np.random.default_rng(seed)
    y = model.simulate(5, L, rng)
    return model, y, model.mean(np.arange(5, 5 + L)), rng


def _assert_same(a: Posterior, b: Posterior, tol: float = 1e-8) -> None:
    np.testing.assert_array_equal(a.steps, b.steps)
    np.testing.assert_array_equal(a.series, b.series)
    np.testing.assert_allclose(a.mean, b.mean, rtol=0, atol=tol * np.abs(b.mean).max())
    np.testing.assert_allclose(a.cov, b.cov, rtol=0, atol=tol * np.abs(b.cov).max())


def test_smoother_equals_brute_force_conditioning_with_missing_entries():
    model, y, mean, rng = _window()
    observed = rng.random(y.shape) > 0.2  # missing entries, per entry
    target = observed & (rng.random(y.shape) < 0.3)
    cond = observed & ~target
    cond[4] = False  # a step with no observation at all
    target[4, 1] = True
    fast = posterior(model.ssm, y, cond, target, mean)
    _assert_same(fast, brute_force_posterior(model.ssm, y, cond, target, mean))
    assert len(fast.mean) == target.sum() and np.linalg.eigvalsh(fast.cov).min() > 0


def test_forecast_posterior_is_the_h_step_predictive():
    model, y, mean, _ = _window(L=14)
    cond = np.zeros(y.shape, dtype=bool)
    cond[:9] = True
    target = ~cond
    fast = posterior(model.ssm, y, cond, target, mean)
    _assert_same(fast, brute_force_posterior(model.ssm, y, cond, target, mean))
    # far ahead the predictive tends to the stationary law: its variance grows with the horizon
    var = np.diag(fast.cov).reshape(5, 3)
    assert (var[-1] > var[0]).all()


def test_gaussian_energy_score_in_one_dimension_is_the_closed_form_crps():
    for m, s, y in [(0.3, 1.7, -0.4), (5.0, 0.2, 5.1), (-2.0, 3.0, 4.0)]:
        es = gaussian_energy_score(np.array([m]), np.array([[s**2]]), np.array([y]))
        assert es == pytest.approx(float(gaussian_crps(np.array(m), np.array(s), np.array(y))), rel=1e-10)
    # E|Z| of N(0, s^2) = s sqrt(2/pi); E||Z|| of N(0, I_3) = 2 sqrt(2/pi)
    assert gaussian_norm_mean(np.zeros(1), np.array([[4.0]])) == pytest.approx(2 * math.sqrt(2 / math.pi), rel=1e-12)
    assert gaussian_norm_mean(np.zeros(3), np.eye(3)) == pytest.approx(2 * math.sqrt(2 / math.pi), rel=1e-12)


def test_energy_score_quadrature_converges():
    rng = np.random.default_rng(3)
    B = rng.normal(size=(40, 40))
    cov, mean, y = B @ B.T / 40, rng.normal(size=40), rng.normal(size=40)
    coarse, fine = gaussian_energy_score(mean, cov, y, step=0.04), gaussian_energy_score(mean, cov, y, step=0.01)
    assert coarse == pytest.approx(fine, rel=1e-10)


def _test_set(num_windows: int = 6, seed: int = 1) -> list[Posterior]:
    """Forecast-like posteriors: 4 steps x 3 series per window, all scored."""
    out = []
    for w in range(num_windows):
        model, y, mean, _ = _window(L=10, seed=seed + w)
        cond = np.zeros(y.shape, dtype=bool)
        cond[:6] = True
        out.append(posterior(model.ssm, y, cond, ~cond, mean))
    return out


def _as_batch(posts: list[Posterior], draws: list[np.ndarray]):
    """Samples (B, S, L, K), target, mask (B, L, K) with each window's targets."""
    L, K = int(max(p.steps.max() for p in posts)) + 1, int(max(p.series.max() for p in posts)) + 1
    S = draws[0].shape[0]
    samples, target, mask = torch.zeros(len(posts), S, L, K, dtype=torch.float64), torch.zeros(len(posts), L, K,
        dtype=torch.float64), torch.zeros(len(posts), L, K, dtype=torch.bool)  # fmt: skip
    for b, (p, d) in enumerate(zip(posts, draws)):
        samples[b][:, p.steps, p.series] = torch.from_numpy(d)
        target[b, p.steps, p.series] = torch.from_numpy(p.value)
        mask[b, p.steps, p.series] = True
    return samples, target, mask


def test_exact_scores_match_monte_carlo_through_the_metric_classes():
    posts = _test_set()
    exact = optimal_scores(posts, num_series=3)
    rng = np.random.default_rng(0)
    metrics = {
        "crps": (QuantileCRPS, 2000),
        "crps_sum": (QuantileCRPSSum, 2000),
        "energy_score": (lambda: EnergyScore(estimator="fair"), 300),
        "mse_mean": (lambda: PointError("mse", "mean"), 2000),
    }
    for name, (make, S) in metrics.items():
        values = []
        for _ in range(6):
            metric = make()
            metric.update(*_as_batch(posts, [sample_posterior(p, S, rng) for p in posts]))
            values.append(float(metric.compute()))
        mc, se = np.mean(values), np.std(values, ddof=1) / math.sqrt(len(values))
        # MC error of the mean over repeats, plus the sample-quantile bias O(1/S) of the quantile forms
        assert abs(mc - exact[name]) < 4 * se + 2e-3 * abs(exact[name]), (name, mc, se, exact[name])


def test_crps_sum_uses_the_variance_of_the_sum():
    """The exact CRPS-sum of one step equals the quantile CRPS of N(1'mu, 1'Sigma 1) computed by hand."""
    cov = np.array([[1.0, 0.5], [0.5, 2.0]])
    p = Posterior(np.zeros(2, int), np.arange(2), np.array([1.0, 2.0]), cov, np.array([0.5, 3.0]))
    z, mu, sd = 3.5, 3.0, math.sqrt(4.0)
    q = np.arange(1, 20) / 20
    quant = mu + sd * norm.ppf(q)
    by_hand = np.mean(2 * np.abs((quant - z) * ((z <= quant) - q))) / z
    assert optimal_scores([p], num_series=2)["crps_sum"] == pytest.approx(by_hand, rel=1e-12)


def test_the_optimum_beats_a_miscalibrated_law():
    posts = _test_set(num_windows=12)
    best = optimal_scores(posts, num_series=3)
    wide = [Posterior(p.steps, p.series, p.mean, 2.25 * p.cov, p.value) for p in posts]
    narrow = [Posterior(p.steps, p.series, p.mean, 0.25 * p.cov, p.value) for p in posts]
    for other in (optimal_scores(wide, 3), optimal_scores(narrow, 3)):
        assert other["crps"] > best["crps"] and other["ncrps_fair"] > best["ncrps_fair"]


# ----------------------------------------------------------------------------- the DataModule


def _small(protocol: str, **kw) -> SyntheticDataModule:
    args = {"train_length": 400, "context_length": 24, "prediction_length": 12, "num_test_windows": 3,
            "num_items": 40, "window_length": 24, "optimal_samples": 0, "batch_size": 4}  # fmt: skip
    return SyntheticDataModule(protocol=protocol, **{**args, **kw})


def test_forecast_windows_follow_the_gluonts_protocol():
    dm = _small("forecast", max_lag=6)
    dm.setup()
    L, H = 6 + 24 + 12, 12
    assert dm.seq_len == L and dm.num_features == 8
    test, val, train = (dm.splits[s] for s in ("test", "val", "train"))
    np.testing.assert_array_equal(test.start + L, 400 + H * np.arange(1, 4))  # rolling windows after the train part
    np.testing.assert_array_equal(val.start + L, [400 - H, 400])
    assert (train.start + L).max() <= 400 - 2 * H  # train targets never reach validation / test horizons
    batch = next(iter(dm.test_dataloader()))
    check_batch(batch)
    assert batch["target_mask"][:, : L - H].sum() == 0 and batch["target_mask"][:, L - H :].all()
    original = (batch["observed"] * batch["scale"] + batch["loc"]).numpy()
    np.testing.assert_allclose(original, test.values, atol=1e-5 * np.abs(test.values).max())
    assert batch["time_features"].shape == (3, L, dm.num_time_features)
    # the same data from the same seed; another seed differs
    assert np.array_equal(_small("forecast", max_lag=6).splits["test"].values, test.values)
    assert not np.allclose(_small("forecast", max_lag=6, seed=1).splits["test"].values, test.values)


def test_impute_holdout_and_natural_missing():
    dm = _small("impute", natural_missing=0.1)
    dm.setup()
    sizes = {s: len(d) for s, d in dm.datasets.items()}
    assert sizes == {"train": 28, "val": 4, "test": 8}
    for sp in dm.splits.values():
        observed = np.isfinite(sp.values)
        assert not (sp.target & ~observed).any()
        assert (sp.target.sum((1, 2)) == (observed.sum((1, 2)) * 0.1).astype(int)).all()
    check_batch(next(iter(dm.train_dataloader())))
    rng = np.random.default_rng(0)
    blocks = fixed_block_holdout_mask(np.ones((1, 24, 8), dtype=bool), 0.1, 6, rng)[0]
    assert blocks.sum() >= int(0.1 * 24 * 8)
    runs = np.diff(np.concatenate([np.zeros((1, 8)), blocks, np.zeros((1, 8))]).astype(int), axis=0)
    lengths = np.flatnonzero(runs.T.ravel() == -1) - np.flatnonzero(runs.T.ravel() == 1)
    assert lengths.min() >= 6  # contiguous blocks (overlapping ones merge into longer runs)


def test_record_info_carries_the_optimum_in_the_tasks_units():
    dm = _small("impute", holdout="block", optimal_samples=50)
    info = dm.record_info()
    assert info["optimal_units"] == "normalised" and info["holdout"] == "block"
    exact = info["optimal"]
    assert set(exact) >= {"crps", "crps_sum", "energy_score", "mse_mean"}
    # normalised units: the posterior of (y - loc) / scale, so the MSE scales by 1 / scale^2 per series
    original = dm.optimal(units="original")
    assert original["mse_mean"] > exact["mse_mean"] and 0.3 < exact["coverage_90"] <= 1
    sampled = info["optimal_sampled"]["metrics"]
    # a perfect sampler at S = 50 scores close to the exact optimum (slightly above: finite-sample quantiles)
    assert sampled["crps"]["mean"] == pytest.approx(exact["crps"], rel=0.05)
    assert _small("forecast").metric_units == "original"


def test_report_shows_the_ratio_to_the_optimum():
    from tsdiffusion.benchmark.collect import Group
    from tsdiffusion.benchmark.references import optimum_ratio
    from tsdiffusion.benchmark.tables import markdown

    def record(crps: float) -> dict:
        return {"metrics": {"crps": crps, "crps_sum": 0.5}, "data": {"optimal": {"crps": 0.2}}}

    synthetic = Group("ForecastingTask", "synthetic_forecast", "CSDIDenoiser", "c", "", [record(0.22), record(0.26)])
    real = Group("ForecastingTask", "electricity", "CSDIDenoiser", "c", "", [{"metrics": {"crps": 0.3}}])
    mean, std, n = optimum_ratio(synthetic, "crps")
    assert (mean, n) == (pytest.approx(1.2), 2) and std == pytest.approx(math.sqrt(0.02))
    assert optimum_ratio(real, "crps")[2] == 0 and optimum_ratio(synthetic, "crps_sum")[2] == 0
    text = markdown([synthetic, real], {}, [], "t")
    header = text.splitlines()[2]
    assert "crps / optimum" in header and "crps_sum / optimum" not in header
    assert "| 1.2 ± 0.14 |" in text.splitlines()[4] and text.splitlines()[5].count("–") >= 2

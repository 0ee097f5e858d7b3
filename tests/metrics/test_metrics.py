"""Metrics against independent references: float64 numpy of the published formulas (CSDI, GluonTS),
properscoring and scoringrules, the closed-form Gaussian CRPS, and torch.quantile."""

import numpy as np
import properscoring
import pytest
import scoringrules
import torch
from einops import rearrange
from scipy.stats import norm

from tsdiffusion.metrics import (
    DEFAULT_QUANTILES,
    Coverage,
    EnergyScore,
    MetricName,
    PointError,
    ProbabilisticMetrics,
    QuantileCRPS,
    QuantileCRPSSum,
    SampleCRPS,
    sample_quantiles,
)

ALL_NAMES = list(MetricName.__args__)


def make_batches(sizes=(3, 1, 4), n_samples=20, length=6, n_feat=5, p_scored=0.6, seed=0):
    """A list of (samples (B, S, L, K), target (B, L, K), mask (B, L, K)) float64, random masks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in sizes:
        target = 3 + torch.randn(b, length, n_feat, generator=g, dtype=torch.float64)
        noise = torch.randn(b, n_samples, length, n_feat, generator=g, dtype=torch.float64)
        samples = target[:, None] + 1.5 * noise
        mask = (torch.rand(b, length, n_feat, generator=g) < p_scored).double()
        out.append((samples, target, mask))
    return out


def concat(batches):
    """The whole set as numpy float64: x (N, S, L, K), y (N, L, K), m (N, L, K)."""
    return [torch.cat(parts).numpy() for parts in zip(*batches)]


def run(metric, batches):
    for batch in batches:
        metric.update(*batch)
    return metric.compute()


# ----------------------------------------------------------------------------- numpy references


def np_quantiles(x, levels, interpolation="linear"):
    """x (N, S, ...) -> (Q, N, ...): numpy's linear rule, or GluonTS 0.x's sorted[round((S - 1) q)]."""
    if interpolation == "linear":
        return np.quantile(x, levels, axis=1)
    idx = np.round((x.shape[1] - 1) * np.asarray(levels)).astype(int)
    return np.moveaxis(np.sort(x, axis=1)[:, idx], 1, 0)


def np_wql(q_pred, y, w, levels):
    """CSDI's calc_quantile_CRPS after its quantile step: mean_q 2 Σ|(Q - y) w (1{y <= Q} - q)| / Σ|y w|."""
    denom = np.sum(np.abs(y * w))
    losses = [2 * np.sum(np.abs((qp - y) * w * ((y <= qp) * 1.0 - q))) for qp, q in zip(q_pred, levels)]
    return np.mean(losses) / denom


def np_crps(batches, levels, interpolation="linear"):
    x, y, m = concat(batches)
    return np_wql(np_quantiles(x, levels, interpolation), y, m, levels)


def np_crps_sum(batches, levels, sum_over):
    """CSDI's calc_quantile_CRPS_sum; sum_over="scored" drops unscored features before the sum over K."""
    x, y, m = concat(batches)
    if sum_over == "scored":
        x, y = x * m[:, None], y * m
    z, zs = y.sum(-1), x.sum(-1)
    return np_wql(np_quantiles(zs, levels), z, m.mean(-1), levels)


# ----------------------------------------------------------------------------- quantile CRPS, CRPS-sum


@pytest.mark.parametrize("chunk", [53, 2**22])
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_quantile_crps_equals_numpy_reference(chunk, interpolation):
    batches = make_batches()
    got = run(QuantileCRPS(interpolation=interpolation, chunk_elements=chunk), batches)
    want = np_crps(batches, DEFAULT_QUANTILES, interpolation)
    assert got.item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("chunk", [53, 2**22])
@pytest.mark.parametrize("sum_over", ["scored", "all"])
def test_crps_sum_equals_numpy_reference(chunk, sum_over):
    batches = make_batches()
    got = run(QuantileCRPSSum(sum_over=sum_over, chunk_elements=chunk), batches)
    assert got.item() == pytest.approx(np_crps_sum(batches, DEFAULT_QUANTILES, sum_over), rel=1e-12)


def test_crps_sum_modes_agree_when_steps_are_scored_whole():
    batches = [(x, y, m[..., :1].expand_as(m).clone()) for x, y, m in make_batches()]
    scored, every = (run(QuantileCRPSSum(sum_over=s), batches) for s in ("scored", "all"))
    assert scored.item() == pytest.approx(every.item(), rel=1e-12)


def test_custom_quantile_grid():
    levels = (0.1, 0.5, 0.9)
    batches = make_batches()
    got = run(QuantileCRPS(quantiles=levels), batches)
    assert got.item() == pytest.approx(np_crps(batches, levels), rel=1e-12)


# ----------------------------------------------------------------------------- sample CRPS, energy score


def per_point(batches):
    """Flatten the set to ensembles (N, S), observations and masks (N,)."""
    x, y, m = concat(batches)
    return rearrange(x, "b s l k -> (b l k) s"), y.reshape(-1), m.reshape(-1).astype(bool)


@pytest.mark.parametrize("normalize", ["none", "target"])
def test_sample_crps_nrg_equals_properscoring(normalize):
    batches = make_batches()
    ens, obs, m = per_point(batches)
    scores = properscoring.crps_ensemble(obs, ens)[m]
    want = scores.mean() if normalize == "none" else scores.sum() / np.abs(obs[m]).sum()
    got = run(SampleCRPS("nrg", normalize), batches)
    assert got.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("estimator", ["nrg", "fair", "pwm"])
def test_sample_crps_equals_scoringrules(estimator):
    batches = make_batches(n_samples=7)
    ens, obs, m = per_point(batches)
    want = scoringrules.crps_ensemble(obs, ens, estimator=estimator, backend="numpy")[m].mean()
    got = run(SampleCRPS("nrg" if estimator == "nrg" else "fair"), batches)
    assert got.item() == pytest.approx(want, rel=1e-10)


def gaussian_crps(mu, sigma, y):
    """Closed form (Gneiting & Raftery 2007): σ [z (2Φ(z) - 1) + 2φ(z) - 1/√π], z = (y - μ)/σ."""
    z = (y - mu) / sigma
    return sigma * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))


@pytest.mark.parametrize("n_samples", [8, 800])
def test_sample_crps_converges_to_gaussian_closed_form(n_samples):
    g = torch.Generator().manual_seed(1)
    n_points = 160_000 // n_samples
    mu = torch.randn(1, n_points, 1, generator=g, dtype=torch.float64)
    sigma = 0.5 + torch.rand(1, n_points, 1, generator=g, dtype=torch.float64)
    y = mu + sigma * torch.randn(mu.shape, generator=g, dtype=torch.float64)
    noise = torch.randn(1, n_samples, n_points, 1, generator=g, dtype=torch.float64)
    x = mu[:, None] + sigma[:, None] * noise
    exact = gaussian_crps(mu.numpy(), sigma.numpy(), y.numpy()).mean()
    # nrg over-estimates by E|X - X'| / (2S) = σ / (S √π)
    bias = (sigma / (n_samples * np.sqrt(np.pi))).mean().item()
    fair, nrg = (run(SampleCRPS(est), [(x, y, torch.ones_like(y))]).item() for est in ("fair", "nrg"))
    assert fair == pytest.approx(exact, abs=0.01)
    assert nrg == pytest.approx(exact + bias, abs=0.01)
    if n_samples == 8:  # the bias is visible at small S, which is why "fair" exists
        assert abs(nrg - exact) > 5 * abs(fair - exact)


def es_reference(batches, over, estimator):
    """scoringrules' energy score on each vector, unscored coordinates removed (zeroed in x and y)."""
    x, y, m = concat(batches)
    x, y = x * m[:, None], y * m
    if over == "window":
        fct, pattern = rearrange(x, "b s l k -> b s (l k)"), "b l k -> b (l k)"
    else:
        fct, pattern = rearrange(x, "b s l k -> (b l) s k"), "b l k -> (b l) k"
    obs, mv = rearrange(y, pattern), rearrange(m, pattern)
    scores = scoringrules.energy_score(obs, fct, estimator=estimator, backend="numpy")
    return scores[mv.any(-1)].mean()


@pytest.mark.parametrize("chunk", [53, 2**22])
@pytest.mark.parametrize("over", ["window", "step"])
@pytest.mark.parametrize("estimator", ["nrg", "fair"])
def test_energy_score_equals_scoringrules(chunk, over, estimator):
    batches = make_batches(p_scored=0.3)
    batches[1][2][0, :3] = 0  # whole steps unscored
    got = run(EnergyScore(over, estimator, chunk_elements=chunk), batches)
    assert got.item() == pytest.approx(es_reference(batches, over, estimator), rel=1e-9)


# ----------------------------------------------------------------------------- coverage, point errors


@pytest.mark.parametrize("level", [0.5, 0.9])
def test_coverage_equals_numpy(level):
    batches = make_batches()
    x, y, m = concat(batches)
    lo, hi = np.quantile(x, [(1 - level) / 2, (1 + level) / 2], axis=1)
    want = (((lo <= y) & (y <= hi)) * m).sum() / m.sum()
    assert run(Coverage(level), batches).item() == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("point", ["mean", "median"])
@pytest.mark.parametrize("error", ["mse", "mae", "rmse", "nmae", "nrmse"])
def test_point_error_equals_numpy(point, error):
    batches = make_batches(n_samples=20)  # even S: the median is the lower middle sample (torch.median, CSDI)
    x, y, m = concat(batches)
    pred = x.mean(1) if point == "mean" else np.sort(x, axis=1)[:, 9]
    e, n, abs_y = (pred - y)[m > 0], m.sum(), np.abs(y[m > 0]).sum()
    want = {
        "mse": (e**2).sum() / n,
        "mae": np.abs(e).sum() / n,
        "rmse": np.sqrt((e**2).sum() / n),
        "nmae": np.abs(e).sum() / abs_y,
        "nrmse": np.sqrt((e**2).sum() / n) / (abs_y / n),
    }[error]
    assert run(PointError(error, point), batches).item() == pytest.approx(want, rel=1e-12)


def test_median_is_torch_median():
    x, y, m = make_batches(sizes=(2,), n_samples=10)[0]
    med = x.median(dim=1).values
    want = ((med - y).abs() * m).sum() / m.sum()
    assert run(PointError("mae", "median"), [(x, y, m)]).item() == pytest.approx(want.item(), rel=1e-12)


# ----------------------------------------------------------------------------- the collection, masking


def test_collection_equals_its_members_alone_and_is_chunk_invariant():
    batches = make_batches()
    together = run(ProbabilisticMetrics(ALL_NAMES, prefix="test/"), batches)
    chunked = run(ProbabilisticMetrics(ALL_NAMES, chunk_elements=53), batches)
    assert sorted(together) == sorted(f"test/{n}" for n in ALL_NAMES)
    for name in ALL_NAMES:
        alone = run(ProbabilisticMetrics([name]), batches)[name]
        assert together[f"test/{name}"].item() == pytest.approx(alone.item(), rel=1e-12), name
        assert chunked[name].item() == pytest.approx(alone.item(), rel=1e-12), name


def every_metric():
    extra = {"energy_score_step": EnergyScore("step"), "crps_sum_all_steps": QuantileCRPSSum()}
    return ProbabilisticMetrics(ALL_NAMES), extra


def values_of(batches):
    collection, extra = every_metric()
    out = {k: v.item() for k, v in run(collection, batches).items()}
    return out | {k: run(metric, batches).item() for k, metric in extra.items()}


def test_float32_inputs_agree_with_float64():
    batches = make_batches()
    single = [tuple(t.float() for t in batch) for batch in batches]
    want, got = values_of(batches), values_of(single)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, rel=1e-5), name


def test_masked_points_change_nothing():
    batches = make_batches()
    g = torch.Generator().manual_seed(5)
    noisy = []
    for x, y, m in batches:
        off = m == 0
        y2 = y.masked_fill(off, float("nan"))
        junk = 1e6 * torch.randn(x.shape, generator=g, dtype=x.dtype)
        junk[:, ::2] = float("nan")  # half the samples NaN, half huge
        x2 = torch.where(off[:, None], junk, x)
        noisy.append((x2, y2, m))
    clean, dirty = values_of(batches), values_of(noisy)
    for name, value in clean.items():
        assert dirty[name] == pytest.approx(value, rel=1e-10), name


def test_all_zero_mask_gives_nan_with_a_warning():
    x, y, m = make_batches(sizes=(2,))[0]
    collection, extra = every_metric()
    collection.update(x, y, torch.zeros_like(m))
    with pytest.warns(UserWarning, match="denominator is 0"):
        values = collection.compute()
    assert all(torch.isnan(v) for v in values.values())
    for metric in extra.values():
        metric.update(x, y, torch.zeros_like(m))
        with pytest.warns(UserWarning, match="denominator is 0"):
            assert torch.isnan(metric.compute())


def test_an_unscored_batch_adds_nothing():
    batches = make_batches()
    x, y, m = batches[0]
    assert values_of([(x, y, torch.zeros_like(m)), *batches]) == pytest.approx(values_of(batches), rel=1e-12)


def test_shape_errors_are_clear():
    x, y, m = make_batches(sizes=(2,))[0]
    with pytest.raises(ValueError, match=r"expected samples \(B, S, L, K\)"):
        QuantileCRPS().update(x, y[:, :-1], m)


# ----------------------------------------------------------------------------- traffic size


@pytest.mark.slow
def test_traffic_sized_quantiles_match_torch_quantile():
    """S=100, L=192, K=963: 18.5M values, in blocks; bit-equal to torch.quantile on slices."""
    g = torch.Generator().manual_seed(0)
    samples = torch.empty(1, 100, 192, 963).normal_(generator=g)
    levels = torch.tensor(DEFAULT_QUANTILES)
    got = sample_quantiles(samples, DEFAULT_QUANTILES)
    assert got.shape == (19, 1, 192, 963)
    first, last = (slice(0, 5), slice(None)), (slice(-3, None), slice(-400, None))  # first and last block
    for steps, feats in (first, last):
        want = torch.quantile(samples[:, :, steps, feats], levels, dim=1)
        assert torch.equal(got[:, :, steps, feats], want)


def test_nearest_interpolation_equals_torch_quantile():
    x = make_batches(sizes=(2,), n_samples=20)[0][0].float()
    levels = torch.tensor(DEFAULT_QUANTILES)
    want = torch.quantile(x, levels, dim=1, interpolation="nearest")
    got = sample_quantiles(x, DEFAULT_QUANTILES, interpolation="nearest", chunk_elements=53)
    assert torch.equal(got, want)


def test_collection_logs_through_lightning(tmp_path):
    """``self.log_dict(collection)`` in a test_step logs each member's value over the whole set."""
    import lightning as L

    batches = make_batches()

    class Task(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.metrics = ProbabilisticMetrics(prefix="test/")

        def test_step(self, batch, batch_idx):
            self.metrics.update(*batch)
            self.log_dict(self.metrics, batch_size=batch[0].shape[0])

    trainer = L.Trainer(
        default_root_dir=tmp_path, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(batches, batch_size=None)
    logged = trainer.test(Task(), dataloaders=loader, verbose=False)[0]
    want = run(ProbabilisticMetrics(prefix="test/"), batches)
    assert sorted(logged) == sorted(want)
    for name, value in want.items():
        assert logged[name] == pytest.approx(value.item(), rel=1e-6), name

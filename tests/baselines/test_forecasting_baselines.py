"""Forecasting baselines against values computed by hand on a tiny panel: seasonal naive and the random walk
with bootstrapped residuals, and the ETS forecaster (statsmodels) against the closed-form predictive mean and
variance of simple exponential smoothing, recomputed here from the fitted parameters."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tsdiffusion.baselines import RandomWalk, SeasonalNaive
from tsdiffusion.tasks import ForecastingTask


def _batch(values: list[list[float]], horizon: int) -> tuple[dict, torch.Tensor]:
    """One window (1, L, K) of the given series (K lists of L values); the last ``horizon`` steps are hidden."""
    x = torch.tensor(values, dtype=torch.float64).T[None]
    cond = torch.ones_like(x)
    cond[:, -horizon:] = 0
    return {"observed": x, "observed_mask": torch.ones_like(x), "target_mask": 1 - cond}, cond


def test_seasonal_naive_continues_an_exact_season_and_keeps_the_context():
    # season 2, context [1, 5, 2, 6, 3, 7]: every residual y_t - y_{t-2} is 1, so each path is
    # y_6 = y_4 + 1 = 4, y_7 = y_5 + 1 = 8, y_8 = y_6 + 1 = 5, y_9 = y_7 + 1 = 9
    batch, cond = _batch([[1, 5, 2, 6, 3, 7, 0, 0, 0, 0]], horizon=4)
    paths = SeasonalNaive(2).sample(batch, cond, 5, torch.Generator().manual_seed(0))
    assert paths.shape == (1, 5, 10, 1)
    assert paths[0, :, 6:, 0].tolist() == [[4.0, 8.0, 5.0, 9.0]] * 5
    assert paths[0, :, :6, 0].tolist() == [[1.0, 5.0, 2.0, 6.0, 3.0, 7.0]] * 5


def test_random_walk_draws_the_context_residuals_with_replacement():
    # context [0, 0, 1, 2]: residuals {0, 1, 1}; one step ahead y_4 = 2 + r: 2 w.p. 1/3, 3 w.p. 2/3;
    # two steps: 2 + r1 + r2 in {2, 3, 4} w.p. 1/9, 4/9, 4/9
    batch, cond = _batch([[0, 0, 1, 2, 0, 0]], horizon=2)
    paths = RandomWalk().sample(batch, cond, 9000, torch.Generator().manual_seed(0))[0, :, 4:, 0]
    one, two = paths[:, 0], paths[:, 1]
    assert set(one.tolist()) == {2.0, 3.0} and set(two.tolist()) == {2.0, 3.0, 4.0}
    assert float((one == 3).double().mean()) == pytest.approx(2 / 3, abs=0.02)
    assert [float((two == v).double().mean()) for v in (2, 3, 4)] == pytest.approx([1 / 9, 4 / 9, 4 / 9], abs=0.02)


def test_ets_matches_the_closed_form_predictive_of_simple_exponential_smoothing():
    """ETS(A,N,N): y_t = l_{t-1} + e_t, l_t = l_{t-1} + alpha e_t. Its h-step predictive is Gaussian with mean l_T
    and variance sigma^2 (1 + (h - 1) alpha^2) (Hyndman & Athanasopoulos, FPP3 table 8.8); l_T is recomputed
    here by hand from the fitted alpha and initial level."""
    pytest.importorskip("statsmodels")
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    from tsdiffusion.baselines import ETSForecaster

    y = np.random.default_rng(3).normal(0, 1, 80).cumsum() + 10
    fit = ETSModel(y, error="add").fit(disp=False)
    alpha, level = fit.params[0], fit.params[1]  # smoothing_level, initial_level
    for v in y:
        level = level + alpha * (v - level)
    H, S = 4, 6000
    batch, cond = _batch([[*y, *[0.0] * H]], horizon=H)
    paths = ETSForecaster(trend=None).sample(batch, cond, S, torch.Generator().manual_seed(0))[0, :, -H:, 0].numpy()
    var = fit.scale * (1 + np.arange(H) * alpha**2)
    assert np.abs(paths.mean(0) - level).max() < 4 * np.sqrt(var.max() / S)
    np.testing.assert_allclose(paths.var(0), var, rtol=0.1)
    again = ETSForecaster(trend=None).sample(batch, cond, S, torch.Generator().manual_seed(0))
    assert torch.equal(again[0, :, -H:, 0], torch.from_numpy(paths).to(again.dtype))  # seeded by the generator


def test_ets_with_a_trend_continues_a_line_through_the_forecasting_task(tmp_path):
    pytest.importorskip("statsmodels")
    from tsdiffusion.baselines import ETSForecaster

    t = torch.arange(40, dtype=torch.float32)
    noise = 0.01 * torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    values = torch.stack([2 + 0.5 * t, 5 - 0.25 * t], dim=-1) + noise
    target = torch.zeros(40, 2)
    target[-5:] = 1
    values[3, 0] = 0.0  # a missing context value: interpolated before the fit
    mask = torch.ones(40, 2)
    mask[3, 0] = 0
    item = {"observed": values, "observed_mask": mask, "target_mask": target}
    task = ForecastingTask(baseline=ETSForecaster(trend="add", damped_trend=False), num_samples=50, plot_series=0,
                           plot_calibration=False, metrics=["mae_median"])  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)  # fmt: skip
    mae = trainer.test(task, DataLoader([item], batch_size=1), verbose=False)[0]["test/mae_median"]
    assert mae < 0.05  # the line continued: 2 + 0.5 t and 5 - 0.25 t, t = 35..39 (noise sd 0.01)

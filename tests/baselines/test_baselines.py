"""Baselines have their own interface, not the denoiser's, and the tasks evaluate them in place of a denoiser."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from tsdiffusion.baselines import (
    InterpolationImputer,
    LOCFImputer,
    MeanImputer,
    RandomWalk,
    RollingMedianScorer,
    SamplingBaseline,
    ScoringBaseline,
    SeasonalNaive,
    carry_forward,
    interpolate,
)
from tsdiffusion.denoisers import CSDIDenoiser
from tsdiffusion.tasks import AnomalyTask, ForecastingTask, ImputationTask


def test_interpolate_is_exact_on_a_line_and_constant_beyond_the_ends():
    x = (3.0 * torch.arange(10.0) - 1).view(1, 10, 1)
    mask = torch.zeros_like(x)
    mask[0, [2, 5, 6]] = 1
    out = interpolate(x * mask, mask)[0, :, 0]
    torch.testing.assert_close(out[2:7], x[0, 2:7, 0])  # linear between the given points
    assert out[:2].tolist() == [x[0, 2, 0].item()] * 2 and out[7:].tolist() == [x[0, 6, 0].item()] * 3
    assert interpolate(x, torch.zeros_like(x)).abs().sum() == 0  # nothing given: 0


def test_baselines_are_not_denoisers():
    for baseline in (SeasonalNaive(24), RandomWalk(), InterpolationImputer(), RollingMedianScorer()):
        assert not isinstance(baseline, torch.nn.Module) and not hasattr(baseline, "forward")
    assert isinstance(RandomWalk(), SamplingBaseline) and RandomWalk().season == 1
    assert isinstance(RollingMedianScorer(), ScoringBaseline)


def test_a_task_takes_exactly_one_of_denoiser_and_baseline():
    with pytest.raises(ValueError, match="exactly one"):
        ForecastingTask()
    with pytest.raises(ValueError, match="exactly one"):
        ForecastingTask(CSDIDenoiser(2, channels=8, layers=1, heads=2), baseline=RandomWalk())
    with pytest.raises(TypeError, match="ScoringBaseline"):
        AnomalyTask(baseline=RandomWalk(), num_samples=2)
    task = ForecastingTask(baseline=RandomWalk())
    assert not task.learned and task.configure_optimizers() is None and "baseline" not in task.hparams


def test_imputation_task_scores_a_baseline_as_a_model(tmp_path):
    """Interpolation of a line with held-out points is exact: every error metric of the task is 0; on a sine
    its MAE is the mean |error| of the interpolated held-out points, computed here by hand."""
    L_, K = 20, 2
    t = torch.arange(L_, dtype=torch.float32)
    values = torch.stack([torch.sin(t), 0.5 * t], dim=-1)
    target = torch.zeros(L_, K)
    target[[3, 4, 10, 15], :] = 1
    item = {"observed": values, "observed_mask": torch.ones(L_, K), "target_mask": target}
    task = ImputationTask(baseline=InterpolationImputer(), num_samples=3, plot_windows=0, metrics=["mae_median"])
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path)  # fmt: skip
    mae = trainer.test(task, DataLoader([item], batch_size=1), verbose=False)[0]["test/mae_median"]
    fill = interpolate((values * (1 - target))[None], (1 - target)[None])[0]
    expected = ((fill - values).abs() * target).sum() / target.sum()
    assert mae == pytest.approx(float(expected), rel=1e-5)
    assert float(((fill - values).abs() * target)[:, 1].sum()) < 1e-5  # the line is interpolated exactly


def _tiny_panel() -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One window, L=6, K=3: series 0 seen at steps 1 and 4, series 1 seen at 0, 2, 5, series 2 never seen."""
    observed = torch.tensor(
        [[9.0, 1.0, 7.0], [2.0, 5.0, 7.0], [9.0, 3.0, 7.0], [9.0, 5.0, 7.0], [6.0, 5.0, 7.0], [9.0, -1.0, 7.0]]
    )[None]
    cond = torch.zeros(1, 6, 3)
    cond[0, [1, 4], 0] = 1
    cond[0, [0, 2, 5], 1] = 1
    batch = {"observed": observed, "observed_mask": torch.ones_like(observed), "target_mask": 1 - cond}
    return batch, cond


def test_locf_imputer_matches_hand_computed_fill():
    batch, cond = _tiny_panel()
    out = LOCFImputer().sample(batch, cond, num_samples=2)
    assert out.shape == (1, 2, 6, 3)
    expected = torch.tensor(
        [[2.0, 1.0, 0.0], [2.0, 1.0, 0.0], [2.0, 3.0, 0.0], [2.0, 3.0, 0.0], [6.0, 3.0, 0.0], [6.0, -1.0, 0.0]]
    )  # step 0 of series 0 takes the first observation (2); series 2 has none: 0
    torch.testing.assert_close(out[0, 0], expected)
    torch.testing.assert_close(out[0, 1], expected)
    torch.testing.assert_close(carry_forward(batch["observed"] * cond, cond)[0], expected)


def test_mean_imputer_matches_hand_computed_fill():
    batch, cond = _tiny_panel()
    window = MeanImputer("window").sample(batch, cond, num_samples=1)[0, 0]
    expected = torch.tensor(
        [[4.0, 1.0, 0.0], [2.0, 1.0, 0.0], [4.0, 3.0, 0.0], [4.0, 1.0, 0.0], [6.0, 1.0, 0.0], [4.0, -1.0, 0.0]]
    )  # series 0: mean(2, 6) = 4; series 1: mean(1, 3, -1) = 1; series 2: nothing seen, 0
    torch.testing.assert_close(window, expected)
    data = MeanImputer("data").sample(batch, cond, num_samples=1)[0, 0]
    torch.testing.assert_close(data, expected.where(cond[0] > 0, torch.zeros(())))  # normalised: the mean is 0
    with pytest.raises(ValueError, match="over must be"):
        MeanImputer("median")  # type: ignore[arg-type]


def test_linear_interpolation_matches_hand_computed_fill_on_the_tiny_panel():
    batch, cond = _tiny_panel()
    out = InterpolationImputer().sample(batch, cond, num_samples=1)[0, 0]
    expected = torch.tensor([[2, 1, 0], [2, 2, 0], [10 / 3, 3, 0], [14 / 3, 5 / 3, 0], [6, 1 / 3, 0], [6, -1, 0]])
    torch.testing.assert_close(out, expected)


def test_interpolation_with_noise_is_the_fill_plus_gaussian_noise_at_hidden_values_only():
    batch, cond = _tiny_panel()
    fill = InterpolationImputer().point(batch, cond)
    noisy = InterpolationImputer(noise_std=0.5)
    samples = noisy.sample(batch, cond, num_samples=4000, generator=torch.Generator().manual_seed(0))
    hidden = (cond[0] == 0).unsqueeze(0).expand_as(samples[0])
    dev = samples[0] - fill[0]  # (S, L, K)
    assert dev[~hidden].abs().max() == 0  # the conditioning values are kept
    z = dev[hidden] / 0.5
    assert abs(z.mean()) < 0.05 and abs(z.std() - 1) < 0.05  # N(0, 0.5^2): 4000 x (hidden count) draws
    torch.testing.assert_close(noisy.point(batch, cond), fill)  # its point estimate is the fill
    with pytest.raises(ValueError, match="noise_std"):
        InterpolationImputer(noise_std=-1.0)


def test_seasonal_imputer_matches_hand_computed_fill():
    from tsdiffusion.baselines import SeasonalImputer

    # one series, period 2, 7 steps: given at steps 0, 1, 3, 6 (values 10, 20, 40, 70)
    x = torch.tensor([10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0]).view(1, 7, 1)
    cond = torch.tensor([1.0, 1, 0, 1, 0, 0, 1]).view(1, 7, 1)
    batch = {"observed": x, "observed_mask": torch.ones_like(x)}
    out = SeasonalImputer(period=2).point(batch, cond)[0, :, 0]
    # step 2: steps 0 and 4 one period away, only 0 given -> 10; step 4: steps 2 and 6 -> only 6 given -> 70;
    # step 5: steps 3 and 7 -> 3 given -> 40
    torch.testing.assert_close(out, torch.tensor([10.0, 20.0, 10.0, 40.0, 70.0, 40.0, 70.0]))
    # both neighbours given: their mean; none at one period but one at two periods: that one
    x2 = torch.arange(9.0).view(1, 9, 1)
    cond2 = torch.tensor([1.0, 0, 0, 0, 0, 0, 0, 0, 1]).view(1, 9, 1)
    out2 = SeasonalImputer(period=2).point({"observed": x2}, cond2)[0, :, 0]
    # step 4: +-2 (steps 2, 6) not given, +-4 (steps 0 and 8) given -> mean(0, 8) = 4; odd steps have no given
    # value at any multiple of 2 away -> linear interpolation between steps 0 and 8 (= the step itself)
    torch.testing.assert_close(out2, torch.tensor([0.0, 1, 0, 3, 4, 5, 8, 7, 8]))
    with pytest.raises(ValueError, match="period"):
        SeasonalImputer(period=0)

"""Forecasting: TimeGrad and CSDI forecasts (shapes, no look-ahead), lags, baselines, plots, every config."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.figure
import pytest
import torch
import torch.nn.functional as F

from tsdiffusion.baselines import RandomWalk, SeasonalNaive, bootstrap_forecast
from tsdiffusion.denoisers import CSDIDenoiser
from tsdiffusion.denoisers.timegrad import TimeGradDenoiser, TimeGradEncoder, lag_inputs
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.metrics import ProbabilisticMetrics
from tsdiffusion.plots import fan_chart, imputation_plot
from tsdiffusion.tasks.forecasting import ForecastingTask, TimeGradTask, subsample_features

ROOT = Path(__file__).resolve().parents[2]
B, L, K, H, F_TIME = 2, 14, 5, 4, 3


def make_batch(seed: int = 0) -> dict:
    """A forecasting batch: (B, L, K) values, the last H steps are the horizon."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(B, L, K)
    target[:, -H:] = 1
    return {
        "observed": torch.randn(B, L, K, generator=g),
        "observed_mask": torch.ones(B, L, K),
        "target_mask": target,
        "timepoints": torch.arange(L).float().expand(B, L),
        "feature_ids": torch.arange(K).expand(B, K),
        "time_features": torch.rand(B, L, F_TIME, generator=g) - 0.5,
        "loc": torch.rand(B, 1, K, generator=g),
        "scale": torch.rand(B, 1, K, generator=g) + 0.5,
    }


def timegrad_task(**kwargs) -> TimeGradTask:
    torch.manual_seed(0)
    den = TimeGradDenoiser(K, cond_dim=6, residual_layers=2, residual_channels=4)
    torch.nn.init.normal_(den.output_projection.weight)  # zero-initialised: let the output depend on the input
    process = GaussianDiffusion(10, "linear", 1e-4, 0.1)
    return TimeGradTask(den, process, num_time_features=F_TIME, lags=[1, 3], rnn_hidden=8, **kwargs).eval()


def csdi_task(**kwargs) -> ForecastingTask:
    torch.manual_seed(0)
    den = CSDIDenoiser(K, channels=8, layers=1, heads=2, diffusion_embedding_dim=16, time_embedding_dim=8,
                       feature_embedding_dim=4)  # fmt: skip
    torch.nn.init.normal_(den.output_projection2.weight)
    return ForecastingTask(den, GaussianDiffusion(10), **kwargs).eval()


def draw(task, batch, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return task.sample(batch, task.eval_cond_mask(batch), generator=gen)


# -- lags and the TimeGrad networks ---------------------------------------------------------------


def test_lag_inputs_pick_past_values():
    x = torch.arange(2 * 10 * 3).float().view(2, 10, 3)
    out = lag_inputs(x, torch.tensor([5, 9]), [1, 4])  # (B, P, K * n), ordered (k lag)
    assert out.shape == (2, 2, 6)
    for b in range(2):
        for i, p in enumerate([5, 9]):
            expected = torch.stack([x[b, p - 1], x[b, p - 4]], dim=-1).flatten()
            torch.testing.assert_close(out[b, i], expected)
    with pytest.raises(ValueError, match="leave the window"):
        lag_inputs(x, torch.tensor([2]), [1, 4])
    with pytest.raises(ValueError, match="lag 0"):
        TimeGradEncoder(3, 1, lags=[0, 1])


def test_encoder_is_causal():
    """h_t depends on x only before t: changing x_t and later leaves h_{<=t} unchanged."""
    torch.manual_seed(0)
    enc = TimeGradEncoder(K, F_TIME, lags=[1, 3], hidden_size=8, cond_dim=6).eval()
    batch = make_batch()
    pos = torch.arange(3, L)
    h1, _ = enc(batch["observed"], pos, batch["time_features"], batch["feature_ids"])
    x2 = batch["observed"].clone()
    x2[:, 9:] += 10.0
    h2, _ = enc(x2, pos, batch["time_features"], batch["feature_ids"])
    torch.testing.assert_close(h1[:, : 9 - 3 + 1], h2[:, : 9 - 3 + 1])  # positions 3..9 use x before 9
    assert not torch.allclose(h1[:, -1], h2[:, -1])


def _reference_eps(den: TimeGradDenoiser, x: torch.Tensor, t: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """pytorch-ts EpsilonTheta written with Conv1d (circular padding 2, unpadded kernel-3 end convolutions).

    x: (N, 1, K); hidden: (N, 1, cond_dim); the Linear weights of ``den`` reshaped to convolution kernels.
    """

    def k3(lin):  # Linear(3C, out) -> Conv1d kernel (out, C, 3)
        return lin.weight.view(lin.out_features, 3, -1).permute(0, 2, 1)

    def k1(lin):
        return lin.weight.unsqueeze(-1)

    h = F.leaky_relu(
        F.conv1d(F.pad(x, (2, 2), mode="circular"), k1(den.input_projection), den.input_projection.bias), 0.4
    )
    cond = F.pad(den.cond_upsampler(hidden), (2, 2), mode="circular")
    step = den.step_embedding(t)
    skips = []
    for blk in den.blocks:
        d = blk.dilation
        y = h + blk.step_projection(step).unsqueeze(-1)
        y = F.conv1d(F.pad(y, (d, d), mode="circular"), k3(blk.dilated_conv), blk.dilated_conv.bias, dilation=d)
        y = y + F.conv1d(cond, k1(blk.cond_projection), blk.cond_projection.bias)
        gate, filt = y.chunk(2, dim=1)
        y = F.conv1d(torch.sigmoid(gate) * torch.tanh(filt), k1(blk.output_projection), blk.output_projection.bias)
        residual, skip = F.leaky_relu(y, 0.4).chunk(2, dim=1)
        h = (h + residual) / math.sqrt(2.0)
        skips.append(skip)
    s = torch.stack(skips).sum(0) / math.sqrt(len(skips))
    s = F.leaky_relu(F.conv1d(s, k3(den.skip_projection), den.skip_projection.bias), 0.4)
    return F.conv1d(s, k3(den.output_projection), den.output_projection.bias)


def test_timegrad_denoiser_matches_the_convolutional_original():
    torch.manual_seed(0)
    den = TimeGradDenoiser(7, cond_dim=6, residual_layers=3, residual_channels=4)
    torch.nn.init.normal_(den.output_projection.weight)  # zero-initialised: make the output informative
    x, hidden, t = torch.randn(2, 3, 7), torch.randn(2, 3, 6), torch.tensor([1, 7])
    out = den(x, t, {"hidden": hidden})
    assert out.shape == (2, 3, 7)
    ref = _reference_eps(den, x.reshape(6, 1, 7), t.repeat_interleave(3), hidden.reshape(6, 1, 6))
    torch.testing.assert_close(out, ref.reshape(2, 3, 7), atol=1e-5, rtol=1e-5)


def test_timegrad_conditioning_bottleneck_width():
    # TimeGrad's upsampler squeezes h_t through K // 2 units; cond_hidden widens it (same function otherwise)
    assert TimeGradDenoiser(8, cond_dim=6).cond_upsampler[0].out_features == 4
    den = TimeGradDenoiser(8, cond_dim=6, cond_hidden=32, residual_layers=2, residual_channels=4)
    assert den.cond_upsampler[0].out_features == 32 and den.cond_upsampler[2].in_features == 32
    torch.nn.init.normal_(den.output_projection.weight)
    x, hidden, t = torch.randn(2, 3, 8), torch.randn(2, 3, 6), torch.tensor([1, 7])
    ref = _reference_eps(den, x.reshape(6, 1, 8), t.repeat_interleave(3), hidden.reshape(6, 1, 6))
    torch.testing.assert_close(den(x, t, {"hidden": hidden}), ref.reshape(2, 3, 8), atol=1e-5, rtol=1e-5)


# -- forecasts: shapes and no look-ahead -----------------------------------------------------------


@pytest.mark.parametrize("make", [timegrad_task, csdi_task], ids=["timegrad", "csdi"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_forecast_shapes_and_never_sees_the_future(make, sampler):
    task = make(num_samples=3, sampler=sampler, sample_steps=4, sample_batch_size=4)
    batch = make_batch()
    samples = draw(task, batch)
    assert samples.shape == (B, 3, L, K) and torch.isfinite(samples).all()
    torch.testing.assert_close(samples[:, :, : L - H], batch["observed"][:, None, : L - H].expand(B, 3, -1, -1))
    changed = dict(batch, observed=batch["observed"].clone())
    changed["observed"][:, -H:] += 100.0
    torch.testing.assert_close(draw(task, changed), samples, rtol=0, atol=0)
    changed["observed"][:, L - H - 1] += 3.0  # the last context step does matter
    assert not torch.allclose(draw(task, changed)[:, :, -H:], samples[:, :, -H:])


def test_timegrad_training_loss_reaches_encoder_and_samples_differ():
    task = timegrad_task(num_samples=4).train()
    loss = task.window_loss(make_batch())
    loss.backward()
    assert torch.isfinite(loss) and task.encoder.rnn.weight_ih_l0.grad.abs().sum() > 0
    samples = draw(task.eval(), make_batch())
    assert samples[:, :, -H:].std(dim=1).min() > 0  # S independent paths


def test_timegrad_samples_in_float32_under_bf16_autocast():
    """The precision policy's bf16 autocast does not reach TimeGrad's chains (they are faster in float32)."""
    task, batch = timegrad_task(num_samples=3), make_batch()
    plain = draw(task, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = draw(task, batch)
        assert torch.matmul(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16  # autocast is on here
    assert under.dtype == torch.float32
    torch.testing.assert_close(under, plain, rtol=0, atol=0)


def test_subsample_features_keeps_fields_aligned():
    batch = make_batch()
    batch["observed"] = torch.arange(K).float().expand(B, L, K).clone()
    sub = subsample_features(batch, 3, torch.Generator().manual_seed(0))
    assert sub["observed"].shape == (B, L, 3) and sub["feature_ids"].shape == (B, 3)
    torch.testing.assert_close(sub["observed"][:, 0], sub["feature_ids"].float())
    for key in ("loc", "scale"):
        torch.testing.assert_close(sub[key][:, 0], torch.gather(batch[key][:, 0], 1, sub["feature_ids"]))
    assert subsample_features(batch, K) is batch


def test_forecasting_task_trains_on_a_feature_subset():
    task = csdi_task(num_train_features=2).train()
    seen = []
    task.denoiser.register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    task.log = lambda *a, **k: None
    task.training_step(make_batch(), 0)
    assert seen == [torch.Size([B, L, 2])]


# -- baselines -------------------------------------------------------------------------------------


def periodic_batch(period: int, length: int = 60, k: int = 3) -> dict:
    t = torch.arange(length).float()
    values = torch.stack([torch.sin(2 * math.pi * t / period + j) + j for j in range(k)], dim=-1)
    target = torch.zeros(1, length, k)
    target[:, -12:] = 1
    return {"observed": values[None], "observed_mask": torch.ones(1, length, k), "target_mask": target,
            "loc": torch.zeros(1, 1, k) + 5, "scale": torch.ones(1, 1, k) * 2}  # fmt: skip


def baseline_crps(method: str, season: int, batch: dict) -> float:
    baseline = RandomWalk() if method == "random_walk" else SeasonalNaive(season)
    task = ForecastingTask(baseline=baseline, num_samples=50).eval()
    samples = draw(task, batch)
    metrics = ProbabilisticMetrics(["crps", "crps_sum"])
    metrics.update(task.to_units(samples, batch), task.to_units(batch["observed"], batch), batch["target_mask"])
    return {k: float(v) for k, v in metrics.compute().items()}


def test_seasonal_naive_is_exact_on_a_periodic_series():
    batch = periodic_batch(period=8)
    exact = baseline_crps("seasonal_naive", 8, batch)
    assert exact["crps"] < 1e-5 and exact["crps_sum"] < 1e-5  # float32 rounding of sin only
    wrong = baseline_crps("random_walk", 1, batch)
    assert wrong["crps"] > 0.01


def test_bootstrap_paths_accumulate_residuals():
    context = torch.arange(10).float().view(1, 10, 1) * 2.0  # a random walk with constant step 2
    paths = bootstrap_forecast(context, 5, 1, 4, generator=torch.Generator().manual_seed(0))
    assert paths.shape == (1, 4, 5, 1)
    torch.testing.assert_close(paths[0, :, :, 0], (18.0 + 2.0 * torch.arange(1, 6)).expand(4, 5))
    context = torch.tensor([0.0, 1.0, 0.0, 3.0, 0.0, 1.0]).view(1, 6, 1)  # season 2, residuals {0, 2, 0, -2}
    paths = bootstrap_forecast(context, 4, 2, 200, generator=torch.Generator().manual_seed(0))
    assert set(paths[0, :, 0, 0].tolist()) == {0.0, 2.0, -2.0}  # x_{C} = x_{C-2} + r
    assert set(paths[0, :, 2, 0].tolist()) <= {-4.0, -2.0, 0.0, 2.0, 4.0}  # two residuals accumulated


# -- plots -----------------------------------------------------------------------------------------


def test_plots_save_png(tmp_path):
    batch = make_batch()
    samples = torch.randn(20, L, K)
    fig = fan_chart(batch["observed"][0], samples, batch["target_mask"][0], [0, 2], path=tmp_path / "fan.png")
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 2
    fig = imputation_plot(batch["observed"][0], batch["observed_mask"][0], batch["target_mask"][0], samples,
                          [1], path=tmp_path / "imp.png")  # fmt: skip
    assert len(fig.axes) == 1
    for name in ("fan.png", "imp.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_onecycle_schedule_is_pytorch_ts_trainers():
    """``lr_schedule="onecycle"`` steps as pytorch-ts's ``Trainer`` (``OneCycleLR(max_lr=maximum_learning_rate,
    steps_per_epoch, epochs)``, stepped every batch): from max_lr / 25 up to max_lr at 30% of the steps, then down to
    max_lr / 25e4; the ``lr`` given to Adam does not survive. (The old multistep default kept 1e-3 throughout.)"""
    from types import SimpleNamespace

    task = TimeGradTask(TimeGradDenoiser(4, cond_dim=8), num_time_features=2, lags=[1, 2], rnn_hidden=8,
                        lr=1e-3, lr_schedule="onecycle", max_lr=1e-2)  # fmt: skip
    task._trainer = SimpleNamespace(estimated_stepping_batches=2000, max_epochs=20)
    cfg = task.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert cfg["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(2000):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-2 / 25, rel=1e-9)
    assert max(lrs) == pytest.approx(1e-2, rel=1e-9) and lrs.index(max(lrs)) == 599
    assert lrs[-1] == pytest.approx(1e-2 / 25e4, rel=1e-6)
    # the cosine annealing halfway down the second phase (step 599 + 700): the mean of the two ends
    assert lrs[1299] == pytest.approx((1e-2 + 1e-2 / 25e4) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="lr_schedule"):
        TimeGradTask(TimeGradDenoiser(4, cond_dim=8), num_time_features=2, lags=[1], lr_schedule="cosine")


@pytest.mark.parametrize("dataset", ["exchange", "electricity"])
def test_timegrad_paper_configs_are_pytorch_ts_timegrads(dataset):
    """The paper configs train as pytorch-ts 0.6's TimeGradEstimator + Trainer (issue 26): OneCycle to 1e-2, no
    gradient clipping, its Fourier time features (4 for business days and for hours), its step-encoding frequencies,
    and the whole train part as training windows (no validation hold-out; the reference has none)."""
    import yaml

    path = Path(__file__).resolve().parents[2] / f"experiments/forecasting/{dataset}/timegrad.yaml"
    cfg = yaml.safe_load(path.read_text())
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    assert (model["lr_schedule"], model["max_lr"], model["num_time_features"]) == ("onecycle", 0.01, 4)
    assert cfg["trainer"]["gradient_clip_val"] is None
    assert model["denoiser"]["init_args"]["step_frequencies"] == "timegrad"
    assert (data["scaling"], data["time_features"], data["num_val_windows"]) == ("mean", "fourier", 0)

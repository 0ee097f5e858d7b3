"""The same checkpoint gives the same samples and scores whatever the evaluation batch size, the sample chunking
(``sample_batch_size``) or the number of DDP processes: every evaluation draw comes from the window's own streams
(:mod:`tsdiffusion.streams`), keyed by (``sample_seed``, the window's ``index``, the sample).

Before the streams, a window's draws followed the batch layout (a torch.Generator per batch, read in row order):
``test_a_batch_generator_depends_on_the_layout`` keeps that failure mode visible, so the other tests can fail.
Float tolerances: a denoiser's batched matrix products may round differently for other batch shapes.
"""

from __future__ import annotations

import lightning as L
import pytest
import torch

from tsdiffusion.baselines import InterpolationImputer, SeasonalNaive
from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.denoisers import CSDIDenoiser
from tsdiffusion.denoisers.timegrad import TimeGradDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.tasks import ImputationTask
from tsdiffusion.tasks.forecasting import ForecastingTask, TimeGradTask

N, L_, K, H, F_TIME, S = 7, 12, 3, 4, 2, 4


def windows(n: int = N, seed: int = 0) -> dict[str, torch.Tensor]:
    """n forecasting windows (the last H steps are the targets) with their ``index``."""
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(n, L_, K)
    target[:, -H:] = 1
    return {
        "observed": torch.randn(n, L_, K, generator=g),
        "observed_mask": torch.ones(n, L_, K),
        "target_mask": target,
        "timepoints": torch.arange(L_).float().expand(n, L_),
        "feature_ids": torch.arange(K).expand(n, K),
        "time_features": torch.rand(n, L_, F_TIME, generator=g) - 0.5,
        "loc": torch.zeros(n, 1, K),
        "scale": torch.ones(n, 1, K),
        "index": torch.arange(n),
    }


def csdi(task_cls=ForecastingTask, **kw):
    torch.manual_seed(0)
    den = CSDIDenoiser(K, channels=8, layers=1, heads=2, diffusion_embedding_dim=16, time_embedding_dim=8,
                       feature_embedding_dim=4)  # fmt: skip
    torch.nn.init.normal_(den.output_projection2.weight)
    return task_cls(den, GaussianDiffusion(10), num_samples=S, sampler="ddpm", **kw).eval()


def timegrad(**kw):
    torch.manual_seed(0)
    den = TimeGradDenoiser(K, cond_dim=6, residual_layers=2, residual_channels=4)
    torch.nn.init.normal_(den.output_projection.weight)
    process = GaussianDiffusion(10, "linear", 1e-4, 0.1)
    return TimeGradTask(den, process, num_time_features=F_TIME, lags=[1, 3], rnn_hidden=8, num_samples=S, **kw).eval()


TASKS = {
    "csdi_forecasting": csdi,
    "csdi_forecasting_dpmpp_sde": csdi,  # a stochastic sampler: noise at every step
    "csdi_imputation": lambda **kw: csdi(ImputationTask, **kw),
    "timegrad": timegrad,
    "seasonal_naive_bootstrap": lambda **kw: ForecastingTask(baseline=SeasonalNaive(2), num_samples=S, **kw),
    "interpolation_noise": lambda **kw: ImputationTask(
        baseline=InterpolationImputer(noise_std=0.3), num_samples=S, **kw
    ),
}


def make_task(name: str, **kw):
    task = TASKS[name](**kw)
    if name.endswith("dpmpp_sde"):
        task.hparams.sampler, task.hparams.sample_steps = "dpmpp_sde", 5
    return task


def draw(task, batch, batch_idx: int = 0) -> torch.Tensor:
    with torch.no_grad():
        return task.sample(batch, task.eval_cond_mask(batch), generator=task.sample_source(batch, batch_idx))


def split(batch: dict, size: int) -> list[dict]:
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, len(batch["observed"]), size)]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_samples_do_not_depend_on_the_batch_size_or_the_sample_chunking(name):
    batch = windows()
    task = make_task(name)
    whole = draw(task, batch)
    assert whole.shape == (N, S, L_, K)
    for size in (1, 3):
        parts = torch.cat([draw(task, b, i) for i, b in enumerate(split(batch, size))])
        torch.testing.assert_close(parts, whole, rtol=1e-4, atol=1e-5, msg=f"eval batch size {size}")
    task.hparams.sample_batch_size = 3  # chunks of 3 rows split windows' samples across sampler calls
    torch.testing.assert_close(draw(task, batch), whole, rtol=1e-4, atol=1e-5, msg="sample chunking")
    reordered = {k: v.flip(0) for k, v in batch.items()}
    torch.testing.assert_close(draw(task, reordered).flip(0), whole, rtol=1e-4, atol=1e-5, msg="window order")


def test_windows_and_samples_draw_differently():
    samples = draw(make_task("csdi_forecasting"), windows())
    same_values = {k: v[:1].expand(2, *v.shape[1:]).clone() for k, v in windows().items() if k != "index"}
    two = draw(make_task("csdi_forecasting"), {**same_values, "index": torch.tensor([0, 1])})
    assert not torch.allclose(two[0], two[1])  # same values, other window index: other draws
    assert not torch.allclose(samples[:, 0], samples[:, 1])  # samples of one window differ


def test_a_batch_generator_depends_on_the_layout():
    """Without ``index`` the task falls back to a generator per batch: the failure mode the streams remove."""
    task = make_task("csdi_forecasting")
    batch = {k: v for k, v in windows().items() if k != "index"}
    whole = draw(task, batch)
    parts = torch.cat([draw(task, b, i) for i, b in enumerate(split(batch, 1))])
    assert not torch.allclose(parts, whole, rtol=1e-3, atol=1e-3)


# -- whole test runs: eval batch size and DDP processes ----------------------------------------------------


class Windows(TSDataModule):
    name = "windows"

    def __init__(self, n: int = N, **kw) -> None:
        super().__init__(**kw)
        self.n = n

    def build(self):
        data = WindowDataset({k: v for k, v in windows(self.n).items() if k != "index"})
        return {"train": data, "val": data, "test": data}


def run_test(task, tmp_path, eval_batch_size: int, ddp: bool = False, n: int = N) -> dict[str, float]:
    kw = {"strategy": "ddp_spawn", "devices": 2} if ddp else {"devices": 1}
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, **kw)  # fmt: skip
    data = Windows(n, batch_size=2, eval_batch_size=eval_batch_size)
    return trainer.test(task, datamodule=data, verbose=False)[0]


def assert_scores_equal(a: dict[str, float], b: dict[str, float]) -> None:
    assert sorted(a) == sorted(b)
    for name, value in b.items():
        assert a[name] == pytest.approx(value, rel=1e-5, abs=1e-7, nan_ok=True), name


@pytest.mark.parametrize("name", ["csdi_imputation", "timegrad", "seasonal_naive_bootstrap"])
def test_test_scores_do_not_depend_on_the_eval_batch_size(name, tmp_path):
    one = run_test(make_task(name), tmp_path, eval_batch_size=1)
    seven = run_test(make_task(name), tmp_path, eval_batch_size=7)
    assert "test/crps" in one
    assert_scores_equal(one, seven)


@pytest.mark.slow
def test_test_scores_are_the_same_on_one_and_two_processes(tmp_path):
    """``ddp_spawn`` on 2 CPU processes (gloo): rank r gets windows r, r + 2, ... and draws their own streams
    (8 windows: no padding by the sampler, so only the draws can differ)."""
    single = run_test(make_task("csdi_imputation"), tmp_path, eval_batch_size=3, n=8)
    ddp = run_test(make_task("csdi_imputation"), tmp_path, eval_batch_size=3, ddp=True, n=8)
    assert_scores_equal(ddp, single)

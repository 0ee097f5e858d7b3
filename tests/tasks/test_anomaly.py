"""Anomaly detection: readers on fixtures in the real formats, windows and stitching aligned with labels,
thresholds that never read test labels, point adjustment, a trained task that finds injected spikes,
and every experiment config through fast_dev_run."""

import lightning as L
import numpy as np
import pytest
import torch

from tsdiffusion.baselines import RollingMedianScorer, rolling_mad_score
from tsdiffusion.data.anomaly import (
    AnomalyDataModule,
    AnomalySeries,
    NABDataModule,
    SMAPMSLDataModule,
    read_nab,
    read_smap_msl,
    window_starts,
)
from tsdiffusion.data.download import DataSourceError
from tsdiffusion.denoisers import CSDIDenoiser
from tsdiffusion.diffusion import GaussianDiffusion
from tsdiffusion.metrics.anomaly import (
    anomaly_metrics,
    normalise_by_calibration,
    point_adjust,
    pot_threshold,
    quantile_threshold,
    stitch_windows,
)
from tsdiffusion.plots import label_segments
from tsdiffusion.tasks.anomaly import AnomalyTask, mask_patterns

# -- readers ------------------------------------------------------------------------------------------


def test_smap_msl_reader_labels_and_channels(smap_archive):
    series = read_smap_msl(smap_archive, "MSL", ["S-2", "M-6"])
    assert [s.name for s in series] == ["S-2", "M-6"]
    s = series[0]
    assert s.train.shape == (240, 55) and s.test.shape == (180, 55) and s.labels.shape == (180,)
    # inclusive ranges [100, 110] and [170, 175]
    assert s.labels.sum() == 11 + 6 and s.labels[100] == s.labels[110] == 1 and s.labels[111] == s.labels[99] == 0
    smap = read_smap_msl(smap_archive, "SMAP")
    assert [s.name for s in smap] == ["P-1", "S-1", "E-1", "P-2"]
    assert smap[3].labels[0] == 0  # the first P-2 row wins
    with pytest.raises(DataSourceError, match="not MSL channels"):
        read_smap_msl(smap_archive, "MSL", ["P-1"])


def test_nab_reader_windows_are_inclusive(nab_archive):
    data = read_nab(nab_archive, ["realKnownCause/nyc_taxi"])
    frame, windows = data["realKnownCause/nyc_taxi.csv"]
    assert len(frame) == 400 and len(windows) == 1
    dm = NABDataModule(series=["realKnownCause/nyc_taxi"], path=str(nab_archive), train_fraction=0.5,
                       window_length=32, stride=4)  # fmt: skip
    dm.setup()
    labels = dm.series[0].labels
    assert len(labels) == 200 and labels.sum() == 10 and labels[100] == labels[109] == 1 and labels[110] == 0


# -- windows, normalisation, stitching ------------------------------------------------------------


def test_windows_cover_every_step_and_normalise_from_train_only(smap_archive, tmp_path):
    kw = dict(spacecraft="MSL", channels=["M-6", "S-2"], path=str(smap_archive), window_length=32, stride=3,
              test_stride=20, features="telemetry")  # fmt: skip
    dm = SMAPMSLDataModule(**kw)
    dm.setup()
    test = dm.datasets["test"].fields
    assert dm.num_features == 1 and test["point_label"].shape == (len(test["observed"]), 32)
    raw = read_smap_msl(smap_archive, "MSL", ["M-6"])[0]
    loc, scale = raw.train[:, :1].mean(0), raw.train[:, :1].std(0)
    rows = test["series_index"] == 0
    assert torch.allclose(test["loc"][rows][0, 0], torch.tensor(loc, dtype=torch.float32))
    assert torch.allclose(test["scale"][rows][0, 0], torch.tensor(scale, dtype=torch.float32))
    # labels and values land on the right steps: window i, step l is series step window_start[i] + l
    start = test["window_start"][rows].numpy()
    pos = start[:, None] + np.arange(32)
    assert np.array_equal(test["point_label"][rows].numpy(), raw.labels[pos])
    assert np.allclose(test["observed"][rows][..., 0].numpy(), ((raw.test[:, 0] - loc) / scale)[pos], atol=1e-5)
    assert set(pos.ravel()) == set(range(180))  # every test step is covered
    assert list(window_starts(100, 32, 30)) == [0, 30, 60, 68]


def test_stitching_puts_scores_on_the_right_steps(smap_archive):
    dm = SMAPMSLDataModule(
        spacecraft="MSL", channels=["M-6", "S-2"], path=str(smap_archive), window_length=32, test_stride=12,
        features="telemetry",
    )  # fmt: skip
    dm.setup()
    f = dm.datasets["test"].fields
    index, start = f["series_index"].numpy(), f["window_start"].numpy()
    absolute = 1000 * index[:, None] + start[:, None] + np.arange(32)  # each window's own time index
    stitched = stitch_windows(index, start, absolute.astype(float), np.ones_like(absolute))
    for s in (0, 1):
        assert np.array_equal(stitched[s], 1000 * s + np.arange(180))
    labels = stitch_windows(index, start, f["point_label"].numpy(), np.ones_like(absolute))
    assert np.array_equal(labels[0], dm.series[0].labels)
    # overlapping values are averaged: steps 2-3 are covered by windows 0 (value 1) and 1 (value 3)
    avg = stitch_windows(np.zeros(2, int), np.array([0, 2]), np.array([[1.0] * 4, [3.0] * 4]), np.ones((2, 4)))
    assert np.array_equal(avg[0], [1, 1, 2, 2, 3, 3])


# -- thresholds, point adjustment, metrics -----------------------------------------------------------


def test_point_adjustment_hand_worked():
    label = np.array([0, 1, 1, 1, 0, 0, 0, 0, 1, 1])
    pred = np.array([0, 1, 0, 0, 0, 0, 1, 0, 0, 1])
    assert point_adjust(pred, label).astype(int).tolist() == [0, 1, 1, 1, 0, 0, 1, 0, 1, 1]
    m = anomaly_metrics([pred.astype(float)], [label.astype(float)], threshold=0.5)
    # raw: TP 2, FP 1, FN 3 -> P 2/3, R 2/5, F1 1/2; adjusted: TP 5, FP 1, FN 0 -> P 5/6, R 1, F1 10/11
    assert (
        m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(0.4) and m["f1"] == pytest.approx(0.5)
    )
    assert m["pa_precision"] == pytest.approx(5 / 6) and m["pa_recall"] == 1 and m["pa_f1"] == pytest.approx(10 / 11)


def test_auroc_is_exact_for_large_scores():
    # torchmetrics squashes scores outside [0, 1] with a sigmoid; large scores must not tie
    scores, labels = np.array([100.0, 200.0, 300.0, 400.0]), np.array([0.0, 1.0, 0.0, 1.0])
    assert anomaly_metrics([scores], [labels], 250.0)["auroc"] == pytest.approx(0.75)


def test_pot_and_quantile_thresholds():
    x = np.random.default_rng(0).exponential(size=200_000)
    assert pot_threshold(x, level=0.9, risk=1e-3) == pytest.approx(-np.log(1e-3), abs=0.3)  # exponential tail
    assert quantile_threshold(x, 0.5) == pytest.approx(np.log(2), abs=0.02)


def test_calibration_normalisation_puts_series_on_their_own_scale():
    rng = np.random.default_rng(0)
    cal = {0: rng.normal(10.0, 2.0, 500), 1: rng.normal(0.0, 0.1, 500)}  # noisy channel, clean channel
    test = {0: np.array([10.0, 14.0]), 1: np.array([0.0, 0.5]), 2: np.array([0.0])}  # 2: no calibration
    ncal, ntest = normalise_by_calibration(cal, test)
    for s in (0, 1):  # calibration scores become ~N(0, 1) per series
        assert abs(np.median(ncal[s])) < 0.1 and abs(1.4826 * np.median(np.abs(ncal[s])) - 1) < 0.1
    assert ntest[1][1] > ntest[0][1]  # 5 sd on the clean channel outranks 2 sd on the noisy one
    assert ntest[0][1] > 1.5 and abs(ntest[0][0]) < 0.2
    pooled = np.concatenate(list(cal.values()))  # unseen series: pooled statistics
    med, mad = np.median(pooled), 1.4826 * np.median(np.abs(pooled - np.median(pooled)))
    np.testing.assert_allclose(ntest[2], (0.0 - med) / mad)


def test_mask_patterns_partition_the_window():
    for kind, block in (("interleaved", 1), ("blocks", 8)):
        p = mask_patterns(64, 3, kind, block)
        assert p.shape == (3, 64) and torch.equal(p.sum(0), torch.ones(64))
    assert mask_patterns(16, 2, "blocks", 4)[0].tolist() == [1] * 4 + [0] * 4 + [1] * 4 + [0] * 4


def _trainer(tmp_path, **kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, **kw)  # fmt: skip


def test_threshold_never_reads_test_labels(smap_archive, tmp_path):
    dm = SMAPMSLDataModule(
        spacecraft="MSL", channels=["M-6", "S-2"], path=str(smap_archive), window_length=32,
        features="telemetry", eval_batch_size=64,
    )  # fmt: skip
    task = AnomalyTask(baseline=RollingMedianScorer(width=25), num_samples=2)
    first = _trainer(tmp_path).test(task, datamodule=dm, verbose=False)[0]
    labels = dm.datasets["test"].fields["point_label"]
    perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(0))
    dm.datasets["test"].fields["point_label"] = labels.flatten()[perm].view_as(labels)
    second = _trainer(tmp_path).test(task, datamodule=dm, verbose=False)[0]
    assert second["test/threshold"] == first["test/threshold"]
    assert second["test/auroc"] != first["test/auroc"]  # the labels did change what is scored
    assert first["test/auroc"] > 0.85  # the spikes on the labelled steps


# -- a quickly trained task ranks injected spikes above normal points -----------------------------


class SpikeDataModule(AnomalyDataModule):
    """A noisy sine of period 16; the test part has 10 single-step spikes of +3 (labelled)."""

    name = "spikes"

    def load_series(self) -> list[AnomalySeries]:
        rng = np.random.default_rng(0)
        t = np.arange(1000)
        x = np.sin(2 * np.pi * t / 16) + 0.05 * rng.normal(size=len(t))
        train, test = x[:800, None].copy(), x[800:, None].copy()
        spikes = rng.choice(np.arange(5, 195), 10, replace=False)
        test[spikes, 0] += 3.0
        labels = np.zeros(200, dtype=np.float32)
        labels[spikes] = 1
        return [AnomalySeries("spikes", train, test, labels)]


@pytest.mark.parametrize("scoring", ["imputation", "reconstruction"])
def test_trained_task_ranks_spikes_above_normal_points(scoring, tmp_path):
    L.seed_everything(0)
    dm = SpikeDataModule(window_length=32, stride=4, test_stride=16, batch_size=64, eval_batch_size=64)
    denoiser = CSDIDenoiser(
        1,
        channels=16,
        layers=1,
        heads=2,
        diffusion_embedding_dim=16,
        time_embedding_dim=16,
        feature_embedding_dim=4,
    )
    task = AnomalyTask(denoiser, GaussianDiffusion(num_steps=20), lr=3e-3, num_samples=4, sampler="ddim",
                       sample_steps=3, scoring=scoring, noise_step=5, reconstruction_steps=3)  # fmt: skip
    _trainer(tmp_path, max_epochs=10, num_sanity_val_steps=0, limit_val_batches=0).fit(task, datamodule=dm)
    metrics = _trainer(tmp_path).test(task, datamodule=dm, verbose=False)[0]
    # chance is 0.5 (10 spikes among 200 steps); scores stitched one step off the labels fail this
    assert metrics["test/auroc"] > 0.75
    assert 0 < metrics["test/threshold"] < np.inf


def test_rolling_median_scorer_flags_an_outlier():
    x = torch.zeros(1, 30, 2)
    x[0, 15, 1] = 5.0
    score = rolling_mad_score(x, torch.ones_like(x), width=7, eps=0.1)
    assert score[0, 15, 1] == score.max() and score[0, :, 0].abs().max() == 0
    assert label_segments(np.array([0, 1, 1, 0, 1])) == [(1, 3), (4, 5)]


def test_reconstruction_scoring_rejects_multistep_samplers():
    from tsdiffusion.denoisers import CSDIDenoiser
    from tsdiffusion.tasks.anomaly import AnomalyTask

    with pytest.raises(ValueError, match="sampler 'ddpm' or 'ddim'"):
        AnomalyTask(CSDIDenoiser(3, channels=8, layers=1, heads=2), sampler="dpmpp")

"""TimeGrad's data side against pytorch-ts 0.6.0's own transformation chain (issue 26).

The fixture ``tests/fixtures/reference/timegrad_pipeline.pt`` was written by
``benchmarks/reference/twins/make_pipeline_fixtures.py`` in the pytorch-ts venv (gluonts 0.9.10): two tiny data sets
(business-daily with lags [1, 2]; hourly with lags [1, 24, 168]) through ``TimeGradEstimator``'s transformation,
its training and test instance splitters and ``TimeGradTrainingNetwork.unroll_encoder``. No reference code is
needed here: the data set is rewritten in the GluonTS layout from the fixture's values and read by
``GluonTSDataModule(scaling="mean", time_features="fourier", num_val_windows=0)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tsdiffusion.data import GluonTSDataModule
from tsdiffusion.denoisers.timegrad import lag_inputs

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/reference/timegrad_pipeline.pt"
CASES = ["business_daily", "hourly"]


@pytest.fixture(scope="module")
def fixture() -> dict:
    return torch.load(FIXTURE, weights_only=False)


def write_gluonts(root: Path, case: dict, values: torch.Tensor) -> None:
    """The writer's layout: K train lines of T steps; test dates window-major, date i of T + (i + 1) H steps."""
    K, T, H = values.shape[1], case["T"], case["H"]
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    meta = {"freq": case["freq"], "prediction_length": H,
            "feat_static_cat": [{"name": "feat_static_cat", "cardinality": str(K)}]}  # fmt: skip
    (root / "metadata.json").write_text(json.dumps(meta))

    def line(k: int, n: int) -> str:
        return json.dumps({"start": case["start"], "target": values[:n, k].tolist(), "feat_static_cat": [k]})

    (root / "train/data.json").write_text("\n".join(line(k, T) for k in range(K)) + "\n")
    test = [line(k, T + (i + 1) * H) for i in range(case["dates"]) for k in range(K)]
    (root / "test/data.json").write_text("\n".join(test) + "\n")


def datasets(fixture: dict, name: str, tmp_path: Path):
    fx = fixture[name]
    case = fx["case"]
    write_gluonts(tmp_path / name, case, fx["values"])
    dm = GluonTSDataModule(
        name=name, path=str(tmp_path / name), prediction_length=case["H"], context_length=case["context"],
        max_lag=max(case["lags"]), scaling="mean", time_features="fourier", num_train_windows=None,
        num_val_windows=0,
    )  # fmt: skip
    return fx, case, dm, dm.build()


@pytest.mark.parametrize("name", CASES)
def test_training_windows_span_the_reference_samplers_range(fixture, name, tmp_path):
    """ExpectedNumInstanceSampler draws split points a..b (history before, H after); ours every window ending at
    split + H for the same splits, no more, no fewer (the old default num_val_windows=1 lost the last H)."""
    fx, case, dm, ds = datasets(fixture, name, tmp_path)
    a, b = fx["train_bounds"]
    L, H = dm.seq_len, case["H"]
    assert L == fx["history_length"] + H
    train = ds["train"]
    assert (L - H, len(train) - 1 + L - H) == (a, b)
    assert all(a <= s <= b for s in fx["train"]["split"].tolist())


@pytest.mark.parametrize("name", CASES)
def test_training_windows_equal_the_reference_instances(fixture, name, tmp_path):
    """Values, mean scale (context only), Fourier time features, scaled lags (from before the context too) and the
    target-dimension index of the windows the reference's sampler drew."""
    fx, case, dm, ds = datasets(fixture, name, tmp_path)
    ref, L, H, lags = fx["train"], dm.seq_len, case["H"], case["lags"]
    items = [ds["train"][s + H - L] for s in ref["split"].tolist()]
    batch = {k: torch.stack([it[k] for it in items]) for k in items[0]}
    raw = batch["observed"].double() * batch["scale"].double()
    expected_raw = torch.cat([ref["past_target_cdf"], ref["future_target_cdf"]], dim=1).double()
    torch.testing.assert_close(raw, expected_raw, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch["scale"], ref["scale"], rtol=1e-6, atol=0)
    tf = torch.cat([ref["past_time_feat"], ref["future_time_feat"]], dim=1)
    torch.testing.assert_close(batch["time_features"], tf, rtol=0, atol=1e-6)
    positions = torch.arange(max(lags), L)
    torch.testing.assert_close(batch["time_features"][:, positions], ref["rnn_time_feat"], rtol=0, atol=1e-6)
    B, S, K, n = ref["lags_scaled"].shape
    ours = lag_inputs(batch["observed"], positions, lags)
    torch.testing.assert_close(ours, ref["lags_scaled"].reshape(B, S, K * n), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch["feature_ids"], ref["target_dimension_indicator"].long())


@pytest.mark.parametrize("name", CASES)
def test_test_windows_equal_the_reference_test_instances(fixture, name, tmp_path):
    """Each rolling test date: its history, scale, time features and scaled context lags; the horizon starts where
    the reference forecasts."""
    fx, case, dm, ds = datasets(fixture, name, tmp_path)
    ref, L, H, lags = fx["test"], dm.seq_len, case["H"], case["lags"]
    test = ds["test"]
    assert len(test) == case["dates"]
    batch = {k: torch.stack([test[i][k] for i in range(len(test))]) for k in test[0]}
    assert [case["T"] + i * H for i in range(case["dates"])] == ref["split"].tolist()
    context = batch["observed"][:, : L - H].double() * batch["scale"].double()
    torch.testing.assert_close(context, ref["past_target_cdf"].double(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(batch["scale"], ref["scale"], rtol=1e-6, atol=0)
    tf = torch.cat([ref["past_time_feat"], ref["future_time_feat"]], dim=1)
    torch.testing.assert_close(batch["time_features"], tf, rtol=0, atol=1e-6)
    positions = torch.arange(max(lags), L - H)
    B, S, K, n = ref["lags_scaled"].shape
    ours = lag_inputs(batch["observed"], positions, lags)
    torch.testing.assert_close(ours, ref["lags_scaled"].reshape(B, S, K * n), rtol=1e-5, atol=1e-6)
    assert batch["target_mask"][:, : L - H].sum() == 0 and bool(batch["target_mask"][:, L - H :].all())


def test_gluonts_features_are_not_timegrads(fixture, tmp_path):
    """The default calendar features (GluonTS's, 3 for business days) are not what pytorch-ts's TimeGrad feeds its
    RNN: the paper config must ask for ``time_features="fourier"``."""
    fx = fixture["business_daily"]
    case = fx["case"]
    write_gluonts(tmp_path / "b", case, fx["values"])
    dm = GluonTSDataModule(name="b", path=str(tmp_path / "b"), prediction_length=case["H"],
                           context_length=case["context"], max_lag=2, scaling="mean", num_val_windows=0)  # fmt: skip
    assert dm.num_time_features == 3 != fx["train"]["past_time_feat"].shape[-1]

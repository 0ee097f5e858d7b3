"""The Python API (tsdiffusion.api.Model), the own-data configs through the CLI, and the notebook."""

from __future__ import annotations

import os
import pickle
from importlib import resources
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tsdiffusion.api import Model, apply_overrides, available_presets, preset_config
from tsdiffusion.cli import TSDiffusionCLI
from tsdiffusion.tasks.imputation import ImputationTask

ROOT = Path(__file__).resolve().parents[1]
CSV = Path(str(resources.files("tsdiffusion") / "resources" / "exchange_rate.csv"))
TINY = {
    "channels": 8, "layers": 1, "heads": 2, "diffusion_embedding_dim": 16, "time_embedding_dim": 16,
    "feature_embedding_dim": 4, "num_steps": 4, "num_samples": 3, "batch_size": 16, "val_loss_steps": 1,
}  # fmt: skip
TRAINER = {"limit_train_batches": 2, "limit_val_batches": 1}


@pytest.fixture(scope="module")
def rates() -> pd.DataFrame:
    return pd.read_csv(CSV, parse_dates=["timestamp"], index_col="timestamp").iloc[-200:]


@pytest.fixture(scope="module")
def imputer(rates) -> Model:
    model = Model.create("csdi-imputation", window_length=20, **TINY)
    return model.fit(rates, max_epochs=1, trainer=TRAINER)


def with_gaps(df: pd.DataFrame) -> pd.DataFrame:
    gappy = df.iloc[-50:].copy()
    gappy.iloc[10:20, 1] = np.nan
    gappy.iloc[30, :] = np.nan
    return gappy.drop(index=gappy.index[40])  # a missing time stamp becomes a missing step


# -- construction -------------------------------------------------------------------------------------


def test_presets_and_overrides_reach_the_right_section():
    assert {"csdi-imputation", "csdi-forecasting"} <= set(available_presets())
    cfg = apply_overrides(preset_config("csdi-imputation"), {"channels": 8, "lr": 0.01, "stride": 3,
                                                             "num_steps": 7, "max_epochs": 2})  # fmt: skip
    model = cfg["model"]["init_args"]
    assert model["denoiser"]["init_args"]["channels"] == 8 and model["lr"] == 0.01
    assert model["process"]["init_args"]["num_steps"] == 7
    assert cfg["data"]["init_args"]["stride"] == 3 and cfg["trainer"]["max_epochs"] == 2
    with pytest.raises(ValueError, match="'chanels' is not an argument of any section"):
        Model.create("csdi-imputation", chanels=8)
    with pytest.raises(ValueError, match=r"'trainer\.lr' is not an argument"):
        apply_overrides(preset_config("csdi-imputation"), {"trainer.lr": 1.0})
    with pytest.raises(ValueError, match="unknown model 'csdi-nope'"):
        Model.create("csdi-nope")
    with pytest.raises(Exception, match="window_lenght"):
        Model.from_config({**preset_config("csdi-imputation"), "data": {"init_args": {"window_lenght": 3}}})


def test_from_config_reads_the_experiment_yaml():
    model = Model.from_config(ROOT / "experiments" / "own_data" / "csdi_imputation.yaml", max_epochs=1)
    assert model.data_args["window_length"] == 30 and "path" not in model.data_args
    assert model.config["trainer"]["max_epochs"] == 1


# -- fit, impute, forecast -----------------------------------------------------------------------------


def test_impute_keeps_observed_values_and_orders_quantiles(imputer, rates):
    gappy = with_gaps(rates)
    result = imputer.impute(gappy, quantiles=(0.05, 0.95))
    assert isinstance(imputer.task, ImputationTask)
    assert len(result.median) == 50 and result.median.index.freqstr == "B"  # the dropped day is back
    assert not result.median.isna().any().any() and result.samples.shape == (3, 50, 8)
    observed = result.observed.to_numpy()
    assert observed.sum() == gappy.notna().to_numpy().sum() and not observed[40].any()
    truth = gappy.reindex(result.median.index).to_numpy()
    np.testing.assert_allclose(result.median.to_numpy()[observed], truth[observed], rtol=1e-5)
    lo, mid, hi = (
        result.quantiles[0.05].to_numpy(),
        result.median.to_numpy(),
        result.quantiles[0.95].to_numpy(),
    )
    assert (lo <= mid + 1e-9).all() and (mid <= hi + 1e-9).all() and (hi - lo)[~observed].min() > 0


def test_forecast_continues_the_grid(imputer, rates):
    fc = imputer.forecast(rates, horizon=5, num_samples=4)
    assert fc.samples.shape == (4, 5, 8) and np.isfinite(fc.samples).all()
    expected = pd.date_range(rates.index[-1], periods=6, freq="B")[1:]
    assert fc.median.index.equals(expected) and list(fc.median.columns) == list(rates.columns)
    with pytest.raises(ValueError, match="horizon must be in"):
        imputer.forecast(rates, horizon=20)


def test_save_load_gives_the_same_samples(imputer, rates, tmp_path):
    gappy = with_gaps(rates)
    imputer.save(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.yaml", "fitted.yaml", "model.pt"}
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    loaded = Model.load(tmp_path / "m")
    a, b = imputer.sample(gappy, 3, seed=5), loaded.sample(gappy, 3, seed=5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, loaded.sample(gappy, 3, seed=6))
    saved = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert saved["model"]["init_args"]["denoiser"]["init_args"]["num_features"] == 8
    cli_args = ["--config", str(tmp_path / "m" / "config.yaml"), "--data.init_args.path", str(CSV),
                "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)]  # fmt: skip
    cli = TSDiffusionCLI(args=cli_args, run=False)  # the saved config is a CLI config
    assert type(cli.model) is type(imputer.task) and cli.datamodule.window_length == 20


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_load_never_unpickles_objects(imputer, tmp_path):
    imputer.save(tmp_path / "m")
    with open(tmp_path / "m" / "model.pt", "wb") as f:
        torch.save({"weights": _Payload()}, f)
    with pytest.raises(pickle.UnpicklingError):
        Model.load(tmp_path / "m")


def test_series_must_match_the_fitted_ones(imputer, rates):
    with pytest.raises(ValueError, match="the model was fitted on"):
        imputer.impute(rates.iloc[:, :3])
    with pytest.raises(RuntimeError, match="not trained"):
        Model.create("csdi-imputation").impute(rates)


def test_univariate_model_returns_every_series(rates):
    model = Model.create("csdi-imputation", window_length=20, univariate=True, **TINY)
    model.fit(rates.iloc[-100:, :3], max_epochs=1, trainer={"limit_train_batches": 1, "limit_val_batches": 1})
    gappy = rates.iloc[-30:, :3].copy()
    gappy.iloc[3:6, 1] = np.nan
    result = model.impute(gappy)
    assert model.task.denoiser.num_features == 1 and list(result.median.columns) == ["fx_0", "fx_1", "fx_2"]
    assert not result.median.isna().any().any()
    np.testing.assert_allclose(result.median["fx_2"], gappy["fx_2"], rtol=1e-5)


def test_anomaly_scores_per_time_step(rates):
    if "csdi-anomaly" not in available_presets():
        pytest.skip("AnomalyTask is not available")
    model = Model.create("csdi-anomaly", window_length=20, **TINY)
    model.fit(rates.iloc[:120], max_epochs=1, trainer=TRAINER)
    scores = model.anomaly_scores(rates.iloc[-45:])
    assert len(scores) == 45 and np.isfinite(scores.to_numpy()).all() and (scores >= 0).all()


# -- the CLI and the notebook ---------------------------------------------------------------------------


@pytest.mark.slow  # a kernel start and two tiny fits: ~25 s on an idle 2-core machine
def test_notebook_runs(tmp_path):
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / "own_data.ipynb", as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1
    params[0].source = (
        "MAX_EPOCHS = 1\nNUM_SAMPLES = 3\n"
        f"SIZE = {dict(TINY, batch_size=16, val_loss_steps=1, num_samples=3)!r}\n"
        "SIZE.pop('num_samples')\n"
        "TRAINER = {'limit_train_batches': 1, 'limit_val_batches': 1}\n"
        f"OUT_DIR = {str(tmp_path / 'model')!r}\n"
    )
    client = NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs)
    assert any("same samples after save/load: True" in o.get("text", "") for o in outputs)

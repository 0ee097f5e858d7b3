"""Golden fixture of pytorch-ts 0.6.0 TimeGrad's data pipeline (issue 26, item 2), for
tests/data/test_timegrad_pipeline_reference.py (which needs no reference code).

    /work/refenv/pts/bin/python benchmarks/reference/twins/make_pipeline_fixtures.py

Runs only in the pytorch-ts venv (``setup_pytorchts.sh``). Two tiny data sets in the GluonTS layout (K = 3 seeded
positive random walks, no missing values), written to a temporary folder and read back by gluonts 0.9.10 exactly as
the TimeGrad notebook reads its data (``load_datasets`` + ``MultivariateGrouper``):

* ``business_daily``: freq "B" from 2011-06-01, 520 train steps (across 2012-12-31, day of year 366), H = 5,
  context 5, lags [1, 2] (the estimator's default for "B"), 3 rolling test dates;
* ``hourly``: freq "H" from 2021-03-01, 400 train steps, H = 4, context 6, lags [1, 24, 168], 2 test dates.

For each, ``TimeGradEstimator``'s own transformation chain (``create_transformation``: observed values, the
default Fourier time features, target-dimension indicator) and instance splitters, and the training network's
``unroll_encoder`` (``MeanScaler`` over the context, lags scaled by it, RNN inputs):

* ``train_bounds``: the first and last split point the training sampler (``ExpectedNumInstanceSampler``) may draw;
* ``train``: 8 windows drawn by that sampler (``np.random.seed(0)``): their split point, history and future
  targets, time features, target-dimension indicator, scale and scaled lags;
* ``test``: every test date, its last H steps cut off as ``make_evaluation_predictions`` does, through the test
  splitter: the same fields (no future target).
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

OUT = Path(__file__).resolve().parents[3] / "tests/fixtures/reference/timegrad_pipeline.pt"
CASES = {
    "business_daily": dict(freq="B", start="2011-06-01", T=520, H=5, context=5, lags=[1, 2], dates=3, seed=1),
    "hourly": dict(freq="H", start="2021-03-01 00:00:00", T=400, H=4, context=6, lags=[1, 24, 168], dates=2, seed=2),
}
K = 3


def make_series(case: dict) -> np.ndarray:
    """(T + dates * H, K) positive random walks with distinct levels, float32-exact values (3 decimals)."""
    rng = np.random.default_rng(case["seed"])
    n = case["T"] + case["dates"] * case["H"]
    level = np.array([0.8, 5.0, 120.0])
    walk = np.exp(np.cumsum(0.01 * rng.standard_normal((n, K)), axis=0))
    return np.round(level * walk, 3)


def write_gluonts(root: Path, case: dict, values: np.ndarray) -> None:
    T, H = case["T"], case["H"]
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    meta = {"freq": case["freq"], "prediction_length": H,
            "feat_static_cat": [{"name": "feat_static_cat", "cardinality": str(K)}]}  # fmt: skip
    (root / "metadata.json").write_text(json.dumps(meta))

    def line(k: int, n: int) -> str:
        return json.dumps({"start": case["start"], "target": values[:n, k].tolist(), "feat_static_cat": [k],
                           "item_id": k})  # fmt: skip

    (root / "train/data.json").write_text("\n".join(line(k, T) for k in range(K)) + "\n")
    test = [line(k, T + (i + 1) * H) for i in range(case["dates"]) for k in range(K)]
    (root / "test/data.json").write_text("\n".join(test) + "\n")


def batch(instances: list[dict], keys: list[str]) -> dict[str, torch.Tensor]:
    return {k: torch.as_tensor(np.stack([np.asarray(inst[k], dtype=np.float32) for inst in instances])) for k in keys}


def run_case(name: str, case: dict) -> dict:
    from gluonts.dataset.common import load_datasets
    from gluonts.dataset.multivariate_grouper import MultivariateGrouper
    from pts.model.time_grad import TimeGradEstimator

    values = make_series(case)
    H, C, lags = case["H"], case["context"], case["lags"]
    with tempfile.TemporaryDirectory() as tmp:
        write_gluonts(Path(tmp) / name, case, values)
        ds = load_datasets(metadata=Path(tmp) / name, train=Path(tmp) / name / "train", test=Path(tmp) / name / "test")
        train = list(MultivariateGrouper(max_target_dim=K)(ds.train))
        test = list(MultivariateGrouper(num_test_dates=case["dates"], max_target_dim=K)(ds.test))
    F = 4
    est = TimeGradEstimator(input_size=K * len(lags) + K + F, freq=case["freq"], prediction_length=H, target_dim=K,
                            context_length=C, lags_seq=list(lags), num_cells=8, conditioning_length=10)  # fmt: skip
    assert len(est.time_features) * 2 == F, est.time_features
    transformation = est.create_transformation()
    net = est.create_training_network(torch.device("cpu")).eval()

    # training windows, as the estimator's training loader draws them
    splitter = est.create_instance_splitter("training")
    a, b = est.train_sampler._get_bounds(train[0]["target"])  # (K, T): the sampler's axis -1 is time
    np.random.seed(0)  # noqa: NPY002  (gluonts 0.9's samplers draw from the global state)
    drawn: list[dict] = []
    while len(drawn) < 8:
        drawn += list((transformation + splitter).apply(train, is_train=True))
    drawn = drawn[:8]
    start = train[0]["start"]
    index = pd.date_range(start, periods=len(values) + H, freq=start.freq)
    split = [int(index.get_loc(inst["forecast_start"])) for inst in drawn]
    keys = ["past_target_cdf", "future_target_cdf", "past_time_feat", "future_time_feat", "past_observed_values",
            "past_is_pad", "future_observed_values"]  # fmt: skip
    tb = batch(drawn, keys)
    tb["target_dimension_indicator"] = torch.as_tensor(np.stack([i["target_dimension_indicator"] for i in drawn]))
    with torch.no_grad():
        _, _, scale, lags_scaled, inputs = net.unroll_encoder(
            tb["past_time_feat"], tb["past_target_cdf"], tb["past_observed_values"], tb["past_is_pad"],
            tb["future_time_feat"], tb["future_target_cdf"], tb["target_dimension_indicator"],
        )  # fmt: skip
    train_out = {"split": torch.tensor(split), **tb, "scale": scale, "lags_scaled": lags_scaled,
                 "rnn_time_feat": inputs[..., -F:]}  # fmt: skip

    # test dates, through the test splitter (the last H steps of each date are the forecast)
    tsplit = est.create_instance_splitter("test")
    # make_evaluation_predictions cuts the last H steps off each date before the predictor sees it
    cut = [{**entry, "target": entry["target"][..., :-H]} for entry in test]
    tinst = list((transformation + tsplit).apply(cut, is_train=False))
    tb = batch(tinst, ["past_target_cdf", "past_time_feat", "future_time_feat", "past_observed_values", "past_is_pad"])
    tb["target_dimension_indicator"] = torch.as_tensor(np.stack([i["target_dimension_indicator"] for i in tinst]))
    with torch.no_grad():
        _, _, tscale, tlags, tinputs = net.unroll_encoder(
            tb["past_time_feat"], tb["past_target_cdf"], tb["past_observed_values"], tb["past_is_pad"],
            None, None, tb["target_dimension_indicator"],
        )  # fmt: skip
    tsplit_idx = [int(index.get_loc(inst["forecast_start"])) for inst in tinst]
    test_out = {"split": torch.tensor(tsplit_idx), **tb, "scale": tscale, "lags_scaled": tlags,
                "rnn_time_feat": tinputs[..., -F:]}  # fmt: skip
    return {
        "case": {k: v for k, v in case.items()}, "K": K, "values": torch.as_tensor(values, dtype=torch.float64),
        "history_length": est.history_length, "train_bounds": (int(a), int(b)),
        "time_features": [repr(f) for f in est.time_features], "train": train_out, "test": test_out,
    }  # fmt: skip


def main() -> None:
    torch.manual_seed(0)
    fixture = {name: run_case(name, case) for name, case in CASES.items()}
    fixture["meta"] = {
        "writer": "benchmarks/reference/twins/make_pipeline_fixtures.py",
        "versions": {p: importlib.metadata.version(p) for p in ("pytorchts", "gluonts", "torch", "numpy", "pandas")},
        "python": platform.python_version(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, OUT)
    print(OUT, {n: (f["train_bounds"], f["train"]["split"].tolist()) for n, f in fixture.items() if n != "meta"})


if __name__ == "__main__":
    main()

"""GluonTS multivariate reader and DataModule: published layouts, window arithmetic, scaling, errors."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tsdiffusion.batch import check_batch
from tsdiffusion.data.download import DataSourceError, sha256sum
from tsdiffusion.data.gluonts import (
    KNOWN_DATASETS,
    ContextTooLongError,
    GluonTSDataModule,
    GluonTSFormatError,
    context_loc_scale,
    embedded_path,
    load_gluonts,
    mean_abs_scale,
    read_gluonts,
    to_dataframe,
)
from tsdiffusion.data.time_features import (
    FrequencyError,
    num_time_features,
    parse_freq,
    time_features,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
ELECTRICITY = SHARED / "electricity_subset" / "electricity_lstnet_subset_gluonts.tar.gz"

K, T_TRAIN, H, W = 3, 60, 4, 3  # fixture: 3 series, 60 train steps, horizon 4, 3 rolling windows
START = "2021-03-01 00:00:00"


def series(k: int = K, total: int = T_TRAIN + W * H) -> np.ndarray:
    """(T, K) positive, distinct values: series k is 10 (k + 1) + t / 10 + sin(t)."""
    t = np.arange(total)[:, None]
    return (10.0 * (np.arange(k) + 1) + t / 10 + np.sin(t)).astype(np.float32)


def write_lines(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_dataset(
    root: Path,
    layout: str = "gluonts",
    values: np.ndarray | None = None,
    freq: str = "H",
    train_length: int = T_TRAIN,
    horizon: int = H,
) -> Path:
    """A data set in the exact published layout: GluonTS (``get_dataset``) or raw GP-copula."""
    values = series() if values is None else values
    k = values.shape[1]
    windows = (len(values) - train_length) // horizon

    def line(j: int, length: int) -> dict:
        target = [None if np.isnan(v) else float(v) for v in values[:length, j % k]]
        row = {"start": START, "target": target}
        return row | ({"feat_static_cat": [j % k], "item_id": j} if layout == "gluonts" else {})

    train = [line(j, train_length) for j in range(k)]
    test = [line(i * k + j, train_length + (i + 1) * horizon) for i in range(windows) for j in range(k)]
    if layout == "gluonts":
        meta = {
            "freq": freq,
            "prediction_length": horizon,
            "feat_static_cat": [{"name": "feat_static_cat", "cardinality": str(k)}],
        }
        (root / "metadata.json").parent.mkdir(parents=True, exist_ok=True)
        (root / "metadata.json").write_text(json.dumps(meta))
        write_lines(root / "train" / "data.json", train)
        write_lines(root / "test" / "data.json", test)
    else:
        (root / "metadata").mkdir(parents=True, exist_ok=True)
        (root / "metadata" / "metadata.json").write_text(
            json.dumps({"time_granularity": freq, "target": {"name": "target"}})
        )
        write_lines(root / "train" / "train.json", train)
        write_lines(root / "test" / "test.json", test)
    return root


def pack(folder: Path) -> Path:
    archive = folder.parent / f"{folder.name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def datamodule(path: Path, tmp_path: Path, **kwargs) -> GluonTSDataModule:
    kwargs = {"name": "toy", "context_length": 8, "num_val_windows": 2, "seed": 0, **kwargs}
    dm = GluonTSDataModule(path=str(path), cache_dir=str(tmp_path / "cache"), **kwargs)
    dm.setup("fit")
    return dm


def original(item: dict) -> np.ndarray:
    """observed * scale + loc, NaN where not observed: (L, K)."""
    values = (item["observed"] * item["scale"] + item["loc"]).numpy().astype(np.float64)
    return np.where(item["observed_mask"].numpy() > 0, values, np.nan)


# -- reader -------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["gluonts", "gp_copula"])
@pytest.mark.parametrize("packed", [False, True])
def test_reader_reads_both_published_layouts(tmp_path, layout, packed):
    folder = write_dataset(tmp_path / "toy_nips", layout)
    path = pack(folder) if packed else folder
    data = read_gluonts(path, prediction_length=None if layout == "gluonts" else H)
    values = series()
    assert (data.name, data.freq, data.start) == ("toy_nips", "h", pd.Timestamp(START))
    assert data.prediction_length == H and data.num_series == K and data.num_test_windows == W
    np.testing.assert_array_equal(data.train, values[:T_TRAIN])
    for i, window in enumerate(data.test):
        assert window.shape == (T_TRAIN + (i + 1) * H, K)
        np.testing.assert_array_equal(window, values[: len(window)])


def test_reader_nan_targets_and_dataframe(tmp_path):
    values = series()
    values[5, 1] = np.nan
    folder = write_dataset(tmp_path / "toy", values=values)
    text = (folder / "test" / "data.json").read_text().replace("null", '"NaN"')  # GluonTS writes "NaN"
    (folder / "test" / "data.json").write_text(text)
    data = read_gluonts(folder)
    assert (
        np.isnan(data.train[5, 1])
        and np.isnan(data.test[-1][5, 1])
        and np.isfinite(data.train).sum() == T_TRAIN * K - 1
    )
    df = to_dataframe(data, "test")
    assert df.shape == (T_TRAIN + W * H, K)
    assert df.index[0] == pd.Timestamp(START) and df.index[1] - df.index[0] == pd.Timedelta(hours=1)


def test_known_name_gives_prediction_length_for_raw_layout(tmp_path):
    folder = write_dataset(
        tmp_path / "exchange_rate_nips", "gp_copula", values=series(total=T_TRAIN + W * 30), horizon=30
    )
    assert read_gluonts(folder).prediction_length == KNOWN_DATASETS["exchange_rate_nips"].prediction_length == 30


# -- window arithmetic --------------------------------------------------------------------------


def test_window_arithmetic(tmp_path):
    dm = datamodule(write_dataset(tmp_path / "toy"), tmp_path, scaling="none")
    values, L, n_val = series(), dm.seq_len, dm.num_val_windows
    assert (L, dm.context_length, dm.prediction_length) == (8 + H, 8, H)
    train, val, test = (dm.datasets[s] for s in ("train", "val", "test"))
    # test windows are exactly the rolling windows; the last one ends at the series end
    assert len(test) == W
    for i in range(W):
        end = T_TRAIN + (i + 1) * H
        np.testing.assert_allclose(original(test[i]), values[end - L : end], rtol=1e-6)
    np.testing.assert_allclose(original(test[W - 1])[-1], values[-1], rtol=1e-6)
    # rolling windows shift by H
    np.testing.assert_array_equal(test[1]["observed"][: L - H], test[0]["observed"][H:])
    # validation windows end at the train end, stride H
    for j in range(n_val):
        end = T_TRAIN - (n_val - 1 - j) * H
        np.testing.assert_allclose(original(val[j]), values[end - L : end], rtol=1e-6)
    # train windows lie inside the train part minus the validation tail, so never reach a test horizon
    train_end = T_TRAIN - n_val * H
    assert len(train) == train_end - L + 1
    np.testing.assert_allclose(original(train[len(train) - 1]), values[train_end - L : train_end], rtol=1e-6)
    np.testing.assert_allclose(original(train[0]), values[:L], rtol=1e-6)
    with pytest.raises(IndexError):
        train[len(train)]
    first_test_horizon = len(dm.data.test[0]) - H
    assert first_test_horizon == T_TRAIN and train_end <= first_test_horizon  # no train target in a test horizon
    # masks and indices
    item = test[0]
    assert item["target_mask"][: L - H].sum() == 0 and item["target_mask"][L - H :].all()
    assert torch.equal(item["timepoints"], torch.arange(L, dtype=torch.float32))
    assert torch.equal(item["feature_ids"], torch.arange(K))


def test_batches_pass_check_batch_and_sampler(tmp_path):
    dm = datamodule(write_dataset(tmp_path / "toy"), tmp_path, num_train_windows=10, batch_size=4)
    train_loader = dm.train_dataloader()
    assert len(train_loader.sampler) == 10 and len(train_loader) == 3
    loaders = {"train": train_loader, "val": dm.val_dataloader(), "test": dm.test_dataloader()}
    for name, loader in loaders.items():
        for batch in loader:
            assert check_batch(batch, source=name)[1:] == (dm.seq_len, dm.num_features)
            assert batch["time_features"].shape[-1] == dm.num_time_features
    first = next(iter(datamodule(tmp_path / "toy", tmp_path, num_train_windows=10, batch_size=4).train_dataloader()))
    again = next(iter(datamodule(tmp_path / "toy", tmp_path, num_train_windows=10, batch_size=4).train_dataloader()))
    assert torch.equal(first["observed"], again["observed"])  # same seed, same windows
    every = datamodule(tmp_path / "toy", tmp_path, num_train_windows=None).train_dataloader()
    assert sorted(every.sampler) == list(range(len(dm.datasets["train"])))  # CSDI: every window once


def test_missing_values_are_masked(tmp_path):
    values = series()
    values[-1, 0] = np.nan  # in the last test horizon
    dm = datamodule(write_dataset(tmp_path / "toy", values=values), tmp_path)
    item = dm.datasets["test"][W - 1]
    assert item["observed_mask"][-1, 0] == 0 and item["target_mask"][-1, 0] == 0 and item["observed"][-1, 0] == 0
    assert item["target_mask"][-1, 1] == 1
    check_batch({k: v[None] for k, v in item.items()})


def test_max_lag_extends_the_window(tmp_path):
    dm = datamodule(write_dataset(tmp_path / "toy"), tmp_path, max_lag=5, scaling="mean")
    assert dm.seq_len == 5 + 8 + H
    item, values = dm.datasets["test"][W - 1], series()
    np.testing.assert_allclose(original(item), values[-dm.seq_len :], rtol=1e-6)
    context = values[-dm.seq_len :][5 : 5 + 8]
    np.testing.assert_allclose(item["scale"][0].numpy(), np.abs(context).mean(0), rtol=1e-6)


# -- scaling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("scaling", ["standard", "mean", "context", "none"])
def test_scaling_round_trip(tmp_path, scaling):
    values = series()
    values[3, 2] = np.nan
    dm = datamodule(write_dataset(tmp_path / "toy", values=values), tmp_path, scaling=scaling)
    for split, ends in (("test", [T_TRAIN + (i + 1) * H for i in range(W)]), ("val", [T_TRAIN - H, T_TRAIN])):
        for i, end in enumerate(ends):
            np.testing.assert_allclose(original(dm.datasets[split][i]), values[end - dm.seq_len : end], rtol=1e-5)
    train_item = dm.datasets["train"][0]
    np.testing.assert_allclose(original(train_item), values[: dm.seq_len], rtol=1e-5)
    loc, scale = dm.datasets["test"][0]["loc"][0].numpy(), dm.datasets["test"][0]["scale"][0].numpy()
    if scaling == "standard":  # CSDI: statistics of each series over the train part
        np.testing.assert_allclose(loc, np.nanmean(values[:T_TRAIN], 0), rtol=1e-5)
        np.testing.assert_allclose(scale, np.nanstd(values[:T_TRAIN], 0), rtol=1e-5)
        assert abs(float(dm.datasets["train"][0]["observed"].mean())) < 3
    elif scaling == "mean":  # TimeGrad: mean |x| over the window's context
        context = values[T_TRAIN + H - dm.seq_len : T_TRAIN]
        np.testing.assert_allclose(loc, 0)
        np.testing.assert_allclose(scale, np.abs(context).mean(0), rtol=1e-5)
    elif scaling == "context":  # instance normalisation: mean and std of the window's context
        context = values[T_TRAIN + H - dm.seq_len : T_TRAIN]
        np.testing.assert_allclose(loc, context.mean(0), rtol=1e-5)
        np.testing.assert_allclose(scale, context.std(0), rtol=1e-5)
        ctx = dm.datasets["test"][0]["observed"][: T_TRAIN - (T_TRAIN + H - dm.seq_len)].numpy()
        np.testing.assert_allclose(ctx.mean(0), 0, atol=1e-5)  # the context is standardised
    else:
        np.testing.assert_allclose((loc, scale), (np.zeros(K), np.ones(K)))


def test_context_scale_floor_and_missing_values():
    context = np.array([[5.0, 1.0, np.nan], [5.0, 3.0, np.nan], [5.0, np.nan, np.nan]])
    loc, scale = context_loc_scale(context)
    np.testing.assert_allclose(loc, [5.0, 2.0, 0.0])  # missing values are left out; unobserved -> 0
    np.testing.assert_allclose(scale, [5e-3, 1.0, 3.8e-3])  # flat context: 1e-3 x mean |x| (unobserved: window's)


def test_mean_abs_scale_fallbacks():
    context = np.array([[0.0, 2.0, np.nan], [0.0, -4.0, np.nan]])
    np.testing.assert_allclose(mean_abs_scale(context), [1.5, 3.0, 1.5])  # zero/unobserved: window mean
    np.testing.assert_allclose(mean_abs_scale(np.zeros((3, 2))), [1.0, 1.0])


# -- time features ------------------------------------------------------------------------------


def test_time_features_known_timestamp():
    index = pd.DatetimeIndex(["2021-03-15 13:00"])  # a Monday, day 74 of the year
    hourly = time_features(index, "H")[0]
    np.testing.assert_allclose(hourly, [13 / 23 - 0.5, -0.5, 14 / 30 - 0.5, 73 / 365 - 0.5], rtol=1e-6)
    np.testing.assert_allclose(time_features(index, "1B")[0], hourly[1:], rtol=1e-6)
    np.testing.assert_allclose(time_features(index, "5T")[0], [-0.5, *hourly], rtol=1e-6)
    np.testing.assert_allclose(time_features(index, "M")[0], [2 / 11 - 0.5], rtol=1e-6)
    week = time_features(index, "W")[0]
    np.testing.assert_allclose(week, [14 / 30 - 0.5, 10 / 52 - 0.5], rtol=1e-6)
    assert time_features(index, "Y").shape == (1, 0)
    many = time_features(pd.date_range("2020-01-01", periods=24 * 400, freq="h"), "h")
    assert many.min() >= -0.5 and many.max() <= 0.5 and many.dtype == np.float32


def test_parse_freq_legacy_aliases():
    assert parse_freq("H") == parse_freq("1H") == parse_freq("h")
    assert parse_freq("30T") == parse_freq("30min")
    assert parse_freq("1B").freqstr == "B"
    assert [num_time_features(f) for f in ("H", "B", "D", "W", "M", "min")] == [4, 3, 3, 2, 1, 5]
    for bad in ("bogus", "", "5x"):
        with pytest.raises(FrequencyError):
            parse_freq(bad)


# -- errors -------------------------------------------------------------------------------------


def edit_line(path: Path, lineno: int, change) -> None:
    lines = path.read_text().splitlines()
    row = json.loads(lines[lineno - 1])
    change(row)
    lines[lineno - 1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


def test_error_ragged_target(tmp_path):
    folder = write_dataset(tmp_path / "toy")
    edit_line(folder / "train" / "data.json", 2, lambda r: r["target"].pop())
    with pytest.raises(GluonTSFormatError, match=r"ragged target in the train split: .*data.json, line 2 has 59"):
        read_gluonts(folder)
    folder = write_dataset(tmp_path / "toy2")
    edit_line(folder / "test" / "data.json", K + 2, lambda r: r["target"].append(1.0))
    with pytest.raises(GluonTSFormatError, match=r"ragged target in test window 1"):
        read_gluonts(folder)


@pytest.mark.parametrize("field", ["target", "start"])
def test_error_missing_field(tmp_path, field):
    folder = write_dataset(tmp_path / "toy", "gp_copula")
    edit_line(folder / "test" / "test.json", 4, lambda r: r.pop(field))
    with pytest.raises(GluonTSFormatError, match=rf"test/test.json, line 4: missing field '{field}'"):
        read_gluonts(pack(folder), prediction_length=H)


def test_error_missing_metadata_field_and_bad_values(tmp_path):
    folder = write_dataset(tmp_path / "toy")
    (folder / "metadata.json").write_text(json.dumps({"prediction_length": H}))
    with pytest.raises(GluonTSFormatError, match=r"metadata.json: missing field 'freq'"):
        read_gluonts(folder)
    folder = write_dataset(tmp_path / "toy2")
    edit_line(folder / "train" / "data.json", 1, lambda r: r["target"].__setitem__(3, "abc"))
    with pytest.raises(GluonTSFormatError, match=r"data.json, line 1: field 'target'"):
        read_gluonts(folder)
    folder = write_dataset(tmp_path / "toy3")
    edit_line(folder / "train" / "data.json", 3, lambda r: r.__setitem__("start", "not a date"))
    with pytest.raises(GluonTSFormatError, match=r"line 3 starts at 'not a date' but .*line 1 at '2021"):
        read_gluonts(folder)
    for lineno in range(1, K + 1):
        edit_line(folder / "train" / "data.json", lineno, lambda r: r.__setitem__("start", "not a date"))
    with pytest.raises(GluonTSFormatError, match=r"line 1: field 'start': cannot parse 'not a date'"):
        read_gluonts(folder)
    with open(folder / "train" / "data.json", "a") as f:
        f.write("{oops\n")
    with pytest.raises(GluonTSFormatError, match=r"line 4: not valid JSON"):
        read_gluonts(folder)


def test_error_unparsable_freq(tmp_path):
    folder = write_dataset(tmp_path / "toy", freq="fortnightly")
    with pytest.raises(FrequencyError, match=r"metadata.json: field 'freq': cannot parse frequency 'fortnightly'"):
        read_gluonts(folder)


def test_error_context_longer_than_series(tmp_path):
    folder = write_dataset(tmp_path / "toy")
    with pytest.raises(ContextTooLongError, match=r"context_length=60 .* longer than the train part: 60 steps"):
        datamodule(folder, tmp_path, context_length=60)
    with pytest.raises(ContextTooLongError, match=r"minus num_val_windows=2 x 4"):
        datamodule(folder, tmp_path, context_length=50)
    with pytest.raises(ContextTooLongError, match=r"max_lag=3 .* = 61 steps"):
        datamodule(folder, tmp_path, context_length=54, max_lag=3, num_val_windows=0)
    assert datamodule(folder, tmp_path, context_length=53, max_lag=3, num_val_windows=0).seq_len == T_TRAIN


def test_error_test_layout(tmp_path):
    folder = write_dataset(tmp_path / "toy")
    with open(folder / "test" / "data.json", "a") as f:
        f.write(json.dumps({"start": START, "target": [1.0] * 70}) + "\n")
    with pytest.raises(GluonTSFormatError, match=r"10 series, not a multiple of the 3 train series"):
        read_gluonts(folder)
    folder = write_dataset(tmp_path / "toy2")
    with pytest.raises(GluonTSFormatError, match=r"test window 0 .* inside the train part"):
        read_gluonts(folder, prediction_length=H + 1)  # a horizon that would overlap the train part
    folder = write_dataset(tmp_path / "toy3", "gp_copula")
    with pytest.raises(GluonTSFormatError, match=r"no field 'prediction_length'"):
        read_gluonts(folder)
    (folder / "metadata" / "metadata.json").unlink()
    with pytest.raises(GluonTSFormatError, match=r"no metadata.json found"):
        read_gluonts(folder)


def test_error_sources(tmp_path):
    with pytest.raises(ValueError, match=r"unknown data set 'mystery'"):
        GluonTSDataModule(name="mystery")
    with pytest.raises(DataSourceError, match=r"only available for 'exchange_rate_nips'"):
        load_gluonts("traffic_nips", "embedded")
    with pytest.raises(DataSourceError, match=r"no such file or folder"):
        load_gluonts("toy", str(tmp_path / "absent.tar.gz"))
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    with pytest.raises(DataSourceError, match=r"not a folder or a readable tar archive"):
        read_gluonts(tmp_path / "junk.tar.gz")
    with pytest.raises(ValueError, match=r"context_length must be >= 1"):
        GluonTSDataModule(context_length=0)


def test_cached_download_is_verified(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(embedded_path(), cache / "exchange_rate_nips.tar.gz")  # as if downloaded before
    assert load_gluonts("exchange_rate_nips", cache_dir=cache).train.shape == (6071, 8)
    (cache / "exchange_rate_nips.tar.gz").write_bytes(b"tampered")
    with pytest.raises(DataSourceError, match="checksum mismatch"):
        load_gluonts("exchange_rate_nips", cache_dir=cache)


# -- real data ----------------------------------------------------------------------------------


def test_embedded_exchange_rate(tmp_path):
    assert sha256sum(embedded_path()) == KNOWN_DATASETS["exchange_rate_nips"].sha256
    dm = GluonTSDataModule(name="exchange_rate_nips", path="embedded", cache_dir=str(tmp_path), batch_size=8)
    assert (dm.num_features, dm.prediction_length, dm.context_length, dm.freq) == (8, 30, 30, "B")
    assert dm.num_time_features == 3 and dm.seq_len == 60
    data = dm._load()
    assert data.train_length == 6071 and [len(w) for w in data.test] == [6071 + 30 * (i + 1) for i in range(5)]
    dm.setup("fit")
    assert len(dm.datasets["test"]) == 5 and len(dm.datasets["val"]) == 5
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert check_batch(next(iter(loader)), source="exchange")[1:] == (60, 8)
    last = original(dm.datasets["test"][4])
    np.testing.assert_allclose(last, data.test[-1][-60:], rtol=1e-5)  # ends at the series end
    gluonts_copy = SHARED / "exchange_rate" / "exchange_rate_nips_gluonts.tar.gz"
    if gluonts_copy.exists():
        other = read_gluonts(gluonts_copy)
        np.testing.assert_allclose(other.test[-1], data.test[-1], atol=1e-6)


@pytest.mark.skipif(not ELECTRICITY.exists(), reason="shared electricity subset not present")
def test_shared_electricity_subset(tmp_path):
    dm = GluonTSDataModule(
        name="electricity_lstnet_subset", path=str(ELECTRICITY), context_length=168, cache_dir=str(tmp_path)
    )
    assert (dm.num_features, dm.prediction_length, dm.freq, dm.seq_len) == (203, 24, "h", 192)
    data = dm._load()
    assert data.train_length == 832 and data.num_test_windows == 7 and len(data.test[-1]) == 1000
    dm.setup("fit")
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert check_batch(next(iter(loader)), source="electricity")[1:] == (192, 203)
    assert len(dm.datasets["test"]) == 7 and dm.num_time_features == 4

"""FrameDataModule: layouts, the regular grid and its mask, time/series splits without leakage, train-only
normalisation, evaluation protocols, labels and the errors that name the file, column and row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tsdiffusion.data.frame import FrameDataError, FrameDataModule, time_regions

K, T = 3, 120


def wide_frame(T: int = T, K: int = K, seed: int = 0, freq: str = "h") -> pd.DataFrame:
    """A wide frame with a ``timestamp`` column, distinct series levels and some NaN."""
    rng = np.random.default_rng(seed)
    values = rng.normal(size=(T, K)).cumsum(0) + 10 * np.arange(1, K + 1)
    values[rng.random((T, K)) < 0.1] = np.nan
    df = pd.DataFrame(values, columns=[f"s{k}" for k in range(K)])
    df.insert(0, "timestamp", pd.date_range("2024-01-01", periods=T, freq=freq))
    return df


def to_long(wide: pd.DataFrame) -> pd.DataFrame:
    return wide.melt(id_vars="timestamp", var_name="item_id", value_name="value").dropna()


def built(df: pd.DataFrame, **kwargs) -> tuple[FrameDataModule, dict]:
    args = {"window_length": 12, "stride": 4, **kwargs}
    dm = FrameDataModule.from_dataframe(df, **args)
    return dm, dm.build()


def as_numpy(datasets: dict) -> dict:
    return {s: {k: v.numpy() for k, v in ds.fields.items()} for s, ds in datasets.items()}


# -- layouts and the grid -----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["imputation", "forecast"])
def test_wide_and_long_layouts_give_the_same_tensors(protocol):
    wide = wide_frame()
    long = to_long(wide).sample(frac=1.0, random_state=0)  # shuffled rows: series in order of appearance
    dm_long, b = built(long, protocol=protocol, prediction_length=4)
    _, a = built(wide[["timestamp", *dm_long.series_names]], protocol=protocol, prediction_length=4)
    assert list(dm_long.series_names) == list(pd.unique(long["item_id"]))
    a, b = as_numpy(a), as_numpy(b)
    assert a.keys() == b.keys() and len(a["train"]["observed"]) > 0
    for split in a:
        assert a[split].keys() == b[split].keys()
        for key in a[split]:
            np.testing.assert_array_equal(a[split][key], b[split][key], err_msg=f"{split}/{key}")


def test_datetime_index_numpy_array_and_csv_agree(tmp_path):
    wide = wide_frame()
    _, from_column = built(wide)
    _, from_index = built(wide.set_index("timestamp"))
    csv = tmp_path / "data.csv"
    wide.to_csv(csv, index=False)
    from_csv = FrameDataModule(path=str(csv), window_length=12, stride=4).build()
    values = wide.drop(columns="timestamp").to_numpy()
    from_array = FrameDataModule.from_array(values, start="2024-01-01", freq="h", window_length=12, stride=4).build()
    ref = as_numpy(from_column)
    for other in (from_index, from_csv, from_array):
        for split, fields in as_numpy(other).items():
            for key in ref[split]:
                np.testing.assert_allclose(fields[key], ref[split][key], rtol=1e-6, err_msg=f"{split}/{key}")


def test_irregular_timestamps_become_missing_values_on_the_grid():
    wide = wide_frame(T=48)
    dropped = [5, 6, 20, 33]
    gappy = wide.drop(index=dropped).sample(frac=1.0, random_state=1)  # missing rows, shuffled order
    dm = FrameDataModule.from_dataframe(gappy, window_length=48, val_fraction=0.0, test_fraction=0.0)
    panel = dm.panel()
    assert panel.freq == "h" and len(panel.index) == 48
    assert panel.index.equals(pd.DatetimeIndex(wide["timestamp"]))
    mask = np.isfinite(panel.values[0])
    expected = np.isfinite(wide.drop(columns="timestamp").to_numpy())
    expected[dropped] = False
    np.testing.assert_array_equal(mask, expected)
    item = dm.build()["train"][0]
    np.testing.assert_array_equal(item["observed_mask"].numpy(), expected)
    assert (item["observed"].numpy()[~expected] == 0).all()


def test_business_days_with_a_gap_are_inferred_as_business_days():
    df = wide_frame(T=40, freq="B").drop(index=[7, 8])
    panel = FrameDataModule.from_dataframe(df, window_length=10).panel()
    assert panel.freq == "B" and len(panel.index) == 40 and not np.isfinite(panel.values[0, 7]).any()


def test_time_features_follow_the_frequency():
    _, datasets = built(wide_frame())
    assert datasets["train"].fields["time_features"].shape[-1] == 4  # hourly: hour, weekday, day of month, year
    dm = FrameDataModule.from_array(np.ones((30, 2)), window_length=10)
    assert dm.freq is None and "time_features" not in dm.build()["train"].fields


# -- splits ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("protocol", "length", "stride"),
    [("imputation", 12, 4), ("imputation", 30, 7), ("forecast", 16, 3), ("forecast", 30, 1)],
)
def test_time_split_never_leaks_the_future(protocol, length, stride):
    H = 5
    dm, datasets = built(wide_frame(), window_length=length, stride=stride, protocol=protocol, prediction_length=H)
    regions = time_regions(T, 0.1, 0.2)
    train, val, test = (dm.windows[s] for s in ("train", "val", "test"))
    assert train.end.max() <= regions["val"][0]  # train windows end before the val/test region
    assert val.end.max() <= regions["test"][0] and val.end.min() > regions["val"][0]
    assert test.end.max() == T and test.end.min() > regions["test"][0]
    for split in ("val", "test"):
        w, target = dm.windows[split], datasets[split].fields["target_mask"].numpy()
        steps = w.end[:, None] - length + np.arange(length)[None, :]
        scored_steps = np.broadcast_to(steps[..., None], target.shape)[target > 0]
        assert scored_steps.min() >= regions[split][0] and scored_steps.max() < regions[split][1]
        if protocol == "forecast":
            assert target[:, : length - H].sum() == 0
            np.testing.assert_array_equal(
                target[:, length - H :], datasets[split].fields["observed_mask"][:, length - H :]
            )


def test_series_split_keeps_items_apart_and_carries_labels():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(20, 16, 2))
    labels = np.arange(20) % 3
    dm = FrameDataModule.from_array(values, labels=labels, split="series", window_length=8, stride=8,
                                    val_fraction=0.2, test_fraction=0.2)  # fmt: skip
    datasets = dm.build()
    items = {s: set(dm.windows[s].item.tolist()) for s in ("train", "val", "test")}
    assert len(items["val"]) == 4 and len(items["test"]) == 4 and len(items["train"]) == 12
    assert not (items["train"] & items["val"] or items["train"] & items["test"] or items["val"] & items["test"])
    for split, ds in datasets.items():
        np.testing.assert_array_equal(ds.fields["label"].numpy(), labels[dm.windows[split].item])
    train_values = values[sorted(items["train"])].reshape(-1, 2)
    np.testing.assert_allclose(dm.loc, train_values.mean(0), rtol=1e-5)


def test_univariate_items_split_by_series_and_label_file(tmp_path):
    labels = tmp_path / "labels.csv"
    pd.DataFrame({"item_id": ["s0", "s1", "s2"], "label": [0, 1, 2]}).to_csv(labels, index=False)
    dm = FrameDataModule.from_dataframe(wide_frame(), univariate=True, split="series", label_path=str(labels),
                                        window_length=20, val_fraction=0.34, test_fraction=0.34)  # fmt: skip
    datasets = dm.build()
    assert dm.num_features == 1 and datasets["train"].fields["observed"].shape[-1] == 1
    assert {int(ds.fields["label"][0]) for ds in datasets.values()} == {0, 1, 2}


# -- normalisation and protocols ----------------------------------------------------------------------


def test_normalisation_is_fitted_on_train_only_and_round_trips():
    wide = wide_frame()
    dm, datasets = built(wide)
    train_end = time_regions(T, 0.1, 0.2)["val"][0]
    raw = wide.drop(columns="timestamp").to_numpy()
    np.testing.assert_allclose(dm.loc, np.nanmean(raw[:train_end], 0), rtol=1e-5)
    np.testing.assert_allclose(dm.scale, np.nanstd(raw[:train_end], 0), rtol=1e-5)
    changed = wide.copy()
    changed.iloc[train_end:, 1:] += 1000.0  # the future does not move the statistics
    dm2, _ = built(changed)
    np.testing.assert_array_equal(dm2.loc, dm.loc)
    for split, ds in datasets.items():
        f = {k: v.numpy() for k, v in ds.fields.items()}
        w = dm.windows[split]
        steps = w.end[:, None] - 12 + np.arange(12)[None, :]
        back = f["observed"] * f["scale"] + f["loc"]
        np.testing.assert_allclose(back[f["observed_mask"] > 0], raw[steps][f["observed_mask"] > 0], rtol=1e-5)
        np.testing.assert_allclose(dm.denormalise(dm.normalise(raw)), raw, rtol=1e-6)


def test_imputation_holdout_is_seeded_and_takes_the_ratio():
    wide = wide_frame(T=400)
    a = FrameDataModule.from_dataframe(wide, missing_ratio=0.3, seed=3).target()
    b = FrameDataModule.from_dataframe(wide, missing_ratio=0.3, seed=3).target()
    c = FrameDataModule.from_dataframe(wide, missing_ratio=0.3, seed=4).target()
    observed = np.isfinite(wide.drop(columns="timestamp").to_numpy())
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not (a[0] & ~observed).any() and a.sum() == int(observed.sum() * 0.3)


def test_label_column_gives_point_labels_in_both_layouts():
    wide = wide_frame(T=60)
    wide["anomaly"] = (np.arange(60) % 17 == 0).astype(int)
    dm, datasets = built(wide, label_column="anomaly", window_length=60, val_fraction=0.0, test_fraction=0.0)
    assert "anomaly" not in dm.series_names
    np.testing.assert_array_equal(datasets["train"].fields["point_label"][0].numpy(), wide["anomaly"].to_numpy())
    long = wide.melt(id_vars=["timestamp", "anomaly"], var_name="item_id", value_name="value")
    _, from_long = built(long, label_column="anomaly", window_length=60, val_fraction=0.0, test_fraction=0.0)
    np.testing.assert_array_equal(from_long["train"].fields["point_label"], datasets["train"].fields["point_label"])


def test_parquet_files_are_read(tmp_path):
    pytest.importorskip("pyarrow")
    wide = wide_frame()
    wide.to_parquet(tmp_path / "d.parquet")
    dm = FrameDataModule(path=str(tmp_path / "d.parquet"), window_length=12)
    assert dm.num_features == K


# -- errors -------------------------------------------------------------------------------------------


def test_non_numeric_value_names_the_column_and_line(tmp_path):
    df = wide_frame()
    df["s1"] = df["s1"].astype(object)
    df.loc[7, "s1"] = "oops"
    path = tmp_path / "bad.csv"
    df.to_csv(path, index=False)
    with pytest.raises(FrameDataError, match=r"bad\.csv, line 9: column 's1': non-numeric .*'oops'"):
        FrameDataModule(path=str(path)).panel()
    with pytest.raises(FrameDataError, match=r"row 7: column 's1'"):
        FrameDataModule.from_dataframe(df).panel()


def test_duplicate_timestamps_name_both_rows():
    wide = wide_frame()
    wide.loc[10, "timestamp"] = wide.loc[3, "timestamp"]
    with pytest.raises(FrameDataError, match=r"row 10: duplicate time stamp .* first at DataFrame, row 3"):
        FrameDataModule.from_dataframe(wide).panel()
    long = to_long(wide_frame())
    long = pd.concat([long, long.iloc[[5]]], ignore_index=True)
    with pytest.raises(FrameDataError, match=r"duplicate time stamp for a series \(item_id=s0"):
        FrameDataModule.from_dataframe(long).panel()


def test_window_longer_than_the_series_and_empty_splits():
    with pytest.raises(FrameDataError, match=r"window_length=200 is longer than the series \(120 grid steps\)"):
        FrameDataModule.from_dataframe(wide_frame(), window_length=200).build()
    with pytest.raises(FrameDataError, match=r"the val split .* holds no window"):
        FrameDataModule.from_dataframe(
            wide_frame(), window_length=30, protocol="forecast", prediction_length=20, val_fraction=0.1
        ).build()


def test_nan_only_series_is_named():
    df = wide_frame()
    df["s2"] = np.nan
    with pytest.raises(FrameDataError, match=r"series 's2' has no observed value"):
        FrameDataModule.from_dataframe(df).build()


@pytest.mark.parametrize(
    ("kwargs", "column"),
    [({"timestamp_column": "time"}, "time"), ({"series": ["s0", "sX"]}, "sX"), ({"label_column": "y"}, "y"),
     ({"layout": "long", "item_column": "id"}, "id")],
)  # fmt: skip
def test_unknown_column_is_named_with_the_columns(kwargs, column):
    df = to_long(wide_frame()) if kwargs.get("layout") == "long" else wide_frame()
    with pytest.raises(FrameDataError, match=rf"unknown column '{column}'.*the columns are \["):
        FrameDataModule.from_dataframe(df, **kwargs).panel()


def test_bad_files_and_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.csv"):
        FrameDataModule(path=str(tmp_path / "nope.csv")).panel()
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(FrameDataError, match=r"unsupported file type '.xlsx'"):
        FrameDataModule(path=str(tmp_path / "data.xlsx")).panel()
    with pytest.raises(ValueError, match="protocol must be one of"):
        FrameDataModule(protocol="forecasting")
    with pytest.raises(ValueError, match="prediction_length must be in"):
        FrameDataModule(protocol="forecast", window_length=10, prediction_length=10)
    with pytest.raises(FrameDataError, match="not on the regular grid"):
        df = wide_frame()
        df.loc[5, "timestamp"] += pd.Timedelta(minutes=7)
        FrameDataModule.from_dataframe(df, freq="h").panel()


# -- gaps (block-missing targets), eval stride, the embedded table -----------------------------------------


def test_block_holdout_holds_out_contiguous_gaps_of_the_given_lengths():
    from tsdiffusion.data.windows import block_holdout_mask

    wide = wide_frame(T=600, K=4)
    observed = np.isfinite(wide.drop(columns="timestamp").to_numpy())
    a = FrameDataModule.from_dataframe(wide, missing_ratio=0.1, missing_pattern="block", block_length=(5, 8), seed=3)
    target = a.target()
    np.testing.assert_array_equal(target, a.target())  # seeded
    assert not (target[0] & ~observed).any()  # only observed values become targets
    for k in range(4):
        share = target[0, :, k].sum() / observed[:, k].sum()
        assert 0.1 <= share < 0.1 + 8 / observed[:, k].sum() + 1e-9  # the ratio, overshot by at most one gap
    # gaps: on a fully observed grid, every run of held-out steps is 5-8 long (or longer where gaps touch, or
    # shorter when cut at the end of the grid)
    full = block_holdout_mask(np.ones((1, 600, 3), bool), 0.1, np.random.default_rng(0), 5, 8)
    for k in range(3):
        steps = np.flatnonzero(np.diff(np.r_[0, full[0, :, k].astype(int), 0]))
        runs = steps[1::2] - steps[::2]
        ends = steps[1::2]
        assert ((runs >= 5) | (ends == 600)).all()
        assert runs.max() >= 5
    point = FrameDataModule.from_dataframe(wide, missing_ratio=0.1, seed=3).target()
    gaps = lambda t: (np.diff(t[0].astype(int), axis=0) == 1).sum()
    assert gaps(target) < gaps(point) / 3  # far fewer, longer runs than scattered values
    with pytest.raises(ValueError, match="missing_pattern"):
        FrameDataModule.from_dataframe(wide, missing_pattern="blocks")
    with pytest.raises(ValueError, match="block_length"):
        FrameDataModule.from_dataframe(wide, block_length=(8, 5))


def test_eval_stride_and_max_series():
    wide = wide_frame(T=400, K=5)
    dm, _ = built(wide, window_length=24, stride=2, eval_stride=12, max_series=3)
    assert dm.num_features == 3 and list(dm.panel().series) == ["s0", "s1", "s2"]
    ends = {s: np.diff(w.end) for s, w in dm.windows.items()}
    assert (ends["train"] == 2).all() and (ends["val"] == 12).all() and (ends["test"] == 12).all()
    np.testing.assert_allclose(dm.loc, np.nanmean(wide[["s0", "s1", "s2"]].to_numpy()[:280], 0), rtol=1e-5)
    with pytest.raises(ValueError, match="eval_stride"):
        FrameDataModule.from_dataframe(wide, eval_stride=0)


def test_gzipped_csv_and_the_embedded_electricity_table(tmp_path):
    import gzip

    wide = wide_frame(T=60)
    plain, zipped = tmp_path / "x.csv", tmp_path / "x.csv.gz"
    wide.to_csv(plain, index=False)
    zipped.write_bytes(gzip.compress(plain.read_bytes()))
    a, b = FrameDataModule(path=str(plain), window_length=12), FrameDataModule(path=str(zipped), window_length=12)
    np.testing.assert_array_equal(a.panel().values, b.panel().values)
    assert b.name == "x"
    dm = FrameDataModule(path="embedded:electricity_subset", timestamp_column="date", freq="h", max_series=4,
                         window_length=48)  # fmt: skip
    panel = dm.panel()
    assert panel.values.shape == (1, 1000, 4) and dm.name == "electricity_subset"
    # the first row of the published file: date 2016/7/1 2:00, clients 0..3 = 14, 69, 234, 415
    np.testing.assert_array_equal(panel.values[0, 0], [14.0, 69.0, 234.0, 415.0])
    with pytest.raises(FrameDataError, match="no embedded table"):
        FrameDataModule(path="embedded:traffic", window_length=12).panel()

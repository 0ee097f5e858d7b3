"""The data core (tsdiffusion/data/windows.py): hold-out masks, normalisation statistics, splits, window cutting."""

from __future__ import annotations

import numpy as np
import pytest

from tsdiffusion.data import FrameDataModule
from tsdiffusion.data.windows import (
    Windows,
    grid_windows,
    holdout_mask,
    make_window_fields,
    minmax_stats,
    observed_stats,
    series_split,
    series_stats,
    split_indices,
    stratified_split,
    time_regions,
    window_ends,
    window_starts,
)


def observed_panel(seed: int = 0, shape=(6, 20, 3), missing: float = 0.3) -> np.ndarray:
    """(N, T, K) bool, with one item that has no missing value and one that is almost empty."""
    obs = np.random.default_rng(seed).random(shape) >= missing
    obs[0] = True
    obs[1] = False
    obs[1, 3, 2] = True
    return obs


# -- hold-out masks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("make_rng", [np.random.RandomState, np.random.default_rng])
@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_holdout_holds_out_the_exact_share_of_observed_values_only(make_rng, ratio):
    obs = observed_panel()
    target = holdout_mask(obs, ratio, make_rng(3))
    assert target.dtype == bool and target.shape == obs.shape
    assert not (target & ~obs).any()  # a missing value is never held out
    for n in range(len(obs)):
        assert target[n].sum() == int(obs[n].sum() * ratio)  # int(n_observed * ratio), per item


@pytest.mark.parametrize("make_rng", [np.random.RandomState, np.random.default_rng])
def test_holdout_is_reproducible_for_a_seed_and_changes_with_it(make_rng):
    obs = observed_panel()
    a, b = holdout_mask(obs, 0.5, make_rng(1)), holdout_mask(obs, 0.5, make_rng(1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, holdout_mask(obs, 0.5, make_rng(2)))


def test_holdout_follows_csdis_draw_item_after_item_from_one_stream():
    """CSDI (dataset_physio.py): one RandomState(seed); per record, choice(observed flat indices, int(n * r))."""
    obs = observed_panel(seed=5)
    rng = np.random.RandomState(7)
    expected = np.zeros_like(obs)
    for n in range(len(obs)):
        flat = np.flatnonzero(obs[n].reshape(-1))
        expected[n].reshape(-1)[rng.choice(flat, int(len(flat) * 0.3), replace=False)] = True
    np.testing.assert_array_equal(holdout_mask(obs, 0.3, np.random.RandomState(7)), expected)
    # the first items' targets do not depend on the items after them
    np.testing.assert_array_equal(holdout_mask(obs[:3], 0.3, np.random.RandomState(7)), expected[:3])


# -- normalisation statistics -------------------------------------------------------------------------


def test_series_stats_use_observed_values_only():
    values = np.array([[1.0, 5.0, np.nan], [3.0, 5.0, np.nan], [np.nan, 5.0, np.nan], [8.0, 5.0, np.nan]])
    mean, std = series_stats(values)
    np.testing.assert_allclose(mean, [4.0, 5.0, 0.0])  # (1 + 3 + 8) / 3; an empty series gets 0
    np.testing.assert_allclose(std[0], np.sqrt(((1 - 4) ** 2 + (3 - 4) ** 2 + (8 - 4) ** 2) / 3))
    assert std[1] == 1.0 and std[2] == 1.0  # constant and empty series: 1
    assert series_stats(np.array([[0.0], [1e-9]]), min_scale=1e-8)[1][0] == 1.0


def test_observed_stats_agree_with_series_stats():
    rng = np.random.default_rng(0)
    values = rng.normal(3.0, 2.0, size=(5, 30, 4))
    values[rng.random(values.shape) < 0.4] = np.nan
    values[..., 3] = np.nan
    mean, std = observed_stats(values, np.isfinite(values))
    ref_mean, ref_std = series_stats(values.reshape(-1, 4))
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(std, ref_std, rtol=1e-12)
    assert mean[3] == 0.0 and std[3] == 1.0


def test_minmax_stats_map_the_train_range_to_unit_interval():
    values = np.array([[2.0, 1.0], [6.0, 1.0], [np.nan, 1.0], [4.0, 1.0]])
    loc, scale = minmax_stats(values)
    np.testing.assert_allclose(loc, [2.0, 1.0])
    np.testing.assert_allclose(scale, [4.0, 1.0])  # the constant series gets scale 1


def test_frame_normalisation_uses_the_train_part_only():
    rng = np.random.default_rng(1)
    values = rng.normal(size=(100, 2)) * [1.0, 10.0] + [0.0, 50.0]
    kwargs = dict(window_length=10, val_fraction=0.2, test_fraction=0.2, seed=0)
    dm = FrameDataModule.from_array(values, **kwargs)
    dm.setup()
    train_end = int(dm.windows["train"].end.max())
    assert train_end <= 60  # no train window reaches the validation region [60, 80)
    np.testing.assert_allclose(dm.loc, values[:train_end].mean(0), rtol=1e-6)
    np.testing.assert_allclose(dm.scale, values[:train_end].std(0), rtol=1e-6)
    changed = values.copy()
    changed[train_end:] *= 100.0  # validation and test values do not enter the statistics
    other = FrameDataModule.from_array(changed, **kwargs)
    other.setup()
    np.testing.assert_array_equal(other.loc, dm.loc)
    np.testing.assert_array_equal(other.scale, dm.scale)


# -- splits -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [5, 17, 100])
def test_csdi_folds_partition_the_items(n):
    tests = []
    for fold in range(5):
        split = split_indices(n, fold, seed=1)
        everything = np.concatenate([split["train"], split["val"], split["test"]])
        assert sorted(everything.tolist()) == list(range(n))
        assert len(split["train"]) == int(0.7 * n)
        tests.append(split["test"])
    assert sorted(np.concatenate(tests).tolist()) == list(range(n))  # every item is tested in one fold


def test_series_and_stratified_splits():
    groups = series_split(20, 0.2, 0.25, seed=3)
    assert [len(groups[s]) for s in ("train", "val", "test")] == [11, 4, 5]
    assert sorted(np.concatenate(list(groups.values())).tolist()) == list(range(20))
    labels = np.array([0] * 10 + [1] * 6)
    kept, held = stratified_split(labels, 0.5, seed=0)
    assert np.bincount(labels[held]).tolist() == [5, 3]
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(16))
    assert time_regions(100, 0.1, 0.2) == {"train": (0, 70), "val": (70, 80), "test": (80, 100)}


# -- where windows lie and how they are cut -----------------------------------------------------------


@pytest.mark.parametrize(
    ("region", "length", "stride", "scored"),
    [((0, 70), 10, 5, 1), ((70, 80), 10, 3, 1), ((60, 100), 12, 7, 4), ((0, 9), 10, 1, 1)],
)
def test_window_ends_against_a_hand_loop(region, length, stride, scored):
    a, b = region
    expected = []
    end = b
    while end - length >= 0 and end - scored >= a:  # the scored steps lie in the region, the start at >= 0
        expected.append(end)
        end -= stride
    assert window_ends(region, length, stride, scored) == expected[::-1]


def test_window_starts_cover_every_step():
    for T, L, stride in [(100, 32, 30), (50, 10, 10), (7, 10, 3), (33, 8, 5)]:
        starts = window_starts(T, L, stride)
        covered = {s + i for s in starts for i in range(L)}
        assert set(range(T)) <= covered and starts[0] == 0
        assert T <= L or starts[-1] == T - L


def test_make_window_fields_against_a_hand_loop():
    rng = np.random.default_rng(0)
    N, T, K, L = 3, 40, 2, 8
    values = rng.normal(size=(N, T, K))
    values[rng.random(values.shape) < 0.2] = np.nan
    target = holdout_mask(np.isfinite(values), 0.3, np.random.default_rng(0))
    loc, scale = np.array([0.5, -1.0]), np.array([2.0, 4.0])
    tf = rng.normal(size=(T, 3))
    windows = grid_windows(np.array([0, 2]), [8, 20, 40], scored_from=np.array([0, 15, 36, 0, 15, 36]))
    fields = make_window_fields(values, target, windows, L, loc, scale, tf)
    for w, (n, end, scored_from) in enumerate(zip(windows.item, windows.end, windows.scored_from)):
        raw = values[n, end - L : end]
        mask = np.isfinite(raw)
        np.testing.assert_array_equal(fields["observed"][w], np.where(mask, (np.nan_to_num(raw) - loc) / scale, 0))
        np.testing.assert_array_equal(fields["observed_mask"][w], mask)
        scored = (np.arange(end - L, end) >= scored_from)[:, None]
        np.testing.assert_array_equal(fields["target_mask"][w], target[n, end - L : end] & mask & scored)
        np.testing.assert_array_equal(fields["time_features"][w], tf[end - L : end])
        np.testing.assert_array_equal(fields["loc"][w, 0], loc)
    assert fields["timepoints"].shape == (6, L) and fields["feature_ids"].tolist() == [[0, 1]] * 6
    every = make_window_fields(values, None, Windows(np.array([1]), np.array([T]), np.array([0])), L, loc, scale, None)
    np.testing.assert_array_equal(every["target_mask"], every["observed_mask"])  # None: every observed value
    assert "time_features" not in every

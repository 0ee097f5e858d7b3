"""The batch validator rejects every malformed batch with a message naming the field and the expectation."""

import pytest
import torch

from tsdiffusion.batch import BatchError, check_batch, repeat_batch


def good_batch(B=2, L=5, K=3):
    mask = torch.ones(B, L, K)
    mask[0, 0, 0] = 0
    target = torch.zeros(B, L, K)
    target[1, 2, 1] = 1
    return {
        "observed": torch.randn(B, L, K) * mask,
        "observed_mask": mask,
        "target_mask": target,
        "timepoints": torch.arange(L).float().expand(B, L),
        "feature_ids": torch.arange(K).expand(B, K),
        "loc": torch.zeros(B, 1, K),
        "scale": torch.ones(B, 1, K),
    }


def test_good_batch_passes():
    assert check_batch(good_batch()) == (2, 5, 3)


def broken(field, value):
    b = good_batch()
    b[field] = value
    return b


def with_nan_observed():
    b = good_batch()
    b["observed"][1, 1, 1] = float("nan")
    return b


def with_inf_missing():
    b = good_batch()
    b["observed"][0, 0, 0] = float("inf")
    return b


def target_outside_observed():
    b = good_batch()
    b["target_mask"][0, 0, 0] = 1
    return b


CASES = [
    ({"observed_mask": torch.ones(2, 5, 3)}, "missing required field 'observed'"),
    (broken("observed", torch.randn(2, 5)), r"batch\['observed'\]: expected shape \(B, L, K\)"),
    (broken("observed", torch.ones(2, 5, 3, dtype=torch.long)), "floating dtype"),
    (broken("observed_mask", torch.ones(2, 5, 4)), r"observed_mask'\]: expected shape \(B, L, K\) = \(2, 5, 3\)"),
    (broken("observed_mask", torch.full((2, 5, 3), 0.5)), r"observed_mask'\]: expected only 0/1, got 0.5"),
    (broken("target_mask", torch.full((2, 5, 3), 2.0)), r"target_mask'\]: expected only 0/1"),
    (broken("timepoints", torch.zeros(2, 4)), r"timepoints'\]: expected shape \(B, L\) = \(2, 5\)"),
    (broken("feature_ids", torch.zeros(2, 3)), "integer dtype"),
    (broken("scale", torch.zeros(2, 1, 3)), r"scale'\]: expected values > 0"),
    (broken("loc", torch.zeros(2, 3)), r"loc'\]: expected shape \(B, 1, K\)"),
    (broken("observed", [[1.0]]), "expected a torch.Tensor"),
    (with_nan_observed(), r"NaN/inf at observed index \(1, 1, 1\)"),
    (with_inf_missing(), "NaN/inf at missing positions"),
    (target_outside_observed(), "target_mask'\\]: 1 where observed_mask is 0"),
]


@pytest.mark.parametrize(("batch", "message"), CASES)
def test_bad_batches_are_rejected_with_a_clear_message(batch, message):
    with pytest.raises(BatchError, match=message):
        check_batch(batch, source="my.csv")
    with pytest.raises(BatchError, match=r"^my\.csv: "):
        check_batch(batch, source="my.csv")


def test_repeat_batch_orders_rows_b_then_s():
    b = {"x": torch.tensor([[1.0], [2.0]])}
    assert repeat_batch(b, 3)["x"].flatten().tolist() == [1, 1, 1, 2, 2, 2]

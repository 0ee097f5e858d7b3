"""Training masks follow CSDI's strategies."""

import torch

from tsdiffusion.masking import forecast_mask, historical_mask, make_cond_mask, mix_mask, random_mask


def observed(B=64, L=12, K=5, p=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(B, L, K, generator=g) < p).float()


def test_random_mask_hides_a_uniform_ratio_of_observed_values():
    obs = observed(B=4000)
    cond = random_mask(obs, torch.Generator().manual_seed(1))
    assert ((cond == 1) <= (obs == 1)).all()  # only observed values are given
    ratio = 1 - cond.sum((1, 2)) / obs.sum((1, 2))
    # r ~ U(0, 1) per window: mean 1/2, variance 1/12 (up to rounding)
    assert abs(ratio.mean().item() - 0.5) < 0.02
    assert abs(ratio.var().item() - 1 / 12) < 0.01
    # each observed position is equally likely to be hidden
    hidden_rate = ((obs - cond).sum(0) / obs.sum(0)).flatten()
    assert hidden_rate.std() < 0.05


def test_historical_mask_uses_the_previous_window_pattern():
    obs = observed()
    cond = historical_mask(obs)
    torch.testing.assert_close(cond[1], obs[1] * obs[0])
    torch.testing.assert_close(cond[0], obs[0] * obs[-1])


def test_mix_mask_is_one_or_the_other_per_window():
    obs = observed(B=200)
    torch.manual_seed(3)
    cond = mix_mask(obs)
    hist = historical_mask(obs)
    is_hist = (cond == hist).flatten(1).all(1)
    assert 0.3 < is_hist.float().mean().item() < 0.8  # ~1/2, plus random masks that happen to coincide
    assert ((cond == 1) <= (obs == 1)).all()


def test_forecast_and_none_masks():
    obs = observed(B=3)
    target = torch.zeros_like(obs)
    target[:, -4:] = obs[:, -4:]
    batch = {"observed_mask": obs, "target_mask": target}
    cond = forecast_mask(batch)
    assert cond[:, -4:].sum() == 0 and torch.equal(cond[:, :-4], obs[:, :-4])
    assert make_cond_mask("none", batch).sum() == 0


def test_block_mask_hides_one_contiguous_block_per_hit_series():
    from tsdiffusion.masking import block_mask

    B, L, K = 3000, 24, 4
    full = torch.ones(B, L, K)
    cond = block_mask(full, max_length=6, generator=torch.Generator().manual_seed(0))
    hidden = 1 - cond
    for b in range(50):
        for k in range(K):
            steps = torch.nonzero(hidden[b, :, k]).flatten()
            if len(steps):  # one run of consecutive steps, at most max_length long
                assert steps[-1] - steps[0] + 1 == len(steps) <= 6
    hit = hidden.amax(1) > 0  # (B, K)
    # q ~ U(0, 1) per window, then each series with probability q: half the series overall, and whole
    # windows are often all-hit or all-spared (a per-window q, not one global rate)
    assert abs(hit.float().mean().item() - 0.5) < 0.03
    per_window = hit.float().mean(1)
    assert (per_window == 0).float().mean() > 0.1 and (per_window == 1).float().mean() > 0.1
    # block lengths U{1..6} cut at the end of the window: the mean lies below 3.5 but above the uncut mean of
    # blocks that start late
    lengths = hidden.sum(1)[hit]
    assert lengths.max() == 6 and lengths.min() == 1
    assert 2.9 < lengths.mean().item() < 3.5


def test_block_mask_only_hides_observed_values_and_checks_max_length():
    import pytest

    from tsdiffusion.masking import block_mask

    obs = observed(B=500, L=20)
    cond = block_mask(obs, generator=torch.Generator().manual_seed(2))
    assert ((cond == 1) <= (obs == 1)).all()
    assert (cond < obs).any()
    with pytest.raises(ValueError, match="max_length"):
        block_mask(obs, max_length=21)


def test_random_block_strategy_mixes_point_and_block_masks():

    obs = torch.ones(400, 24, 6)
    g = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    cond = make_cond_mask("random_block", {"observed_mask": obs}, g)
    hidden = 1 - cond
    # a block window hides one run per series; a random window scatters its hidden values
    runs = (hidden[:, 1:] > hidden[:, :-1]).sum(1) + hidden[:, 0]  # (B, K): runs of hidden steps
    is_block = (runs <= 1).all(1)
    assert 0.35 < is_block.float().mean().item() < 0.75

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

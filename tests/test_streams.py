"""Per-window random streams: a row's draws depend on (seed, window, sample, draw number) only."""

import pytest
import torch
from scipy import stats

from tsdiffusion.streams import RowStreams, rand, randn, stream_seed


def test_a_windows_draws_do_not_depend_on_the_other_windows_or_their_order():
    a = RowStreams.for_windows(1, torch.arange(7), 10)
    b = RowStreams.for_windows(1, torch.tensor([9, 3]), 10)
    xa, xb = a.randn((4, 3)), b.randn((4, 3))
    assert torch.equal(xa[30:40], xb[10:20])
    assert not torch.equal(xa[:10], xb[:10])  # windows 0 and 9 differ


@pytest.mark.parametrize("chunk", [1, 7, 10, 13, 70])
def test_chunks_of_rows_draw_what_the_whole_draws(chunk):
    whole = RowStreams.for_windows(5, torch.arange(7), 10)
    parts = RowStreams.for_windows(5, torch.arange(7), 10)
    for _ in range(3):  # three draws: the counter advances alike in every chunk
        ref = whole.randn((2, 3))
        chunks = [parts.rows(slice(s, s + chunk)) for s in range(0, 70, chunk)]
        got = torch.cat([c.randn((2, 3)) for c in chunks])
        parts.draws += 1
        assert torch.equal(got, ref)


def test_draws_and_seeds_and_samples_differ():
    s = RowStreams.for_windows(1, torch.tensor([0]), 2)
    x1, x2 = s.randn((100,)), s.randn((100,))
    y1 = RowStreams.for_windows(2, torch.tensor([0]), 2).randn((100,))
    assert not torch.equal(x1, x2) and not torch.equal(x1, y1)
    assert abs(torch.corrcoef(torch.stack([x1[0], x1[1]]))[0, 1]) < 0.35  # two samples: independent draws


def test_keys_are_distinct_over_a_grid():
    keys = {stream_seed(s, w, d) for s in range(4) for w in range(50) for d in range(50)}
    assert len(keys) == 4 * 50 * 50


def test_normal_and_uniform_laws():
    s = RowStreams.for_windows(3, torch.arange(20), 50)
    z = s.randn((200,), dtype=torch.float64).flatten().numpy()
    u = s.rand((200,), dtype=torch.float64).flatten().numpy()
    assert stats.kstest(z, "norm").pvalue > 1e-3
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01


def test_dispatch_keeps_torch_generators_and_checks_rows():
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(randn((3, 2), g1), torch.randn((3, 2), generator=g2))
    assert rand((3, 2)).shape == (3, 2)
    s = RowStreams.for_windows(0, torch.arange(2), 2)
    assert randn((4, 5), s).shape == (4, 5)
    with pytest.raises(ValueError, match="first dimension"):
        randn((3, 5), s)


def test_rows_of_a_window_must_be_contiguous():
    with pytest.raises(ValueError, match="contiguous"):
        RowStreams(0, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]), 2)

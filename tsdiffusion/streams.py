"""Per-window random streams: draws that depend on which window and sample a row is, never on the batch layout.

A ``torch.Generator`` hands out numbers in call order, so a window's samples change with the evaluation batch
size, the sample chunking (``sample_batch_size``), the DataLoader's workers and the number of DDP ranks.
:class:`RowStreams` instead gives every draw of a chain, for each window, numbers of its own:

- the d-th draw of window ``w`` comes from a generator seeded with ``key(seed, w, d)`` (SplitMix64's finaliser of
  the three, Steele et al. 2014), which draws the whole ``(S, ...)`` block of that window's ``S`` samples;
- a row ``(w, s)`` takes row ``s`` of that block, whatever the chunk, batch or rank it lands in.

The draw counter ``d`` is the only state: chunks that run the same chain make the same calls in the same order,
so a row's d-th draw is the same in any chunk. A window's block is always drawn whole (``torch.randn`` of a
shorter shape is not a prefix of a longer one), so a chunk holding part of a window's samples pays for all of
them; the cost is one generator seeding and one ``randn`` per window and draw, small beside a denoiser call.

Rows are ``(b s)``-ordered, as :func:`tsdiffusion.diffusion.samplers.draw_samples` lays them out; a chunk of rows
is :meth:`RowStreams.rows`. Anywhere a sampler, a process step or a baseline accepts ``generator=``, a
``RowStreams`` may stand in: they draw through :func:`randn` / :func:`rand`, which dispatch on it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor

STREAMS_VERSION = 1  # bump when the keying changes: a record states the version its draws came from

_MASK = (1 << 64) - 1


def _mix64(z: int) -> int:
    """SplitMix64's finaliser on a Python int (a bijection on 64 bits)."""
    z &= _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def stream_seed(seed: int, window: int, draw: int) -> int:
    """The seed of window ``window``'s ``draw``-th block of a run seeded ``seed`` (63 bits)."""
    golden = 0x9E3779B97F4A7C15
    return _mix64(_mix64(_mix64(seed) + golden * (window + 1)) + golden * (draw + 1)) >> 1


class RowStreams:
    """Random streams of ``(b s)`` rows: window ``windows[i]``, sample ``samples[i]`` of ``num_samples``.

    Build it with :meth:`for_windows`; take a chunk with :meth:`rows`; draw with :meth:`randn` / :meth:`rand`.
    """

    def __init__(self, seed: int, windows: Tensor, samples: Tensor, num_samples: int, draws: int = 0) -> None:
        if windows.shape != samples.shape or windows.ndim != 1:
            raise ValueError(f"RowStreams: windows {tuple(windows.shape)} and samples {tuple(samples.shape)} must be "
                             "1-D and of one length")  # fmt: skip
        self.seed, self.num_samples, self.draws = int(seed), int(num_samples), draws
        self.windows, self.samples = windows.to(torch.long), samples.to(torch.long)
        self.device = windows.device
        self._groups = self._group(self.windows.cpu(), self.samples.cpu(), self.num_samples)

    @staticmethod
    def _group(windows: Tensor, samples: Tensor, S: int) -> list[tuple[int, Tensor | None]]:
        """Per window of the rows, in order of first appearance: (window, the sample index of each of its rows),
        or None where the rows are the window's samples 0..S-1 in order and contiguous (no gather needed)."""
        if len(windows) == 0:
            return []
        starts = torch.cat([torch.tensor([True]), windows[1:] != windows[:-1]]).nonzero().squeeze(1).tolist()
        bounds = [*starts, len(windows)]
        runs = [(int(windows[a]), samples[a:b]) for a, b in itertools.pairwise(bounds)]
        whole = torch.arange(S)
        if len({w for w, _ in runs}) == len(runs):  # each window in one contiguous run: the usual (b s) layout
            return [(w, None if len(s) == S and torch.equal(s, whole) else s) for w, s in runs]
        raise ValueError("RowStreams: the rows of a window must be contiguous ((b s) order)")

    @classmethod
    def for_windows(cls, seed: int, windows: Tensor, num_samples: int = 1) -> RowStreams:
        """The streams of windows ``windows`` (B,) long (indices in the evaluation set), ``num_samples`` rows each,
        ordered ``(b s)``."""
        w = windows.reshape(-1).to(torch.long)
        s = torch.arange(num_samples, device=w.device)
        return cls(seed, w.repeat_interleave(num_samples), s.repeat(len(w)), num_samples)

    def __len__(self) -> int:
        return len(self.windows)

    def rows(self, index: Tensor | slice) -> RowStreams:
        """The streams of a subset of the rows (a chunk), at the same draw count."""
        return RowStreams(self.seed, self.windows[index], self.samples[index], self.num_samples, self.draws)

    def split(self, parts: int) -> RowStreams:
        """Streams for ``parts`` variants of every window (e.g. the masking patterns of one window), ordered
        ``(b p s)``: window ``w``'s variant ``j`` draws as window ``w * parts + j``. Needs whole windows."""
        S = self.num_samples
        windows = self.windows[::S]
        if len(self) != len(windows) * S:
            raise ValueError("RowStreams.split needs the streams of whole windows (S rows each)")
        keys = (windows.unsqueeze(1) * parts + torch.arange(parts, device=windows.device)).reshape(-1)
        return RowStreams.for_windows(self.seed, keys, S)

    def _draw(self, shape: tuple[int, ...], dtype: torch.dtype, fill: Callable[..., Tensor]) -> Tensor:
        """(N, *shape): each window's whole (S, *shape) block from its own generator, each row its sample's row."""
        gen, blocks = torch.Generator(), []
        for w, rows in self._groups:
            gen.manual_seed(stream_seed(self.seed, w, self.draws))
            block = fill((self.num_samples, *shape), generator=gen, dtype=dtype)
            blocks.append(block if rows is None else block[rows])
        self.draws += 1
        out = torch.cat(blocks) if blocks else torch.empty((0, *shape), dtype=dtype)
        return out.to(self.device, non_blocking=True)

    def randn(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """Standard normal draws, (N, *shape)."""
        return self._draw(tuple(shape), dtype, torch.randn)

    def rand(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        """Uniform draws on [0, 1), (N, *shape)."""
        return self._draw(tuple(shape), dtype, torch.rand)


Source = torch.Generator | RowStreams | None


def randn(shape, generator: Source = None, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.randn(shape)`` from a generator, or from row streams (``shape[0]`` must be their row count)."""
    if isinstance(generator, RowStreams):
        _check_rows(shape, generator)
        return generator.randn(tuple(shape[1:]), dtype or torch.get_default_dtype()).to(device or generator.device)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def rand(shape, generator: Source = None, device=None, dtype: torch.dtype | None = None) -> Tensor:
    """``torch.rand(shape)`` from a generator, or from row streams (``shape[0]`` must be their row count)."""
    if isinstance(generator, RowStreams):
        _check_rows(shape, generator)
        return generator.rand(tuple(shape[1:]), dtype or torch.get_default_dtype()).to(device or generator.device)
    return torch.rand(shape, generator=generator, device=device, dtype=dtype)


def _check_rows(shape, streams: RowStreams) -> None:
    if len(shape) == 0 or shape[0] != len(streams):
        raise ValueError(f"a draw of shape {tuple(shape)} from {len(streams)} row streams: the first dimension "
                         "must be the rows")  # fmt: skip


def rows_of(generator: Source, rows: slice) -> Source:
    """The source for a chunk of rows: the streams of those rows, or the same generator (it draws in call order)."""
    return generator.rows(rows) if isinstance(generator, RowStreams) else generator


def catch_up(generator: Source, chunk: Source) -> None:
    """After the chunks of :func:`rows_of` have run (each the same chain), move the whole streams' draw count
    to theirs, so that later draws on the whole do not repeat the chunks' draws."""
    if isinstance(generator, RowStreams) and isinstance(chunk, RowStreams):
        generator.draws = max(generator.draws, chunk.draws)


def randint(high: int, n: int, generator: Source = None, device=None) -> Tensor:
    """(n,) integers uniform on {0, ..., high - 1}: ``torch.randint``, or one per row of the streams."""
    if isinstance(generator, RowStreams):
        u = rand((n,), generator, dtype=torch.float64)
        return (u * high).long().clamp_(max=high - 1).to(device or generator.device)
    return torch.randint(0, high, (n,), device=device, generator=generator)


def draw_indices(weight: Tensor, num_samples: int, length: int, generator: Source = None) -> Tensor:
    """(B, S * length) indices drawn with replacement in proportion to ``weight`` (B, n), per window.

    From a generator: ``torch.multinomial``; from streams of the ``(b s)`` rows: by inverting each window's
    cumulative weights at the rows' uniform draws, so a window's draws do not depend on the batch.
    """
    if not isinstance(generator, RowStreams):
        return torch.multinomial(weight, num_samples * length, replacement=True, generator=generator)
    B = weight.shape[0]
    u = rand((B * num_samples, length), generator, device=weight.device, dtype=torch.float64)
    cdf = weight.to(torch.float64).cumsum(1)
    idx = torch.searchsorted(cdf, u.view(B, -1) * cdf[:, -1:], right=True)
    return idx.clamp_(max=weight.shape[1] - 1)


def draw_seeds(B: int, K: int, num_samples: int, generator: Source = None) -> Tensor:
    """(B, K) integer seeds in [0, 2^31 - 1) for per-series external samplers (e.g. statsmodels' simulate).

    From streams of the ``(b s)`` rows, window b's seeds come from its sample-0 row.
    """
    if not isinstance(generator, RowStreams):
        device = generator.device if generator is not None else "cpu"
        return torch.randint(0, 2**31 - 1, (B, K), generator=generator, device=device)
    u = rand((B * num_samples, K), generator, dtype=torch.float64).view(B, num_samples, K)[:, 0]
    return (u * (2**31 - 1)).long()

"""Samplers as pure functions (k-diffusion style). Conditioning is a closure ``denoise_fn(x_t, t) -> out``.

``draw_samples`` repeats a conditioning dict per sample, ``b ... -> (b s) ...``, and runs one batched
sampler call per chunk of at most ``max_batch`` rows, instead of a Python loop over samples.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from einops import rearrange
from torch import Tensor

from tsdiffusion.diffusion.process import DenoiseFn, GaussianDiffusion

SamplerName = Literal["ddpm", "ddim"]


def timesteps(num_steps: int, steps: int | None = None) -> list[int]:
    """Descending step indices for a sampler with ``steps`` evaluations, evenly spaced over ``[0, N)``.

    Always starts at N - 1 and ends at 0; ``steps=None`` or ``N`` gives every step.
    """
    steps = num_steps if steps is None else steps
    if not 1 <= steps <= num_steps:
        raise ValueError(f"steps must be in [1, {num_steps}] (the training steps), got {steps}")
    if steps == 1:
        return [num_steps - 1]
    grid = torch.linspace(0, num_steps - 1, steps, dtype=torch.float64).round().long()
    return grid.flip(0).tolist()


def _loop(x: Tensor, seq: list[int], step: Callable[[Tensor, int, int], Tensor], progress: bool) -> Tensor:
    pairs = list(zip(seq, [*seq[1:], -1]))
    if progress:
        from tqdm.auto import tqdm

        pairs = tqdm(pairs, desc="sampling", leave=False)
    for t, s in pairs:
        x = step(x, t, s)
    return x


def _t(x: Tensor, t: int) -> Tensor:
    return torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)


@torch.no_grad()
def sample_ddpm(
    process: GaussianDiffusion,
    denoise_fn: DenoiseFn,
    x_T: Tensor,
    *,
    steps: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020, Algorithm 2), optionally on a strided subsequence of steps.

    x_T: (N, ...) standard normal start -> x_0: (N, ...).
    """
    seq = timesteps(process.num_steps, steps)

    def step(x: Tensor, t: int, s: int) -> Tensor:
        return process.ddpm_step(denoise_fn(x, _t(x, t)), t, x, s, generator=generator)

    return _loop(x_T, seq, step, progress)


@torch.no_grad()
def sample_ddim(
    process: GaussianDiffusion,
    denoise_fn: DenoiseFn,
    x_T: Tensor,
    *,
    steps: int = 50,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    """DDIM sampling (Song et al. 2021, eq. 12) with ``steps`` denoiser calls. x_T: (N, ...) -> x_0: (N, ...)."""
    seq = timesteps(process.num_steps, min(steps, process.num_steps))

    def step(x: Tensor, t: int, s: int) -> Tensor:
        return process.ddim_step(denoise_fn(x, _t(x, t)), t, s, x, eta=eta, generator=generator)

    return _loop(x_T, seq, step, progress)


@torch.no_grad()
def draw_samples(
    process: GaussianDiffusion,
    denoiser: Callable[[Tensor, Tensor, dict], Tensor],
    cond: Mapping[str, Tensor],
    shape: tuple[int, int, int],
    num_samples: int,
    *,
    sampler: SamplerName = "ddpm",
    steps: int | None = None,
    eta: float = 0.0,
    max_batch: int | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
    progress: bool = False,
) -> Tensor:
    """Draw ``num_samples`` samples per item, as batched sampler calls.

    cond: dict of (B, ...) tensors; shape: (B, L, K). Returns (B, S, L, K). Rows are ordered ``(b s)``
    and split into chunks of at most ``max_batch`` rows (default: all rows at once).
    """
    B = shape[0]
    rows = B * num_samples
    chunk = rows if max_batch is None else max(1, max_batch)
    device = device or next(iter(cond.values())).device
    out = []
    for start in range(0, rows, chunk):
        idx = torch.arange(start, min(start + chunk, rows), device=device) // num_samples
        c = {k: v[idx] for k, v in cond.items()}
        x_T = torch.randn((len(idx), *shape[1:]), device=device, generator=generator)
        fn = lambda x, t, c=c: denoiser(x, t, c)
        if sampler == "ddpm":
            out.append(sample_ddpm(process, fn, x_T, steps=steps, generator=generator, progress=progress))
        elif sampler == "ddim":
            n = steps or process.num_steps
            out.append(sample_ddim(process, fn, x_T, steps=n, eta=eta, generator=generator, progress=progress))
        else:
            raise ValueError(f"unknown sampler {sampler!r}: expected 'ddpm' or 'ddim'")
    return rearrange(torch.cat(out), "(b s) l k -> b s l k", s=num_samples)

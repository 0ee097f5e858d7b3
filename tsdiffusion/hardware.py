"""What the machine offers, and the two choices that follow from it: the precision policy and the allocator.

- :func:`detect` reads the CPU's matrix units (Intel AMX, AVX512-BF16) and, when CUDA is present, whether the
  GPU computes in bf16;
- :func:`precision_policy` turns that into a Lightning ``precision`` string: bf16 autocast (``"bf16-mixed"``)
  where the hardware multiplies bf16 natively, float32 (``"32-true"``) elsewhere. Autocast only changes the
  matrix products inside the denoiser: the diffusion arithmetic (schedules, posterior coefficients, sampler
  updates) runs in float32/float64 and the metrics in float32/float64 (``draw_samples`` casts the denoiser's
  output back to the chain's dtype);
- :func:`keep_freed_memory` stops glibc from handing freed tensor memory back to the kernel during a sampling
  chain. Without it, every activation above glibc's mmap threshold (at most 32 MiB) is a fresh ``mmap`` that is
  page-faulted in and ``munmap``-ed again on every denoiser call, so large batched calls cost more per row than
  small ones.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

PrecisionChoice = Literal["auto", "bf16-mixed", "32-true", "32", "bf16-true", "16-mixed"]


@dataclass(frozen=True)
class Hardware:
    """What one device offers for bf16 matrix products."""

    device: Literal["cpu", "cuda"]
    amx: bool = False  # Intel Advanced Matrix Extensions (bf16 tiles)
    avx512_bf16: bool = False  # AVX512-BF16 dot products (AMD Zen 4, Intel Cooper Lake and later)
    cuda_bf16: bool = False  # a GPU that computes bf16 natively (Ampere and later)

    @property
    def fast_bf16(self) -> bool:
        """bf16 matrix products are natively faster than float32 here."""
        return self.cuda_bf16 if self.device == "cuda" else self.amx or self.avx512_bf16

    def describe(self) -> str:
        if self.device == "cuda":
            return f"cuda (bf16: {'yes' if self.cuda_bf16 else 'no'})"
        units = [n for n, on in (("AMX", self.amx), ("AVX512-BF16", self.avx512_bf16)) if on]
        return f"cpu ({', '.join(units) or 'no bf16 matrix units'})"


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU's feature flags as the kernel reports them (empty where there is no ``/proc/cpuinfo``)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def detect(device: str | torch.device = "cpu", *, flags: set[str] | None = None) -> Hardware:
    """What ``device`` offers. ``flags`` (CPU feature flags) is for tests; by default they are read from the
    kernel, and from torch's own CPU probe where the kernel does not say."""
    kind = torch.device(device).type
    if kind == "cuda":
        return Hardware("cuda", cuda_bf16=torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    flags = cpu_flags() if flags is None else flags
    amx, avx = "amx_bf16" in flags, "avx512_bf16" in flags
    if not flags:  # no /proc/cpuinfo (macOS, some containers): ask torch's probe, a private API
        probe = getattr(torch, "cpu", None)
        amx = bool(getattr(probe, "_is_amx_tile_supported", lambda: False)())
        avx = bool(getattr(probe, "_is_avx512_bf16_supported", lambda: False)())
    return Hardware("cpu", amx=amx, avx512_bf16=avx)


def precision_policy(requested: PrecisionChoice | str | None = "auto", hardware: Hardware | None = None) -> str:
    """The Lightning ``precision`` to use: ``requested`` itself unless it is ``"auto"``/``None``, which gives
    ``"bf16-mixed"`` on hardware with native bf16 matrix products and ``"32-true"`` elsewhere."""
    if requested not in (None, "auto"):
        return str(requested)
    hardware = hardware or detect("cpu")
    return "bf16-mixed" if hardware.fast_bf16 else "32-true"


def trainer_precision(precision: PrecisionChoice | str | None, accelerator: str | None = None) -> str:
    """The ``precision`` a Trainer gets from a config: :func:`precision_policy` of the device the ``accelerator``
    selects (CUDA when it is ``gpu``/``cuda``, or ``auto``/unset with a GPU present; the CPU otherwise).
    ``None`` (unset) and ``"auto"`` follow the hardware; an explicit value such as ``"32-true"`` is kept."""
    if precision not in (None, "auto"):
        return str(precision)
    gpu = accelerator in ("gpu", "cuda") or (accelerator in (None, "auto") and torch.cuda.is_available())
    return precision_policy("auto", detect("cuda" if gpu else "cpu"))


# -- the allocator ------------------------------------------------------------------------------------------
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_GLIBC_MMAP_MAX_DEFAULT = 65536
_GLIBC_TRIM_DEFAULT = 128 * 1024
_GLIBC_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # the ceiling of glibc's own adaptive threshold (64-bit)


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc only: musl and macOS have neither)
    except (OSError, AttributeError):
        return None
    return libc


@contextmanager
def keep_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Within the block, glibc serves every allocation from its heap and keeps freed memory there
    (``M_MMAP_MAX = 0``, a 1 GiB trim threshold), so a sampling chain reuses the same pages call after call
    instead of mapping and faulting them in again. On exit the heap's free memory is returned once
    (``malloc_trim``) and glibc's thresholds are set back (mmap above 32 MiB, trim above 128 KiB).
    Yields whether the allocator was tuned (False off glibc, or with ``enabled=False``). Nests."""
    libc = _glibc() if enabled else None
    outer = libc is not None and _state.depth == 0
    if outer and libc is not None:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    _state.depth += libc is not None
    try:
        yield libc is not None
    finally:
        _state.depth -= libc is not None
        if outer and libc is not None:
            libc.mallopt(_M_MMAP_MAX, _GLIBC_MMAP_MAX_DEFAULT)
            libc.mallopt(_M_MMAP_THRESHOLD, _GLIBC_MMAP_THRESHOLD_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _GLIBC_TRIM_DEFAULT)
            libc.malloc_trim(0)


class _State:
    depth = 0


_state = _State()

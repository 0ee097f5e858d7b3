"""Hand-written CPU kernels for sampling and training, compiled on first use with the machine's C compiler and
loaded with ``ctypes``.

- :func:`short_attention`: softmax attention for many short sequences with narrow heads, without autograd. At
  CSDI's sampling shapes (thousands of sequences of 35-48 positions, heads 8 wide) torch's fused CPU kernel
  (``scaled_dot_product_attention``) spends its time in per-block overhead; ``cpu_kernels.c`` does one
  (sequence, head) pair per unit of work, all of it in L1 and in float32, with an AVX2 + FMA path for heads 8 wide.
- :func:`add_layer_norm`: ``LayerNorm(x + r)`` in one pass over memory (torch: two, with the sum rounded to bf16
  in between under bf16).
- :func:`gated_tanh`: ``sigmoid(gate) * tanh(filter)`` of a WaveNet-style layer in one pass (torch: three).
- :func:`dropout`: training's dropout, with autograd, in one pass forward and one backward: the mask comes from a
  counter-based generator (splitmix64 of the element's index and a seed drawn from torch's generator), so it is
  never drawn by torch's Mersenne twister nor stored (torch: a draw, a compare, a select and a scale forward, a
  select backward; at CSDI's training shapes a third of the step).
- :func:`softmax_dropout`: attention's ``dropout(softmax(scores))`` with autograd, one pass each way over the
  (S x S) weights, written in the dtype the next matmul wants (bf16 under autocast: no cast pass).

``benchmarks/scripts/bench_csdi_sampling.py`` times the sampling call with them and with torch's kernels.

The library is built once per machine type and source text (``cc -O3 -march=native -fopenmp``; the file name
holds a hash of the source, the flags, the compiler's version and the CPU's flags) into :func:`cache_dir`,
written atomically so that parallel
processes can race. Where no compiler runs, the build fails, or ``TSDIFFUSION_KERNELS=0`` is set, the functions
return None (the build failure said once as a warning) and callers use torch's ops: the numbers are the same to
float rounding, only slower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ["-O3", "-march=native", "-ffast-math", "-fopenmp", "-fPIC", "-shared"]
MAX_HEAD_DIM = 64
_I64x4 = ctypes.c_int64 * 4


def cache_dir() -> Path:
    """``$TSDIFFUSION_KERNELS_DIR``, else ``$TSDIFFUSION_CACHE/kernels``, else ``~/.cache/tsdiffusion/kernels``."""
    if os.environ.get("TSDIFFUSION_KERNELS_DIR"):
        return Path(os.environ["TSDIFFUSION_KERNELS_DIR"])
    root = os.environ.get("TSDIFFUSION_CACHE", str(Path.home() / ".cache" / "tsdiffusion"))
    return Path(root) / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return ""


def _compiler() -> str | None:
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


@functools.cache
def load() -> ctypes.CDLL | None:
    """The compiled library (built on the first call of a process if not in the cache), or None, with the
    reason given once as a warning, if it cannot be built or is switched off (``TSDIFFUSION_KERNELS=0``)."""
    if os.environ.get("TSDIFFUSION_KERNELS", "1") == "0":
        return None
    cc = _compiler()
    if cc is None:
        warnings.warn("tsdiffusion.kernels: no C compiler (cc, gcc, clang or $CC); using torch's kernels", stacklevel=2)
        return None
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
        source = SOURCE.read_bytes()
        digest = hashlib.sha256(source + " ".join(FLAGS).encode() + version.encode() + _cpu_flags().encode())
        target = cache_dir() / f"cpu_kernels-{digest.hexdigest()[:16]}.so"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                built = Path(tmp) / target.name
                proc = subprocess.run([cc, *FLAGS, "-o", str(built), str(SOURCE), "-lm"], capture_output=True,
                                      text=True, timeout=300)  # fmt: skip
                if proc.returncode != 0:
                    raise RuntimeError(f"{cc} exited with {proc.returncode}: {proc.stderr.strip()[-2000:]}")
                os.replace(built, target)  # atomic: a racing process sees the whole library or none
        lib = ctypes.CDLL(str(target))
    except Exception as err:  # any build or load failure: torch's kernel instead, said once
        warnings.warn(
            f"tsdiffusion.kernels: could not build {SOURCE.name} ({err}); using torch's kernels", stacklevel=2
        )
        return None
    fn = lib.short_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 4 + [ctypes.POINTER(ctypes.c_int64)] * 4
    fn.argtypes += [ctypes.c_float, ctypes.c_int, ctypes.c_int]
    fn = lib.add_layer_norm
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 2 + [ctypes.c_float, ctypes.c_int, ctypes.c_int]
    fn = lib.gated_tanh
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_int, ctypes.c_int]
    fn = lib.dropout
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float]
    fn.argtypes += [ctypes.c_int, ctypes.c_int]
    fn = lib.softmax_dropout
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float]
    fn.argtypes += [ctypes.c_int] * 3
    fn = lib.softmax_dropout_backward
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64] * 2 + [ctypes.c_uint64, ctypes.c_uint32, ctypes.c_float]
    fn.argtypes += [ctypes.c_int] * 3
    return lib


def supports(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether :func:`short_attention` takes these inputs: CPU, no autograd, not under ``torch.compile``, one
    dtype (float32 or bfloat16), (N, H, S, D) with D <= 64 contiguous, the same shapes."""
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.float32, torch.bfloat16)
        and q.dtype == k.dtype == v.dtype
        and q.dim() == 4
        and q.shape == k.shape == v.shape
        and 0 < q.shape[-1] <= MAX_HEAD_DIM
        and q.shape[-2] > 0
        and q.stride(-1) == k.stride(-1) == v.stride(-1) == 1
        and not (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad))
        and not torch.compiler.is_compiling()
    )


def short_attention(q: Tensor, k: Tensor, v: Tensor, out: Tensor | None = None) -> Tensor | None:
    """``softmax(q k^T / sqrt(D)) v`` for q, k, v of shape (N, H, S, D), any strides but a contiguous last dim,
    written into ``out`` (any strided (N, H, S, D) view, e.g. one whose base is the layout the next matmul wants)
    or a new tensor; None where the kernel is unavailable or the inputs are not :func:`supports`'s (then use
    ``F.scaled_dot_product_attention``). Scores, softmax and the weighted sum in float32, rounded once."""
    if not supports(q, k, v):
        return None
    lib = load()
    if lib is None:
        return None
    if out is None:
        out = torch.empty(q.shape, dtype=q.dtype)
    if out.shape != q.shape or out.dtype != q.dtype or out.stride(-1) != 1:
        raise ValueError(f"short_attention: out must be {tuple(q.shape)} {q.dtype} with a contiguous last dim")
    N, H, S, D = q.shape
    strides = [_I64x4(*t.stride()) for t in (q, k, v, out)]
    with torch.profiler.record_function("tsdiffusion::short_attention"):  # named in profiles (not an aten op)
        rc = lib.short_attention(q.data_ptr(), k.data_ptr(), v.data_ptr(), out.data_ptr(), N, H, S, D, *strides,
                                 D**-0.5, int(q.dtype == torch.bfloat16), torch.get_num_threads())  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"short_attention failed with code {rc} (N={N}, H={H}, S={S}, D={D})")
    return out


def _plain(*tensors: Tensor) -> bool:
    """CPU, float32 or bfloat16 alike, contiguous, no autograd, not under ``torch.compile``."""
    t0 = tensors[0]
    return (
        t0.device.type == "cpu"
        and t0.dtype in (torch.float32, torch.bfloat16)
        and all(t.dtype == t0.dtype and t.device == t0.device and t.is_contiguous() for t in tensors)
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()
    )


def add_layer_norm(x: Tensor, r: Tensor, norm: torch.nn.LayerNorm) -> Tensor | None:
    """``norm(x + r)`` in one pass (float32 sums, rounded once), or None where it does not apply: CPU, no autograd,
    not under ``torch.compile``, x, r and the norm's weight and bias of one dtype (float32 or bfloat16), contiguous,
    normalised over the last dim only (then use ``norm(x + r)``). Unlike torch in bf16, the sum is not rounded to
    bf16 before the norm."""
    w, b = norm.weight, norm.bias
    if (
        w is None
        or b is None
        or x.shape != r.shape
        or tuple(norm.normalized_shape) != (x.shape[-1],)
        or not _plain(x, r, w, b)
    ):
        return None
    lib = load()
    if lib is None:
        return None
    out = torch.empty_like(x)
    C = x.shape[-1]
    with torch.profiler.record_function("tsdiffusion::add_layer_norm"):
        rc = lib.add_layer_norm(x.data_ptr(), r.data_ptr(), w.data_ptr(), b.data_ptr(), out.data_ptr(),
                                x.numel() // C, C, norm.eps, int(x.dtype == torch.bfloat16),
                                torch.get_num_threads())  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"add_layer_norm failed with code {rc} ({tuple(x.shape)})")
    return out


def gated_tanh(y: Tensor) -> Tensor | None:
    """``sigmoid(gate) * tanh(filter)`` for ``gate, filter = y.chunk(2, dim=-1)`` in one pass (float32, rounded
    once): y (..., 2C) -> (..., C); None where it does not apply (CPU, float32 or bfloat16, contiguous, no autograd,
    not under ``torch.compile``; then use torch's ops)."""
    if not _plain(y) or y.shape[-1] % 2:
        return None
    lib = load()
    if lib is None:
        return None
    C = y.shape[-1] // 2
    out = torch.empty((*y.shape[:-1], C), dtype=y.dtype)
    with torch.profiler.record_function("tsdiffusion::gated_tanh"):
        rc = lib.gated_tanh(y.data_ptr(), out.data_ptr(), y.numel() // (2 * C), C, int(y.dtype == torch.bfloat16),
                            torch.get_num_threads())  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"gated_tanh failed with code {rc} ({tuple(y.shape)})")
    return out


def dropout(x: Tensor, p: float, generator: torch.Generator | None = None) -> Tensor | None:
    """``F.dropout(x, p, training=True)`` with autograd, in one pass forward and one backward, or None where it
    does not apply (then use torch's): CPU, float32 or bfloat16, not under ``torch.compile``, ``p`` a multiple of
    2^-16 within rounding (an element is kept iff 16 random bits reach ``round(p * 2^16)``; 0.1 -> drop 0.100006),
    0 < p < 1.

    The mask is a pure function of the element's index and one 64-bit seed drawn from ``generator`` (default:
    torch's global one, so ``torch.manual_seed`` / ``seed_everything`` make runs repeat), never stored: the
    backward pass recomputes it. Kept values are scaled by ``1 / P(keep)`` exactly. The result does not depend on
    the thread count."""
    drop = round(p * 65536)
    if not (0 < drop < 65536) or x.device.type != "cpu" or x.dtype not in (torch.float32, torch.bfloat16):
        return None
    if torch.compiler.is_compiling() or load() is None:
        return None
    return _Dropout.apply(x, drop, _draw_seed(generator))


def _draw_seed(generator: torch.Generator | None) -> int:
    """One seed of a counter-based mask from ``generator`` (default torch's): a signed int64, since profilers
    record a Function's arguments and take no larger ints (made unsigned in the call)."""
    return int(torch.randint(-(2**63), 2**63 - 1, (), dtype=torch.int64, generator=generator))


def _dropout_apply(x: Tensor, drop: int, seed: int) -> Tensor:
    lib = load()
    assert lib is not None  # dropout() checked
    x = x.contiguous()
    out = torch.empty_like(x)
    with torch.profiler.record_function("tsdiffusion::dropout"):
        rc = lib.dropout(x.data_ptr(), out.data_ptr(), x.numel(), seed % 2**64, drop, 65536 / (65536 - drop),
                         int(x.dtype == torch.bfloat16), torch.get_num_threads())  # fmt: skip
    if rc != 0:
        raise RuntimeError(f"dropout failed with code {rc} ({tuple(x.shape)})")
    return out


class _Dropout(torch.autograd.Function):
    """y = x * mask * scale; its gradient is the same map of the incoming gradient (same seed, same mask)."""

    @staticmethod
    def forward(ctx, x: Tensor, drop: int, seed: int) -> Tensor:
        ctx.drop, ctx.seed = drop, seed
        return _dropout_apply(x, drop, seed)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        if grad.dtype not in (torch.float32, torch.bfloat16):  # pragma: no cover - autograd keeps x's dtype
            raise TypeError(f"dropout: gradient of dtype {grad.dtype}")
        return _Dropout.apply(grad, ctx.drop, ctx.seed), None, None


MAX_SOFTMAX_LEN = 4096


def softmax_dropout(
    s: Tensor, p: float, dtype: torch.dtype | None = None, generator: torch.Generator | None = None
) -> Tensor | None:
    """``F.dropout(s.softmax(-1), p, training=True).to(dtype)`` with autograd, in one pass forward and one backward
    (the softmax in float32 whatever ``s``'s dtype, the result rounded once to ``dtype``, default ``s.dtype``), or
    None where it does not apply (then use torch's ops): CPU, float32 or bfloat16 in and out, a last dim of at most
    4096, not under ``torch.compile``, ``p`` as :func:`dropout` takes it. The mask is :func:`dropout`'s for the
    same seed (a function of the element's index in ``s`` and one seed from ``generator``, default torch's). The
    backward pass recomputes the softmax from ``s`` (kept instead of a float32 softmax, as torch's under autocast
    would keep), bit for bit as the forward pass computed it."""
    dtype = s.dtype if dtype is None else dtype
    drop = round(p * 65536)
    if not (0 < drop < 65536) or s.device.type != "cpu" or s.dim() == 0 or not 0 < s.shape[-1] <= MAX_SOFTMAX_LEN:
        return None
    if s.dtype not in _KERNEL_DTYPES or dtype not in _KERNEL_DTYPES or torch.compiler.is_compiling() or load() is None:
        return None
    return _SoftmaxDropout.apply(s, drop, _draw_seed(generator), dtype)


_KERNEL_DTYPES = (torch.float32, torch.bfloat16)


class _SoftmaxDropout(torch.autograd.Function):
    """y = dropout(softmax(s)); ds = p * (g - sum(g * p)) with g = dropout(dy) (same seed, same mask) and
    p = softmax(s) recomputed from the saved s (not stored: half the memory of a float32 softmax under bf16)."""

    @staticmethod
    def forward(ctx, s: Tensor, drop: int, seed: int, dtype: torch.dtype) -> Tensor:
        lib = load()
        assert lib is not None  # softmax_dropout() checked
        s = s.contiguous()
        y = torch.empty(s.shape, dtype=dtype)
        S = s.shape[-1]
        with torch.profiler.record_function("tsdiffusion::softmax_dropout"):
            rc = lib.softmax_dropout(s.data_ptr(), y.data_ptr(), s.numel() // S, S, seed % 2**64, drop,
                                     65536 / (65536 - drop), int(s.dtype == torch.bfloat16),
                                     int(dtype == torch.bfloat16), torch.get_num_threads())  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"softmax_dropout failed with code {rc} ({tuple(s.shape)})")
        ctx.save_for_backward(s)
        ctx.drop, ctx.seed = drop, seed
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        lib = load()
        assert lib is not None
        (s,) = ctx.saved_tensors
        grad = (grad if grad.dtype in _KERNEL_DTYPES else grad.float()).contiguous()
        out = torch.empty_like(s)
        S = s.shape[-1]
        with torch.profiler.record_function("tsdiffusion::softmax_dropout_backward"):
            rc = lib.softmax_dropout_backward(s.data_ptr(), grad.data_ptr(), out.data_ptr(), s.numel() // S, S,
                                              ctx.seed % 2**64, ctx.drop, 65536 / (65536 - ctx.drop),
                                              int(s.dtype == torch.bfloat16), int(grad.dtype == torch.bfloat16),
                                              torch.get_num_threads())  # fmt: skip
        if rc != 0:
            raise RuntimeError(f"softmax_dropout_backward failed with code {rc} ({tuple(s.shape)})")
        return out, None, None, None

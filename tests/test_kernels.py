"""tsdiffusion.kernels against torch's ops: short_attention against float64 softmax attention on the strided layouts
CSDI passes, add_layer_norm, gated_tanh, and dropout's statistics, gradient and reproducibility."""

from __future__ import annotations

import platform
import warnings

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from tsdiffusion import kernels

pytestmark = pytest.mark.skipif(kernels._compiler() is None, reason="no C compiler on this machine")


@pytest.fixture(autouse=True)
def _kernel_cache(tmp_path_factory, monkeypatch):
    """Build into a folder of this session (the build itself is part of what is tested)."""
    monkeypatch.setenv("TSDIFFUSION_KERNELS_DIR", str(tmp_path_factory.getbasetemp() / "kernels_test"))
    yield


def _reference(q, k, v):
    return F.scaled_dot_product_attention(q.double(), k.double(), v.double())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("S", "D"), [(1, 8), (7, 8), (8, 8), (9, 8), (35, 8), (48, 8), (100, 8), (13, 4),
                                      (35, 16), (20, 24), (9, 64)])  # fmt: skip
def test_equals_softmax_attention(S: int, D: int, dtype: torch.dtype) -> None:
    """Every sequence length around the 8-key blocks of the AVX2 path, head widths with their own copy and not;
    float32 to float rounding, bf16 within one bf16 rounding of the exact result of the same bf16 inputs."""
    g = torch.Generator().manual_seed(S * 100 + D)
    q, k, v = (torch.randn(6, 3, S, D, generator=g).to(dtype) for _ in range(3))
    q = q * 3  # peaked softmax: the max subtraction matters
    with torch.no_grad():
        out = kernels.short_attention(q, k, v)
    assert out is not None and out.dtype == dtype and out.shape == q.shape
    ref = _reference(q, k, v)
    if dtype == torch.float32:
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5)
    else:
        assert ((out.double() - ref).abs() <= ref.abs() * 2**-8 + 1e-6).all()


@pytest.mark.parametrize("axis", ["L", "K"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_csdi_layouts_written_into_the_out_projections_layout(axis: str, dtype: torch.dtype) -> None:
    """q, k, v as strided views of one qkv GEMM output, the result written through a view into (B, L, K, C)."""
    B, L, K, H, D = 3, 11, 5, 4, 8
    qkv = torch.randn(B, L, K, H * 3 * D, generator=torch.Generator().manual_seed(1)).to(dtype)
    to_heads = {"L": "b l k h d -> b (k h) l d", "K": "b l k h d -> (b l) h k d"}[axis]
    parts = rearrange(qkv, "b l k (h n d) -> n b l k h d", n=3, h=H).unbind(0)
    q, k, v = (rearrange(y, to_heads) for y in parts)
    assert not q.is_contiguous()
    y = torch.full((B, L, K, H * D), float("nan"), dtype=dtype)
    view = rearrange(y, "b l k (h d) -> " + to_heads.split("-> ")[1], h=H)
    assert view.data_ptr() == y.data_ptr()
    with torch.no_grad():
        assert kernels.short_attention(q, k, v, out=view) is view
    expected = rearrange(_reference(q, k, v), to_heads.split("-> ")[1] + " -> b l k (h d)", b=B, h=H)
    torch.testing.assert_close(y.double(), expected, rtol=1e-2 if dtype == torch.bfloat16 else 1e-5, atol=1e-5)


def test_declines_what_it_does_not_do() -> None:
    q = torch.randn(2, 2, 5, 8)
    assert kernels.supports(q, q, q)
    assert not kernels.supports(q.half(), q.half(), q.half())
    assert not kernels.supports(q, q, q.double())
    assert not kernels.supports(q.transpose(-1, -2), q.transpose(-1, -2), q.transpose(-1, -2))
    assert not kernels.supports(*(torch.randn(2, 2, 5, 65),) * 3)
    r = q.clone().requires_grad_()
    assert not kernels.supports(r, r, r)  # autograd: torch's kernel
    with torch.no_grad():
        assert kernels.supports(r, r, r)
    assert kernels.short_attention(q.half(), q.half(), q.half()) is None


def test_switched_off_or_unbuildable_falls_back_with_one_warning(monkeypatch) -> None:
    q = torch.randn(2, 2, 5, 8)
    try:
        kernels.load.cache_clear()
        monkeypatch.setenv("TSDIFFUSION_KERNELS", "0")
        assert kernels.short_attention(q, q, q) is None
        kernels.load.cache_clear()
        monkeypatch.delenv("TSDIFFUSION_KERNELS")
        monkeypatch.setenv("CC", "false")  # a "compiler" that fails
        monkeypatch.setattr(kernels, "FLAGS", [*kernels.FLAGS, "-DFORCE_REBUILD"])  # not the cached build
        with pytest.warns(UserWarning, match="could not build cpu_kernels.c"):
            assert kernels.short_attention(q, q, q) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert kernels.short_attention(q, q, q) is None  # said once per process
    finally:
        kernels.load.cache_clear()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [64, 12, 1])
def test_add_layer_norm_equals_torchs(C: int, dtype: torch.dtype) -> None:
    """LayerNorm(x + r) against float64 torch on the same inputs (bf16: within one bf16 rounding, the sum is not
    rounded in between); declines grad, other dtypes, mixed dtypes, norms over more than the last dim."""
    g = torch.Generator().manual_seed(C)
    norm = torch.nn.LayerNorm(C)
    with torch.no_grad():
        norm.weight.normal_(generator=g), norm.bias.normal_(generator=g)
    norm = norm.to(dtype)
    x, r = (torch.randn(3, 7, 5, C, generator=g).mul(4).add(2).to(dtype) for _ in range(2))
    with torch.no_grad():
        out = kernels.add_layer_norm(x, r, norm)
        exact = F.layer_norm(x.double() + r.double(), (C,), norm.weight.double(), norm.bias.double(), norm.eps)
    assert out is not None and out.dtype == dtype
    tol = 2**-8 if dtype == torch.bfloat16 else 1e-5
    assert ((out.double() - exact).abs() <= exact.abs() * tol + tol).all()
    assert norm.weight.requires_grad and kernels.add_layer_norm(x, r, norm) is None  # autograd: torch's ops
    with torch.no_grad():
        assert kernels.add_layer_norm(x.half(), r.half(), norm.half()) is None
        assert kernels.add_layer_norm(x.float(), r.to(torch.bfloat16), norm) is None
        assert kernels.add_layer_norm(x, r, torch.nn.LayerNorm((5, C)).to(dtype)) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("C", [64, 13])
def test_gated_tanh_equals_torchs(C: int, dtype: torch.dtype) -> None:
    """sigmoid(gate) * tanh(filter) against float64 torch, over a range that saturates both (|y| up to ~30) and
    values near 0 (tanh's cancellation): float32 within 1e-6 absolute, bf16 within one bf16 rounding."""
    g = torch.Generator().manual_seed(C)
    y = (torch.randn(4, 9, 2 * C, generator=g) * torch.logspace(-4, 1.5, 2 * C)).to(dtype)
    with torch.no_grad():
        out = kernels.gated_tanh(y)
    gate, filt = y.double().chunk(2, dim=-1)
    exact = torch.sigmoid(gate) * torch.tanh(filt)
    assert out is not None and out.dtype == dtype and out.shape == (4, 9, C)
    tol = (2**-8, 1e-7) if dtype == torch.bfloat16 else (1e-6, 1e-6)
    assert ((out.double() - exact).abs() <= exact.abs() * tol[0] + tol[1]).all()
    assert kernels.gated_tanh(y[..., :-1]) is None  # odd width
    assert kernels.gated_tanh(y.requires_grad_() if dtype == torch.float32 else y.float().requires_grad_()) is None


@pytest.mark.parametrize("flags", [["-march=x86-64"], ["-march=native", "-mno-avx512f"]], ids=["portable", "avx2"])
def test_other_builds_give_the_same_numbers(flags: list[str], monkeypatch) -> None:
    """The loops every x86-64 compiles (-march=x86-64: no AVX2, no FMA) and the AVX2 path (what a machine without
    AVX-512 runs) against the machine's build, at the sequence lengths CSDI's attention has (35, 48)."""
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("x86-64 flags")
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(5, 2, 35, 8, generator=g) for _ in range(3))
    q2, k2, v2 = (torch.randn(3, 4, 48, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    y = torch.randn(7, 32, generator=g) * 3
    norm = torch.nn.LayerNorm(16).requires_grad_(False)
    x, r = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    d = torch.randn(1001, generator=g)  # dropout: 62 vector blocks of 16 and a tail of 9

    def run() -> tuple:
        with torch.no_grad():
            return (kernels.short_attention(q, k, v), kernels.short_attention(q2, k2, v2), kernels.gated_tanh(y),
                    kernels.add_layer_norm(x, r, norm), kernels.dropout(d, 0.3, torch.Generator().manual_seed(5)),
                    kernels.dropout(d.bfloat16(), 0.3, torch.Generator().manual_seed(5)),
                    kernels.softmax_dropout(d.view(-1, 7), 0.3, None, torch.Generator().manual_seed(5)))  # fmt: skip

    native = run()
    try:
        kernels.load.cache_clear()
        monkeypatch.setattr(kernels, "FLAGS", [f for f in kernels.FLAGS if f != "-march=native"] + flags)
        other = run()
    finally:
        kernels.load.cache_clear()
    for a, b in zip(native, other):
        assert a is not None and b is not None
        rtol = 2**-7 if a.dtype == torch.bfloat16 else 1e-5  # bf16: one rounding apart at most
        torch.testing.assert_close(a.float(), b.float(), rtol=rtol, atol=1e-6)
    assert torch.equal(native[4] != 0, other[4] != 0)  # the same mask: a function of (seed, index) only


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_rate_scale_and_independence(p: float, dtype: torch.dtype) -> None:
    """The kept share is 1 - round(p 2^16) / 2^16 within 5 binomial standard deviations, overall and in each of the
    16 lanes of a vector block; kept values are x / P(keep) (one rounding in bf16); neighbours' and two calls'
    masks are uncorrelated (|r| < 5 / sqrt(n))."""
    n, drop = 1_600_000, round(p * 65536)
    keep_p = 1 - drop / 65536
    x = (torch.rand(n, generator=torch.Generator().manual_seed(0)) + 0.5).to(dtype)
    torch.manual_seed(1)
    y = kernels.dropout(x, p)
    assert y is not None and y.dtype == dtype and y.shape == x.shape
    kept = (y != 0).double()
    sd = (keep_p * (1 - keep_p) / n) ** 0.5
    assert abs(kept.mean().item() - keep_p) < 5 * sd
    lanes = kept.view(-1, 16).mean(0)  # n / 16 elements each
    assert ((lanes - keep_p).abs() < 5 * sd * 4).all(), lanes
    expected = (x.float() * (65536 / (65536 - drop))).to(dtype)
    torch.testing.assert_close(y[y != 0], expected[y != 0], rtol=2**-8 if dtype == torch.bfloat16 else 1e-7, atol=0)

    def corr(a: torch.Tensor, b: torch.Tensor) -> float:
        return torch.corrcoef(torch.stack([a, b]))[0, 1].item()

    bound = 5 / n**0.5
    assert abs(corr(kept[1:], kept[:-1])) < bound and abs(corr(kept[4:], kept[:-4])) < bound
    again = (kernels.dropout(x, p) != 0).double()  # the next seed of torch's generator
    assert abs(corr(kept, again)) < bound


def test_dropout_gradient_repeats_and_thread_count() -> None:
    """The backward pass applies the forward's mask and scale to the gradient; torch.manual_seed repeats a mask;
    the result does not depend on the thread count; a prefix of the elements has the same mask as the whole
    (the vector blocks and the scalar tail draw the same bits)."""
    x = torch.randn(3, 1000, 7, requires_grad=True)
    w = torch.randn(3, 1000, 7)
    torch.manual_seed(4)
    y = kernels.dropout(x, 0.2)
    assert y is not None
    (y * w).sum().backward()
    assert x.grad is not None
    kept = y.detach() != 0
    scale = 65536 / (65536 - round(0.2 * 65536))
    torch.testing.assert_close(x.grad, torch.where(kept, w * scale, 0.0))
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            torch.manual_seed(4)
            assert torch.equal(kernels.dropout(x.detach(), 0.2), y.detach())
    finally:
        torch.set_num_threads(threads)
    flat = x.detach().flatten()
    whole = kernels.dropout(flat, 0.2, torch.Generator().manual_seed(9))
    for m in (1, 15, 16, 17, 37, 999):
        part = kernels.dropout(flat[:m], 0.2, torch.Generator().manual_seed(9))
        assert part is not None and whole is not None and torch.equal(part != 0, whole[:m] != 0), m
    nan = kernels.dropout(torch.full((64,), float("nan")), 0.5)
    assert nan is not None and nan.isnan().all()  # x * 0 where dropped, as torch's dropout
    assert kernels.dropout(x.detach().transpose(0, 2), 0.2) is not None  # any strides (copied to contiguous first)


def test_dropout_declines_what_it_does_not_do() -> None:
    x = torch.randn(8)
    assert kernels.dropout(x.double(), 0.1) is None
    assert kernels.dropout(x, 0.0) is None and kernels.dropout(x, 1.0) is None
    assert kernels.dropout(x, 1e-6) is None  # rounds to no drop at 16 bits


_F32, _BF16 = torch.float32, torch.bfloat16


@pytest.mark.parametrize(("s_dtype", "y_dtype"), [(_F32, _F32), (_BF16, _BF16), (_BF16, _F32), (_F32, _BF16)])
@pytest.mark.parametrize("S", [1, 7, 16, 17, 35, 48, 100])
def test_softmax_dropout_equals_torchs_ops_with_the_same_mask(
    S: int, s_dtype: torch.dtype, y_dtype: torch.dtype
) -> None:
    """Forward and gradient against float64 softmax, dropout with :func:`kernels.dropout`'s mask for the same seed
    (the mask of element i of s is dropout's of element i), at row lengths around the 16-lane blocks."""
    g = torch.Generator().manual_seed(S)
    s = (torch.randn(3, 5, S, generator=g) * 4).to(s_dtype).requires_grad_()
    w = torch.randn(3, 5, S, generator=g)
    y = kernels.softmax_dropout(s, 0.25, y_dtype, generator=torch.Generator().manual_seed(11))
    assert y is not None and y.dtype == y_dtype and y.shape == s.shape
    mask = kernels.dropout(torch.ones(s.shape), 0.25, torch.Generator().manual_seed(11))
    assert mask is not None
    s64 = s.detach().double().requires_grad_()
    exact = s64.softmax(-1) * mask.double()
    tol = 2**-8 if torch.bfloat16 in (s_dtype, y_dtype) else 2e-6
    assert ((y.double() - exact).abs() <= exact.abs() * tol + 1e-7).all()
    (y.double() * w.double()).sum().backward()
    (exact * w.double()).sum().backward()
    assert s.grad is not None and s.grad.dtype == s_dtype and s64.grad is not None
    scale = s64.grad.abs().max().item()
    assert (s.grad.double() - s64.grad).abs().max().item() <= 4 * tol * scale + 1e-6


def test_softmax_dropout_in_csdi_attention_under_autocast() -> None:
    """CSDI's training attention uses it: bf16 weights out under bf16 autocast, float32 without; the result is
    softmax attention with the mask of the seed drawn from torch's generator."""
    from tsdiffusion.denoisers.csdi import _attention_with_dropout

    q, k, v = (torch.randn(4, 2, 9, 8, generator=torch.Generator().manual_seed(i)) for i in range(3))
    torch.manual_seed(0)
    out = _attention_with_dropout(q, k, v, 0.2)
    torch.manual_seed(0)
    weights = kernels.softmax_dropout(q @ k.transpose(-1, -2) * 8**-0.5, 0.2)
    assert weights is not None
    torch.testing.assert_close(out, weights @ v)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _attention_with_dropout(q, k, v, 0.2).dtype == torch.bfloat16
    assert kernels.softmax_dropout(torch.randn(2, 5000), 0.2) is None  # rows over 4096: torch's ops

"""The precision policy and the allocator switch (tsdiffusion.hardware)."""

from __future__ import annotations

import pytest
import torch

from tsdiffusion.hardware import Hardware, cpu_flags, detect, keep_freed_memory, precision_policy

AMX_CPU = "processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n"
ZEN4_CPU = "processor : 0\nflags : fpu sse avx512f avx512_bf16\n"
OLD_CPU = "processor : 0\nflags : fpu sse avx2\n"


@pytest.mark.parametrize(
    ("cpuinfo", "amx", "avx", "policy"),
    [(AMX_CPU, True, True, "bf16-mixed"), (ZEN4_CPU, False, True, "bf16-mixed"), (OLD_CPU, False, False, "32-true")],
)
def test_policy_follows_the_cpu(tmp_path, cpuinfo, amx, avx, policy):
    (tmp_path / "cpuinfo").write_text(cpuinfo)
    hw = detect("cpu", flags=cpu_flags(tmp_path / "cpuinfo"))
    assert (hw.amx, hw.avx512_bf16, hw.fast_bf16) == (amx, avx, amx or avx)
    assert precision_policy("auto", hw) == policy
    assert precision_policy(None, hw) == policy


def test_explicit_precision_wins_over_the_policy():
    fast = Hardware("cpu", amx=True)
    assert precision_policy("32-true", fast) == "32-true"  # the flag that turns bf16 off
    assert precision_policy("bf16-mixed", Hardware("cpu")) == "bf16-mixed"


def test_gpu_policy():
    assert precision_policy("auto", Hardware("cuda", cuda_bf16=True)) == "bf16-mixed"
    assert precision_policy("auto", Hardware("cuda", cuda_bf16=False)) == "32-true"


def test_missing_cpuinfo_gives_no_flags(tmp_path):
    assert cpu_flags(tmp_path / "absent") == set()


def test_keep_freed_memory_nests_and_computes_the_same():
    x = torch.randn(64, 1 << 16)  # 16 MiB: above glibc's initial mmap threshold
    ref = (x @ x.T).sum()
    with keep_freed_memory() as outer:
        with keep_freed_memory() as inner:
            assert inner == outer
            got = (x @ x.T).sum()
    assert torch.equal(got, ref)
    with keep_freed_memory(enabled=False) as off:
        assert off is False

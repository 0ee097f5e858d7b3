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


# -- the policy in the CLI / runs.instantiate, and the sampler under autocast ---------------------------------
def _quick_config(tmp_path, precision=None):
    import yaml

    cfg = yaml.safe_load(open("experiments/quick/csdi_physionet.yaml"))
    cfg["trainer"].pop("precision", None)
    cfg["trainer"]["logger"] = False
    cfg["trainer"]["default_root_dir"] = str(tmp_path)
    if precision is not None:
        cfg["trainer"]["precision"] = precision
    return cfg


@pytest.mark.parametrize(
    ("fast", "precision", "expected"),
    [(True, None, "bf16-mixed"), (False, None, "32-true"), (True, "32-true", "32-true")],
)
def test_cli_precision_follows_the_machine_unless_set(tmp_path, monkeypatch, fast, precision, expected):
    import tsdiffusion.hardware as hardware
    from tsdiffusion.runs import instantiate

    monkeypatch.setattr(hardware, "detect", lambda device="cpu", **_: Hardware("cpu", amx=fast))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    built = instantiate(_quick_config(tmp_path, precision))
    assert built.config["trainer"]["precision"] == expected  # the saved config names what ran
    assert built.trainer.precision == expected


def test_trainer_precision_picks_the_device(monkeypatch):
    import tsdiffusion.hardware as hardware

    monkeypatch.setattr(hardware, "detect", lambda device="cpu", **_: Hardware(torch.device(device).type,
                                                                                 cuda_bf16=True))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert hardware.trainer_precision(None, "gpu") == "bf16-mixed"  # the GPU's bf16
    assert hardware.trainer_precision("auto", "cpu") == "32-true"  # this mock CPU has no bf16 units
    assert hardware.trainer_precision("bf16-true", "cpu") == "bf16-true"


def test_sampler_arithmetic_stays_float32_under_bf16_autocast():
    import tsdiffusion.hardware as hardware
    from tsdiffusion.diffusion import GaussianDiffusion, draw_samples

    process = GaussianDiffusion(num_steps=20)
    net = torch.nn.Linear(3, 3)
    seen = []

    def denoiser(x, t, cond):
        seen.append((x.dtype, hardware._state.depth))
        out = net(x)
        assert out.dtype == torch.bfloat16  # autocast is on: the product itself is bf16
        return out

    cond = {"observed": torch.zeros(2, 5, 3)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for sampler in ("ddpm", "ddim", "dpmpp"):
            out = draw_samples(process, denoiser, cond, (2, 5, 3), 4, sampler=sampler, steps=5, max_batch=3)
            assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert {d for d, _ in seen} == {torch.float32}  # x_t never leaves float32
    assert {depth for _, depth in seen} == {1}  # every call ran with the allocator kept (glibc here)
    assert process.betas.dtype == process.alphas_cumprod.dtype == torch.float64

"""compile_denoiser: compiled and eager CSDI denoisers give the same outputs; the eager fallback warns."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

import tsdiffusion.compile as tc
from tsdiffusion.compile import compile_denoiser, compiler_available, is_compiled
from tsdiffusion.denoisers.csdi import CSDIDenoiser

AVAILABLE, WHY = compiler_available("cpu")


def _tiny(attention: str = "softmax") -> CSDIDenoiser:
    torch.manual_seed(0)
    net = CSDIDenoiser(
        4,
        channels=8,
        layers=1,
        heads=2,
        diffusion_embedding_dim=16,
        time_embedding_dim=8,
        feature_embedding_dim=4,
        feedforward_dim=8,
        attention=attention,
    )
    torch.nn.init.normal_(net.output_projection2.weight)  # zero-initialised: the output would be 0 either way
    return net.eval()


def _inputs(B: int = 2, L: int = 5, K: int = 3):
    g = torch.Generator().manual_seed(1)
    mask = (torch.rand(B, L, K, generator=g) < 0.5).float()
    cond = {"observed": torch.randn(B, L, K, generator=g), "cond_mask": mask}
    return torch.randn(B, L, K, generator=g), torch.randint(0, 50, (B,), generator=g), cond


@pytest.mark.slow
@pytest.mark.skipif(not AVAILABLE, reason=f"torch.compile unavailable: {WHY}")
def test_compiled_equals_eager() -> None:
    """Evaluation mode, no grad (a sampling call): compiled output = eager output to 1e-5 absolute and
    relative (float32; inductor's fused kernels reorder sums). The state dict keeps its names, and a deep
    copy's forward is bound to the copy. One forward graph (~1 min of CPU on a 2-core machine)."""
    torch._dynamo.reset()
    x, t, cond = _inputs()
    eager = _tiny()
    net = compile_denoiser(_tiny())
    assert is_compiled(net) and list(net.state_dict()) == list(eager.state_dict())
    with torch.no_grad():
        want, got = eager(x, t, cond), net(x, t, cond)
    assert want.abs().max() > 0.1  # not the zero-initialised output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    twin = copy.deepcopy(net)
    assert twin.forward.__self__ is twin and net.forward.__self__ is net


def test_no_compiler_runs_eagerly_with_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tc, "compiler_available", lambda device: (False, "no C++ compiler (test)"))
    net = _tiny()
    x, t, cond = _inputs()
    want = net(x, t, cond)
    with pytest.warns(UserWarning, match="no C.. compiler .test.; CSDIDenoiser runs eagerly"):
        same = compile_denoiser(net)
    assert same is net and not is_compiled(net)
    torch.testing.assert_close(net(x, t, cond), want, atol=0, rtol=0)


def test_failed_compilation_falls_back_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def broken_compile(fn, **kwargs):
        def run(*args, **kw):
            calls.append(1)
            raise tc._COMPILE_ERRORS[-1](RuntimeError("C++ compile error (test)"), None)

        return run

    monkeypatch.setattr(tc, "compiler_available", lambda device: (True, ""))
    monkeypatch.setattr(torch, "compile", broken_compile)
    net = _tiny()
    x, t, cond = _inputs()
    want = net(x, t, cond)
    compile_denoiser(net)
    with pytest.warns(UserWarning, match="torch.compile failed .*runs eagerly"):
        got = net(x, t, cond)
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        net(x, t, cond)  # no second attempt, no second warning
    assert calls == [1]

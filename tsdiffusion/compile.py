"""``torch.compile`` for denoisers, as an option with an eager fallback.

:func:`compile_denoiser` compiles a denoiser's ``forward`` in place: the module, its parameter names and its
state dict stay as they are (checkpoints and the weight converters keep working), and ``copy.deepcopy`` gives a
copy whose compiled forward is bound to the copy. Where no compiler can run (no C++ compiler for inductor on
CPU, a Python that dynamo does not support) or compilation fails on the first call, it warns once and runs
eagerly: the outputs are the same, only slower.

On CPU, inductor fuses the element-wise work between the matrix products (layer norms, GELU, the gated
activation, residual adds, dropout), which is most of a CSDI call that the GEMMs leave; it recompiles once per
new input shape unless ``dynamic=True``. Dropout in training draws different random numbers compiled than
eager (inductor's own generator): compiled and eager agree in evaluation mode, or with dropout off.
"""

from __future__ import annotations

import functools
import types
import warnings

import torch
from torch import nn


def compiler_available(device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether ``torch.compile`` (inductor) can run for ``device``, and if not, why (a sentence)."""
    try:
        import torch._dynamo as dynamo
    except ImportError as err:  # pragma: no cover - torch builds without dynamo
        return False, f"torch._dynamo cannot be imported ({err})"
    if not dynamo.is_dynamo_supported():
        return False, "torch.compile does not support this Python version"
    if torch.device(device).type == "cpu":
        try:
            from torch._inductor.cpp_builder import get_cpp_compiler

            get_cpp_compiler()
        except Exception as err:
            return False, f"no C++ compiler for inductor on CPU (install g++ or set CXX): {err}"
    return True, ""


# What a failed compilation raises on the first call (user errors in the model raise again eagerly).
_COMPILE_ERRORS: tuple[type[BaseException], ...] = ()
try:
    from torch._dynamo.exc import BackendCompilerFailed, InternalTorchDynamoError
    from torch._inductor.exc import InductorError

    _COMPILE_ERRORS = (BackendCompilerFailed, InternalTorchDynamoError, InductorError)
except ImportError:  # pragma: no cover - older or unusual torch builds
    pass


def compile_denoiser(
    net: nn.Module, mode: str | None = None, dynamic: bool | None = None, fullgraph: bool = False
) -> nn.Module:
    """Compile ``net.forward`` with ``torch.compile`` in place and return ``net``.

    Args:
        net: any denoiser (``forward(x_t, t, cond)``), on the device it will run on.
        mode: ``torch.compile``'s mode (``None``, ``"max-autotune"``, ``"reduce-overhead"`` for CUDA graphs
            on GPU, untested here).
        dynamic: ``torch.compile``'s ``dynamic`` (``None``: static shapes first, dynamic after a recompile).
        fullgraph: fail on a graph break instead of compiling the pieces.

    Without a usable compiler, or when compilation fails on the first call, a ``UserWarning`` says why and
    ``net`` runs eagerly.
    """
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    ok, why = compiler_available(device)
    if not ok:
        warnings.warn(f"compile_denoiser: {why}; {type(net).__name__} runs eagerly", stacklevel=2)
        return net
    eager = type(net).forward
    compiled = torch.compile(eager, mode=mode, dynamic=dynamic, fullgraph=fullgraph)
    state = {"failed": False}

    @functools.wraps(eager)
    def forward(self: nn.Module, *args, **kwargs):
        if not state["failed"]:
            try:
                return compiled(self, *args, **kwargs)
            except _COMPILE_ERRORS as err:
                state["failed"] = True
                warnings.warn(
                    f"compile_denoiser: torch.compile failed ({type(err).__name__}: {str(err)[:300]}); "
                    f"{type(self).__name__} runs eagerly",
                    stacklevel=2,
                )
        return eager(self, *args, **kwargs)

    net.forward = types.MethodType(forward, net)  # deepcopy rebinds a bound method to the copy
    return net


def is_compiled(net: nn.Module) -> bool:
    """Whether :func:`compile_denoiser` compiled ``net`` (an instance-level ``forward``)."""
    return "forward" in vars(net)

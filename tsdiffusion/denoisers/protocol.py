"""The denoiser contract: one call signature and capabilities each denoiser declares.

Tasks read :class:`Capabilities` (through :func:`capabilities_of`) instead of probing attributes with
``hasattr`` / ``getattr``: a new denoiser states what it can do in one place, and a module that states
nothing gets a clear error instead of a silent default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from tsdiffusion.batch import Cond


@dataclass(frozen=True)
class Capabilities:
    """What a denoiser declares about itself.

    Args:
        conditional: True if the network itself conditions on known values passed in ``cond`` (CSDI:
            ``cond["observed"]`` where ``cond["cond_mask"]`` is 1; TimeGrad: the RNN state ``cond["hidden"]``).
            False if it models ``x_t`` alone; a task then conditions it from outside with
            :class:`tsdiffusion.diffusion.Unconditional` (CSDI's unconditional ablation).
        num_classes: C > 0 if it reads a class label ``cond["label"]`` (B,) in ``[0, C)``; 0 if it sees no labels.
        features: True if it has ``features(x_t, t, cond) -> (B, H)``, pooled hidden activations
            (the representation task probes them).
    """

    conditional: bool
    num_classes: int = 0
    features: bool = False

    def __post_init__(self) -> None:
        if self.num_classes < 0:
            raise ValueError(f"Capabilities: num_classes must be >= 0, got {self.num_classes}")


@runtime_checkable
class Denoiser(Protocol):
    """``denoiser(x_t (B, L, K), t (B,) long, cond) -> (B, L, K)`` in the process's prediction units
    (eps, x0 or v), with declared :class:`Capabilities`."""

    capabilities: Capabilities

    def __call__(self, x_t: Tensor, t: Tensor, cond: Cond) -> Tensor: ...


def capabilities_of(denoiser: object) -> Capabilities:
    """The capabilities ``denoiser`` declares; a clear TypeError for a module that declares none."""
    caps = getattr(denoiser, "capabilities", None)
    if not isinstance(caps, Capabilities):
        raise TypeError(
            f"{type(denoiser).__name__} declares no capabilities: a denoiser needs a `capabilities` attribute "
            f"holding tsdiffusion.denoisers.Capabilities(conditional=..., num_classes=..., features=...) "
            f"(see tsdiffusion/denoisers/protocol.py); got {caps!r}"
        )
    return caps

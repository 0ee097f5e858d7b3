"""Callbacks: exact resumption of random state, figures to the active logger."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from tsdiffusion.errors import CheckpointError

#: ``ckpt_path`` values Lightning resolves itself (not a file name)
_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


def check_ckpt_path(ckpt_path: str | Path | None) -> None:
    """A ``ckpt_path`` naming a local file that does not exist is a :class:`CheckpointError` (before any data is
    read or any model built); Lightning's keywords (``last``, ``best``, ...) and URLs pass."""
    if ckpt_path is None:
        return
    text = str(ckpt_path)
    if text.split(":", 1)[0] in _CKPT_KEYWORDS or "://" in text or Path(text).expanduser().is_file():
        return
    raise CheckpointError(f"{text}: no such checkpoint file (ckpt_path)")


def _numpy_state_to_safe(state: tuple) -> tuple:
    """numpy's MT19937 state with its key array as a tensor, so ``torch.load(weights_only=True)`` accepts it."""
    kind, keys, pos, has_gauss, cached = state
    return kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)


def _numpy_state_from_safe(state: tuple) -> tuple:
    kind, keys, pos, has_gauss, cached = state
    return kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached


class RNGStateCallback(L.Callback):
    """Save the Python, numpy and torch (CPU and CUDA) random states in every checkpoint and restore them on
    resume, so that a resumed run draws the same masks, noise and batch order as an uninterrupted one.

    Lightning restores model, optimizer, scheduler and loop state but not the global random state.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": _numpy_state_to_safe(np.random.get_state()),  # noqa: NPY002 (the legacy global RNG is what we save)
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = state

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("rng_states")
        if state is None:
            return
        random.setstate(state["python"])
        np.random.set_state(_numpy_state_from_safe(state["numpy"]))  # noqa: NPY002
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])

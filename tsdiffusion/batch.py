"""The batch schema shared by every DataModule, task and denoiser.

Dimension letters, used in every docstring and einops pattern of the project:

    B batch, L time steps, K features (series), S samples, H hidden, F covariates (time features)

A batch is a ``dict`` of named tensors (never a positional tuple). DataModules produce
:class:`TSBatch`; tasks turn it into the :class:`Cond` that a denoiser receives.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypedDict

import torch
from torch import Tensor

from tsdiffusion.errors import BatchError


class TSBatch(TypedDict, total=False):
    """One batch of windows. Only ``observed`` and ``observed_mask`` are required.

    observed:       (B, L, K) float, normalised values, 0 where missing
    observed_mask:  (B, L, K) 0/1, 1 where the data has a value
    target_mask:    (B, L, K) 0/1, 1 where the evaluation protocol scores (held-out points, horizon)
    timepoints:     (B, L) float, time index of each step (CSDI's time embedding)
    feature_ids:    (B, K) long, index of each series (K may be a random subset of the series)
    time_features:  (B, L, F) float, calendar covariates (hour of day, ...) scaled to [-0.5, 0.5]
    loc:            (B, 1, K) float, metrics use ``observed * scale + loc`` (original units)
    scale:          (B, 1, K) float, > 0
    label:          (B,) long, class or outcome (representation, conditional generation)
    point_label:    (B, L) 0/1, anomaly label per time step (anomaly detection only, never for training)
    index:          (B,) long, the window's position in its split (keys its random draws at evaluation:
                    :mod:`tsdiffusion.streams`)
    """

    observed: Tensor
    observed_mask: Tensor
    target_mask: Tensor
    timepoints: Tensor
    feature_ids: Tensor
    time_features: Tensor
    loc: Tensor
    scale: Tensor
    label: Tensor
    point_label: Tensor
    index: Tensor


class Cond(TypedDict, total=False):
    """What a denoiser may see besides ``x_t`` and ``t``.

    observed:    (B, L, K) conditioning values, already multiplied by ``cond_mask``
    cond_mask:   (B, L, K) 0/1, 1 where the value is given to the model
    timepoints:  (B, L)
    feature_ids: (B, K) long
    time_features: (B, L, F)
    hidden:      (B, L, H) an encoder's state per step (TimeGrad)
    label:       (B,) long
    """

    observed: Tensor
    cond_mask: Tensor
    timepoints: Tensor
    feature_ids: Tensor
    time_features: Tensor
    hidden: Tensor
    label: Tensor


_BLK_FIELDS = ("observed", "observed_mask", "target_mask")
_MASK_FIELDS = ("observed_mask", "target_mask", "point_label")


def _expect_shape(name: str, value: Tensor, expected: tuple[int | None, ...], meaning: str) -> None:
    ok = value.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, value.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise BatchError(f"batch[{name!r}]: expected shape {meaning} = {want}, got {tuple(value.shape)}")


def check_batch(batch: Mapping[str, Tensor], *, source: str = "batch") -> tuple[int, int, int]:
    """Validate a :class:`TSBatch` and return its ``(B, L, K)``.

    Rejects missing required fields, non-tensors, wrong shapes, NaN/inf in observed values, masks that
    are not 0/1, a ``target_mask`` outside ``observed_mask`` and a non-positive ``scale``. The error
    names ``source`` (e.g. the DataModule or file), the field and what was expected.
    """
    try:
        return _check(batch)
    except BatchError as err:
        raise BatchError(f"{source}: {err}") from None


def _check(batch: Mapping[str, Tensor]) -> tuple[int, int, int]:
    for name in ("observed", "observed_mask"):
        if name not in batch:
            raise BatchError(f"missing required field {name!r} (have {sorted(batch)})")
    for name, value in batch.items():
        if name in TSBatch.__annotations__ and not isinstance(value, Tensor):
            raise BatchError(f"batch[{name!r}]: expected a torch.Tensor, got {type(value).__name__}")
    obs = batch["observed"]
    if obs.dim() != 3:
        raise BatchError(f"batch['observed']: expected shape (B, L, K), got {tuple(obs.shape)}")
    if not obs.is_floating_point():
        raise BatchError(f"batch['observed']: expected a floating dtype, got {obs.dtype}")
    B, L, K = obs.shape
    shapes = {
        "observed_mask": ((B, L, K), "(B, L, K)"),
        "target_mask": ((B, L, K), "(B, L, K)"),
        "timepoints": ((B, L), "(B, L)"),
        "feature_ids": ((B, K), "(B, K)"),
        "time_features": ((B, L, None), "(B, L, F)"),
        "loc": ((B, 1, K), "(B, 1, K)"),
        "scale": ((B, 1, K), "(B, 1, K)"),
        "label": ((B,), "(B,)"),
        "point_label": ((B, L), "(B, L)"),
        "index": ((B,), "(B,)"),
    }
    for name, (expected, meaning) in shapes.items():
        if name in batch:
            _expect_shape(name, batch[name], expected, meaning)
    for name in _MASK_FIELDS:
        if name in batch:
            m = batch[name]
            bad = ~((m == 0) | (m == 1))
            if bad.any():
                idx = tuple(int(i) for i in bad.nonzero()[0])
                raise BatchError(f"batch[{name!r}]: expected only 0/1, got {m[idx].item()!r} at index {idx}")
    observed_mask = batch["observed_mask"].bool()
    finite = torch.isfinite(obs)
    if not finite[observed_mask].all():
        idx = tuple(int(i) for i in (~finite & observed_mask).nonzero()[0])
        raise BatchError(f"batch['observed']: NaN/inf at observed index {idx} (expected finite values)")
    if not finite.all():
        raise BatchError("batch['observed']: NaN/inf at missing positions (expected 0 where observed_mask is 0)")
    if "target_mask" in batch and (batch["target_mask"].bool() & ~observed_mask).any():
        raise BatchError("batch['target_mask']: 1 where observed_mask is 0 (targets must be observed)")
    if "feature_ids" in batch and batch["feature_ids"].is_floating_point():
        raise BatchError(f"batch['feature_ids']: expected an integer dtype, got {batch['feature_ids'].dtype}")
    if "scale" in batch and not (batch["scale"] > 0).all():
        raise BatchError("batch['scale']: expected values > 0")
    return B, L, K


def repeat_batch(batch: Mapping[str, Tensor], n: int) -> dict[str, Tensor]:
    """Repeat every tensor ``n`` times along a new sample axis folded into the batch: ``b ... -> (b n) ...``."""
    return {k: v.repeat_interleave(n, dim=0) for k, v in batch.items()}

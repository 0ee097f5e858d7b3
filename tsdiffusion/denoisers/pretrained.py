"""Pretrained weights of the original CSDI code, loaded into :class:`CSDIDenoiser`.

The official PhysioNet model of Tashiro et al. (``save/pretrained/model.pth`` of ermongroup/CSDI, MIT license,
1.7 MB: 10% held out, fold 0, seed 1, the paper's architecture) in one line::

    from tsdiffusion.denoisers.pretrained import load_official_csdi_physionet
    denoiser = load_official_csdi_physionet()          # downloads once (sha256-checked, cached)
    denoiser = load_official_csdi_physionet("model.pth")  # or a local copy (checked too)

and in a CLI config as the denoiser (``experiments/imputation/physionet/csdi_official_checkpoint.yaml``)::

    denoiser:
      class_path: tsdiffusion.denoisers.pretrained.PretrainedCSDIDenoiser
      init_args: {checkpoint: null}   # null: the official PhysioNet model; or a path to an original state dict
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from tsdiffusion.denoisers.csdi import CSDIDenoiser, convert_original_state_dict
from tsdiffusion.errors import CheckpointError

OFFICIAL_COMMIT = "7f24a436f08d98853a6b43d4f7f04e5a65ecdf27"
OFFICIAL_CSDI_PHYSIONET_URL = (
    f"https://raw.githubusercontent.com/ermongroup/CSDI/{OFFICIAL_COMMIT}/save/pretrained/model.pth"
)

OFFICIAL_CSDI_PHYSIONET_SHA256 = "9acb4ee828a0c271466814c703d00c666caecb826fc5e9c2438ae39bd8d72771"
OFFICIAL_FILENAME = "csdi_physionet_official_7f24a43.pth"


def official_checkpoint_path(path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """A verified local copy of the official PhysioNet checkpoint: ``path`` if given, else the cached download."""
    from tsdiffusion.data.download import fetch, resolve

    if path is None:
        url, sha = OFFICIAL_CSDI_PHYSIONET_URL, OFFICIAL_CSDI_PHYSIONET_SHA256
        return fetch(url, sha, cache_dir=cache_dir, filename=OFFICIAL_FILENAME)
    return resolve(path, url=OFFICIAL_CSDI_PHYSIONET_URL, sha256=OFFICIAL_CSDI_PHYSIONET_SHA256)


def original_architecture(state: Mapping[str, Tensor]) -> dict:
    """CSDIDenoiser arguments read off an original state dict (every width is in a weight's shape; the number
    of heads is not, it must be given separately)."""
    try:
        num_features, feature_dim = state["embed_layer.weight"].shape
        channels, in_dim = state["diffmodel.input_projection.weight"].shape[:2]
        step_dim = state["diffmodel.diffusion_embedding.projection1.weight"].shape[1]
        side_dim = state["diffmodel.residual_layers.0.cond_projection.weight"].shape[1]
    except KeyError as err:
        raise CheckpointError(f"not a state dict of the original CSDI code (CSDI_base): no {err}") from err
    layers = len({k.split(".")[2] for k in state if k.startswith("diffmodel.residual_layers.")})
    unconditional = in_dim == 1
    linear = any(".layers.layers.0." in k for k in state)
    return {
        "num_features": int(num_features),
        "channels": int(channels),
        "layers": layers,
        "diffusion_embedding_dim": int(step_dim),
        "time_embedding_dim": int(side_dim - feature_dim - (0 if unconditional else 1)),
        "feature_embedding_dim": int(feature_dim),
        "unconditional": unconditional,
        "attention": "linear" if linear else "softmax",
    }


def read_original_state(path: str | Path) -> dict[str, Tensor]:
    """The state dict in a file saved by the original code (``torch.save(model.state_dict())``)."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{path}: expected a state dict (a mapping of tensors), got {type(state).__name__}")
    return dict(state)


class PretrainedCSDIDenoiser(CSDIDenoiser):
    """A :class:`CSDIDenoiser` with the architecture and weights of an original CSDI checkpoint.

    Args:
        num_features: K of the data (the CLI links it from the DataModule); must equal the checkpoint's.
        checkpoint: a state dict saved by the original code; ``None`` = the official PhysioNet model, downloaded
            once from ``OFFICIAL_CSDI_PHYSIONET_URL`` (sha256-checked) into ``cache_dir``.
        heads: attention heads (not stored in the weights; the paper and the official model: 8).
        cache_dir: download cache (default ``$TSDIFFUSION_CACHE`` or ``~/.cache/tsdiffusion``).
    """

    def __init__(
        self,
        num_features: int,
        checkpoint: str | None = None,
        heads: int = 8,
        cache_dir: str | None = None,
    ) -> None:
        path = official_checkpoint_path(None, cache_dir) if checkpoint is None else Path(checkpoint)
        state = read_original_state(path)
        arch = original_architecture(state)
        if arch["num_features"] != num_features:
            raise CheckpointError(
                f"{path}: the checkpoint has {arch['num_features']} features, the data {num_features}"
            )
        super().__init__(heads=heads, **arch)
        self.load_state_dict(convert_original_state_dict(state))
        self.checkpoint = str(path)


def load_official_csdi_physionet(
    path: str | Path | None = None, *, cache_dir: str | Path | None = None
) -> PretrainedCSDIDenoiser:
    """The official CSDI PhysioNet model (35 features, 8 heads) in eval mode; ``path``: a local copy."""
    local = official_checkpoint_path(path, cache_dir)
    return PretrainedCSDIDenoiser(35, checkpoint=str(local)).eval()

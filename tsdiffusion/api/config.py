"""Configs for the Python API in the CLI's format: presets by name (:func:`preset_config`) and ``name=value``
overrides put in the one section whose class accepts them (:func:`apply_overrides`)."""

from __future__ import annotations

import copy
import importlib
from collections.abc import Mapping
from typing import Any

from tsdiffusion.runs import complete_config

FRAME_DATA = "tsdiffusion.data.frame.FrameDataModule"


# -- presets ----------------------------------------------------------------------------------------


def _csdi(task: str, protocol: str, **task_args: Any) -> dict[str, Any]:
    """CSDI (Tashiro et al. 2021) at a CPU-friendly size: 4 layers x 64 channels, 50 quad steps."""
    denoiser = {"channels": 64, "layers": 4, "heads": 8, "diffusion_embedding_dim": 128,
                "time_embedding_dim": 128, "feature_embedding_dim": 16}  # fmt: skip
    process = {"num_steps": 50, "schedule": "quad", "beta_start": 1e-4, "beta_end": 0.5, "prediction": "eps"}
    return {
        "seed_everything": 1,
        "trainer": {"max_epochs": 50, "check_val_every_n_epoch": 5, "gradient_clip_val": None},
        "model": {
            "class_path": task,
            "init_args": {
                "denoiser": {"class_path": "tsdiffusion.denoisers.CSDIDenoiser", "init_args": denoiser},
                "process": {"class_path": "tsdiffusion.diffusion.GaussianDiffusion", "init_args": process},
                "num_samples": 50,
                "val_loss_steps": 10,
                **task_args,
            },
        },
        "data": {"class_path": FRAME_DATA, "init_args": {"protocol": protocol, "window_length": 48}},
    }


PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "csdi-imputation": ("tsdiffusion.tasks.imputation.ImputationTask", {"protocol": "imputation"}),
    "csdi-forecasting": ("tsdiffusion.tasks.forecasting.ForecastingTask", {"protocol": "forecast"}),
    "csdi-anomaly": ("tsdiffusion.tasks.anomaly.AnomalyTask", {"protocol": "imputation"}),
}


def available_presets() -> list[str]:
    """Names for :meth:`Model.create` whose task class exists in this installation."""
    return [name for name, (path, _) in PRESETS.items() if _import(path, missing_ok=True) is not None]


def preset_config(name: str) -> dict[str, Any]:
    """The full config of a preset, in the CLI's format."""
    if name not in PRESETS:
        raise ValueError(f"unknown model {name!r}; available: {available_presets()}")
    task, data = PRESETS[name]
    if _import(task, missing_ok=True) is None:
        raise ValueError(f"model {name!r} needs {task}, which this installation does not have")
    return _csdi(task, data["protocol"])


def _import(path: str, missing_ok: bool = False) -> Any:
    module, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        if missing_ok:
            return None
        raise


# -- overrides --------------------------------------------------------------------------------------


def _sections(config: dict[str, Any]) -> dict[str, tuple[dict[str, Any], set[str]]]:
    """Each overridable section of ``config``: its argument dict (created if absent) and the names its class
    accepts, read from the config completed by the CLI's parser."""
    full = complete_config(config)
    model, full_model = config["model"].setdefault("init_args", {}), full["model"]["init_args"]
    out = {"model": (model, set(full_model))}
    for part in ("denoiser", "process"):
        if isinstance(model.get(part), dict) and "class_path" in model[part]:
            out[part] = (model[part].setdefault("init_args", {}), set(full_model[part]["init_args"]))
    out["data"] = (config["data"].setdefault("init_args", {}), set(full["data"]["init_args"]))
    out["trainer"] = (config.setdefault("trainer", {}), set(full["trainer"]))
    return out


def apply_overrides(config: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Set ``name=value`` in the one section whose class accepts ``name`` (``model``, ``denoiser``,
    ``process``, ``data``, ``trainer``), or ``"section.name"`` explicitly. Unknown and ambiguous names are
    errors. ``num_features`` is linked from the data and cannot be set."""
    config = copy.deepcopy(dict(config))
    config.setdefault("data", {"class_path": FRAME_DATA, "init_args": {}})
    sections = _sections(config)
    for key, value in overrides.items():
        if key == "seed_everything":
            config[key] = value
            continue
        section, _, name = key.rpartition(".")
        owners = [section] if section else [s for s, (_, names) in sections.items() if name in names]
        owners = [s for s in owners if s in sections and name in sections[s][1] and name != "num_features"]
        if len(owners) != 1:
            where = "is accepted by " + ", ".join(owners) if owners else "is not an argument of any section"
            raise ValueError(f"override {key!r} {where}; write it as '<section>.{name}' with a section of "
                             f"{sorted(sections)} that accepts it")  # fmt: skip
        sections[owners[0]][0][name] = value
    return config

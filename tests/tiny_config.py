"""The tiny config of the tests that train for real (the CLI, the curve, the runner and the real-SLURM tests)."""

import copy
from pathlib import Path
from typing import Any

import yaml


def merged(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` merged in, mapping by mapping (a copy)."""
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def csv_logger(root: Path) -> dict[str, Any]:
    """A CSVLogger under ``root/runs/tiny``."""
    return {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(root / "runs"), "name": "tiny"},
    }


def tiny_config(root: Path, overrides: dict | None = None, **trainer) -> Path:
    """``root/tiny.yaml``: CSDI imputation on 40 embedded PhysioNet records, 2 batches per epoch (a fraction of a
    second each), 2 samples, DDIM 2 steps; ``overrides`` merged in (:func:`merged`), then ``trainer`` adds or
    overrides Trainer arguments (``max_epochs=...``)."""
    cfg = {
        "trainer": {
            "limit_train_batches": 2,
            "limit_val_batches": 1,
            "limit_test_batches": 1,
            "accelerator": "cpu",
            "enable_progress_bar": False,
            "enable_model_summary": False,
        },
        "model": {
            "class_path": "tsdiffusion.tasks.ImputationTask",
            "init_args": {
                "denoiser": {
                    "class_path": "tsdiffusion.denoisers.CSDIDenoiser",
                    "init_args": {
                        "channels": 8,
                        "layers": 1,
                        "heads": 1,
                        "diffusion_embedding_dim": 16,
                        "time_embedding_dim": 16,
                        "feature_embedding_dim": 4,
                    },
                },
                "process": {"class_path": "tsdiffusion.diffusion.GaussianDiffusion", "init_args": {"num_steps": 10}},
                "num_samples": 2,
                "sampler": "ddim",
                "sample_steps": 2,
                "val_loss_steps": 1,
            },
        },
        "data": {
            "class_path": "tsdiffusion.data.PhysioNetDataModule",
            "init_args": {"path": "embedded", "max_records": 40, "cache_dir": str(root / "cache"), "batch_size": 8},
        },
    }
    cfg = merged(merged(cfg, overrides or {}), {"trainer": trainer})
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path

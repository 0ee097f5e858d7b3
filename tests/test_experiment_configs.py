"""Every ``experiments/**/*.yaml`` through ``tsdiffusion fit --config X --trainer.fast_dev_run true`` (``test``
for the baselines, which do not train), on the small fixtures of ``conftest.py`` in the real formats: a config
that names ``../shared/data/...`` or a download is still parsed, built, trained one step and tested here.

The models shrink by command-line overrides (applied only where the config's class accepts the argument, read
from the config completed by the CLI's parser): a few channels, one layer, 2 samples, 2 sampling steps.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tsdiffusion.cli import TSDiffusionCLI
from tsdiffusion.runs import complete_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "experiments").rglob("*.yaml"))
SHRINK = {
    "model": {"num_samples": 2, "sample_steps": 2, "val_loss_steps": 1, "score_iterations": 2,
              "sample_batch_size": 4},
    "denoiser": {"channels": 8, "layers": 1, "heads": 2, "residual_layers": 2},
    "data": {"batch_size": 4, "eval_batch_size": 4, "max_records": 40},
}  # fmt: skip
SCORES = {  # what each task folder's test must report (the old per-task config tests' assertions); FINITE: not NaN
    "forecasting": {"test/crps", "test/crps_sum"},
    "imputation": {"test/crps"},
    "anomaly": {"test/auroc", "test/pa_f1", "test/threshold"},
    "generation": {"test/discriminative", "test/baseline_noise_discriminative", "test/marginal"},
    "representation": {"test/probe_accuracy", "test/probe_auroc", "test/kmeans_nmi", "test/raw_probe_accuracy"},
    "quick": {"test/crps"},
    "own_data": {"test/crps"},
    "synthetic": {"test/crps"},
    "guided": {"test/crps"},
}
FINITE = {"test/crps", "test/crps_sum", "test/threshold", "test/discriminative", "test/probe_accuracy"}
PREFIX = {"model": "model.init_args", "denoiser": "model.init_args.denoiser.init_args", "data": "data.init_args"}


def _stand_in(data_class: str, path: str | None, fixtures: dict[str, Path]) -> str | None:
    """The fixture that replaces a data path outside the repository; a path inside it is made absolute (the
    test runs in its temporary folder); ``None``: keep the config's (``embedded``)."""
    if path is not None and not str(path).startswith("../"):
        return str(ROOT / path) if (ROOT / path).exists() else None
    stand_ins = {"GluonTSDataModule": fixtures["gluonts"], "PhysioNetDataModule": "embedded",
                 "UCRDataModule": fixtures["ucr"], "SMAPMSLDataModule": fixtures["smap"],
                 "NABDataModule": fixtures["nab"]}  # fmt: skip
    if path is None and data_class not in stand_ins:  # a DataModule that reads no file (synthetic data)
        return None
    if data_class not in stand_ins:
        raise AssertionError(f"{data_class} reads {path!r}: add a fixture in its real format to tests/conftest.py")
    return str(stand_ins[data_class])


def overrides(config: Path, tmp_path: Path, fixtures: dict[str, Path]) -> tuple[str, list[str]]:
    """The subcommand and the command-line overrides that run ``config`` small and on fixtures."""
    full = complete_config(config)
    model, data = full["model"]["init_args"], full["data"]["init_args"]
    denoiser = model.get("denoiser") if isinstance(model.get("denoiser"), dict) else {}
    accepted = {"model": model, "denoiser": denoiser.get("init_args") or {}, "data": data}
    args = ["--trainer.fast_dev_run", "true", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]  # fmt: skip
    if isinstance(full["trainer"].get("logger"), dict):
        args += ["--trainer.logger.init_args.save_dir", str(tmp_path / "logs")]
    for section, values in SHRINK.items():
        for name, value in values.items():
            args += [f"--{PREFIX[section]}.{name}", str(value)] if name in accepted[section] else []
    if "cache_dir" in data:
        args += ["--data.init_args.cache_dir", str(tmp_path / "cache")]
    if "checkpoint" in accepted["denoiser"] and accepted["denoiser"]["checkpoint"] is None:  # a download
        args += ["--model.init_args.denoiser.init_args.checkpoint", str(fixtures["csdi_checkpoint"])]
    stand_in = _stand_in(full["data"]["class_path"].rsplit(".", 1)[-1], data.get("path"), fixtures)
    if stand_in is not None:
        args += ["--data.init_args.path", stand_in]
    baseline = model.get("baseline") is not None or "Baseline" in full["model"]["class_path"]
    return ("test", args) if baseline else ("fit", [*args, "--test_after_fit", "true"])


@pytest.fixture
def fixtures(gluonts_hourly, ucr_folder, smap_archive, nab_archive, csdi_original_checkpoint) -> dict[str, Path]:
    return {"gluonts": gluonts_hourly, "ucr": ucr_folder, "smap": smap_archive, "nab": nab_archive,
            "csdi_checkpoint": csdi_original_checkpoint}  # fmt: skip


def test_every_task_folder_has_its_scores():
    tasks = {p.relative_to(ROOT / "experiments").parts[0] for p in CONFIGS}
    assert tasks == SCORES.keys()
    assert len(CONFIGS) >= 40


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_config_fast_dev_run(config, tmp_path, fixtures, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a config writes relative to the working directory lands here
    subcommand, args = overrides(config, tmp_path, fixtures)
    cli = TSDiffusionCLI(args=[subcommand, "--config", str(config), *args])
    tested = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("test/")}
    required = SCORES[config.relative_to(ROOT / "experiments").parts[0]]
    assert required <= tested.keys(), f"{sorted(required - tested.keys())} missing from {sorted(tested)}"
    assert all(math.isfinite(tested[k]) for k in required & FINITE), tested  # AUROC may be NaN on tiny fixtures
    denoiser = getattr(cli.model, "denoiser", None)
    if hasattr(denoiser, "num_features"):
        assert denoiser.num_features == cli.datamodule.num_features  # linked from the data


def test_quick_spec_scores_every_model_beside_baselines_on_its_data():
    """benchmarks/specs/quick.yaml: every config is under experiments/quick (so the test above runs it), and each
    diffusion model's data set (DataModule, name, path) has at least one baseline row on the same targets."""
    import yaml

    from tsdiffusion.benchmark.spec import load_spec

    spec = load_spec(ROOT / "benchmarks" / "specs" / "quick.yaml")
    assert len(spec.seeds) >= 3

    def data_key(path: str) -> tuple:
        cfg = yaml.safe_load((ROOT / path).read_text())
        assert (ROOT / path).parent == ROOT / "experiments" / "quick", path
        data = cfg["data"]["init_args"]
        return cfg["data"]["class_path"], data.get("name"), data["path"]

    for path in spec.baselines:
        assert "baseline" in yaml.safe_load((ROOT / path).read_text())["model"]["init_args"], path
    covered = {data_key(p) for p in spec.baselines}
    for path in spec.configs:
        assert data_key(path) in covered, f"{path}: no baseline on its data in benchmarks/specs/quick.yaml"

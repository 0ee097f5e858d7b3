"""The benchmark report's summary: baselines are rows, the best row per metric is marked, every row shows its
ratio to the best baseline of its (task, data) set, flagged runs are listed and never averaged, the printed
table fits 120 columns, and ``--markdown`` prints the README table with machine and dates."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from tsdiffusion.benchmark import report
from tsdiffusion.benchmark.collect import task_kind
from tsdiffusion.benchmark.report import load_sweep
from tsdiffusion.benchmark.summary import TABLE_WIDTH, summary_table
from tsdiffusion.cli.benchmark import main

EMBEDDED = {"data": {"init_args": {"path": "embedded"}}}


def _run(sweep: Path, rid: str, task: str, dataset: str, model: str, seed: int, metrics: dict, *,
         baseline: str | None = None, flags: dict | None = None, config: str | None = None) -> None:  # fmt: skip
    folder = sweep / "runs" / rid
    folder.mkdir(parents=True)
    cfg = config or f"experiments/x/{rid.rsplit('-', 1)[0]}.yaml"
    (folder / "run.json").write_text(json.dumps({"id": rid, "config": cfg, "setting": ""}))
    (folder / "status.json").write_text(json.dumps({"state": "done"}))
    record = {"task": task, "dataset": dataset, "model": model, "seed": seed, "config": EMBEDDED, "metrics": metrics,
              "baseline": baseline, "flags": flags or {}, "cpu": "Intel(R) Xeon(R) Test CPU @ 2.0GHz",
              "machine": "CPU x86_64, 2 cores", "date": f"2026-11-{29 + seed % 2}T10:00:00+00:00"}  # fmt: skip
    (folder / "metrics.json").write_text(json.dumps(record))


@pytest.fixture
def sweep(tmp_path):
    """Imputation: CSDI (2 seeds) vs interpolation and mean; forecasting: TimeGrad (2 seeds, one flagged) vs
    the random walk and seasonal naive; an anomaly row (AUROC, higher is better)."""
    s = tmp_path / "sweep"
    imp, fc = "ImputationTask", "ForecastingTask"
    for seed, crps in ((1, 0.30), (2, 0.34)):
        _run(s, f"csdi-{seed}", imp, "physionet", "CSDIDenoiser", seed,
             {"crps": crps, "mae_median": crps + 0.1, "coverage_50": 0.48, "coverage_90": 0.88})  # fmt: skip
    _run(s, "interp-1", imp, "physionet", "InterpolationImputer", 1, {"crps": 0.40, "mae_median": 0.40},
         baseline="InterpolationImputer")  # fmt: skip
    _run(s, "mean-1", imp, "physionet", "MeanImputer", 1, {"crps": 0.80, "mae_median": 0.80}, baseline="MeanImputer")
    tg, ex = "TimeGradDenoiser", "exchange_rate_nips"
    _run(s, "timegrad-1", "TimeGradTask", ex, tg, 1, {"crps": 0.012, "crps_sum": 0.006})
    _run(
        s, "timegrad-2", "TimeGradTask", ex, tg, 2, {"crps": 1.2e13, "crps_sum": 9e12}, flags={"extreme_samples": 12.0}
    )
    _run(s, "rw-1", fc, ex, "RandomWalk", 1, {"crps": 0.010, "crps_sum": 0.005}, baseline="RandomWalk")
    _run(s, "snaive-1", fc, ex, "SeasonalNaive", 1, {"crps": 0.016, "crps_sum": 0.008}, baseline="SeasonalNaive")
    _run(s, "diff-1", "AnomalyTask", "smap", "CSDIDenoiser", 1, {"auroc": 0.9})
    _run(s, "median-1", "AnomalyTask", "smap", "RollingMedianScorer", 1, {"auroc": 0.6}, baseline="RollingMedianScorer")
    return s


def _line(text: str, *words: str) -> str:
    return next(x for x in text.splitlines() if all(w in x for w in words))


def test_task_kinds():
    assert [task_kind(t) for t in ("TimeGradTask", "GuidedForecastingTask", "ImputationTask", "AnomalyTask")] == [
        "forecasting", "forecasting", "imputation", "anomaly"]  # fmt: skip


def test_best_rows_ratios_and_flagged_runs(sweep):
    report(sweep)
    text = (sweep / "results.txt").read_text()
    csdi = _line(text, "imputation", "CSDI ")
    # CRPS 0.32 ± 0.028 is the best of its set (marked), its MAE is not (interpolation's 0.4 is); ratio to the
    # best baseline's CRPS (interpolation, 0.40) = 0.80
    assert "0.32 ± 0.028 *" in csdi and "0.42 ± 0.028 *" not in csdi and "0.80" in csdi and "0.48/0.88" in csdi
    interp = _line(text, "Interpolation †")
    assert "0.4 *" in interp and "1.00" in interp and "2.00" in _line(text, "Mean †")
    # forecasting: the flagged seed is not averaged (n = 1); the random walk is best, TimeGrad is 1.2 x it
    tg = _line(text, "forecasting", "TimeGrad")
    assert " 1 " in tg and "0.012 " in tg and "1.20" in tg and "e+13" not in tg.split("Flagged")[0]
    assert "0.01 *" in _line(text, "RandomWalk †") and "0.005 *" in _line(text, "RandomWalk")
    # anomaly: higher AUROC is better, ratio 0.9 / 0.6
    assert "0.9 *" in _line(text, "anomaly", "CSDI") and "1.50" in _line(text, "anomaly", "CSDI")
    assert "Flagged, not averaged (1 run(s))" in text and "timegrad-2" in _line(text, "extreme_samples=12.0")
    rows = list(csv.DictReader((sweep / "results.csv").open()))
    crps = next(
        r for r in rows if r["model"] == "CSDIDenoiser" and r["metric"] == "crps" and r["task"] == "ImputationTask"
    )
    assert crps["best"] == "True" and math.isclose(float(crps["ratio_to_best_baseline"]), 0.8)
    assert any(r["flags"] and r["metric"] == "crps" and float(r["mean"]) == 1.2e13 for r in rows)
    assert json.loads((sweep / "results.json").read_text())["flagged"][0]["run"] == "timegrad-2"


def test_printed_table_fits_120_columns_even_with_long_names(sweep, capsys):
    _run(sweep, "long-1", "ImputationTask", "a_data_set_with_a_very_long_name_indeed_" * 2,
         "AnExtremelyLongDenoiserClassNameThatGoesOnAndOnDenoiser", 1, {"crps": 0.5, "mae_median": 0.6})  # fmt: skip
    assert main(["report", str(sweep)]) == 0
    printed = capsys.readouterr()
    out = printed.out
    assert "task" in out and "x base" in out and "…" in out and "1 run(s) flagged" in printed.err
    assert max(len(x) for x in out.splitlines()) <= TABLE_WIDTH
    groups, _, _, entries, flagged, _ = load_sweep(sweep)
    narrow = summary_table(groups, entries, flagged, width=100)
    assert max(len(x) for x in narrow.splitlines()) <= 100


def test_markdown_for_the_readme(sweep, capsys):
    assert main(["report", str(sweep), "--markdown"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| task | data | model | n | CRPS | 2nd metric | cov 50/90 | x base | paper |")
    assert "| imputation | physionet° | CSDI | 2 | **0.32 ± 0.028** | 0.42 ± 0.028 | 0.48/0.88 | 0.80 | – |" in md
    assert "Machine: Intel(R) Xeon(R) Test CPU @ 2.0GHz (CPU x86_64, 2 cores). Runs of 2026-11-29 to 2026-11-30" in md
    assert "- timegrad-2:" in md and "results.md" not in md


def test_a_spec_lists_baselines_that_run_once_without_the_model_overrides():
    from tsdiffusion.benchmark.spec import NO_TRAINING, SpecError, expand, parse_spec

    raw = {"name": "b", "configs": ["m/csdi.yaml"], "baselines": ["b/naive.yaml"], "seeds": [3, 4],
           "grid": {"model.init_args.sample_steps": [5, 10]}, "overrides": {"trainer.max_epochs": 2}}  # fmt: skip
    runs = expand(parse_spec(raw))
    assert len(runs) == 2 * 2 + 1
    naive = [r for r in runs if r.config == "b/naive.yaml"]
    assert len(naive) == 1 and naive[0].seed == 3 and naive[0].setting() == ""
    assert naive[0].overrides == NO_TRAINING and NO_TRAINING["trainer.max_epochs"] == 1
    assert len(expand(parse_spec({"name": "only", "baselines": ["b/naive.yaml"]}))) == 1
    with pytest.raises(SpecError, match="not both empty"):
        parse_spec({"name": "none", "configs": [], "baselines": []})


def test_rows_of_one_class_are_told_apart_by_the_words_of_their_configs():
    from tsdiffusion.benchmark.collect import Group
    from tsdiffusion.benchmark.compare import model_labels

    def group(model: str, config: str) -> Group:
        return Group("ImputationTask", "physionet", model, config, "")

    groups = [
        group("CSDIDenoiser", "csdi_physionet"),
        group("InterpolationImputer", "interpolation_physionet"),
        group("InterpolationImputer", "interpolation_noise_physionet"),
        group("LOCFImputer", "locf_physionet"),
    ]
    assert model_labels(groups) == ["CSDI", "Interpolation", "Interpolation (noise)", "LOCF"]


def test_spec_notes_are_printed_under_the_tables_wrapped_to_the_width(sweep, capsys):
    from tsdiffusion.benchmark.spec import SpecError, parse_spec

    note = "On daily exchange rates the random walk is the honest floor: " + "no model here beats it. " * 8
    spec = parse_spec({"name": "n", "configs": ["a.yaml"], "notes": [note]})
    assert spec.notes == (" ".join(note.split()),)
    with pytest.raises(SpecError, match="notes"):
        parse_spec({"name": "n", "configs": ["a.yaml"], "notes": [1]})
    (sweep / "sweep.json").write_text(json.dumps({"name": "n", "notes": list(spec.notes)}))
    assert main(["report", str(sweep)]) == 0
    out = capsys.readouterr().out
    assert "Notes:" in out and "- On daily exchange rates the random walk is the honest floor" in out
    assert max(len(x) for x in out.splitlines()) <= TABLE_WIDTH
    assert main(["report", str(sweep), "--markdown"]) == 0
    assert f"- {spec.notes[0]}" in capsys.readouterr().out
    assert "Notes:" in (sweep / "results.md").read_text()


def test_embedded_data_is_marked_for_both_path_forms():
    from tsdiffusion.benchmark.collect import dataset_label

    def record(path):
        return {"dataset": "d", "config": {"data": {"init_args": {"path": path}}}}

    assert dataset_label(record("embedded")) == "d (embedded)"
    assert dataset_label(record("embedded:electricity_subset")) == "d (embedded)"
    assert dataset_label(record("../shared/data/x.csv")) == "d"

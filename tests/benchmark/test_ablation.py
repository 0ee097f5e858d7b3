"""The ablation report's statistics against hand-computed cases: paired differences by seed, Student-t intervals
with n - 1 degrees of freedom, the mark where an interval excludes zero, missing seeds dropping out of the pairs,
ratios to the optimum; and the spec's ``variants`` / ``ablation`` keys, the CLI and the output files."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from matplotlib.collections import PathCollection

from tsdiffusion.benchmark.ablation import (
    ablation_rows,
    diff_cell,
    figure,
    paired_interval,
    parse_references,
    references,
)
from tsdiffusion.benchmark.spec import SpecError, expand, parse_spec
from tsdiffusion.cli.benchmark import main

# Student t quantiles t_{0.975, dof} from a printed table (not from scipy, which the code uses)
T975 = {1: 12.706204736, 2: 4.302652730, 3: 3.182446305}


def test_paired_interval_hand_computed_includes_zero():
    # diffs 1, 2, 3: mean 2, sd 1, se 1/sqrt(3); half width 4.3026527 / sqrt(3) = 2.4841377
    p = paired_interval([1.0, 2.0, 3.0])
    assert p.n == 3 and p.mean == pytest.approx(2.0)
    assert p.lo == pytest.approx(2 - T975[2] / math.sqrt(3), abs=1e-7)
    assert p.hi == pytest.approx(2 + T975[2] / math.sqrt(3), abs=1e-7)
    assert p.lo == pytest.approx(-0.4841377, abs=1e-6) and not p.excludes_zero


def test_paired_interval_hand_computed_excludes_zero():
    # diffs -0.010, -0.012, -0.014, -0.012: mean -0.012, sd sqrt(8e-6 / 3) = 1.6329932e-3, n = 4 (3 dof):
    # half width 3.1824463 * 1.6329932e-3 / 2 = 2.5984e-3 -> [-0.0145984, -0.0094016]
    p = paired_interval([-0.010, -0.012, -0.014, -0.012])
    assert p.mean == pytest.approx(-0.012)
    assert p.hi == pytest.approx(-0.012 + T975[3] * math.sqrt(8e-6 / 3) / 2, abs=1e-10)
    assert p.hi == pytest.approx(-0.0094016, abs=1e-7) and p.excludes_zero
    assert diff_cell(p, reference=False).endswith("*")


def test_one_pair_has_no_interval_and_no_mark():
    p = paired_interval([0.5])
    assert p.n == 1 and math.isnan(p.lo) and not p.excludes_zero
    assert diff_cell(p, False) == "+0.5 (1 pair)" and diff_cell(None, True) == "ref"


def _rec(variant: str, seed: int, crps: float, other: str = "a", optimum: float = 0.1) -> dict:
    return {
        "seed": seed,
        "metrics": {"crps": crps},
        "data": {"optimal": {"crps": optimum}},
        "_run": {"config": "c.yaml", "seed": seed, "grid": {"variant": variant, "x.y.width": other}},
    }


def test_rows_pair_by_seed_and_drop_missing_seeds():
    # reference: seeds 1, 2, 3; "wide" lacks seed 3 and has seed 4 (no partner): pairs are seeds 1 and 2 only
    recs = [_rec("base", 1, 0.12), _rec("base", 2, 0.13), _rec("base", 3, 0.20)]
    recs += [_rec("wide", 1, 0.10), _rec("wide", 2, 0.12), _rec("wide", 4, 0.5)]
    levels = {"variant": ["base", "wide"], "x.y.width": ["a"]}
    rows = ablation_rows(recs, levels, {"variant": "base", "x.y.width": "a"})
    base, wide = [r for r in rows if r.factor == "variant"]
    assert base.reference and base.stats("crps") == pytest.approx((0.15, math.sqrt(0.0019), 3))
    # the means keep every seed of their side: wide = (0.10 + 0.12 + 0.5) / 3
    assert wide.stats("crps")[0] == pytest.approx(0.24)
    # ratio to the optimum 0.1, per seed then averaged
    assert wide.ratio("crps")[0] == pytest.approx(2.4)
    # diffs (seed 1) -0.02, (seed 2) -0.01: mean -0.015, sd 0.0070711, half width 12.7062 * 0.0070711 / sqrt 2
    p = wide.paired["crps"]
    assert p.n == 2 and p.mean == pytest.approx(-0.015)
    assert p.hi - p.mean == pytest.approx(T975[1] * math.sqrt(0.00005) / math.sqrt(2), rel=1e-8)
    assert not p.excludes_zero  # [-0.0785, 0.0485]


def test_main_effect_pairs_within_the_other_factors_levels():
    # two factors crossed; the width effect pairs (seed, variant) cells: diffs +0.01, +0.011, +0.009, +0.010
    recs = []
    for seed, (b0, w0) in zip((1, 2), ((0.100, 0.200), (0.110, 0.210))):
        recs += [_rec("base", seed, b0, "a"), _rec("base", seed, b0 + (0.01 if seed == 1 else 0.011), "b")]
        recs += [_rec("wide", seed, w0, "a"), _rec("wide", seed, w0 + (0.009 if seed == 1 else 0.010), "b")]
    levels = {"variant": ["base", "wide"], "x.y.width": ["a", "b"]}
    rows = ablation_rows(recs, levels, {"variant": "base", "x.y.width": "a"})
    b = next(r for r in rows if r.factor == "x.y.width" and r.level == "b")
    p = b.paired["crps"]
    sd = math.sqrt(sum((d - 0.01) ** 2 for d in (0.01, 0.011, 0.009, 0.010)) / 3)
    assert p.n == 4 and p.mean == pytest.approx(0.01)
    assert p.lo == pytest.approx(0.01 - T975[3] * sd / 2) and p.excludes_zero
    # the variant effect: wide - base = +0.1 in every cell (sd 0 up to rounding): excludes zero
    v = next(r for r in rows if r.factor == "variant" and r.level == "wide").paired["crps"]
    assert v.n == 4 and v.mean == pytest.approx(0.0995) and v.excludes_zero


def test_references_from_cli_spec_or_first_level():
    plan = {"variants": {"base": {}, "wide": {}}, "grid": {"a.b.steps": [10, 20]}, "ablation": {"variant": "wide"}}
    assert references(plan) == {"variant": "wide", "a.b.steps": "10"}
    assert references(plan, parse_references("steps=20")) == {"variant": "wide", "a.b.steps": "20"}
    with pytest.raises(ValueError, match="not one of its levels"):
        references(plan, {"variant": "tall"})


def test_spec_variants_expand_as_a_grid_axis_and_check_the_reference():
    raw = {"name": "a", "configs": ["c.yaml"], "seeds": [1, 2], "overrides": {"trainer.max_epochs": 3},
           "variants": {"base": {}, "wide": {"model.w": 64}}, "grid": {"model.lr": [0.1, 0.2]},
           "ablation": {"variant": "base"}}  # fmt: skip
    runs = expand(parse_spec(raw))
    assert len(runs) == 8 and runs[0].grid == {"variant": "base", "model.lr": 0.1}
    wide = [r for r in runs if r.grid["variant"] == "wide"]
    assert all(r.overrides["model.w"] == 64 and r.overrides["trainer.max_epochs"] == 3 for r in wide)
    assert "variant" not in runs[0].overrides and runs[0].setting() == "variant=base, lr=0.1"
    with pytest.raises(SpecError, match="not a level"):
        parse_spec({**raw, "ablation": {"variant": "tall"}})
    with pytest.raises(SpecError, match="axis of 'variants'"):
        parse_spec({**raw, "grid": {"variant": [1]}})


def _sweep(tmp_path: Path) -> Path:
    """A sweep folder by hand: base (seeds 1-3) vs wide (seeds 1-2) vs deep (seeds 1-3, a flagged seed 3)."""
    sweep = tmp_path / "sweep"
    plan = {"name": "t", "variants": {"base": {}, "wide": {}, "deep": {}}, "grid": {}, "ablation": {"variant": "base"}}
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps(plan))
    values = {("base", 1): 0.120, ("base", 2): 0.125, ("base", 3): 0.130, ("wide", 1): 0.110, ("wide", 2): 0.116,
              ("deep", 1): 0.121, ("deep", 2): 0.124, ("deep", 3): 9e9}  # fmt: skip
    for (variant, seed), crps in values.items():
        folder = sweep / "runs" / f"{variant}-{seed}"
        folder.mkdir(parents=True)
        run = {"id": folder.name, "config": "experiments/s/tg.yaml", "seed": seed, "grid": {"variant": variant},
               "setting": f"variant={variant}"}  # fmt: skip
        (folder / "run.json").write_text(json.dumps(run))
        (folder / "status.json").write_text(json.dumps({"state": "done"}))
        rec = {"task": "TimeGradTask", "dataset": "synthetic_forecast", "model": "TimeGradDenoiser", "seed": seed,
               "metrics": {"crps": crps, "crps_sum": crps / 2}, "data": {"optimal": {"crps": 0.1, "crps_sum": 0.05}},
               "flags": {"extreme_samples": 3.0} if crps > 1 else {}, "date": "2026-12-07T21:00:00+00:00"}  # fmt: skip
        (folder / "metrics.json").write_text(json.dumps(rec))
    return sweep


def test_cli_prints_and_writes_the_ablation(tmp_path, capsys):
    sweep = _sweep(tmp_path)
    assert main(["report", str(sweep), "--ablation"]) == 0
    out = capsys.readouterr().out
    wide = next(line for line in out.splitlines() if line.startswith("variant  wide"))
    # wide - base on seeds 1, 2: -0.010, -0.009 -> mean -0.0095, half width 12.706 * 0.000707 / sqrt 2 = 0.00635
    assert "-0.0095 [-0.0159, -0.00315] *" in wide and "1.130 ± 0.042" in wide
    deep = next(line for line in out.splitlines() if line.startswith("variant  deep"))
    assert " 2 " in deep and "*" not in deep  # the flagged seed 3 is left out: 2 seeds, diffs +0.001, -0.001
    assert "n - 1 degrees of freedom" in out
    md = (sweep / "ablation.md").read_text()
    assert "| variant | wide | 2 |" in md and md in (sweep / "results.md").read_text()
    rows = list(csv.DictReader((sweep / "ablation.csv").open()))
    wide_crps = next(r for r in rows if r["level"] == "wide" and r["metric"] == "crps")
    assert wide_crps["n_pairs"] == "2" and wide_crps["excludes_zero"] == "True" and wide_crps["seeds"] == "1 2"
    assert (sweep / "ablation.png").stat().st_size > 0
    # rerunning the report replaces the section instead of appending a second one
    main(["report", str(sweep)])
    assert (sweep / "results.md").read_text().count("## Ablation") == 1


def test_figure_has_one_dot_per_seed(tmp_path):
    recs = [_rec("base", s, 0.1 + s / 100) for s in (1, 2, 3)] + [_rec("wide", s, 0.1) for s in (1, 2)]
    rows = ablation_rows(recs, {"variant": ["base", "wide"]}, {"variant": "base"})
    fig = figure(rows, ["crps"])
    dots = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert [len(c.get_offsets()) for c in dots] == [3, 2]
    assert sorted(y for _, y in dots[1].get_offsets()) == [0.1, 0.1]

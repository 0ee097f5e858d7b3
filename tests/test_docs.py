"""The documentation site (``mkdocs.yml``, ``docs/``) builds strictly and says what the repository holds.

- ``mkdocs build --strict`` succeeds (a broken link, a missing anchor, an unresolvable ``:::`` API object or a
  docstring that documents a parameter the signature lacks fails it), and the same settings do fail a page with
  such defects;
- the two commands of ``docs/start.md`` are the README's and the CI's, and the main job's command runs as far as
  it can without training: with ``--dry-run`` it parses the spec and plans every run (each config of the spec is
  trained one step and tested by ``tests/test_experiment_configs.py``; the whole job is 8 minutes, and the test
  command would run this suite, so it is compared with CI's, not run);
- the Python blocks of ``docs/own-data.md`` run as written;
- every number of the table on ``docs/reproducing.md`` is its record's, every paper number is in
  ``benchmarks/specs/reference.yaml``, and every ``tsdiffusion fit`` command there rebuilds the record's config;
- every repository path the pages name exists.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1"}


def _mkdocs(config: Path, site: Path, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)


def _code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


# -- the site -----------------------------------------------------------------------------------------


def test_site_builds_strictly(tmp_path):
    site = tmp_path / "site"
    out = _mkdocs(ROOT / "mkdocs.yml", site, ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    # rendered, not raw: tables, images, included files and API entries are HTML
    reproducing = (site / "reproducing" / "index.html").read_text()
    assert "<table>" in reproducing and "0.268" in reproducing
    quick = (site / "results" / "quick" / "index.html").read_text()
    assert '<img alt="quick job: one dot per seed" src="../../benchmarks/results/quick/results.png"' in quick
    assert (site / "benchmarks" / "results" / "quick" / "results.png").is_file()
    assert "--8&lt;--" not in quick and "--8<--" not in quick and "Results: quick" in quick
    api = (site / "api" / "diffusion" / "index.html").read_text()
    assert 'id="tsdiffusion.diffusion.sample_ddpm"' in api
    assert ":class:" not in (site / "api" / "tasks" / "index.html").read_text()


@pytest.mark.parametrize(
    ("page", "named"),
    [("[gone](missing.md)", "missing.md"), ("[gone](index.md#nowhere)", "nowhere"),
     ("::: tsdiffusion.batch.NoSuchThing", "NoSuchThing")],
)  # fmt: skip
def test_strict_build_fails_on_a_broken_link_and_a_missing_api_object(tmp_path, page, named):
    """The site's own validation and mkdocstrings settings fail a page with a broken link, a missing anchor or
    an unknown API object, and name it."""
    loader = type("Loader", (yaml.SafeLoader,), {})
    loader.add_constructor("!relative", lambda *_: str(ROOT))
    ours = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=loader)
    handler = ours["plugins"][1]["mkdocstrings"]["handlers"]["python"]
    config = {
        "site_name": "t",
        "strict": True,
        "validation": ours["validation"],
        "plugins": [{"mkdocstrings": {"handlers": {"python": {"paths": [str(ROOT)], "options": {
            k: v for k, v in handler["options"].items() if k != "extensions"}}}}}],
    }  # fmt: skip
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(f"# t\n\n{page}\n")
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(config))
    out = _mkdocs(tmp_path / "mkdocs.yml", tmp_path / "site", tmp_path)
    assert out.returncode != 0
    assert named in out.stderr


def test_docstring_conventions_are_read_for_the_api_pages():
    """docs/griffe_roles.py: roles become code, a grouped entry one entry per name, a passed-on entry a paragraph."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("griffe_roles", DOCS / "griffe_roles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = textwrap.dedent("""\
        See :class:`tsdiffusion.tasks.base.DiffusionTask` and :func:`~f`.

        Args:
            lr, weight_decay: Adam settings
                (CSDI: 1e-3, 1e-6).
            **DiffusionTask arguments** (see :mod:`m`); with
            a baseline in place of a denoiser.
            plot: a figure.

        Returns:
            nothing.""")
    assert module.normalise(text).splitlines() == [
        "See `tsdiffusion.tasks.base.DiffusionTask` and `f`.",
        "",
        "Args:",
        "    lr: Adam settings",
        "        (CSDI: 1e-3, 1e-6).",
        "    weight_decay: Adam settings",
        "        (CSDI: 1e-3, 1e-6).",
        "    plot: a figure.",
        "",
        "**DiffusionTask arguments** (see `m`); with",
        "a baseline in place of a denoiser.",
        "",
        "Returns:",
        "    nothing.",
    ]


# -- the two commands ---------------------------------------------------------------------------------


def _two_commands() -> tuple[str, str]:
    page = (DOCS / "start.md").read_text()
    (main_job,) = _code_blocks(_section(page, "## The main job"), "bash")
    (tests,) = _code_blocks(_section(page, "## The tests"), "bash")
    return main_job.strip(), tests.strip()


def test_the_two_commands_are_the_readmes_and_the_cis():
    main_job, tests = _two_commands()
    readme = [block.strip() for block in _code_blocks((ROOT / "README.md").read_text(), "bash")]
    assert main_job in readme and tests in readme
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert ci[ci.index("# the README's test command:") + 1].strip() == tests
    steps = [step.strip() for step in main_job.split("&&")]
    assert steps[0] == "python3 -m venv .venv" and steps[1] == ". .venv/bin/activate"
    torch_pin = re.search(r"torch==[\w.+]+", main_job).group(0)
    assert any(torch_pin in line and "pip install" in line for line in ci)
    assert 'pip install -e ".[dev]"' in steps and any('-e ".[dev]"' in line for line in ci)
    assert steps[-1].startswith("tsdiffusion benchmark ")


def test_the_readme_table_is_the_committed_one():
    """The README's and the start page's table of the main job are the committed report's (results.txt)."""
    table = (ROOT / "benchmarks" / "results" / "quick" / "results.txt").read_text().splitlines()[:11]
    readme = (ROOT / "README.md").read_text()
    assert "\n".join(table) in readme
    assert '--8<-- "benchmarks/results/quick/results.txt:1:11"' in (DOCS / "start.md").read_text()
    assert len(readme.splitlines()) <= 150, "the README is the front page: the rest belongs in docs/"


@pytest.mark.slow  # a subprocess: a few seconds
def test_the_main_job_plans_every_run(tmp_path):
    from tsdiffusion.benchmark.spec import expand, load_spec

    main_job, _ = _two_commands()
    argv = shlex.split(main_job.split("&&")[-1])
    spec = load_spec(ROOT / argv[2])
    runs = expand(spec)
    out = subprocess.run([sys.executable, "-m", "tsdiffusion.cli", *argv[1:], "--dry-run", "--out", str(tmp_path)],
                         cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert f"{len(runs)} runs, {len(runs)} to run, 0 done" in out.stdout
    assert all(run.id in out.stdout and spec.resolve(run.config).is_file() for run in runs)


# -- your own data ------------------------------------------------------------------------------------


@pytest.mark.slow  # two tiny fits: ~20-40 s
def test_own_data_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _code_blocks((DOCS / "own-data.md").read_text(), "python")
    assert len(blocks) >= 3
    namespace: dict[str, Any] = {}
    for i, block in enumerate(blocks):
        exec(compile(textwrap.dedent(block), f"docs/own-data.md block {i}", "exec"), namespace)
    assert (tmp_path / "my_model" / "model.pt").is_file()
    assert namespace["imp"].median.shape == namespace["gappy"].shape


# -- reproducing the papers ---------------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def _reproducing_rows() -> list[dict[str, str]]:
    lines = (DOCS / "reproducing.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| paper |"))
    header = _cells(lines[start])
    rows, previous = [], {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        row = {h: (previous[h] if c == "same" else c) for h, c in zip(header, _cells(line), strict=True)}
        rows.append(row)
        previous = row
    return rows


def _record_path(cell: str) -> Path:
    (link,) = re.findall(r"\]\(([^)]+)\)", cell)
    return ROOT / link


def _values(record: dict, metric: str) -> list[float]:
    if "groups" in record:  # a sweep's results.json: the mean of each group
        return [g["metrics"][metric]["mean"] for g in record["groups"] if metric in g["metrics"]]
    return [record.get("metrics", record)[metric]]


def _shown(value: float, text: str) -> bool:
    """``value`` printed with the digits of ``text`` (e.g. 0.2298 for 0.22982) is ``text``."""
    decimals = len(text.split(".")[1]) if "." in text else 0
    return math.isclose(round(value, decimals), float(text), abs_tol=10 ** -(decimals + 3))


def _leaves(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _fit_config(command: str) -> dict[str, Any]:
    """The config a ``tsdiffusion fit --config X --a.b V ...`` command runs: X with the overrides applied."""
    argv = shlex.split(command)
    assert argv[:3] == ["tsdiffusion", "fit", "--config"], command
    leaves = _leaves(yaml.safe_load((ROOT / argv[3]).read_text()))
    for key, value in zip(argv[4::2], argv[5::2], strict=True):
        leaves[key.removeprefix("--")] = yaml.safe_load(value)
    return leaves


def test_reproducing_table_is_the_records():
    rows = _reproducing_rows()
    assert len(rows) >= 10
    reference = yaml.safe_load((ROOT / "benchmarks" / "specs" / "reference.yaml").read_text())
    for row in rows:
        metric = row["metric"].strip("`")
        record_file = _record_path(row["record"])
        record = json.loads(record_file.read_text())
        ours = row["ours"].split(" ± ")[0]
        assert any(_shown(v, ours) for v in _values(record, metric)), (row["paper"], ours, record_file)
        published = [e["metrics"][metric] for e in reference["entries"] if metric in e["metrics"]]
        assert float(row["paper number"]) in published, (row["paper"], row["paper number"])
        if "machine" in record:
            assert record["machine"].split(";")[0] in row["machine"], (row["paper"], record["machine"])
        command = row["command"].strip("`").split("` ")[0]
        if command.startswith("tsdiffusion fit"):
            ran = _leaves(record["config"])
            wanted = {k: v for k, v in _fit_config(command).items()
                      if k.startswith(("model.", "data.", "trainer.max_epochs", "trainer.limit_test_batches"))
                      and k != "data.init_args.path"}  # fmt: skip
            present = {k: v for k, v in wanted.items() if k in ran}  # keys renamed since the record are absent
            assert len(present) >= 0.9 * len(wanted), (command, sorted(set(wanted) - set(present)))
            assert {k: ran[k] for k in present} == present, command
        else:
            script = next(a for a in shlex.split(command) if "/" in a and not a.startswith("-"))
            assert (ROOT / script).is_file(), command


# -- paths --------------------------------------------------------------------------------------------

PATH = re.compile(r"(?<![\w/.])((?:experiments|benchmarks|tests|tsdiffusion|notebooks|docs)/[\w./-]*[\w/])")


@pytest.mark.parametrize("page", [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"], ids=lambda p: p.name)
def test_every_path_a_page_names_exists(page):
    """Repository paths written out in a page (code spans, commands, prose) exist; a path followed by a
    placeholder (``<task>``, ``{a,b}``, ``*``) is checked up to it."""
    text = page.read_text()
    named = {m.group(1) for m in PATH.finditer(text) if text[m.end() : m.end() + 1] not in ("<", "{", "*")}
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert not missing, f"{page.relative_to(ROOT)} names paths that do not exist: {missing}"

"""The package is typed: it ships ``py.typed`` and mypy (configured in ``pyproject.toml``) finds no error in it.

- ``tsdiffusion/py.typed`` exists and setuptools' package data names it, so an installed tsdiffusion is typed
  (PEP 561);
- the ``[tool.mypy]`` settings of ``pyproject.toml`` (``.ci/run`` runs ``python -m mypy`` with them on
  ``tsdiffusion/`` before the tests: a cold run reads torch's and Lightning's annotations and takes minutes on two
  shared cores, too slow for the suite) do fail a module with an implicit ``Optional`` and a body they check only with
  ``check_untyped_defs`` (so a pass above is a pass of those settings, not of a checker that checks nothing).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

pytest.importorskip("mypy", reason="mypy is in the dev extra: pip install -e '.[dev]'")


def _mypy(*args: str, cache: Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(PYPROJECT), "--cache-dir", str(cache), *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)


def test_py_typed_is_shipped():
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads TOML")
    assert (ROOT / "tsdiffusion" / "py.typed").is_file()
    package_data = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]["tsdiffusion"]
    assert "py.typed" in package_data


def test_mypy_settings_fail_what_they_should(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        textwrap.dedent(
            """
            def implicit_optional(x: int = None) -> int:
                return x

            def untyped():
                y: int = "not an int"
                return y
            """
        )
    )
    result = _mypy(str(bad), cache=tmp_path / "cache", cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "bad.py:2: error: Incompatible default for" in result.stdout, result.stdout
    assert "bad.py:6: error: Incompatible types in assignment" in result.stdout, result.stdout

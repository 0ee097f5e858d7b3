"""The package's import graph: no cycle inside ``tsdiffusion``, and the command line on top of everything.

Every ``import`` statement of every module is read with :mod:`ast`, wherever it stands (module level, inside a
function, under ``if TYPE_CHECKING``): a lazy import hides a cycle from the interpreter, not from a reader.
``from a.b import c`` is an edge to the module ``a.b.c`` when that is a module, else to ``a.b``. A package's
``__init__`` is the node of the package name; importing ``a.b.c`` is not counted as importing ``a.b``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tsdiffusion"

#: Entry-point files: run as ``python -m``, imported by nothing, part of the command line by role.
ENTRY_POINTS = {"tsdiffusion.benchmark.__main__", "tsdiffusion.cli.__main__"}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str], top: str = "tsdiffusion") -> set[str]:
    """The modules of ``known`` that ``name`` (its source at ``path``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known and target.startswith(top):  # a name inside a module
                target = target.rpartition(".")[0]
            if target in known and target != name:
                out.add(target)
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imports(name, path, set(mods), root.name) for name, path in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_inside_the_package():
    found = cycles(import_graph())
    assert not found, "import cycles (lazy imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_nothing_below_the_command_line_imports_it():
    graph = import_graph()
    below = {m for m in graph if m != "tsdiffusion.cli" and not m.startswith("tsdiffusion.cli.")} - ENTRY_POINTS
    offenders = sorted(f"{m} -> {t}" for m in below for t in graph[m] if t.split(".")[:2] == ["tsdiffusion", "cli"])
    assert not offenders, "modules below the CLI import it: " + ", ".join(offenders)


def test_runs_builds_without_the_command_line():
    graph = import_graph()
    assert "tsdiffusion.runs" in graph and not any(t.startswith("tsdiffusion.cli") for t in graph["tsdiffusion.runs"])


# -- the checker itself, on a package written for the test -------------------------------------------------


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_a_lazy_import_cycle_is_found(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.b import f\n",
        "b.py": "def f():\n    from pkg import a\n    return a\n",
        "c.py": "import pkg.a\n",
    })  # fmt: skip
    graph = import_graph(root)
    assert graph["pkg.b"] == {"pkg.a"} and graph["pkg.c"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.b"]]


def test_relative_imports_and_names_inside_modules_resolve(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "from .sub import thing\n",
        "sub/__init__.py": "from .mod import thing\n",
        "sub/mod.py": "from ..other import helper\nthing = 1\n",
        "other.py": "import os\nhelper = os.sep\n",
    })  # fmt: skip
    graph = import_graph(root)
    assert graph == {"pkg": {"pkg.sub"}, "pkg.sub": {"pkg.sub.mod"}, "pkg.sub.mod": {"pkg.other"}, "pkg.other": set()}
    assert cycles(graph) == []


@pytest.mark.parametrize("edge", ["import pkg.sub\n", "from pkg import sub\n"])
def test_a_package_that_imports_back_from_its_parent_is_a_cycle(tmp_path, edge):
    root = _package(tmp_path, {"__init__.py": "", "sub/__init__.py": "from pkg.sub.mod import x\n", "sub/mod.py": edge})
    assert cycles(import_graph(root)) == [["pkg.sub", "pkg.sub.mod"]]

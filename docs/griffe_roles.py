"""Griffe extension (named in mkdocs.yml) that reads the project's docstring conventions for the API pages.

- Sphinx roles (``:class:`X```, ``:func:`f```, ``:mod:`m```, ...) become plain code spans.
- In an ``Args:`` section, one entry for several parameters (``lr, weight_decay: ...``) becomes one entry per
  name with the shared description, so each parameter is listed and checked against the signature.
- An ``Args:`` entry that names the arguments passed on to a parent class in bold
  (``**DiffusionTask arguments** (see ...)``) is not a parameter: it becomes a paragraph after the section.

A parameter documented but absent from the signature still fails ``mkdocs build --strict``.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc):`~?([^`]+)`")
SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters):\s*$")
GROUPED = re.compile(r"^(\s*)(\w+(?:\s*,\s*\w+)+)(\s*\([^)]*\))?:(.*)$")
PASSED_ON = re.compile(r"^(\s*)(\*\*[^*]+\*\*.*)$")
ITEM = re.compile(r"^\s*\**\w+(\s*,\s*\w+)*(\s*\([^)]*\))?:")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def normalise(text: str) -> str:
    """The docstring ``text`` with roles as code spans, grouped ``Args`` entries split and passed-on ones moved
    after the section."""
    lines = ROLE.sub(r"`\1`", text).split("\n")
    out: list[str] = []
    after: list[str] = []
    i = 0
    while i < len(lines):
        out.append(lines[i])
        head = SECTION.match(lines[i])
        i += 1
        if not head:
            continue
        base = len(head.group(1))
        while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
            line = lines[i]
            item = _indent(line)
            body = [line]
            i += 1
            grouped, passed = GROUPED.match(line), PASSED_ON.match(line)
            while (
                i < len(lines)
                and lines[i].strip()
                and (_indent(lines[i]) > item or (passed and _indent(lines[i]) == item and not ITEM.match(lines[i])))
            ):
                body.append(lines[i] if _indent(lines[i]) > item else "    " + lines[i])
                i += 1
            if grouped:
                pad, names, kind, rest = grouped.groups()
                for name in re.split(r"\s*,\s*", names):
                    out.append(f"{pad}{name}{kind or ''}:{rest}")
                    out.extend(body[1:])
            elif passed:
                after.extend(["", passed.group(2).strip(), *(b.strip() for b in body[1:])])
            else:
                out.extend(body)
        if after:  # before the blank lines that end the section
            blanks = 0
            while out and not out[-1].strip():
                out.pop()
                blanks += 1
            out.extend([*after, *[""] * blanks])
            after = []
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = normalise(obj.docstring.value)

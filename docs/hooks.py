"""MkDocs hook (a local file named in mkdocs.yml, not a plugin).

The committed result files (records, figures, tables, notes) under ``benchmarks/results/`` and the run configs
under ``experiments/`` are published in the site at their repository paths, so a page links
``../benchmarks/results/quick/results.png`` and ``mkdocs build --strict`` checks that every such link exists.
Nothing is copied into ``docs/``: the site always shows the files as committed.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {"benchmarks/results": {".png", ".json", ".jsonl", ".csv", ".txt", ".log"}, "experiments": {".yaml"}}


def on_files(files: Files, config) -> Files:
    for folder, suffixes in PUBLISHED.items():
        for path in sorted((ROOT / folder).rglob("*")):
            if path.is_file() and path.suffix in suffixes:
                uri = path.relative_to(ROOT).as_posix()
                files.append(File.generated(config, uri, abs_src_path=str(path)))
    return files

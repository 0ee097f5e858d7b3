"""Reading the files of a container, a folder, a ``.tar(.gz)`` or a ``.zip``, without extracting it."""

from __future__ import annotations

import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from tsdiffusion.data.download import DataSourceError


def iter_members(path: str | Path, pattern: re.Pattern) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every file under ``path`` (folder, tar or zip) whose path matches ``pattern``."""
    path = Path(path)
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            name = p.relative_to(path).as_posix()
            if p.is_file() and pattern.search(name):
                yield name, p.read_bytes()
    elif zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                for name in sorted(zf.namelist()):
                    if pattern.search(name):
                        yield name, zf.read(name)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, lzma.LZMAError) as err:
            raise DataSourceError(f"{path}: a damaged zip archive ({err})") from err
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar:
                    if m.isfile() and pattern.search(m.name):
                        yield m.name, tar.extractfile(m).read()
        except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as err:
            raise DataSourceError(f"{path}: not a folder, zip or readable tar archive ({err})") from err

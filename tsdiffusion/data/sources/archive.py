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
            raise DataSourceError(f"{path}: a damaged zip archive ({archive_problem(path, err)})") from err
    else:
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar:
                    if m.isfile() and pattern.search(m.name):
                        yield m.name, tar.extractfile(m).read()
        except ARCHIVE_ERRORS as err:
            raise DataSourceError(
                f"{path}: not a folder, zip or readable tar archive ({archive_problem(path, err)})"
            ) from err


#: what reading a damaged, truncated or mislabelled archive raises
ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
_COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz"}
_SUFFIX_KIND = {".gz": "gzip", ".tgz": "gzip", ".bz2": "bzip2", ".xz": "xz"}


def archive_problem(path: Path, err: BaseException) -> str:
    """A short reason an archive could not be read: empty, compressed other than its suffix says, damaged or
    truncated, else the first line of ``err``."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        head = b""
    if path.is_file() and not head:
        return "empty file"
    kind = next((k for magic, k in _COMPRESSED.items() if head.startswith(magic)), None)
    named = _SUFFIX_KIND.get(path.suffix.lower())
    if named and kind != named:
        return f"named {path.suffix} but not {named}-compressed; it starts with {head!r}"
    if kind and isinstance(err, (EOFError, zlib.error, lzma.LZMAError, tarfile.ReadError)):
        return f"a damaged or truncated {kind} file: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
    return (str(err).splitlines() or [type(err).__name__])[0].rstrip(":")

"""Getting data files: canonical download with checksum and cache, or a local file/folder; safe extraction."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tsdiffusion.errors import DataSourceError

__all__ = ["DEFAULT_CACHE", "DataSourceError", "fetch", "resolve", "safe_extract", "sha256sum", "verify"]

DEFAULT_CACHE = Path(os.environ.get("TSDIFFUSION_CACHE", Path.home() / ".cache" / "tsdiffusion"))


def sha256sum(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: str | Path, sha256: str | None) -> Path:
    """Raise :class:`DataSourceError` unless ``path`` exists and (when given) matches ``sha256``."""
    path = Path(path)
    if not path.exists():
        raise DataSourceError(f"{path}: file not found")
    if sha256 is not None and path.is_file():
        got = sha256sum(path)
        if got != sha256:
            raise DataSourceError(f"{path}: checksum mismatch: expected sha256 {sha256}, got {got}")
    return path


def fetch(url: str, sha256: str | None, *, cache_dir: str | Path | None = None, filename: str | None = None) -> Path:
    """Return a verified local copy of ``url`` in ``cache_dir``, downloading it once (write then rename)."""
    cache = Path(cache_dir or DEFAULT_CACHE)
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / (filename or url.rsplit("/", 1)[-1])
    if target.exists():
        return verify(target, sha256)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=target.name + ".", suffix=".part")
    os.close(fd)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
        verify(tmp, sha256)
        os.replace(tmp, target)
    except OSError as err:
        raise DataSourceError(
            f"could not download {url} into {cache} ({err}); download it by hand and pass its local path"
        ) from err
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def resolve(path: str | Path | None, *, url: str, sha256: str | None, cache_dir: str | Path | None = None) -> Path:
    """A user's local file or folder if ``path`` is given (a file is checksum-verified), else the cached download."""
    if path is None:
        return fetch(url, sha256, cache_dir=cache_dir)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataSourceError(f"{p}: no such file or folder (expected a copy of {url})")
    return verify(p, sha256) if p.is_file() else p


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a tar archive into ``dest``, refusing members that would land outside it or are links/devices."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                if not target.is_relative_to(dest):
                    raise DataSourceError(f"{archive}: member {m.name!r} would extract outside {dest}")
                if not (m.isfile() or m.isdir()):
                    raise DataSourceError(f"{archive}: member {m.name!r} is not a regular file or folder")
            tar.extractall(dest, members=members, filter="data")
    except tarfile.TarError as err:
        raise DataSourceError(f"{archive}: not a readable tar archive ({err})") from err
    return dest

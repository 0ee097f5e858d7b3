"""Reading PhysioNet/CinC Challenge 2012 records into a :class:`Panel` (N stays, L = 48 hours, K = 35).

Records: every ``<RecordID>.txt`` of the set, in RecordID order, from a tar archive (read straight from it,
nothing is extracted) or a folder. A measurement at ``HH:MM`` lands in hour ``HH``; within an hour the last
line of the file wins; measurements at ``48:00`` and the descriptors outside :data:`ATTRIBUTES` are dropped.
Parsed arrays are cached as ``.npz`` keyed by the source's content and the parse parameters. The protocol
(hold-out, folds, normalisation) is in :class:`tsdiffusion.data.PhysioNetDataModule`.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import json
import logging
import math
import os
import re
import sys
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from tsdiffusion.data.download import DataSourceError, fetch, resolve, sha256sum, verify
from tsdiffusion.data.sources.archive import archive_problem
from tsdiffusion.data.sources.panel import VALUE_LIMIT, Panel, too_large

log = logging.getLogger(__name__)

#: The 35 variables of CSDI, in CSDI's order (index = ``feature_ids``).
ATTRIBUTES: tuple[str, ...] = (
    "DiasABP", "HR", "Na", "Lactate", "NIDiasABP", "PaO2", "WBC", "pH", "Albumin", "ALT", "Glucose",
    "SaO2", "Temp", "AST", "Bilirubin", "HCO3", "BUN", "RespRate", "Mg", "HCT", "SysABP", "FiO2", "K",
    "GCS", "Cholesterol", "NISysABP", "TroponinT", "MAP", "TroponinI", "PaCO2", "Platelets", "Urine",
    "NIMAP", "Creatinine", "ALP",
)  # fmt: skip
SEQ_LEN = 48
HEADER = "Time,Parameter,Value"

URL = "https://physionet.org/files/challenge-2012/1.0.0/set-a.tar.gz"
OUTCOMES_URL = "https://physionet.org/files/challenge-2012/1.0.0/Outcomes-a.txt"
#: sha256 of the official archive file: unknown offline (the shared copy is a re-packed container), so the
#: download is checked by :data:`SET_A_RECORDS_SHA256`, which does not depend on tar or gzip headers.
SET_A_SHA256: str | None = None
#: :func:`records_digest` of the 4000 official set-a record files (verified byte-identical to PhysioNet's).
SET_A_RECORDS_SHA256 = "0c90af4bbb41c696c9a1228b365060193ae852fda62074dfa3fabd93f7ff3ba6"
#: sha256 of Outcomes-a.txt as two independent public copies have it (not checked against PhysioNet itself).
OUTCOMES_A_SHA256 = "2613ea60ccda29f87571a7d6b09ad130858a8ccd66325bd073365925026883c2"

RESOURCES = Path(__file__).resolve().parents[2] / "resources"
EMBEDDED_ARCHIVE = RESOURCES / "physionet2012-set-a-first600.tar.gz"
EMBEDDED_OUTCOMES = RESOURCES / "physionet2012-Outcomes-a-first600.txt"
EMBEDDED_SHA256 = "1ee96a927ac769712a972c23b9f4c8060f601e35a0f2529dcc69a6c548c66f25"
EMBEDDED_OUTCOMES_SHA256 = "91418c8fe1ee86ebe74c888159da07d7f3cf8fef2faf50daae1558f481b3daec"

CACHE_VERSION = 1
_INDEX = {name: k for k, name in enumerate(ATTRIBUTES)}
_RECORD_NAME = re.compile(r"^(\d+)\.txt$")


class RecordParseError(DataSourceError):
    """A record or outcomes file does not follow the PhysioNet 2012 format; names the file and line."""


@dataclass(frozen=True)
class RecordFile:
    record_id: int
    name: str  # where it came from, for messages: ``archive.tar.gz:set-a/132539.txt`` or a file path
    data: bytes


@dataclass(frozen=True)
class ParsedRecords:
    """record_ids: (N,) int64 in increasing order; values: (N, L, K) float64, NaN where not measured;
    digest: :func:`records_digest` of *all* record files of the source (also with ``max_records``)."""

    record_ids: np.ndarray
    values: np.ndarray
    digest: str


# -- reading a set ----------------------------------------------------------------------------------


def read_record_files(source: str | Path) -> list[RecordFile]:
    """Every ``<RecordID>.txt`` of a set, in RecordID order, from a tar archive or a folder.

    A folder may be the set's folder or hold it as ``set-a/``. In an archive, all records must sit in one
    folder, and a member named with ``..`` or an absolute path is refused.
    """
    source = Path(source)
    files = _read_tar(source) if source.is_file() else _read_folder(source)
    if not files:
        raise DataSourceError(f"{source}: no record files '<RecordID>.txt' found")
    files.sort(key=lambda f: f.record_id)
    for a, b in itertools.pairwise(files):
        if a.record_id == b.record_id:
            raise DataSourceError(f"{source}: record {a.record_id} appears twice ({a.name}, {b.name})")
    return files


def _read_tar(archive: Path) -> list[RecordFile]:
    files, folders = [], set()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                path = _check_member(archive, member.name)
                match = _RECORD_NAME.match(path.name)
                if member.isfile() and match:
                    data = tar.extractfile(member).read()
                    files.append(RecordFile(int(match[1]), f"{archive}:{member.name}", data))
                    folders.add(str(path.parent))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise DataSourceError(f"{archive}: not a readable tar archive ({archive_problem(archive, err)})") from err
    if len(folders) > 1:
        raise DataSourceError(f"{archive}: records in several folders {sorted(folders)}; pass one set")
    return files


def _check_member(archive: Path, name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise DataSourceError(f"{archive}: member {name!r} points outside the archive's folder; refusing it")
    return path


def _read_folder(folder: Path) -> list[RecordFile]:
    root = folder / "set-a" if (folder / "set-a").is_dir() else folder
    return [
        RecordFile(int(match[1]), str(p), p.read_bytes())
        for p in root.iterdir()
        if (match := _RECORD_NAME.match(p.name)) and p.is_file()
    ]


def records_digest(files: list[RecordFile]) -> str:
    """sha256 over ``"<RecordID>.txt <sha256 of the file>\\n"`` lines in RecordID order: the content of a
    set, independent of the container (tar headers, gzip, folder layout)."""
    h = hashlib.sha256()
    for f in sorted(files, key=lambda f: f.record_id):
        h.update(f"{f.record_id}.txt {hashlib.sha256(f.data).hexdigest()}\n".encode())
    return h.hexdigest()


# -- parsing ----------------------------------------------------------------------------------------


def parse_record(text: str, name: str, record_id: int | None = None) -> np.ndarray:
    """One record file -> (L, K) float64, NaN where nothing was measured; the last value in an hour wins.

    Raises :class:`RecordParseError` naming ``name`` and the line for a bad header, a line that is not
    ``HH:MM,Parameter,Value`` with a finite number, or a RecordID line that disagrees with ``record_id``.
    """
    lines = text.split("\n")
    if lines[0].rstrip("\r") != HEADER:
        raise RecordParseError(f"{name}, line 1: expected the header {HEADER!r}, got {lines[0][:80]!r}")
    cells: dict[int, float] = {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        hour, param, value = _parse_line(line, name, lineno)
        k = _INDEX.get(param)
        if k is not None and hour < SEQ_LEN:
            cells[hour * len(ATTRIBUTES) + k] = value
        elif param == "RecordID" and record_id is not None and value != record_id:
            raise RecordParseError(f"{name}, line {lineno}: RecordID {value:g} does not match the file name")
    values = np.full((SEQ_LEN, len(ATTRIBUTES)), np.nan)
    values.flat[list(cells)] = list(cells.values())
    return values


def _parse_line(line: str, name: str, lineno: int) -> tuple[int, str, float]:
    try:
        time, param, text = line.rstrip("\r").split(",")
        hours, minutes = time.split(":")
        hour, value = int(hours), float(text)
        if hour < 0 or not 0 <= int(minutes) < 60 or not math.isfinite(value):
            raise ValueError
    except ValueError:
        raise RecordParseError(
            f"{name}, line {lineno}: expected 'HH:MM,Parameter,Value' with a finite number, got {line!r}"
        ) from None
    if abs(value) > VALUE_LIMIT:
        raise RecordParseError(f"{name}, line {lineno}: {param}: {too_large(value)}")
    return hour, param, value


def parse_records(files: list[RecordFile], max_records: int | None = None) -> ParsedRecords:
    """Parse the first ``max_records`` files (all if None), with a progress bar on stderr."""
    chosen = files[:max_records]
    values = np.empty((len(chosen), SEQ_LEN, len(ATTRIBUTES)))
    bar = tqdm(chosen, desc="parsing PhysioNet records", unit="rec", file=sys.stderr, mininterval=0.5)
    for i, f in enumerate(bar):
        try:
            text = f.data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = f.data.count(b"\n", 0, err.start) + 1
            raise RecordParseError(f"{f.name}, line {line}: not UTF-8 text ({err})") from None
        values[i] = parse_record(text, f.name, f.record_id)
    ids = np.array([f.record_id for f in chosen], dtype=np.int64)
    return ParsedRecords(ids, values, records_digest(files))


def read_outcomes(path: str | Path) -> dict[int, int]:
    """RecordID -> In-hospital_death (0/1) from an ``Outcomes-*.txt`` file."""
    try:
        lines = Path(path).read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise RecordParseError(f"{path}: not UTF-8 text ({err}); a binary file, or another encoding") from None
    header = lines[0].split(",") if lines else []
    if "RecordID" not in header or "In-hospital_death" not in header:
        raise RecordParseError(f"{path}, line 1: expected a header with RecordID and In-hospital_death")
    col_id, col_death = header.index("RecordID"), header.index("In-hospital_death")
    outcomes = {}
    for lineno, line in enumerate(lines[1:], start=2):
        cells = line.split(",")
        try:
            record_id, death = int(cells[col_id]), int(cells[col_death])
            if death not in (0, 1) or len(cells) != len(header):
                raise ValueError
        except (ValueError, IndexError):
            raise RecordParseError(f"{path}, line {lineno}: expected {len(header)} integers, got {line!r}") from None
        outcomes[record_id] = death
    return outcomes


# -- cache ------------------------------------------------------------------------------------------


def source_fingerprint(source: Path) -> str:
    """sha256 of an archive; for a folder, of its record files' names, sizes and modification times."""
    if source.is_file():
        return sha256sum(source)
    root = source / "set-a" if (source / "set-a").is_dir() else source
    stats = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in root.iterdir())
    return hashlib.sha256(json.dumps(stats).encode()).hexdigest()


def cache_key(source: Path, max_records: int | None) -> str:
    params = {
        "version": CACHE_VERSION,
        "source": source_fingerprint(source),
        "attributes": ATTRIBUTES,
        "seq_len": SEQ_LEN,
        "max_records": max_records,
    }
    return hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()


def load_records(source: Path, cache_dir: Path, max_records: int | None = None) -> tuple[ParsedRecords, Path, bool]:
    """Parsed records of ``source`` from the cache, or parsed now and cached. Returns (records, file, hit)."""
    key = cache_key(source, max_records)
    cache_file = cache_dir / f"parsed-{key[:24]}.npz"
    if cache_file.exists():
        try:
            return _load(cache_file, key), cache_file, True
        except (OSError, ValueError, KeyError, zlib.error) as err:
            log.warning("%s: unreadable cache (%s); parsing again", cache_file, err)
    parsed = parse_records(read_record_files(source), max_records)
    _save(cache_file, key, parsed)
    return parsed, cache_file, False


def _load(cache_file: Path, key: str) -> ParsedRecords:
    with np.load(cache_file) as z:
        if str(z["key"]) != key:
            raise ValueError("written for other parameters")
        values = np.full(tuple(z["shape"]), np.nan)
        values.flat[z["index"]] = z["observed"]
        return ParsedRecords(z["record_ids"], values, str(z["digest"]))


def _save(cache_file: Path, key: str, parsed: ParsedRecords) -> None:
    """Only the observed cells (about 20%): flat indices and float64 values, uncompressed (fast both ways)."""
    index = np.flatnonzero(~np.isnan(parsed.values))
    arrays = {"key": key, "digest": parsed.digest, "record_ids": parsed.record_ids}
    arrays |= {"shape": parsed.values.shape, "index": index, "observed": parsed.values.flat[index]}
    tmp = None
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_file.parent, prefix=cache_file.stem, suffix=".tmp.npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, cache_file)
    except OSError as err:
        log.warning("could not write the cache %s (%s); the next run parses again", cache_file, err)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)


# -- where a set comes from, and the panel -----------------------------------------------------------


def locate(path: str | None, cache_dir: Path) -> Path:
    """``"embedded"``: the package's first 600 records (checked); ``None``: the official set-a, downloaded once
    into ``cache_dir``; else a local ``.tar.gz`` or folder."""
    if path == "embedded":
        return verify(EMBEDDED_ARCHIVE, EMBEDDED_SHA256)
    if path is None:
        return fetch(URL, SET_A_SHA256, cache_dir=cache_dir)
    return resolve(path, url=URL, sha256=None)


def check_official(parsed: ParsedRecords, source: Path) -> None:
    """A download must hold the official set-a record files (:data:`SET_A_RECORDS_SHA256`)."""
    if parsed.digest != SET_A_RECORDS_SHA256:
        raise DataSourceError(
            f"{source}: checksum mismatch: its record files have sha256 {parsed.digest}, expected "
            f"{SET_A_RECORDS_SHA256} (the official set-a); delete it to download it again"
        )


def locate_outcomes(outcomes: str | None, path: str | None, cache_dir: Path) -> Path | None:
    """The outcomes file: the one given, the embedded one, the downloaded one, or ``Outcomes-<set>.txt`` next
    to (or inside) a local set; None when there is none."""
    if outcomes is not None:
        return verify(Path(outcomes).expanduser(), None)
    if path == "embedded":
        return verify(EMBEDDED_OUTCOMES, EMBEDDED_OUTCOMES_SHA256)
    if path is None:
        return fetch(OUTCOMES_URL, OUTCOMES_A_SHA256, cache_dir=cache_dir)
    source = Path(path).expanduser()
    match = re.search(r"set-([a-z])", source.name)
    name = f"Outcomes-{match[1] if match else 'a'}.txt"
    candidates = [source.parent / name] + ([source / name] if source.is_dir() else [])
    return next((p for p in candidates if p.is_file()), None)


def outcome_labels(path: Path, record_ids: np.ndarray) -> np.ndarray:
    """(N,) in-hospital death (0/1) of ``record_ids``; a record without a row is an error."""
    outcomes = read_outcomes(path)
    missing = [int(r) for r in record_ids if int(r) not in outcomes]
    if missing:
        raise DataSourceError(f"{path}: no row for records {missing[:5]} ({len(missing)} in all)")
    return np.array([outcomes[int(r)] for r in record_ids], dtype=np.int64)


def to_panel(parsed: ParsedRecords, source: str) -> Panel:
    """Records -> a :class:`Panel`: items are the RecordIDs, steps the hours 0..47, series :data:`ATTRIBUTES`."""
    return Panel.of(parsed.values, source, items=parsed.record_ids.tolist(), series=ATTRIBUTES)


# -- the embedded subset ----------------------------------------------------------------------------


def write_subset(
    source: str | Path, outcomes: str | Path, dest: str | Path, n_records: int = 600, set_name: str = "set-a"
) -> tuple[Path, Path]:
    """Write the first ``n_records`` records of ``source`` (RecordID order) as a deterministic
    ``<dest>/physionet2012-<set_name>-first<n>.tar.gz`` (official layout ``<set_name>/<id>.txt``; sorted,
    uid/gid 0, mtime 0, gzip -9 without name or time) and their rows of ``outcomes``, byte for byte."""
    files = read_record_files(source)[:n_records]
    dest = Path(dest)
    archive = dest / f"physionet2012-{set_name}-first{n_records}.tar.gz"
    letter = set_name.rsplit("-", 1)[-1]
    table = dest / f"physionet2012-Outcomes-{letter}-first{n_records}.txt"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(_tarinfo(set_name, tarfile.DIRTYPE, 0o755, 0))
        for f in files:
            tar.addfile(
                _tarinfo(f"{set_name}/{f.record_id}.txt", tarfile.REGTYPE, 0o644, len(f.data)),
                io.BytesIO(f.data),
            )
    with open(archive, "wb") as out, gzip.GzipFile("", "wb", compresslevel=9, fileobj=out, mtime=0) as gz:
        gz.write(buf.getvalue())
    lines = Path(outcomes).read_bytes().splitlines(keepends=True)
    keep = {str(f.record_id).encode() for f in files}
    table.write_bytes(b"".join([lines[0], *(ln for ln in lines[1:] if ln.split(b",", 1)[0] in keep)]))
    return archive, table


def _tarinfo(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info

"""Bad inputs for every reader (issue 30): each case writes files under ``tmp_path``, reads them with the reader a
user reaches, and checks the error class, that the message names the file at fault (and the line where known),
and that no input file was changed. The good variant of every layout reads, so the cases fail for their defect
alone."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tsdiffusion.data.frame import FrameDataError, FrameDataModule
from tsdiffusion.data.sources.anomaly import read_nab, read_smap_msl
from tsdiffusion.data.sources.gluonts import GluonTSFormatError, read_gluonts
from tsdiffusion.data.sources.physionet import RecordParseError, load_records, read_outcomes
from tsdiffusion.data.sources.ucr import TSFormatError, read_ts, read_ucr_split
from tsdiffusion.errors import DataError, DataFileNotFoundError, DataSourceError, TSDiffusionError

# -- good files, as bytes, per layout ---------------------------------------------------------------------

T = 40
STAMPS = pd.date_range("2021-01-01", periods=T, freq="D").strftime("%Y-%m-%d").tolist()


def csv_text(sep: str = ",", header: str = "timestamp,a,b", rows: dict[int, str] | None = None) -> str:
    lines = [header] + [f"{t},{np.sin(i / 3):.4f},{np.cos(i / 4):.4f}" for i, t in enumerate(STAMPS)]
    for i, row in (rows or {}).items():
        lines[i] = row
    return "\n".join(line.replace(",", sep) for line in lines) + "\n"


GOOD_CSV = csv_text()


def ts_text(value: str = "1.5") -> str:
    return "@problemName X\n@univariate true\n@classLabel true a b\n@data\n" + f"1.0,2.0,{value}:a\n0.5,0.1,0.2:b\n"


def write_gluonts(root: Path, *, train_line: bytes | None = None, metadata: bytes | None = None,
                  gz: bytes | None = None) -> Path:  # fmt: skip
    """GluonTS layout, 2 series, 20 train steps, one test window of H=2; a part can be replaced by raw bytes."""
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "metadata.json").write_bytes(
        metadata if metadata is not None else json.dumps({"freq": "D", "prediction_length": 2}).encode()
    )
    line = lambda n, k: json.dumps({"start": "2021-01-01", "target": [float(k + i % 5) for i in range(n)]})
    train = f"{line(20, 0)}\n{line(20, 1)}\n".encode()
    if train_line is not None:
        train = f"{line(20, 0)}\n".encode() + train_line
    if gz is not None:
        (root / "train" / "data.json.gz").write_bytes(gz)
    else:
        (root / "train" / "data.json").write_bytes(train)
    (root / "test" / "data.json").write_text(f"{line(22, 0)}\n{line(22, 1)}\n")
    return root


RECORD = "Time,Parameter,Value\n00:00,RecordID,{id}\n00:00,Age,54\n00:07,HR,{hr}\n01:37,Temp,36.5\n"


def write_physionet(root: Path, *, hr: str = "80", raw: bytes | None = None) -> Path:
    """A set folder of 3 records; record 132540 can be replaced by raw bytes."""
    root.mkdir(parents=True)
    for rid in (132539, 132540, 132541):
        data = RECORD.format(id=rid, hr=hr if rid == 132540 else "70").encode()
        (root / f"{rid}.txt").write_bytes(raw if raw is not None and rid == 132540 else data)
    return root


def write_nab(root: Path, csv: bytes | None = None) -> Path:
    stamps = pd.date_range("2021-01-01", periods=30, freq="5min").strftime("%Y-%m-%d %H:%M:%S")
    (root / "labels").mkdir(parents=True)
    (root / "data" / "cat").mkdir(parents=True)
    windows = {"cat/x.csv": [[stamps[10], stamps[12]]]}
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    good = "timestamp,value\n" + "".join(f"{s},{i % 7}\n" for i, s in enumerate(stamps))
    (root / "data" / "cat" / "x.csv").write_bytes(good.encode() if csv is None else csv)
    return root


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_smap(root: Path, *, train: bytes | None = None, labels: bytes | None = None) -> Path:
    rng = np.random.default_rng(0)
    for part in ("train", "test"):
        (root / part).mkdir(parents=True)
    (root / "train" / "P-1.npy").write_bytes(train if train is not None else npy(rng.normal(size=(30, 2))))
    (root / "test" / "P-1.npy").write_bytes(npy(rng.normal(size=(20, 2))))
    rows = 'chan_id,spacecraft,anomaly_sequences,class,num_values\nP-1,SMAP,"[[5, 8]]",[point],20\n'
    (root / "labeled_anomalies.csv").write_bytes(labels if labels is not None else rows.encode())
    return root


def tar_gz(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return dest


# -- the readers, as a user reaches them --------------------------------------------------------------------


def frame(path: Path):
    return FrameDataModule(path=str(path)).panel()


# -- the cases: (id, writer(tmp_path) -> file the reader gets, reader, error class, text the message names) ----

Writer = Callable[[Path], Path]


def put(name: str, data: bytes | str) -> Writer:
    def write(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    return write


GOOD_GZ = gzip.compress(GOOD_CSV.encode())
CASES = [
    # own data: CSV / TSV / gz / npy through FrameDataModule
    ("csv-missing", lambda tmp: tmp / "nope.csv", frame, DataFileNotFoundError, "nope.csv"),
    ("csv-empty", put("empty.csv", b""), frame, FrameDataError, "empty.csv: empty file"),
    ("csv-blank-lines", put("blank.csv", b"\n \n\n"), frame, FrameDataError, "blank.csv: empty file"),
    ("csv-header-only", put("head.csv", "timestamp,a\n"), frame, FrameDataError, "head.csv: a header line but no"),
    ("csv-binary", put("bin.csv", bytes(range(256)) * 4), frame, FrameDataError, "bin.csv, line 1: a NUL byte"),
    (
        "csv-binary-no-nul",
        put("bin2.csv", bytes(range(128, 256)) * 4),
        frame,
        FrameDataError,
        "bin2.csv, line 1: not UTF-8",
    ),
    (
        "csv-latin1",
        put("latin.csv", csv_text(rows={7: "2021-01-07,1.0,caf\xe9"}).encode("latin-1")),
        frame,
        FrameDataError,
        "latin.csv, line 8: not UTF-8",
    ),
    ("csv-utf16", put("u16.csv", GOOD_CSV.encode("utf-16")), frame, FrameDataError, "u16.csv: UTF-16"),
    (
        "csv-ragged",
        put("ragged.csv", csv_text(rows={5: f"{STAMPS[4]},1.0,2.0,3.0"})),
        frame,
        FrameDataError,
        "ragged.csv, line 6: 4 fields but the header has 3",
    ),
    (
        "csv-every-row-extra",
        put("extra.csv", csv_text(header="a,b")),
        frame,
        FrameDataError,
        "extra.csv, line 2: 3 fields but the header has 2",
    ),
    (
        "csv-unclosed-quote",
        put("quote.csv", csv_text(rows={3: f'{STAMPS[2]},"1.0,2.0'})),
        frame,
        FrameDataError,
        "quote.csv: cannot be read",
    ),
    (
        "csv-semicolons",
        put("semi.csv", csv_text(sep=";")),
        frame,
        FrameDataError,
        "semi.csv, line 1: the header 'timestamp;a;b' reads as one column: the file seems semicolon-separated",
    ),
    ("tsv-commas", put("comma.tsv", GOOD_CSV), frame, FrameDataError, "comma.tsv, line 1: the header"),
    (
        "csv-duplicate-columns",
        put("dup.csv", csv_text(header="timestamp,a,a")),
        frame,
        FrameDataError,
        "dup.csv, line 1: columns 2 and 3 are both named 'a'",
    ),
    (
        "csv-1e308",
        put("huge.csv", csv_text(rows={9: f"{STAMPS[8]},1e308,0.5"})),
        frame,
        FrameDataError,
        "huge.csv, line 10: column 'a': value 1e+308 is beyond the float32 range",
    ),
    (
        "csv-beyond-float32",
        put("big.csv", csv_text(rows={3: f"{STAMPS[2]},0.5,-4e38"})),
        frame,
        FrameDataError,
        "big.csv, line 4: column 'b': value -4e+38",
    ),
    ("gz-not-gzip", put("plain.csv.gz", GOOD_CSV), frame, FrameDataError, "plain.csv.gz: named .gz but not gzip"),
    (
        "gz-truncated",
        put("cut.csv.gz", GOOD_GZ[: len(GOOD_GZ) // 2]),
        frame,
        FrameDataError,
        "cut.csv.gz: a damaged or truncated gzip",
    ),
    ("csv-is-gzip", put("packed.csv", GOOD_GZ), frame, FrameDataError, "packed.csv: a gzip file, not .csv text"),
    ("csv-is-zip", lambda tmp: _zip(tmp / "z.csv"), frame, FrameDataError, "z.csv: a zip file"),
    ("npy-garbage", put("arr.npy", b"not an array"), frame, FrameDataError, "arr.npy: not a readable .npy"),
    (
        "npy-huge",
        put("arrh.npy", npy(np.array([[1.0, 2.0], [1e300, 0.0]]))),
        frame,
        FrameDataError,
        "arrh.npy: index (0, 1, 0): value 1e+300",
    ),
    # UCR / UEA .ts, from a file and from an archive
    ("ts-empty", put("E_TRAIN.ts", b""), read_ts, TSFormatError, "E_TRAIN.ts: empty file"),
    ("ts-binary", put("B_TRAIN.ts", bytes(range(128, 256))), read_ts, TSFormatError, "B_TRAIN.ts, line 1: not UTF-8"),
    (
        "ts-latin1",
        put("L_TRAIN.ts", ts_text().replace("@classLabel true a b", "@classLabel true \xe9 b").encode("latin-1")),
        read_ts,
        TSFormatError,
        "L_TRAIN.ts, line 3: not UTF-8",
    ),
    ("ts-huge", put("H_TRAIN.ts", ts_text("2e308")), read_ts, TSFormatError, "H_TRAIN.ts, line 5: value 3"),
    (
        "ts-archive-not-gzip",
        put("X.tar.gz", ts_text()),
        lambda p: read_ucr_split(p, "X", "TRAIN"),
        DataSourceError,
        "X.tar.gz: not a folder, zip or readable tar archive (named .gz but not gzip-compressed",
    ),
    # GluonTS folders and archives
    (
        "gluonts-binary-line",
        lambda tmp: write_gluonts(tmp / "g", train_line=b'{"start": "\xff\xfe"}\n'),
        read_gluonts,
        GluonTSFormatError,
        "train/data.json, line 2: not UTF-8",
    ),
    (
        "gluonts-gz-not-gzip",
        lambda tmp: write_gluonts(tmp / "g", gz=b'{"start": "2021-01-01"}'),
        read_gluonts,
        GluonTSFormatError,
        "train/data.json.gz: not gzip-compressed",
    ),
    (
        "gluonts-metadata-empty",
        lambda tmp: write_gluonts(tmp / "g", metadata=b""),
        read_gluonts,
        GluonTSFormatError,
        "metadata.json: not valid JSON",
    ),
    (
        "gluonts-huge-target",
        lambda tmp: write_gluonts(
            tmp / "g", train_line=b'{"start": "2021-01-01", "target": [' + b"1.0, " * 19 + b"1e39]}\n"
        ),
        read_gluonts,
        GluonTSFormatError,
        "train/data.json, line 2: field 'target', step 19: value 1e+39",
    ),
    (
        "gluonts-tar-not-gzip",
        put("g.tar.gz", b"metadata"),
        read_gluonts,
        DataSourceError,
        "g.tar.gz: not a folder or a readable tar archive (named .gz but not gzip",
    ),
    # PhysioNet 2012: records in a folder or an archive, and the outcomes file
    (
        "physionet-binary-record",
        lambda tmp: write_physionet(tmp / "set-a", raw=bytes(range(128, 256))),
        lambda p: load_records(p, p.parent / "cache"),
        RecordParseError,
        "132540.txt, line 1: not UTF-8",
    ),
    (
        "physionet-latin1-record",
        lambda tmp: write_physionet(
            tmp / "set-a", raw=(RECORD.format(id=132540, hr=1) + "02:00,Caf\xe9,1\n").encode("latin-1")
        ),
        lambda p: load_records(p, p.parent / "cache"),
        RecordParseError,
        "132540.txt, line 6: not UTF-8",
    ),
    (
        "physionet-huge-value",
        lambda tmp: write_physionet(tmp / "set-a", hr="1e300"),
        lambda p: load_records(p, p.parent / "cache"),
        RecordParseError,
        "132540.txt, line 4: HR: value 1e+300 is beyond the float32 range",
    ),
    (
        "physionet-archive-not-gzip",
        put("set-a.tar.gz", RECORD),
        lambda p: load_records(p, p.parent / "cache"),
        DataSourceError,
        "set-a.tar.gz: not a readable tar archive (named .gz but not gzip",
    ),
    (
        "physionet-archive-truncated",
        lambda tmp: _truncated(tar_gz(write_physionet(tmp / "set-a"), tmp / "s.tar.gz")),
        lambda p: load_records(p, p.parent / "cache"),
        DataSourceError,
        "s.tar.gz: not a readable tar archive (a damaged or truncated gzip file",
    ),
    (
        "physionet-outcomes-latin1",
        put("Outcomes-a.txt", "RecordID,In-hospital_death\n132539,0\n# \xe9\n".encode("latin-1")),
        read_outcomes,
        RecordParseError,
        "Outcomes-a.txt: not UTF-8",
    ),
    # NAB and SMAP / MSL
    ("nab-empty-csv", lambda tmp: write_nab(tmp / "NAB", b""), read_nab, FrameDataError, "x.csv: empty file"),
    (
        "nab-ragged",
        lambda tmp: write_nab(tmp / "NAB", b"timestamp,value\n2021-01-01 00:00:00,1,2\n2021-01-01 00:05:00,1\n"),
        read_nab,
        FrameDataError,
        "x.csv, line 2",
    ),
    (
        "nab-non-numeric",
        lambda tmp: write_nab(tmp / "NAB", b"timestamp,value\n2021-01-01 00:00:00,1\n2021-01-01 00:05:00,abc\n"),
        read_nab,
        FrameDataError,
        "data/cat/x.csv, line 3: column 'value': non-numeric",
    ),
    (
        "nab-bad-timestamp",
        lambda tmp: write_nab(tmp / "NAB", b"timestamp,value\nyesterday,1\n"),
        read_nab,
        FrameDataError,
        "x.csv, line 2: column 'timestamp': cannot parse 'yesterday'",
    ),
    (
        "nab-huge",
        lambda tmp: write_nab(tmp / "NAB", b"timestamp,value\n2021-01-01 00:00:00,-1e308\n"),
        read_nab,
        FrameDataError,
        "x.csv, line 2: column 'value': value -1e+308",
    ),
    (
        "nab-damaged-zip",
        lambda tmp: _damaged_zip(write_nab(tmp / "NAB"), tmp / "NAB.zip"),
        read_nab,
        DataSourceError,
        "NAB.zip: a damaged zip archive",
    ),
    (
        "smap-garbage-npy",
        lambda tmp: write_smap(tmp / "S", train=b"\x93NUMPY garbage"),
        lambda p: read_smap_msl(p, "SMAP"),
        DataSourceError,
        "train/P-1.npy: not a readable .npy array",
    ),
    (
        "smap-huge",
        lambda tmp: write_smap(tmp / "S", train=npy(np.full((30, 2), 1e200))),
        lambda p: read_smap_msl(p, "SMAP"),
        DataError,
        "train/P-1.npy, step 0, column 0: value 1e+200",
    ),
    (
        "smap-labels-latin1",
        lambda tmp: write_smap(tmp / "S", labels="chan_id,spacecraft\n\xe9".encode("latin-1")),
        lambda p: read_smap_msl(p, "SMAP"),
        DataSourceError,
        "labeled_anomalies.csv: not UTF-8",
    ),
]


def _zip(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("data.csv", GOOD_CSV)
    return path


def _truncated(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[:-40])
    return path


def _damaged_zip(folder: Path, dest: Path) -> Path:
    """A zip of ``folder`` whose data csv fails its CRC check (one stored byte flipped)."""
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_STORED) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(folder.parent).as_posix())
    data = bytearray(dest.read_bytes())
    at = data.index(b"timestamp,value\n") + 20
    data[at] ^= 0x01
    dest.write_bytes(bytes(data))
    return dest


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@pytest.mark.parametrize(("case", "write", "read", "error", "names"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_named_and_left_unchanged(tmp_path, case, write, read, error, names):
    inputs = tmp_path / "in"
    inputs.mkdir()
    path = write(inputs)
    before = _digests(inputs)
    with pytest.raises(error) as err:
        read(path)
    message = str(err.value)
    assert isinstance(err.value, TSDiffusionError) and "\n" not in message
    assert names in message, message
    assert Path(path).name in message or any(Path(k).name in message for k in before), message
    assert _digests(inputs) == before  # nothing written to, renamed or removed among the inputs


@pytest.mark.parametrize(
    "write",
    [lambda tmp: put("good.csv", GOOD_CSV)(tmp), lambda tmp: put("good.csv.gz", GOOD_GZ)(tmp),
     lambda tmp: put("good.tsv", csv_text(sep="\t"))(tmp), lambda tmp: put("bom.csv", "\ufeff" + GOOD_CSV)(tmp)],
    ids=["csv", "csv.gz", "tsv", "utf8-bom"],
)  # fmt: skip
def test_good_tables_read_with_their_names_and_values(tmp_path, write):
    panel = frame(write(tmp_path))
    assert panel.series == ("a", "b") and panel.values.shape == (1, T, 2)
    np.testing.assert_allclose(panel.values[0, :, 0], np.round(np.sin(np.arange(T) / 3), 4))


def test_good_archives_read(tmp_path):
    """The layouts the bad cases break, intact: every reader accepts them (so each case fails for its defect)."""
    assert read_ts(put("X_TRAIN.ts", ts_text())(tmp_path)).values.shape == (2, 3, 1)
    assert read_gluonts(write_gluonts(tmp_path / "g")).train.shape == (20, 2)
    parsed, _, _ = load_records(write_physionet(tmp_path / "set-a"), tmp_path / "cache")
    assert parsed.values.shape == (3, 48, 35)
    assert read_outcomes(put("Outcomes-a.txt", "RecordID,In-hospital_death\n132539,0\n")(tmp_path)) == {132539: 0}
    frames = read_nab(write_nab(tmp_path / "NAB"))
    assert frames["cat/x.csv"][0]["value"].tolist() == [float(i % 7) for i in range(30)]
    assert read_smap_msl(write_smap(tmp_path / "S"), "SMAP")[0].train.shape == (30, 2)


def test_value_limit_is_float32_range():
    """At the limit a value still reads; just beyond it (in float64) the file is refused."""
    from tsdiffusion.data.sources.panel import VALUE_LIMIT

    assert VALUE_LIMIT == float(np.finfo(np.float32).max)
    ok = pd.DataFrame({"a": [1.0, VALUE_LIMIT, -VALUE_LIMIT]})
    assert FrameDataModule.from_dataframe(ok).panel().values[0, 1, 0] == VALUE_LIMIT
    with pytest.raises(FrameDataError, match=r"DataFrame, row 1: column 'a': value 3\.40282e\+38"):
        FrameDataModule.from_dataframe(pd.DataFrame({"a": [1.0, np.nextafter(VALUE_LIMIT, np.inf)]})).panel()

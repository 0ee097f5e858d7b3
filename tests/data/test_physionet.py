"""PhysioNetDataModule: parsing, CSDI's protocol (hold-out, folds, normalisation), caching, errors, data."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from tsdiffusion.batch import check_batch
from tsdiffusion.data.download import DataSourceError, safe_extract
from tsdiffusion.data.physionet import (
    ATTRIBUTES,
    HEADER,
    PhysioNetDataModule,
    RecordParseError,
    parse_record,
    split_indices,
)
from tsdiffusion.data.sources import physionet

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "physionet2012"
PARAMS = ("HR", "Temp", "GCS", "pH", "Urine", "Weight", "MechVent", "Cholesterol")


@dataclass
class Fixture:
    root: Path
    folder: Path  # the extracted set: root/set-a
    archive: Path  # root/set-a.tar.gz, Outcomes-a.txt next to it
    expected: dict[int, dict[tuple[int, int], float]]  # RecordID -> {(hour, k): value}
    deaths: dict[int, int]


def record_text(record_id: int, rows: list[tuple[str, str, str]]) -> str:
    head = [HEADER, f"00:00,RecordID,{record_id}", "00:00,Age,54", "00:00,Gender,0", "00:00,Height,-1"]
    head += ["00:00,ICUType,4", "00:00,Weight,-1"]
    return "\n".join(head + [",".join(row) for row in rows]) + "\n"


def random_rows(rng: np.random.Generator) -> list[tuple[str, str, str]]:
    minutes = np.sort(rng.integers(0, 48 * 60 + 1, size=int(rng.integers(30, 80))))
    minutes[-1] = 48 * 60  # a 48:00 line, which the protocol drops
    return [(f"{m // 60:02d}:{m % 60:02d}", str(rng.choice(PARAMS)), f"{rng.normal(50, 20):.2f}") for m in minutes]


def expected_cells(rows: list[tuple[str, str, str]]) -> dict[tuple[int, int], float]:
    cells = {}
    for time, param, value in rows:  # file order: the last line of an hour wins
        hour = int(time.split(":")[0])
        if param in ATTRIBUTES and hour < 48:
            cells[hour, ATTRIBUTES.index(param)] = float(value)
    return cells


def write_tar(archive: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return archive


def make_fixture(root: Path, n: int = 12, seed: int = 0) -> Fixture:
    rng = np.random.default_rng(seed)
    folder = root / "set-a"
    folder.mkdir(parents=True)
    expected, deaths, members = {}, {}, {}
    for record_id in [140000 + i for i in range(n)] + [150000]:  # the last one has no observation
        rows = random_rows(rng) if record_id < 150000 else []
        text = record_text(record_id, rows).encode()
        (folder / f"{record_id}.txt").write_bytes(text)
        members[f"set-a/{record_id}.txt"] = text
        expected[record_id], deaths[record_id] = expected_cells(rows), int(rng.integers(0, 2))
    outcomes = ["RecordID,SAPS-I,SOFA,Length_of_stay,Survival,In-hospital_death"]
    outcomes += [f"{r},10,3,5,-1,{d}" for r, d in deaths.items()]
    (root / "Outcomes-a.txt").write_text("\n".join(outcomes) + "\n")
    archive = write_tar(root / "set-a.tar.gz", members)
    return Fixture(root, folder, archive, expected, deaths)


@pytest.fixture
def fx(tmp_path: Path) -> Fixture:
    return make_fixture(tmp_path / "data")


def build(path: str | Path, cache: Path, **kwargs) -> PhysioNetDataModule:
    dm = PhysioNetDataModule(path=str(path), cache_dir=str(cache), **kwargs)
    dm.setup("fit")
    return dm


def raw_values(dm: PhysioNetDataModule, split: str) -> np.ndarray:
    """(N, L, K) back in original units, NaN where not observed."""
    f = dm.datasets[split].fields
    x = (f["observed"] * f["scale"] + f["loc"]).double().numpy()
    return np.where(f["observed_mask"].bool().numpy(), x, np.nan)


# -- parsing ----------------------------------------------------------------------------------------


def test_parse_record_hour_variable_and_last_value():
    rows = [
        ("00:07", "HR", "73"), ("00:45", "HR", "80"), ("00:59", "Temp", "36.5"), ("01:00", "HR", "90"),
        ("05:30", "Urine", "1.1e+04"), ("05:10", "Urine", "200"), ("47:59", "pH", "7.4"),
        ("48:00", "HR", "99"), ("10:00", "MechVent", "1"), ("10:00", "Weight", "80"),
    ]  # fmt: skip
    values = parse_record(record_text(1, rows), "1.txt", 1)
    hr, temp, urine, ph = (ATTRIBUTES.index(a) for a in ("HR", "Temp", "Urine", "pH"))
    assert values.shape == (48, 35)
    assert values[0, hr] == 80 and values[1, hr] == 90 and values[0, temp] == 36.5
    assert values[5, urine] == 200  # the last line of the hour in file order, as CSDI
    assert values[47, ph] == 7.4
    assert np.isfinite(values).sum() == 5  # 48:00, MechVent, Weight and the descriptors are not kept


def test_values_land_in_right_hour_and_variable(fx: Fixture, tmp_path: Path):
    dm = build(fx.archive, tmp_path / "cache")
    for split in ("train", "val", "test"):
        values = raw_values(dm, split)
        for record_id, x in zip(dm.record_ids[split], values):
            cells = fx.expected[int(record_id)]
            assert np.isfinite(x).sum() == len(cells)
            for (hour, k), v in cells.items():
                assert x[hour, k] == pytest.approx(v, rel=1e-5, abs=1e-4)


def test_archive_and_folder_give_the_same_arrays(fx: Fixture, tmp_path: Path):
    a, b = build(fx.archive, tmp_path / "c1"), build(fx.folder, tmp_path / "c2")
    c = build(fx.root, tmp_path / "c3")  # a folder holding set-a/
    for split in ("train", "val", "test"):
        for key, value in a.datasets[split].fields.items():
            assert torch.equal(value, b.datasets[split].fields[key]), key
            assert torch.equal(value, c.datasets[split].fields[key]), key


def test_batch_fields_and_labels(fx: Fixture, tmp_path: Path):
    dm = build(fx.archive, tmp_path / "cache", batch_size=4)
    batch = next(iter(dm.train_dataloader()))
    assert check_batch(batch) == (4, 48, 35)
    assert torch.equal(batch["timepoints"][0], torch.arange(48.0))
    assert torch.equal(batch["feature_ids"][0], torch.arange(35))
    assert batch["loc"].shape == batch["scale"].shape == (4, 1, 35)
    assert dm.num_features == 35 and dm.seq_len == 48
    assert dm.dropped_record_ids.tolist() == [150000]  # the record without observations, as CSDI
    for split in ("train", "val", "test"):
        labels = dm.datasets[split].fields["label"].tolist()
        assert labels == [fx.deaths[int(r)] for r in dm.record_ids[split]]


def test_no_outcomes_file_means_no_label(fx: Fixture, tmp_path: Path):
    lone = tmp_path / "lone"
    lone.mkdir()
    archive = lone / "set-a.tar.gz"
    archive.write_bytes(fx.archive.read_bytes())
    assert "label" not in build(archive, tmp_path / "cache").datasets["train"].fields
    explicit = build(archive, tmp_path / "cache", outcomes=str(fx.root / "Outcomes-a.txt"))
    assert "label" in explicit.datasets["test"].fields


# -- the protocol -----------------------------------------------------------------------------------


@pytest.mark.parametrize("ratio", [0.1, 0.5, 0.9])
def test_holdout_ratio(fx: Fixture, tmp_path: Path, ratio: float):
    dm = build(fx.archive, tmp_path / "cache", missing_ratio=ratio)
    for split in ("train", "val", "test"):
        f = dm.datasets[split].fields
        assert bool((f["target_mask"] <= f["observed_mask"]).all())
        n_obs, n_target = f["observed_mask"].sum((1, 2)), f["target_mask"].sum((1, 2))
        assert n_target.tolist() == [int(n * ratio) for n in n_obs.tolist()]


def test_holdout_depends_on_seed_only(fx: Fixture, tmp_path: Path):
    def targets(seed: int) -> dict[int, np.ndarray]:
        dm = build(fx.archive, tmp_path / "cache", seed=seed)
        return {
            int(r): m.numpy()
            for s in ("train", "val", "test")
            for r, m in zip(dm.record_ids[s], dm.datasets[s].fields["target_mask"])
        }

    a, b, c = targets(1), targets(1), targets(2)
    assert all(np.array_equal(a[r], b[r]) for r in a)
    assert not all(np.array_equal(a[r], c[r]) for r in a)


@pytest.mark.parametrize("n", [5, 12, 600, 3997])
def test_folds_disjoint_and_cover(n: int):
    tests = []
    for fold in range(5):
        s = split_indices(n, fold, seed=1)
        assert len(s["train"]) == int(0.7 * n)
        parts = np.concatenate([s["train"], s["val"], s["test"]])
        assert sorted(parts.tolist()) == list(range(n))  # disjoint and covering within a fold
        tests.append(s["test"])
    every = np.concatenate(tests)
    assert sorted(every.tolist()) == list(range(n))  # the 5 test folds partition the records


def test_folds_in_datamodule(fx: Fixture, tmp_path: Path):
    test_ids = []
    for fold in range(5):
        ids = build(fx.archive, tmp_path / "cache", fold=fold).record_ids
        assert set(ids["train"]).isdisjoint(ids["val"]) and set(ids["train"]).isdisjoint(ids["test"])
        assert set(ids["val"]).isdisjoint(ids["test"])
        test_ids += ids["test"].tolist()
    assert sorted(test_ids) == sorted(r for r, cells in fx.expected.items() if cells)


def expected_stats(fx: Fixture, record_ids) -> tuple[np.ndarray, np.ndarray]:
    mean, std = np.zeros(35), np.ones(35)
    for k in range(35):
        seen = [v for r in record_ids for (_, kk), v in fx.expected[int(r)].items() if kk == k]
        if seen:
            mean[k], std[k] = np.mean(seen), np.std(seen) or 1.0
    return mean, std


@pytest.mark.parametrize("protocol", ["csdi", "train"])
def test_normalisation_protocols(fx: Fixture, tmp_path: Path, protocol: str):
    dm = build(fx.archive, tmp_path / "cache", protocol=protocol)
    ids = dm.record_ids["train"] if protocol == "train" else list(fx.expected)
    mean, std = expected_stats(fx, ids)
    np.testing.assert_allclose(dm.loc, mean, rtol=1e-6)
    np.testing.assert_allclose(dm.scale, std, rtol=1e-6)
    for split in ("train", "val", "test"):
        f = dm.datasets[split].fields
        assert torch.equal(f["loc"][0, 0], torch.from_numpy(dm.loc))
        assert bool((f["observed"][f["observed_mask"] == 0] == 0).all())
    if protocol == "train":  # only train records count: the other splits' values change nothing
        train_obs = dm.datasets["train"].fields
        masked = train_obs["observed"][train_obs["observed_mask"].bool()]
        assert abs(float(masked.mean())) < 1e-5


def test_train_protocol_ignores_test_records(tmp_path: Path):
    a = make_fixture(tmp_path / "a")
    dm = build(a.archive, tmp_path / "ca", protocol="train")
    b = make_fixture(tmp_path / "b")  # same records, then the test records' values are scaled by 100
    for record_id in dm.record_ids["test"]:
        path = b.folder / f"{record_id}.txt"
        lines = path.read_text().splitlines()
        lines[7:] = [f"{t},{p},{float(v) * 100}" for t, p, v in (ln.split(",") for ln in lines[7:])]
        path.write_text("\n".join(lines) + "\n")
    changed = build(b.folder, tmp_path / "cb", protocol="train")
    np.testing.assert_array_equal(changed.loc, dm.loc)
    assert not np.array_equal(build(b.folder, tmp_path / "cb", protocol="csdi").loc, dm.loc)


# -- caching ----------------------------------------------------------------------------------------


def test_cache_is_reused(fx: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    first = build(fx.archive, tmp_path / "cache")
    assert not first.from_cache and first.cache_file.exists()

    def boom(*args, **kwargs):
        raise AssertionError("parsed although the cache is valid")

    monkeypatch.setattr(physionet, "parse_record", boom)
    second = build(fx.archive, tmp_path / "cache", missing_ratio=0.5, fold=3, protocol="train")
    assert second.from_cache and second.cache_file == first.cache_file


def test_changed_parameter_or_source_does_not_reuse_cache(fx: Fixture, tmp_path: Path):
    cache = tmp_path / "cache"
    full = build(fx.archive, cache)
    fewer = build(fx.archive, cache, max_records=8)
    assert not fewer.from_cache and fewer.cache_file != full.cache_file
    assert sum(len(v) for v in fewer.record_ids.values()) == 8
    other = make_fixture(tmp_path / "other", seed=7)  # same names, other content
    changed = build(other.archive, cache)
    assert not changed.from_cache and changed.cache_file != full.cache_file
    assert not torch.equal(changed.datasets["train"].fields["observed"], full.datasets["train"].fields["observed"])


def test_corrupt_cache_is_parsed_again(fx: Fixture, tmp_path: Path):
    first = build(fx.archive, tmp_path / "cache")
    first.cache_file.write_bytes(b"not an npz")
    again = build(fx.archive, tmp_path / "cache")
    assert not again.from_cache
    assert torch.equal(again.datasets["test"].fields["observed"], first.datasets["test"].fields["observed"])


# -- errors -----------------------------------------------------------------------------------------


def test_missing_archive(tmp_path: Path):
    with pytest.raises(DataSourceError, match=r"nowhere\.tar\.gz: no such file"):
        build(tmp_path / "nowhere.tar.gz", tmp_path / "cache")


def test_download_checksum_mismatch(fx: Fixture, tmp_path: Path):
    cache = tmp_path / "cache"
    (cache / "physionet2012").mkdir(parents=True)
    (cache / "physionet2012" / "set-a.tar.gz").write_bytes(fx.archive.read_bytes())  # not the official set
    with pytest.raises(DataSourceError, match="checksum mismatch"):
        PhysioNetDataModule(path=None, cache_dir=str(cache)).setup()


def test_download_from_cache(fx: Fixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    cache = tmp_path / "cache" / "physionet2012"
    cache.mkdir(parents=True)
    (cache / "set-a.tar.gz").write_bytes(fx.archive.read_bytes())
    (cache / "Outcomes-a.txt").write_bytes((fx.root / "Outcomes-a.txt").read_bytes())
    digest = physionet.records_digest(physionet.read_record_files(fx.archive))
    monkeypatch.setattr(physionet, "SET_A_RECORDS_SHA256", digest)
    monkeypatch.setattr(physionet, "OUTCOMES_A_SHA256", hashlib.sha256(b"x").hexdigest())
    with pytest.raises(DataSourceError, match=r"Outcomes-a\.txt: checksum mismatch"):
        PhysioNetDataModule(cache_dir=str(tmp_path / "cache")).setup()
    monkeypatch.setattr(physionet, "OUTCOMES_A_SHA256", physionet.sha256sum(cache / "Outcomes-a.txt"))
    dm = PhysioNetDataModule(cache_dir=str(tmp_path / "cache"))
    dm.setup()
    assert "label" in dm.datasets["train"].fields


def test_embedded_checksum_mismatch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(physionet, "EMBEDDED_SHA256", "0" * 64)
    with pytest.raises(DataSourceError, match="checksum mismatch"):
        build("embedded", tmp_path / "cache")


@pytest.mark.parametrize(
    "bad_line, lineno",
    [
        ("00:30,HR", 9),
        ("00:30,HR,seventy", 9),
        ("0030,HR,70", 9),
        ("00:75,HR,70", 9),
        ("-1:00,HR,70", 9),
        ("00:30,HR,nan", 9),
        ("00:30,HR,70,1", 9),
    ],
)
def test_bad_record_names_file_and_line(fx: Fixture, tmp_path: Path, bad_line: str, lineno: int):
    path = fx.folder / "140003.txt"
    lines = path.read_text().splitlines()
    lines.insert(lineno - 1, bad_line)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordParseError, match=rf"140003\.txt, line {lineno}: .*{bad_line}"):
        build(fx.folder, tmp_path / "cache")


def test_bad_header_and_record_id_in_archive(tmp_path: Path):
    archive = write_tar(tmp_path / "set-a.tar.gz", {"set-a/7.txt": b"Time;Parameter;Value\n"})
    with pytest.raises(RecordParseError, match=r"set-a\.tar\.gz:set-a/7\.txt, line 1: expected the header"):
        build(archive, tmp_path / "cache")
    archive = write_tar(tmp_path / "set-a.tar.gz", {"set-a/7.txt": record_text(8, []).encode()})
    with pytest.raises(RecordParseError, match=r"7\.txt, line 2: RecordID 8 does not match"):
        build(archive, tmp_path / "cache")


def test_bad_outcomes_names_file_and_line(fx: Fixture, tmp_path: Path):
    path = fx.root / "Outcomes-a.txt"
    path.write_text(path.read_text() + "150001,10,3,5,-1,yes\n")
    with pytest.raises(RecordParseError, match=r"Outcomes-a\.txt, line 15: .*yes"):
        build(fx.archive, tmp_path / "cache")
    path.write_text("\n".join(path.read_text().splitlines()[:5]) + "\n")
    with pytest.raises(DataSourceError, match=r"Outcomes-a\.txt: no row for records"):
        build(fx.archive, tmp_path / "cache")


def test_unreadable_or_empty_sources(tmp_path: Path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip")
    with pytest.raises(DataSourceError, match="not a readable tar archive"):
        build(junk, tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match="no record files"):
        build(tmp_path / "empty", tmp_path / "cache")
    mixed = write_tar(tmp_path / "mixed.tar.gz", {"set-a/1.txt": b"", "set-b/2.txt": b""})
    with pytest.raises(DataSourceError, match="several folders"):
        build(mixed, tmp_path / "cache")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fold": 5}, "fold must be in 0..4"),
        ({"fold": -1}, "fold must be in 0..4"),
        ({"missing_ratio": 0.0}, r"missing_ratio must be in \(0, 1\)"),
        ({"missing_ratio": 1.0}, r"missing_ratio must be in \(0, 1\)"),
        ({"missing_ratio": 1.5}, r"missing_ratio must be in \(0, 1\)"),
        ({"protocol": "paper"}, "protocol must be"),
        ({"max_records": 0}, "max_records must be"),
    ],
)
def test_arguments_out_of_range(kwargs: dict, match: str):
    with pytest.raises(ValueError, match=match):
        PhysioNetDataModule(path="embedded", **kwargs)


def test_too_few_records(fx: Fixture, tmp_path: Path):
    with pytest.raises(ValueError, match="split empty"):
        build(fx.archive, tmp_path / "cache", max_records=3)


def test_extraction_refuses_parent_paths(tmp_path: Path):
    archive = write_tar(tmp_path / "evil.tar.gz", {"set-a/1.txt": b"", "../evil.txt": b"x"})
    with pytest.raises(DataSourceError, match="outside"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(DataSourceError, match="outside"):
        build(archive, tmp_path / "cache")


# -- shipped and real data --------------------------------------------------------------------------


def test_embedded_subset(tmp_path: Path):
    dm = build("embedded", tmp_path / "cache", batch_size=16)
    assert {s: len(d) for s, d in dm.datasets.items()} == {"train": 420, "val": 60, "test": 120}
    assert len(dm.dropped_record_ids) == 0
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert check_batch(batch, source="embedded") == (16, 48, 35)
        assert set(batch) >= {"target_mask", "timepoints", "feature_ids", "loc", "scale", "label"}
    observed = torch.cat([d.fields["observed_mask"] for d in dm.datasets.values()])
    assert 0.18 < float(observed.mean()) < 0.21  # about 80% missing, as the full set


def test_embedded_subset_is_reproducible(tmp_path: Path):
    archive, table = physionet.write_subset(
        physionet.EMBEDDED_ARCHIVE, physionet.EMBEDDED_OUTCOMES, tmp_path, n_records=600
    )
    assert gzip.decompress(archive.read_bytes()) == gzip.decompress(physionet.EMBEDDED_ARCHIVE.read_bytes())
    assert table.read_bytes() == physionet.EMBEDDED_OUTCOMES.read_bytes()
    (tmp_path / "small").mkdir()
    small, _ = physionet.write_subset(archive, table, tmp_path / "small", n_records=10)
    assert [f.record_id for f in physionet.read_record_files(small)] == sorted(
        f.record_id for f in physionet.read_record_files(archive)
    )[:10]


@pytest.mark.slow
@pytest.mark.skipif(not (REAL / "set-a.tar.gz").exists(), reason="the real set-a is not here")
def test_real_set_a(tmp_path: Path):
    dm = build(REAL / "set-a.tar.gz", tmp_path / "cache")
    assert dm.source_digest == physionet.SET_A_RECORDS_SHA256  # the 4000 official record files
    assert dm.dropped_record_ids.tolist() == [140501, 140936, 141264]  # no observation: CSDI drops them too
    assert {s: d.fields["observed"].shape for s, d in dm.datasets.items()} == {
        "train": (2797, 48, 35),
        "val": (401, 48, 35),
        "test": (799, 48, 35),
    }
    fields = {key: torch.cat([d.fields[key] for d in dm.datasets.values()]) for key in dm.datasets["test"].fields}
    assert int(fields["observed_mask"].sum()) == 1308246  # 19.47% of 4000 x 48 x 35: ~80.5% missing
    # golden numbers from the original CSDI code (dataset_physio.py: seed 1, nfold 0, missing_ratio 0.1)
    assert int(fields["target_mask"].sum()) == 129040
    assert int(dm.datasets["test"].fields["target_mask"].sum()) == 25718
    assert dm.record_ids["test"][:5].tolist() == [133039, 139758, 134108, 137414, 141589]
    assert dm.record_ids["train"][:3].tolist() == [138218, 137588, 133497]
    assert dm.record_ids["val"][:3].tolist() == [136176, 137205, 140413]
    assert int(fields["label"].sum()) == 554  # in-hospital deaths of set-a (none among the dropped)

"""The `.ts` reader and UCR DataModule, the probe and k-means on known cases, representation configs."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tsdiffusion.data.ucr import TSFormatError, UCRDataModule, parse_ts, read_ucr_split
from tsdiffusion.denoisers.unet1d import UNet1DDenoiser
from tsdiffusion.metrics.representation import evaluate_features, kmeans_scores, linear_probe
from tsdiffusion.tasks.representation import RepresentationTask

ROOT = Path(__file__).resolve().parents[2]
GUNPOINT = ROOT.parent / "shared" / "data" / "ucr_uea" / "GunPoint.tar.gz"

FIXTURE = """# a comment
@problemName Toy
@timeStamps false
@missing true
@univariate false
@equalLength false
@classLabel true up down
@data
1,2,3,4:0.5,0.5,0.5,0.5:up
4,3,2,1:?,1,1,1:down
0,1,2:1,2,3:up
"""


def test_ts_reader_on_fixture():
    ts = parse_ts(FIXTURE, "toy.ts")
    assert ts.name == "Toy" and ts.class_names == ("up", "down")
    assert ts.values.shape == (3, 4, 2)  # the shorter series is padded with NaN
    assert ts.values[1, 0, 1] != ts.values[1, 0, 1] and np.isnan(ts.values[2, 3]).all()
    assert ts.values[0, :, 0].tolist() == [1, 2, 3, 4] and ts.labels.tolist() == ["up", "down", "up"]


@pytest.mark.parametrize(
    "text,match",
    [
        ("@data\n1,2:up\n", "no series|not declared|expected comma-separated numbers"),
        ("@classLabel true a b\n@data\n1,2:c\n", "not declared"),
        ("@classLabel true a b\n@data\n1,x:a\n", "line 3"),
        ("@classLabel true a b\n@data\n1,2:3,4:a\n5,6:b\n", "dimensions"),
        ("@timeStamps true\n@data\n(1,2):a\n", "timeStamps"),
        ("1,2,3\n", "header"),
        ("@problemName x\n", "no @data"),
    ],
)
def test_ts_reader_clear_errors(text, match):
    with pytest.raises(TSFormatError, match=match):
        parse_ts(text, "bad.ts")


def _toy_archive(tmp_path: Path) -> Path:
    folder = tmp_path / "Toy"
    folder.mkdir()
    (folder / "Toy_TRAIN.ts").write_text(FIXTURE)
    (folder / "Toy_TEST.ts").write_text(FIXTURE.replace("up\n", "down\n", 1))
    archive = tmp_path / "Toy.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname="Toy")
    return archive


def test_ucr_datamodule_from_archive_and_folder(tmp_path):
    archive = _toy_archive(tmp_path)
    assert read_ucr_split(archive, "Toy", "TEST").labels.tolist() == ["down", "down", "up"]
    for source in (archive, tmp_path / "Toy"):
        dm = UCRDataModule(name="Toy", path=str(source), cache_dir=str(tmp_path))
        dm.setup()
        train = dm.datasets["train"].fields
        assert train["observed"].shape == (3, 4, 2) and train["label"].tolist() == [0, 1, 0]
        assert train["observed_mask"][1, 0, 1] == 0 and train["observed"][1, 0, 1] == 0
        assert dm.num_classes == 2 and len(dm.datasets["val"]) == 0
    with pytest.raises(Exception, match=r"Nope_TRAIN\.ts"):
        UCRDataModule(name="Nope", path=str(archive)).setup()


@pytest.mark.skipif(not GUNPOINT.exists(), reason="needs ../shared/data/ucr_uea/GunPoint.tar.gz")
def test_gunpoint_sizes():
    dm = UCRDataModule(name="GunPoint", path=str(GUNPOINT), val_fraction=0.2)
    dm.setup()
    sizes = {s: len(d) for s, d in dm.datasets.items()}
    assert sizes == {"train": 40, "val": 10, "test": 150} and dm.seq_len == 150 and dm.num_features == 1
    assert dm.datasets["test"].fields["label"].bincount().tolist() == [76, 74]


# -- probe and clustering ------------------------------------------------------------------------------------


def _blobs(n: int, seed: int, dims: int = 10) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, dims)) + 4.0 * y[:, None] * np.eye(dims)[0]
    return x, y


def test_probe_and_kmeans_beat_chance_on_a_separable_case():
    (xtr, ytr), (xte, yte) = _blobs(200, 0), _blobs(200, 1)
    scores = linear_probe(xtr, ytr, xte, yte)
    assert scores["probe_accuracy"] > 0.9 and scores["probe_auroc"] > 0.95
    assert kmeans_scores(xte[:, :1], yte)["kmeans_ari"] > 0.7


def test_probe_is_at_chance_on_shuffled_labels():
    (xtr, ytr), (xte, yte) = _blobs(200, 0), _blobs(200, 1)
    rng = np.random.default_rng(0)
    scores = evaluate_features(xtr, rng.permutation(ytr), xte, rng.permutation(yte))
    assert abs(scores["probe_accuracy"] - 0.5) < 0.15 and scores["kmeans_nmi"] < 0.1


def test_representation_features_are_fixed_functions_of_the_input():
    torch.manual_seed(0)
    task = RepresentationTask(UNet1DDenoiser(2, channels=8, channel_mults=(1, 2), heads=2), feature_step=3)
    batch = {"observed": torch.randn(3, 9, 2), "observed_mask": torch.ones(3, 9, 2), "label": torch.tensor([0, 1, 0])}
    f = task.features(batch)
    assert f.shape == (3, 2 * (8 + 16 + 16)) and torch.equal(f, task.features(batch))
    with pytest.raises(ValueError, match="labels"):
        RepresentationTask(UNet1DDenoiser(1, channels=8, channel_mults=(1,), num_classes=2))

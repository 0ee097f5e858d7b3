"""Shared fixtures: small data sets in the real on-disk formats, standing in for ``../shared/data`` and for the
downloads, so every experiment config runs in CI without them.

Each ``write_*`` builder writes the layout the published data set has (see the reader named in its docstring);
the session fixtures build each one once under pytest's temporary folder.
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

SMAP_CHANNELS = {"P-1": 25, "S-1": 25, "E-1": 25, "P-2": 25}
MSL_CHANNELS = {"M-6": 55, "M-1": 55, "M-2": 55, "S-2": 55, "P-10": 55}
NAB_SERIES = [
    f"realKnownCause/{name}"
    for name in ("nyc_taxi", "ambient_temperature_system_failure", "ec2_request_latency_system_failure",
                 "rogue_agent_key_hold")
]  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def _kernels_under_tmp(tmp_path_factory):
    """tsdiffusion.kernels builds its library under pytest's temporary folder (subprocesses inherit the variable),
    not in the user's cache."""
    old = os.environ.get("TSDIFFUSION_KERNELS_DIR")
    os.environ["TSDIFFUSION_KERNELS_DIR"] = str(tmp_path_factory.getbasetemp() / "kernels")
    yield
    if old is None:
        os.environ.pop("TSDIFFUSION_KERNELS_DIR", None)
    else:
        os.environ["TSDIFFUSION_KERNELS_DIR"] = old


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def write_gluonts_hourly(root: Path, k: int = 4, train: int = 1000, horizon: int = 24, windows: int = 2) -> Path:
    """GluonTS's layout (``metadata.json``, ``train/data.json``, ``test/data.json`` with rolling test windows),
    ``k`` hourly series with a daily cycle; read by ``tsdiffusion.data.GluonTSDataModule``."""
    t = np.arange(train + windows * horizon)
    values = [(10 + j + np.sin(2 * math.pi * t / 24 + j)).tolist() for j in range(k)]
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    (root / "metadata.json").write_text(json.dumps({"freq": "H", "prediction_length": horizon}))
    start = "2014-01-01 00:00:00"
    lines = [{"start": start, "target": v[:train], "feat_static_cat": [j]} for j, v in enumerate(values)]
    (root / "train" / "data.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    test = [{"start": start, "target": v[: train + (i + 1) * horizon]} for i in range(windows) for v in values]
    (root / "test" / "data.json").write_text("".join(json.dumps(x) + "\n" for x in test))
    return root


def write_smap_msl(path: Path, seed: int = 0) -> Path:
    """telemanom's ``SMAP_MSL`` archive: ``labeled_anomalies.csv`` (P-2 twice, as the original), ``train/`` and
    ``test/`` arrays per channel, spikes on the labelled steps; read by ``SMAPMSLDataModule``."""
    rng = np.random.default_rng(seed)
    rows = ["chan_id,spacecraft,anomaly_sequences,class,num_values"]
    with tarfile.open(path, "w:gz") as tar:
        for chan, d in {**SMAP_CHANNELS, **MSL_CHANNELS}.items():
            craft = "SMAP" if chan in SMAP_CHANNELS else "MSL"
            train, test = rng.normal(size=(240, d)), rng.normal(size=(180, d))
            test[100:111, 0] += 6.0 * (-1.0) ** np.arange(11)
            test[170:176, 0] += 6.0 * (-1.0) ** np.arange(6)
            _add(tar, f"SMAP_MSL/train/{chan}.npy", _npy(train))
            _add(tar, f"SMAP_MSL/test/{chan}.npy", _npy(test))
            rows.append(f'{chan},{craft},"[[100, 110], [170, 175]]","[point, point]",180')
        rows.append('P-2,SMAP,"[[0, 5]]",[point],180')  # the duplicate row of the original; ignored
        _add(tar, "SMAP_MSL/labeled_anomalies.csv", ("\n".join(rows) + "\n").encode())
    return path


def write_nab(path: Path, seed: int = 1) -> Path:
    """NAB's archive: ``data/<category>/<name>.csv`` and ``labels/combined_windows.json``; read by
    ``NABDataModule``."""
    rng = np.random.default_rng(seed)
    windows = {}
    with tarfile.open(path, "w:gz") as tar:
        for name in NAB_SERIES:
            ts = pd.date_range("2014-07-01", periods=400, freq="5min")
            frame = pd.DataFrame({"timestamp": ts.strftime("%Y-%m-%d %H:%M:%S"), "value": rng.normal(size=400)})
            _add(tar, f"NAB/data/{name}.csv", frame.to_csv(index=False).encode())
            windows[f"{name}.csv"] = [[f"{ts[300]}.000000", f"{ts[309]}.000000"]]
        _add(tar, "NAB/labels/combined_windows.json", json.dumps(windows).encode())
    return path


def write_ucr(root: Path, name: str = "GunPoint", length: int = 150, sizes=(10, 12), seed: int = 2) -> Path:
    """``<name>_TRAIN.ts`` / ``<name>_TEST.ts`` in the UEA ``.ts`` format, two classes (a bump early or late);
    read by ``UCRDataModule``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    t = np.linspace(0, 1, length)
    for split, n in zip(("TRAIN", "TEST"), sizes):
        lines = ["# synthetic stand-in", f"@problemName {name}", "@timeStamps false", "@missing false",
                 "@univariate true", "@equalLength true", f"@seriesLength {length}", "@classLabel true 1 2",
                 "@data"]  # fmt: skip
        for i in range(n):
            label = 1 + i % 2
            x = np.exp(-(((t - 0.3 * label) / 0.08) ** 2)) + 0.05 * rng.normal(size=length)
            lines.append(",".join(f"{v:.5f}" for v in x) + f":{label}")
        (root / f"{name}_{split}.ts").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def gluonts_hourly(tmp_path_factory) -> Path:
    return write_gluonts_hourly(tmp_path_factory.mktemp("gluonts") / "hourly")


@pytest.fixture(scope="session")
def smap_archive(tmp_path_factory) -> Path:
    return write_smap_msl(tmp_path_factory.mktemp("smap") / "SMAP_MSL.tar.gz")


@pytest.fixture(scope="session")
def nab_archive(tmp_path_factory) -> Path:
    return write_nab(tmp_path_factory.mktemp("nab") / "NAB.tar.gz")


@pytest.fixture(scope="session")
def ucr_folder(tmp_path_factory) -> Path:
    return write_ucr(tmp_path_factory.mktemp("ucr") / "GunPoint")


@pytest.fixture(scope="session")
def csdi_original_checkpoint(tmp_path_factory) -> Path:
    """A state dict in the original CSDI code's layout (``CSDI_base``: ``diffmodel.*`` and ``embed_layer``), 35
    features, tiny widths, random weights: stands in for the official PhysioNet model (a download)."""
    import importlib.util  # ReferenceCSDI: the original's module layout, written out in that test module

    spec = importlib.util.spec_from_file_location(
        "_csdi_reference", Path(__file__).resolve().parent / "denoisers" / "test_denoiser_csdi.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ReferenceCSDI = module.ReferenceCSDI

    torch.manual_seed(0)
    ref = ReferenceCSDI(35, channels=8, layers=1, heads=2)
    state = {
        ("embed_layer.weight" if k.startswith("feature_embedding") else "diffmodel." + k): v
        for k, v in ref.state_dict().items()
    }
    path = tmp_path_factory.mktemp("csdi_original") / "model.pth"
    torch.save(state, path)
    return path

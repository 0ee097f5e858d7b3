"""UCR / UEA time-series classification archives in the ``.ts`` format (sktime / UEA), e.g. GunPoint.

The format (Bagnall et al., "The UEA multivariate time series classification archive, 2018",
arXiv:1811.00075; sktime's ``load_from_tsfile``): ``#`` comment lines, ``@`` header tags
(``@problemName``, ``@univariate``, ``@equalLength``, ``@seriesLength``, ``@missing``, ``@timeStamps``,
``@classLabel true <labels...>``), then ``@data``; each data line holds one series: the values of each
dimension comma-separated, dimensions separated by ``:``, the class label last; ``?`` or ``NaN`` marks a
missing value. Series of unequal length are right-padded as missing (``observed_mask`` 0).

Canonical source: the UEA & UCR Time Series Classification Repository,
``https://www.timeseriesclassification.com/aeon-toolkit/<Name>.zip`` (GunPoint: Dau et al., "The UCR Time
Series Archive", 2019). The project's copy is ``../shared/data/ucr_uea/GunPoint.tar.gz`` (see its SOURCE.md).
"""

from __future__ import annotations

import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import numpy as np

from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.data.download import DataSourceError, fetch, resolve

URL_TEMPLATE = "https://www.timeseriesclassification.com/aeon-toolkit/{name}.zip"


class TSFormatError(ValueError):
    """A ``.ts`` file breaks the format; the message names the file, line and what was expected."""


@dataclass(frozen=True)
class TSFile:
    """A parsed ``.ts`` file. ``values`` (N, L, K) float64 with NaN where missing; ``labels`` (N,) strings."""

    name: str
    values: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]


def _header(line: str, tags: dict[str, str], where: str) -> None:
    key, _, rest = line[1:].partition(" ")
    key = key.lower()
    if key == "timestamps" and rest.strip().lower() == "true":
        raise TSFormatError(f"{where}: @timeStamps true is not supported (expected plain values)")
    tags[key] = rest.strip()


def _parse_values(text: str, where: str) -> np.ndarray:
    try:
        return np.array([np.nan if v.strip() in ("?", "NaN", "nan", "") else float(v) for v in text.split(",")])
    except ValueError as err:
        raise TSFormatError(f"{where}: expected comma-separated numbers, got {text[:60]!r} ({err})") from None


def _parse_data_line(line: str, has_labels: bool, where: str) -> tuple[list[np.ndarray], str | None]:
    parts = line.split(":")
    if has_labels:
        if len(parts) < 2:
            raise TSFormatError(f"{where}: expected '<values>:<class label>', got no ':' separator")
        *dims, label = parts
        return [_parse_values(d, where) for d in dims], label.strip()
    return [_parse_values(d, where) for d in parts], None


def parse_ts(text: str, source: str = "<string>") -> TSFile:
    """Parse the contents of a ``.ts`` file. Raises :class:`TSFormatError` naming ``source`` and the line."""
    tags: dict[str, str] = {}
    rows: list[list[np.ndarray]] = []
    labels: list[str | None] = []
    in_data = False
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line, where = raw.strip(), f"{source}, line {lineno}"
        if not line or line.startswith("#"):
            continue
        if not in_data:
            if not line.startswith("@"):
                raise TSFormatError(
                    f"{where}: expected a '@' header tag or '#' comment before @data, got {line[:40]!r}"
                )
            in_data = line.lower() == "@data"
            if not in_data:
                _header(line, tags, where)
            continue
        dims, label = _parse_data_line(line, _has_labels(tags), where)
        if rows and len(dims) != len(rows[0]):
            raise TSFormatError(f"{where}: expected {len(rows[0])} dimensions (as the first series), got {len(dims)}")
        rows.append(dims)
        labels.append(label)
    if not in_data:
        raise TSFormatError(f"{source}: no @data line")
    if not rows:
        raise TSFormatError(f"{source}: no series after @data")
    return _assemble(tags, rows, labels, source)


def _has_labels(tags: dict[str, str]) -> bool:
    return tags.get("classlabel", "false").split()[0].lower() == "true" if tags.get("classlabel") else False


def _assemble(tags: dict[str, str], rows: list[list[np.ndarray]], labels: list, source: str) -> TSFile:
    L = max(len(d) for dims in rows for d in dims)
    values = np.full((len(rows), L, len(rows[0])), np.nan)
    for i, dims in enumerate(rows):
        for k, d in enumerate(dims):
            values[i, : len(d), k] = d
    declared = tuple(tags["classlabel"].split()[1:]) if _has_labels(tags) else ()
    label_arr = np.array(labels if _has_labels(tags) else [""] * len(rows), dtype=object)
    unknown = sorted(set(label_arr) - set(declared)) if declared else []
    if unknown:
        raise TSFormatError(f"{source}: class labels {unknown[:5]} are not declared in @classLabel {list(declared)}")
    classes = declared or tuple(sorted(set(label_arr)))
    return TSFile(tags.get("problemname", Path(source).stem), values, label_arr.astype(str), classes)


def read_ts(path: str | Path) -> TSFile:
    """Read one ``.ts`` file from disk."""
    path = Path(path)
    if not path.is_file():
        raise DataSourceError(f"{path}: no such .ts file")
    return parse_ts(path.read_text(encoding="utf-8", errors="replace"), str(path))


def read_ucr_split(source: str | Path, name: str, split: Literal["TRAIN", "TEST"]) -> TSFile:
    """``<name>_<split>.ts`` from a folder, a ``.tar(.gz)`` or a ``.zip`` (found at any depth)."""
    source = Path(source)
    target = f"{name}_{split}.ts"
    if source.is_dir():
        hits = sorted(source.rglob(target))
        if not hits:
            raise DataSourceError(f"{source}: no {target} in this folder or below")
        return read_ts(hits[0])
    text = _read_member(source, target)
    return parse_ts(text, f"{source}:{target}")


def _read_member(archive: Path, target: str) -> str:
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [n for n in zf.namelist() if PurePosixPath(n).name == target]
            if names:
                return zf.read(names[0]).decode("utf-8", errors="replace")
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            members = [m for m in tf.getmembers() if m.isfile() and PurePosixPath(m.name).name == target]
            if members:
                return tf.extractfile(members[0]).read().decode("utf-8", errors="replace")
    else:
        raise DataSourceError(f"{archive}: not a folder, .zip or tar archive")
    raise DataSourceError(f"{archive}: no member named {target}")


class UCRDataModule(TSDataModule):
    """A UCR/UEA classification data set as :class:`tsdiffusion.batch.TSBatch` windows with a ``label``.

    Each item is one whole series: ``observed`` (L, K) (normalised, 0 where missing), ``observed_mask``,
    ``target_mask`` (= ``observed_mask``: there is no held-out evaluation point; generation and
    representation score whole windows), ``timepoints`` 0..L-1, ``feature_ids`` 0..K-1, ``loc``/``scale``
    (1, K) and ``label`` (class index in the order of the header's ``@classLabel``). Splits: the archive's
    TRAIN file (minus a stratified ``val_fraction``) is ``train``; its TEST file is ``test``.

    Args:
        name: the problem name, e.g. ``GunPoint`` (file names ``<name>_TRAIN.ts`` / ``<name>_TEST.ts``).
        path: a folder, ``.tar.gz`` or ``.zip`` holding them (e.g. ``../shared/data/ucr_uea/GunPoint.tar.gz``);
            ``None`` downloads ``<name>.zip`` from the canonical URL into ``cache_dir`` (not checksummed).
        normalization: ``"standard"``: per-feature mean/std of the train split (``loc``/``scale``);
            ``"none"``: values as stored (UCR series are usually z-normalised already).
        val_fraction: share of the train file held out (stratified by class) as ``val``; 0 leaves ``val``
            empty (Lightning then skips validation).
        seed: seeds the validation draw.
        cache_dir: download cache (default ``$TSDIFFUSION_CACHE`` or ``~/.cache/tsdiffusion``).
    """

    def __init__(
        self,
        name: str = "GunPoint",
        path: str | None = None,
        normalization: Literal["standard", "none"] = "standard",
        val_fraction: float = 0.0,
        seed: int = 0,
        cache_dir: str | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if normalization not in ("standard", "none"):
            raise ValueError(f"normalization must be 'standard' or 'none', got {normalization!r}")
        self.name, self.path, self.cache_dir = name, path, cache_dir
        self.normalization, self.val_fraction, self.seed = normalization, val_fraction, seed
        self.class_names: tuple[str, ...] = ()

    @property
    def num_classes(self) -> int:
        """C, the number of classes."""
        self._ensure()
        return len(self.class_names)

    def source(self) -> Path:
        url = URL_TEMPLATE.format(name=self.name)
        if self.path is None:
            return fetch(url, None, cache_dir=self.cache_dir)
        return resolve(self.path, url=url, sha256=None, cache_dir=self.cache_dir)

    def prepare_data(self) -> None:
        self.source()

    def build(self) -> dict[str, WindowDataset]:
        src = self.source()
        train, test = read_ucr_split(src, self.name, "TRAIN"), read_ucr_split(src, self.name, "TEST")
        self.class_names = tuple(dict.fromkeys(train.class_names + test.class_names))
        L = max(train.values.shape[1], test.values.shape[1])
        loc, scale = self._stats(train.values)
        train_idx, val_idx = self._split(train.labels)
        return {
            "train": self._dataset(train, train_idx, L, loc, scale, "train"),
            "val": self._dataset(train, val_idx, L, loc, scale, "val"),
            "test": self._dataset(test, np.arange(len(test.labels)), L, loc, scale, "test"),
        }

    def record_info(self) -> dict:
        return {"name": self.name, "source": str(self.path), "classes": list(self.class_names)}

    def _stats(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        K = values.shape[-1]
        if self.normalization == "none":
            return np.zeros(K), np.ones(K)
        mean, std = np.nanmean(values, axis=(0, 1)), np.nanstd(values, axis=(0, 1))
        return np.nan_to_num(mean), np.where(np.isfinite(std) & (std > 0), std, 1.0)

    def _split(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Stratified hold-out of ``val_fraction`` of each class -> (train indices, val indices)."""
        rng = np.random.default_rng(self.seed)
        val = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            val.extend(rng.permutation(idx)[: round(self.val_fraction * len(idx))])
        val_idx = np.sort(np.asarray(val, dtype=np.int64))
        return np.setdiff1d(np.arange(len(labels)), val_idx), val_idx

    def _dataset(self, data: TSFile, idx: np.ndarray, L: int, loc, scale, split: str) -> WindowDataset:
        values = np.full((len(idx), L, data.values.shape[-1]), np.nan)
        values[:, : data.values.shape[1]] = data.values[idx]
        mask = np.isfinite(values)
        K, n = values.shape[-1], len(idx)
        lookup = {c: i for i, c in enumerate(self.class_names)}
        fields = {
            "observed": np.where(mask, (np.nan_to_num(values) - loc) / scale, 0.0),
            "observed_mask": mask,
            "target_mask": mask,
            "timepoints": np.tile(np.arange(L, dtype=np.float32), (n, 1)),
            "feature_ids": np.tile(np.arange(K), (n, 1)),
            "loc": np.tile(loc[None, None, :], (n, 1, 1)),
            "scale": np.tile(scale[None, None, :], (n, 1, 1)),
            "label": np.array([lookup[c] for c in data.labels[idx]], dtype=np.int64),
        }
        return WindowDataset(fields, source=f"UCRDataModule({self.name}) {split} split")

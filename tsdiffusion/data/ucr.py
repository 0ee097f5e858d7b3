"""UCR / UEA time-series classification archives (``.ts`` files, read by :mod:`tsdiffusion.data.sources.ucr`)
as whole-series items with a class ``label``, e.g. GunPoint.

Canonical source: the UEA & UCR Time Series Classification Repository,
``https://www.timeseriesclassification.com/aeon-toolkit/<Name>.zip`` (GunPoint: Dau et al., "The UCR Time
Series Archive", 2019). The project's copy is ``../shared/data/ucr_uea/GunPoint.tar.gz`` (see its SOURCE.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np

from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.data.download import fetch, resolve
from tsdiffusion.data.sources.panel import Panel
from tsdiffusion.data.sources.ucr import (  # noqa: F401  (the reader's names, re-exported)
    URL_TEMPLATE,
    TSFile,
    TSFormatError,
    parse_ts,
    read_ts,
    read_ucr_split,
)
from tsdiffusion.data.windows import Windows, make_window_fields, pad_to, series_stats, stratified_split
from tsdiffusion.errors import ConfigError


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
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if normalization not in ("standard", "none"):
            raise ConfigError(f"normalization must be 'standard' or 'none', got {normalization!r}")
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
        panels = {part: data.panel(self.class_names) for part, data in (("train", train), ("test", test))}
        loc, scale = self._stats(train.values)
        train_idx, val_idx = stratified_split(train.labels, self.val_fraction, self.seed)
        parts = {"train": ("train", train_idx), "val": ("train", val_idx),
                 "test": ("test", np.arange(len(test.labels)))}  # fmt: skip
        return {split: self._dataset(panels[p], idx, L, loc, scale, split) for split, (p, idx) in parts.items()}

    def record_info(self) -> dict:
        return {"name": self.name, "source": str(self.path), "classes": list(self.class_names)}

    def _stats(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(K,) loc and scale over every observed step of the train file (``"none"``: 0 and 1)."""
        K = values.shape[-1]
        if self.normalization == "none":
            return np.zeros(K), np.ones(K)
        return series_stats(values.reshape(-1, K))

    def _dataset(self, panel: Panel, idx: np.ndarray, L: int, loc, scale, split: str) -> WindowDataset:
        """Items ``idx`` of ``panel`` as whole-series windows of L steps (shorter ones padded as missing)."""
        values = pad_to(panel.values, L)
        windows = Windows(idx, np.full(len(idx), L), np.zeros(len(idx), dtype=np.int64))
        fields = make_window_fields(values, None, windows, L, loc, scale, None)
        fields["label"] = panel.label[idx]
        return WindowDataset(fields, source=f"UCRDataModule({self.name}) {split} split")

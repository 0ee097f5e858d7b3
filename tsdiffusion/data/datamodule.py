"""The base DataModule: every dataset produces dicts that follow :class:`tsdiffusion.batch.TSBatch`.

A subclass implements :meth:`TSDataModule.build`, returning one :class:`WindowDataset` per split
(``"train"``, ``"val"``, ``"test"``), and sets ``name``. The DataModule owns the *evaluation*
protocol (``target_mask``); tasks own the training protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from tsdiffusion.batch import check_batch
from tsdiffusion.errors import ConfigError

SPLITS = ("train", "val", "test")


class WindowDataset(Dataset):
    """Windows stored as arrays with a leading item axis N: ``{"observed": (N, L, K), ...}``.

    Fields are converted once to tensors (float32, or int64 for ``feature_ids`` / ``label``) and
    validated with :func:`check_batch` so that a bad file fails at load time, not mid-training.
    """

    _LONG = ("feature_ids", "label")

    def __init__(self, arrays: Mapping[str, np.ndarray | Tensor], *, source: str = "dataset"):
        self.fields: dict[str, Tensor] = {}
        for key, value in arrays.items():
            t = torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value)
            self.fields[key] = t.long() if key in self._LONG else t.float()
        sizes = {k: len(v) for k, v in self.fields.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"{source}: fields have different numbers of items: {sizes}")
        if len(self) > 0:
            check_batch(self.fields, source=source)

    def __len__(self) -> int:
        return len(self.fields["observed"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        """Window ``i``'s fields, with ``index``: ``i``, the key of its random streams at evaluation."""
        return {**{k: v[i] for k, v in self.fields.items()}, "index": torch.tensor(i)}


class TSDataModule(L.LightningDataModule):
    """Base class: batching, loaders and the sizes that the CLI links into the model.

    Args:
        batch_size: windows per training batch.
        eval_batch_size: windows per validation/test batch (defaults to ``batch_size``).
        num_workers: DataLoader worker processes.
    """

    name: str = "dataset"

    def __init__(self, batch_size: int = 16, eval_batch_size: int | None = None, num_workers: int = 0):
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.datasets: dict[str, WindowDataset] = {}

    # -- to implement -------------------------------------------------------------------------
    def build(self) -> dict[str, WindowDataset]:
        """Return ``{"train": ..., "val": ..., "test": ...}`` datasets."""
        raise NotImplementedError

    # -- sizes the model needs ----------------------------------------------------------------
    @property
    def num_features(self) -> int:
        """K: the number of features (series) of the full dataset."""
        self._ensure()
        return int(self.datasets["train"].fields["observed"].shape[-1])

    @property
    def seq_len(self) -> int:
        """L: the window length."""
        self._ensure()
        return int(self.datasets["train"].fields["observed"].shape[1])

    def _ensure(self) -> None:
        if not self.datasets:
            self.datasets = self.build()
            missing = [s for s in SPLITS if s not in self.datasets]
            if missing:
                raise ValueError(f"{type(self).__name__}.build() did not return splits {missing}")

    def setup(self, stage: str | None = None) -> None:
        self._ensure()

    def _loader(
        self,
        split: str,
        shuffle: bool = False,
        *,
        sampler: Sampler[int] | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
    ) -> DataLoader:
        """The loader of ``split``: the train batch size for ``train``, the evaluation one otherwise;
        ``sampler`` (instead of ``shuffle``) and ``collate_fn`` for modules that draw or batch differently."""
        self._ensure()
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size if split == "train" else self.eval_batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
            drop_last=False,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

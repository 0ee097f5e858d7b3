"""PhysioNet/CinC Challenge 2012 (set-a) with the imputation protocol of CSDI (Tashiro et al., 2021).

The protocol follows ``ermongroup/CSDI`` (``dataset_physio.py``), step by step:

* records: every ``<RecordID>.txt`` of the set, in RecordID order, less those without a single
  observed value (set-a: 4000 files, 3 dropped: 140501, 140936, 141264, so N = 3997). CSDI drops them
  by accident: its hold-out draw raises on an empty record and the loader skips records that raise;
* values: the 35 time series of :data:`ATTRIBUTES` (CSDI's order, which is ``feature_ids``) on
  L = 48 hourly steps. A measurement at ``HH:MM`` lands in hour ``HH``; within an hour the last line
  of the file wins. Measurements at ``48:00`` (hour 48) are dropped, as CSDI drops them, and so are
  the descriptors and the two series CSDI leaves out (RecordID, Age, Gender, Height, ICUType, Weight,
  MechVent). Values are kept as written (a few are implausible, e.g. negative temperatures; CSDI keeps
  them too);
* evaluation targets (``target_mask``): ``RandomState(seed)``, then record after record in RecordID
  order ``choice(observed flat indices, int(n_observed * missing_ratio), replace=False)``. The draws
  share one stream, so a record's targets depend on the records before it; the first ``max_records``
  records get the same targets as in the full set;
* folds: ``RandomState(seed).shuffle(arange(N))``; test = the slice ``[int(fold * 0.2 * N),
  int((fold + 1) * 0.2 * N))``; the rest is shuffled again by a fresh ``RandomState(seed)``; train =
  its first ``int(0.7 * N)``, val = the remainder (set-a, fold 0: 2797 / 401 / 799). Items keep this
  order;
* normalisation: per variable mean and (population) std of the observed values, held-out targets
  included. ``protocol="csdi"`` takes them over *all* records, as the paper did: this leaks statistics
  of the test records into training and evaluation. ``protocol="train"`` takes them over the train
  split only. A variable without observations gets mean 0 / std 1, a constant one std 1.

Sources: the official archive (downloaded once into the cache and checked), a local ``.tar.gz``
(records are read straight from the archive, nothing is extracted), an extracted folder, or
``"embedded"``: the first 600 records of set-a shipped in ``tsdiffusion/resources`` (see its README).
Parsed arrays are cached as ``.npz`` keyed by the source's content and the parse parameters; the
hold-out, the folds and the normalisation are cheap and are recomputed on every run.

On the full set-a this reproduces CSDI's arrays exactly (values, masks, targets for seed 1 and every
fold's indices, checked against the original code's output).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from tsdiffusion.data.datamodule import SPLITS, TSDataModule, WindowDataset
from tsdiffusion.data.download import DEFAULT_CACHE
from tsdiffusion.data.sources import physionet as source
from tsdiffusion.data.sources.panel import Panel
from tsdiffusion.data.sources.physionet import (  # noqa: F401  (the reader's names, re-exported)
    ATTRIBUTES,
    HEADER,
    SEQ_LEN,
    RecordParseError,
    load_records,
    parse_record,
    read_outcomes,
    read_record_files,
    records_digest,
    write_subset,
)
from tsdiffusion.data.windows import (
    Windows,
    holdout_mask,
    make_window_fields,
    observed_stats,
    split_indices,
)
from tsdiffusion.errors import ConfigError

log = logging.getLogger(__name__)

NUM_FOLDS = 5


class PhysioNetDataModule(TSDataModule):
    """PhysioNet 2012 set-a as 48-hour windows of 35 variables with CSDI's imputation protocol.

    Every item is one ICU stay: ``observed`` (L=48, K=35) normalised, 0 where missing;
    ``observed_mask``; ``target_mask`` (the held-out evaluation points, inside ``observed_mask``;
    ``observed`` still holds their values, the task must hide them); ``timepoints`` 0..47;
    ``feature_ids`` 0..34; ``loc`` / ``scale`` (1, K) the normalisation mean / std; ``label`` the
    in-hospital death (0/1) when an outcomes file is available. See the module docstring for the protocol.

    Args:
        path: ``None`` downloads the official set-a into ``cache_dir`` (checked); a ``.tar.gz``, an
            extracted folder (the set's folder or one holding ``set-a/``), or ``"embedded"`` for the first
            600 records shipped with the package (a smoke-test subset, not the paper's data).
        missing_ratio: share of each record's observed values held out as targets, in (0, 1) (paper: 0.1,
            0.5, 0.9).
        fold: which of the 5 folds is the test split, 0..4.
        seed: seeds the hold-out draw and the split (CSDI: 1).
        protocol: where the normalisation statistics come from: ``"csdi"`` all records (as the paper;
            leaks test statistics), ``"train"`` the train split only.
        outcomes: an ``Outcomes-*.txt`` for ``label``; ``None`` looks for ``Outcomes-a.txt`` next to the
            data (``Outcomes-b.txt`` for set-b), downloads it with the archive, or omits ``label``.
        cache_dir: download and parse cache (default ``$TSDIFFUSION_CACHE`` or ``~/.cache/tsdiffusion``),
            used under ``<cache_dir>/physionet2012``.
        max_records: use only the first records in RecordID order (quick runs); ``None`` for all.
    """

    name = "physionet"

    def __init__(
        self,
        path: str | None = None,
        missing_ratio: float = 0.1,
        fold: int = 0,
        seed: int = 1,
        protocol: Literal["csdi", "train"] = "csdi",
        outcomes: str | None = None,
        cache_dir: str | None = None,
        max_records: int | None = None,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        if not 0.0 < missing_ratio < 1.0:
            raise ConfigError(f"missing_ratio must be in (0, 1) (the paper uses 0.1, 0.5, 0.9), got {missing_ratio}")
        if not 0 <= fold < NUM_FOLDS:
            raise ConfigError(f"fold must be in 0..{NUM_FOLDS - 1}, got {fold}")
        if protocol not in ("csdi", "train"):
            raise ConfigError(f"protocol must be 'csdi' or 'train', got {protocol!r}")
        if max_records is not None and max_records < 1:
            raise ConfigError(f"max_records must be >= 1 or None, got {max_records}")
        self.save_hyperparameters()
        self.path, self.outcomes = path, outcomes
        self.missing_ratio, self.fold, self.seed, self.protocol = missing_ratio, fold, seed, protocol
        self.cache_dir = Path(cache_dir or DEFAULT_CACHE).expanduser() / "physionet2012"
        self.max_records = max_records
        self.attributes = ATTRIBUTES
        self.cache_file: Path | None = None
        self.from_cache = False
        self.source_digest: str | None = None
        self.record_ids: dict[str, np.ndarray] = {}
        self.dropped_record_ids = np.zeros(0, dtype=np.int64)
        self.loc = self.scale = np.zeros(0)
        self._panel: Panel | None = None

    def prepare_data(self) -> None:
        """Download and parse once (Lightning calls this on one process per node), filling the cache."""
        self._records()

    def build(self) -> dict[str, WindowDataset]:
        panel = self._kept(self._records())
        self._panel = None  # the datasets hold what is needed from here on
        ids, values, mask = np.array(panel.items, dtype=np.int64), panel.values, panel.observed
        splits = split_indices(len(ids), self.fold, self.seed)
        for split, idx in splits.items():
            if len(idx) == 0:
                raise ConfigError(f"{len(ids)} records leave the {split} split empty; use at least 5 records")
        ref = splits["train"] if self.protocol == "train" else slice(None)
        mean, std = observed_stats(values[ref], mask[ref])
        self.loc, self.scale = mean.astype(np.float32), std.astype(np.float32)
        self.record_ids = {split: ids[idx] for split, idx in splits.items()}
        target = holdout_mask(mask, self.missing_ratio, np.random.RandomState(self.seed))
        labels = self._labels(ids)
        return {split: self._dataset(split, panel, target, labels, mean, std, splits[split]) for split in SPLITS}

    def _kept(self, panel: Panel) -> Panel:
        """Drop records without any observed value, as CSDI does (its hold-out fails on them)."""
        keep = ~np.isnan(panel.values).all(axis=(1, 2))
        self.dropped_record_ids = np.array(panel.items, dtype=np.int64)[~keep]
        if len(self.dropped_record_ids):
            log.info("PhysioNet: dropped records without observations: %s", self.dropped_record_ids.tolist())
        return panel.replace(values=panel.values[keep], items=tuple(i for i, k in zip(panel.items, keep) if k))

    def _dataset(self, split: str, panel: Panel, target: np.ndarray, labels: np.ndarray | None,
                 mean: np.ndarray, std: np.ndarray, idx: np.ndarray) -> WindowDataset:  # fmt: skip
        windows = Windows(idx, np.full(len(idx), SEQ_LEN), np.zeros(len(idx), dtype=np.int64))
        fields = make_window_fields(panel.values, target, windows, SEQ_LEN, mean, std, None)
        if labels is not None:
            fields["label"] = labels[idx]
        return WindowDataset(fields, source=f"PhysioNetDataModule {split} split")

    def _records(self) -> Panel:
        if self._panel is None:
            where = source.locate(self.path, self.cache_dir)
            parsed, self.cache_file, self.from_cache = load_records(where, self.cache_dir, self.max_records)
            if self.path is None:
                source.check_official(parsed, where)
            self._panel, self.source_digest = source.to_panel(parsed, str(where)), parsed.digest
        return self._panel

    def _labels(self, record_ids: np.ndarray) -> np.ndarray | None:
        path = source.locate_outcomes(self.outcomes, self.path, self.cache_dir)
        if path is None:
            log.info("no outcomes file next to %s; batches have no 'label'", self.path)
            return None
        return source.outcome_labels(path, record_ids)

"""Your own data: a DataModule from a CSV / Parquet / ``.npy`` file, a pandas DataFrame or a numpy array.

Layouts
    * **wide**: one row per time step, one column per series; the time stamps are a ``timestamp`` column, a
      ``DatetimeIndex``, or (neither) the row order;
    * **long**: one row per observation with columns ``item_id``, ``timestamp``, ``value`` (names
      configurable); the items are the K series;
    * arrays: ``(T, K)`` one multivariate series, or ``(N, L, K)`` N aligned multivariate items.

Every source becomes a *panel* ``(N, T, K)`` on a regular time grid: the frequency is given or inferred
(``pandas.infer_freq``), and time stamps missing from the grid become missing values (``observed_mask`` 0),
never dropped rows. Windows of ``window_length`` steps are cut every ``stride`` steps.

Splits (no leakage of the future into training)
    * ``split="time"``: the grid is cut at ``1 - val_fraction - test_fraction`` and ``1 - test_fraction``;
      a window belongs to the split in which its last step lies (for ``protocol="forecast"``: its whole
      horizon), so train windows end before the validation region starts; validation/test windows may look
      back into earlier regions for context, but only steps of their own region are scored.
    * ``split="series"``: the N items are shuffled (``seed``) and divided; every window of an item stays in
      its split (use ``univariate=True`` to make each series of a frame its own item).

Normalisation (``scaling="standard"``): per-series mean and standard deviation of the observed values of the
train part only (as CSDI's ``train`` statistics); every window carries ``loc`` / ``scale`` (1, K) so that
``observed * scale + loc`` is in original units.

Evaluation protocol (``target_mask``), owned by the DataModule as in the rest of tsdiffusion:
    * ``"imputation"``: a seeded ``missing_ratio`` of each item's observed values is held out: scattered
      values (``missing_pattern="point"``, CSDI's protocol, Tashiro et al. 2021, sec. 5.1) or, per series,
      contiguous gaps of ``block_length`` steps (``missing_pattern="block"``: outages, where interpolation
      has no neighbour inside the gap);
    * ``"forecast"``: the last ``prediction_length`` steps of each window (the GluonTS rolling protocol).

Embedded data: ``path="embedded:electricity_subset"`` reads the copy shipped in ``tsdiffusion/resources``
(checked against its sha256; see its README): 1000 hours x 203 clients of the UCI electricity data, columns
``date`` and ``0`` .. ``OT``.

Labels: ``label_column`` (0/1 per time step) becomes ``point_label`` (anomaly detection); ``label_path``
(a table ``item_id,label``) or ``labels=`` of :meth:`FrameDataModule.from_array` become ``label``
(classification, one class per item).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from einops import rearrange

from tsdiffusion.data.datamodule import SPLITS, TSDataModule, WindowDataset
from tsdiffusion.data.download import verify
from tsdiffusion.data.sources.frame import (
    FrameDataError,
    FrameSpec,
    Layout,
    array_to_panel,
    check_panel,
    frame_to_panel,
    read_file_panel,
    split_univariate,
    with_item_labels,
)
from tsdiffusion.data.sources.panel import Panel, panel_time_features
from tsdiffusion.data.windows import (
    Windows,
    block_holdout_mask,
    grid_windows,
    holdout_mask,
    make_window_fields,
    series_split,
    series_stats,
    time_regions,
    window_ends,
)
from tsdiffusion.errors import ConfigError

__all__ = ["FrameDataError", "FrameDataModule", "Panel", "Windows", "make_window_fields", "panel_time_features",
           "time_regions"]  # fmt: skip

Protocol = Literal["imputation", "forecast"]
SplitBy = Literal["time", "series"]
Scaling = Literal["standard", "none"]
MissingPattern = Literal["point", "block"]

#: Tables shipped in ``tsdiffusion/resources`` for ``path="embedded:<name>"``: file name and sha256.
EMBEDDED_FRAMES = {
    "electricity_subset": (
        "electricity-first1000h-203clients.csv.gz",
        "427d0a960aa3515747bc70c61e4fe65d850908d147f5c23d2224f4115e9cc324",
    ),
}


def embedded_frame(path: str) -> Path:
    """``"embedded:<name>"`` -> the packaged file, after checking its sha256 (:func:`verify`)."""
    from importlib import resources

    name = path.split(":", 1)[1]
    if name not in EMBEDDED_FRAMES:
        raise FrameDataError(f"{path}: no embedded table {name!r}; known: {sorted(EMBEDDED_FRAMES)}")
    file_name, sha = EMBEDDED_FRAMES[name]
    return verify(Path(str(resources.files("tsdiffusion") / "resources" / file_name)), sha)


def _name(path: str | None) -> str:
    if not path:
        return "frame"
    if str(path).startswith("embedded:"):
        return str(path).split(":", 1)[1]
    name = Path(path).name
    return name[: -len(".gz")].rsplit(".", 1)[0] if name.endswith(".gz") else Path(path).stem


class FrameDataModule(TSDataModule):
    """Windows of your own data (a file, a DataFrame or an array) as :class:`tsdiffusion.batch.TSBatch` items.

    Items: ``observed`` (L, K) normalised, 0 where missing; ``observed_mask``; ``target_mask`` (the protocol's
    scored values, inside ``observed_mask``); ``timepoints`` 0..L-1; ``feature_ids`` 0..K-1;
    ``loc`` / ``scale`` (1, K); ``time_features`` (L, F) when the data has dates; ``point_label`` (L,)
    with ``label_column``; ``label`` () with ``label_path`` / ``labels``. The module docstring describes
    layouts, splits and protocols.

    Args:
        path: a ``.csv`` / ``.tsv`` / ``.parquet`` table (wide or long, optionally ``.gz``) or a ``.npy`` array
            ``(T, K)`` or ``(N, L, K)``; ``"embedded:<name>"`` for a copy shipped with the package (names in
            :data:`EMBEDDED_FRAMES`); ``None`` with :meth:`from_dataframe` / :meth:`from_array`.
        layout: ``"wide"``, ``"long"`` or ``"auto"`` (long when ``item_column`` and ``value_column`` exist).
        timestamp_column: the time stamp column (default: ``timestamp`` if present, else a ``DatetimeIndex``,
            else the row order; integer stamps are steps).
        item_column, value_column: the long layout's series name and value columns.
        series: the wide layout's series columns (default: every column but the time stamp and label).
        max_series: keep only the first ``max_series`` series (in column order); default all.
        freq: the grid frequency (``"h"``, ``"B"``, ``"15min"``; default inferred).
        window_length: L, steps per window.
        stride: steps between consecutive windows (default ``window_length``: no overlap).
        eval_stride: the stride of the validation and test windows (default ``stride``).
        split: ``"time"`` or ``"series"`` (see the module docstring).
        val_fraction, test_fraction: share of the grid steps (time) or of the items (series).
        protocol: ``"imputation"`` (``missing_ratio`` held out) or ``"forecast"`` (the last
            ``prediction_length`` steps).
        missing_ratio: share of observed values held out as imputation targets, in (0, 1).
        missing_pattern: ``"point"`` (scattered values) or ``"block"`` (per series, gaps of ``block_length``).
        block_length: ``(min, max)`` steps of a held-out gap, drawn uniformly (``missing_pattern="block"``).
        prediction_length: H, the forecast horizon, < L.
        scaling: ``"standard"`` (train mean/std per series) or ``"none"``.
        univariate: every series becomes its own item with K = 1.
        label_column: a 0/1 column per time step -> ``point_label``.
        label_path: a table with columns ``item_column`` and ``label`` -> ``label`` per item.
        seed: seeds the held-out values and the series split.
        batch_size, eval_batch_size, num_workers: as :class:`TSDataModule`.
    """

    def __init__(
        self,
        path: str | None = None,
        layout: Layout = "auto",
        timestamp_column: str | None = None,
        item_column: str = "item_id",
        value_column: str = "value",
        series: list[str] | None = None,
        max_series: int | None = None,
        freq: str | None = None,
        window_length: int = 48,
        stride: int | None = None,
        eval_stride: int | None = None,
        split: SplitBy = "time",
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        protocol: Protocol = "imputation",
        missing_ratio: float = 0.1,
        missing_pattern: MissingPattern = "point",
        block_length: tuple[int, int] = (6, 24),
        prediction_length: int = 24,
        scaling: Scaling = "standard",
        univariate: bool = False,
        label_column: str | None = None,
        label_path: str | None = None,
        seed: int = 1,
        batch_size: int = 16,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
    ):
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers)
        _check_options(layout, split, protocol, scaling, missing_pattern)
        _check_sizes(window_length, stride, val_fraction, test_fraction, missing_ratio, prediction_length, protocol)
        if eval_stride is not None and eval_stride < 1:
            raise ConfigError(f"eval_stride must be >= 1, got {eval_stride}")
        if max_series is not None and max_series < 1:
            raise ConfigError(f"max_series must be >= 1, got {max_series}")
        block_length = tuple(block_length)
        if len(block_length) != 2 or not 1 <= block_length[0] <= block_length[1]:
            raise ConfigError(f"block_length must be (min, max) with 1 <= min <= max, got {block_length}")
        self.path, self.label_path = path, label_path
        self.spec = FrameSpec(layout, timestamp_column, item_column, value_column,
                              tuple(series) if series else None, label_column, freq)  # fmt: skip
        self.window_length, self.stride = window_length, stride or window_length
        self.eval_stride, self.max_series = eval_stride or self.stride, max_series
        self.missing_pattern, self.block_length = missing_pattern, block_length
        self.split, self.val_fraction, self.test_fraction = split, val_fraction, test_fraction
        self.protocol, self.missing_ratio, self.prediction_length = protocol, missing_ratio, prediction_length
        self.scaling, self.univariate, self.seed = scaling, univariate, seed
        self.name = _name(path)
        self._frame: pd.DataFrame | None = None
        self._array: dict[str, Any] | None = None
        self._panel: Panel | None = None
        self.loc = self.scale = np.zeros(0)
        self.windows: dict[str, Windows] = {}

    # -- constructors for Python use ------------------------------------------------------------
    @classmethod
    def from_dataframe(cls, df: pd.DataFrame, **kwargs: Any) -> FrameDataModule:
        """A DataModule of a wide or long DataFrame; ``kwargs`` are the constructor's arguments."""
        if not isinstance(df, pd.DataFrame):
            raise TypeError(f"from_dataframe expects a pandas DataFrame, got {type(df).__name__}")
        dm = cls(path=None, **kwargs)
        dm._frame = df
        return dm

    @classmethod
    def from_array(
        cls,
        values: np.ndarray,
        *,
        start: str | None = None,
        series_names: Sequence[str] | None = None,
        labels: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        **kwargs: Any,
    ) -> FrameDataModule:
        """A DataModule of an array ``(T, K)`` or ``(N, L, K)`` (NaN where missing).

        ``start`` (with ``freq``) dates the steps; ``labels`` (N,) one class per item; ``point_labels`` (T,)
        or (N, L) 0/1 per step. ``kwargs`` are the constructor's arguments.
        """
        dm = cls(path=None, **kwargs)
        dm._array = {"values": values, "start": start, "series": series_names, "labels": labels,
                     "point_labels": point_labels}  # fmt: skip
        return dm

    # -- the data ---------------------------------------------------------------------------------
    def panel(self) -> Panel:
        """The whole data set on its regular grid, before windows, splits and normalisation."""
        if self._panel is None:
            panel = self._read()
            if self.max_series is not None:
                panel = panel.replace(
                    values=panel.values[..., : self.max_series], series=panel.series[: self.max_series]
                )
            panel = split_univariate(panel) if self.univariate else panel
            if self.label_path is not None:
                panel = with_item_labels(panel, self.label_path, self.spec.item_column)
            check_panel(panel)
            self._panel = panel
        return self._panel

    def _read(self) -> Panel:
        if self._frame is not None:
            return frame_to_panel(self._frame, self.spec, "DataFrame")
        if self._array is not None:
            a = self._array
            return array_to_panel(a["values"], start=a["start"], freq=self.spec.freq, series=a["series"],
                                  labels=a["labels"], point_labels=a["point_labels"])  # fmt: skip
        if self.path is None:
            raise FrameDataError("FrameDataModule: pass `path`, or use from_dataframe() / from_array()")
        return read_file_panel(embedded_frame(self.path) if str(self.path).startswith("embedded:") else self.path,
                               self.spec)  # fmt: skip

    # -- sizes --------------------------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        """K, the number of series per window."""
        return int(self.panel().values.shape[-1])

    @property
    def seq_len(self) -> int:
        """L, the window length."""
        return self.window_length

    @property
    def freq(self) -> str | None:
        """The grid frequency (None when the data has no dates)."""
        return self.panel().freq

    @property
    def series_names(self) -> tuple[str, ...]:
        return self.panel().series

    @property
    def num_time_features(self) -> int:
        """F, calendar features per step (0 without dates)."""
        tf = panel_time_features(self.panel())
        return 0 if tf is None else int(tf.shape[1])

    # -- splits -------------------------------------------------------------------------------------
    def split_windows(self) -> dict[str, Windows]:
        """Where every split's windows lie (see :class:`Windows`); errors when a split gets no window."""
        panel = self.panel()
        N, T, _ = panel.values.shape
        L = self.window_length
        if T < L:
            raise FrameDataError(f"{panel.source}: window_length={L} is longer than the series ({T} grid steps)")
        if self.split == "time":
            return self._time_windows(N, T)
        return self._series_windows(N, T)

    def _time_windows(self, N: int, T: int) -> dict[str, Windows]:
        L = self.window_length
        scored = self.prediction_length if self.protocol == "forecast" else 1
        out = {}
        for split, region in time_regions(T, self.val_fraction, self.test_fraction).items():
            ends = window_ends(region, L, self.stride if split == "train" else self.eval_stride, scored)
            self._check_nonempty(split, len(ends), f"grid steps [{region[0]}, {region[1]}) of {T}")
            out[split] = grid_windows(np.arange(N), ends, region[0] if split != "train" else 0)
        return out

    def _series_windows(self, N: int, T: int) -> dict[str, Windows]:
        groups = series_split(N, self.val_fraction, self.test_fraction, self.seed)
        ends = window_ends((0, T), self.window_length, self.stride, 1)
        out = {}
        for split in SPLITS:
            items = np.sort(groups[split])
            self._check_nonempty(split, len(items), f"{N} items")
            out[split] = grid_windows(items, ends)
        return out

    def _check_nonempty(self, split: str, count: int, where: str) -> None:
        fraction = {"train": 1.0, "val": self.val_fraction, "test": self.test_fraction}[split]
        if count == 0 and fraction > 0:
            horizon = f", prediction_length={self.prediction_length}" if self.protocol == "forecast" else ""
            raise FrameDataError(
                f"{self.panel().source}: the {split} split ({where}) holds no window of window_length="
                f"{self.window_length}{horizon}; use shorter windows or a larger {split} fraction"
            )

    def train_part(self) -> np.ndarray:
        """The values the normalisation is fitted on: (N', T', K), the train region or the train items."""
        values, w = self.panel().values, self.windows["train"]
        if self.split == "time":
            return values[:, : int(w.end.max())]
        return values[np.unique(w.item)]

    def fit_scaling(self) -> tuple[np.ndarray, np.ndarray]:
        """(K,) loc and scale from the train part only (``scaling="none"``: 0 and 1)."""
        K = self.num_features
        if self.scaling == "none":
            return np.zeros(K), np.ones(K)
        return series_stats(rearrange(self.train_part(), "n t k -> (n t) k"))

    def target(self) -> np.ndarray:
        """(N, T, K) bool: the grid's evaluation targets (imputation: held-out values; forecast: all
        observed, cut to each window's horizon)."""
        values = self.panel().values
        observed = np.isfinite(values)
        if self.protocol == "imputation":
            rng = np.random.default_rng(self.seed)
            if self.missing_pattern == "block":
                return block_holdout_mask(observed, self.missing_ratio, rng, *self.block_length)
            return holdout_mask(observed, self.missing_ratio, rng)
        return observed

    def build(self) -> dict[str, WindowDataset]:
        panel = self.panel()
        self.windows = self.split_windows()
        if self.protocol == "forecast":
            self.windows = {s: _horizon_only(w, self.prediction_length) for s, w in self.windows.items()}
        loc, scale = self.fit_scaling()
        self.loc, self.scale = loc.astype(np.float32), scale.astype(np.float32)
        target, tf = self.target(), panel_time_features(panel)
        return {split: self._dataset(split, target, tf) for split in SPLITS}

    def _dataset(self, split: str, target: np.ndarray, tf: np.ndarray | None) -> WindowDataset:
        panel, w = self.panel(), self.windows[split]
        fields = make_window_fields(panel.values, target, w, self.window_length, self.loc, self.scale, tf)
        steps = w.steps(self.window_length)
        if panel.point_label is not None:
            fields["point_label"] = panel.point_label[w.item[:, None], steps]
        if panel.label is not None:
            fields["label"] = panel.label[w.item]
        return WindowDataset(fields, source=f"FrameDataModule({panel.source}) {split} split")

    # -- units --------------------------------------------------------------------------------------
    def denormalise(self, x: np.ndarray) -> np.ndarray:
        """Normalised values (..., K) -> original units: ``x * scale + loc`` with the train statistics."""
        self._ensure()
        return np.asarray(x) * self.scale + self.loc

    def normalise(self, x: np.ndarray) -> np.ndarray:
        """Original units (..., K) -> normalised: ``(x - loc) / scale`` with the train statistics."""
        self._ensure()
        return (np.asarray(x) - self.loc) / self.scale

    def record_info(self) -> dict[str, Any]:
        """What a result record says about the data (see :mod:`tsdiffusion.records`)."""
        panel = self.panel()
        self._ensure()
        return {
            "source": panel.source, "shape_NTK": list(panel.values.shape), "freq": panel.freq,
            "series": list(panel.series)[:50], "window_length": self.window_length, "stride": self.stride,
            "eval_stride": self.eval_stride, "split": self.split, "protocol": self.protocol,
            **({"missing_pattern": "block", "block_length": list(self.block_length)}
               if self.protocol == "imputation" and self.missing_pattern == "block" else {}),
            "windows": {s: len(w.item) for s, w in self.windows.items()},
        }  # fmt: skip


def _horizon_only(windows: Windows, horizon: int) -> Windows:
    """Score only the last ``horizon`` steps of every window (the forecast protocol)."""
    return Windows(windows.item, windows.end, np.maximum(windows.scored_from, windows.end - horizon))


def _check_options(layout: str, split: str, protocol: str, scaling: str, missing_pattern: str = "point") -> None:
    options = (
        ("missing_pattern", missing_pattern, ("point", "block")),
        ("layout", layout, ("auto", "wide", "long")),
        ("split", split, ("time", "series")),
        ("protocol", protocol, ("imputation", "forecast")),
        ("scaling", scaling, ("standard", "none")),
    )
    for arg, value, allowed in options:
        if value not in allowed:
            raise ConfigError(f"{arg} must be one of {allowed}, got {value!r}")


def _check_sizes(
    window_length: int, stride: int | None, val_fraction: float, test_fraction: float, missing_ratio: float,
    prediction_length: int, protocol: str,
) -> None:  # fmt: skip
    if window_length < 1 or (stride is not None and stride < 1):
        raise ConfigError(f"window_length and stride must be >= 1, got {window_length} and {stride}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"val_fraction and test_fraction must be >= 0 and sum to < 1, got {val_fraction}, {test_fraction}"
        )
    if not 0 < missing_ratio < 1:
        raise ConfigError(f"missing_ratio must be in (0, 1), got {missing_ratio}")
    if protocol == "forecast" and not 1 <= prediction_length < window_length:
        raise ConfigError(f"prediction_length must be in [1, window_length={window_length}), got {prediction_length}")

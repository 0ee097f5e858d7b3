"""The :class:`Model`: a config in the CLI's format, trained, sampled, saved and loaded (see :mod:`tsdiffusion.api`)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import lightning as L
import numpy as np
import pandas as pd
import torch
import yaml
from einops import rearrange

from tsdiffusion.api.config import FRAME_DATA, apply_overrides, preset_config
from tsdiffusion.api.results import Forecast, Imputation, _frames
from tsdiffusion.data.frame import FrameDataModule, Panel, Windows, make_window_fields, panel_time_features
from tsdiffusion.data.time_features import parse_freq
from tsdiffusion.hardware import trainer_precision
from tsdiffusion.metrics.anomaly import stitch_windows
from tsdiffusion.runs import complete_config, instantiate
from tsdiffusion.tasks.base import DiffusionTask

CONFIG_FILE, WEIGHTS_FILE, FITTED_FILE = "config.yaml", "model.pt", "fitted.yaml"
Data: TypeAlias = pd.DataFrame | np.ndarray | str | Path


class Model:
    """A diffusion model for your own data: a config, a task (LightningModule) and the fitted normalisation.

    Create it with :meth:`create` (by name) or :meth:`from_config` (a CLI yaml or dict); the task is built
    when :meth:`fit` sees the data (the number of series K comes from it) or when :meth:`load` reads it.
    """

    def __init__(self, config: Mapping[str, Any]):
        config = copy.deepcopy(dict(config))
        if "model" not in config:
            raise ValueError(f"a model config needs a 'model' section (have {sorted(config)})")
        data = config.setdefault("data", {"class_path": FRAME_DATA, "init_args": {}})
        if data.get("class_path", FRAME_DATA) not in (FRAME_DATA, "tsdiffusion.data.FrameDataModule"):
            raise ValueError(f"the Python API reads data with {FRAME_DATA}, got data.class_path={data['class_path']!r}")
        data["class_path"] = FRAME_DATA
        data.setdefault("init_args", {})
        self.config = config
        self._defaults = complete_config(config)["data"]["init_args"]  # checks every section, as the CLI does
        self.task: DiffusionTask | None = None
        self.fitted: dict[str, Any] | None = None
        self.trainer: L.Trainer | None = None

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def create(cls, name: str, **overrides: Any) -> Model:
        """A preset by name (see :func:`available_presets`), with ``overrides`` (see :func:`apply_overrides`),
        e.g. ``Model.create("csdi-imputation", window_length=30, channels=32, max_epochs=10)``."""
        return cls(apply_overrides(preset_config(name), overrides))

    @classmethod
    def from_config(cls, config: str | Path | Mapping[str, Any], **overrides: Any) -> Model:
        """From a CLI config (a yaml path or a dict), e.g. ``experiments/own_data/csdi_imputation.yaml``."""
        if not isinstance(config, Mapping):
            config = yaml.safe_load(Path(config).read_text())
        return cls(apply_overrides(dict(config), overrides))

    @property
    def data_args(self) -> dict[str, Any]:
        """The FrameDataModule arguments (without ``path``, which :meth:`fit` replaces with its data)."""
        return {k: v for k, v in self.config["data"]["init_args"].items() if k != "path"}

    @property
    def window_length(self) -> int:
        """L, the window length of the data arguments (FrameDataModule's default when the config has none)."""
        return int(self.data_args.get("window_length", self._defaults["window_length"]))

    @property
    def prediction_length(self) -> int:
        return int(self.data_args.get("prediction_length", self._defaults["prediction_length"]))

    def build_task(self, datamodule: FrameDataModule, seed: int | None = None) -> DiffusionTask:
        """Build the task of ``config["model"]`` for the series of ``datamodule`` with
        :func:`tsdiffusion.runs.instantiate`, seeded with ``seed`` (default: the config's ``seed_everything``)."""
        config = self.config if seed is None else {**self.config, "seed_everything": seed}
        built = instantiate(config, datamodule=datamodule, trainer=False)
        self.config["model"] = built.config["model"]
        self.task = built.task
        return self.task

    def datamodule(self, data: Data | FrameDataModule, **data_args: Any) -> FrameDataModule:
        """A FrameDataModule of ``data`` (DataFrame, array, or file path) with the config's arguments."""
        if isinstance(data, FrameDataModule):
            return data
        args = {**self.data_args, **data_args}
        if isinstance(data, pd.DataFrame):
            return FrameDataModule.from_dataframe(data, **args)
        if isinstance(data, np.ndarray):
            return FrameDataModule.from_array(data, **args)
        if isinstance(data, str | Path):
            return FrameDataModule(path=str(data), **args)
        raise TypeError(f"data must be a DataFrame, a numpy array or a file path, got {type(data).__name__}")

    # -- training -----------------------------------------------------------------------------------
    def fit(
        self,
        data: Data | FrameDataModule,
        *,
        max_epochs: int | None = None,
        trainer: Mapping[str, Any] | None = None,
        seed: int | None = None,
        root_dir: str | Path | None = None,
    ) -> Model:
        """Train on ``data`` with a Lightning ``Trainer`` (the config's plain ``trainer`` settings, then
        ``trainer``; no logger or checkpoints unless given). Returns ``self``."""
        seed = self.config.get("seed_everything", 1) if seed is None else seed
        L.seed_everything(seed, verbose=False)
        dm = self.datamodule(data)
        dm.setup("fit")
        if self.task is None:
            self.build_task(dm, seed)
        self._check_series(dm.panel())
        names = dm.panel().items if dm.univariate else dm.series_names
        self.fitted = {"series": list(names), "freq": dm.freq, "loc": dm.loc.tolist(),
                       "scale": dm.scale.tolist(), "univariate": dm.univariate}  # fmt: skip
        settings = {k: v for k, v in self.config.get("trainer", {}).items() if not isinstance(v, dict | list)}
        defaults = {"accelerator": "auto", "logger": False, "enable_checkpointing": False,
                    "enable_progress_bar": False, "enable_model_summary": False}  # fmt: skip
        kwargs = {**defaults, **settings, **(trainer or {})}
        if max_epochs is not None:
            kwargs["max_epochs"] = max_epochs
        if root_dir is not None:
            kwargs["default_root_dir"] = str(root_dir)
        kwargs["precision"] = trainer_precision(kwargs.get("precision"), kwargs.get("accelerator"))
        self.trainer = L.Trainer(**kwargs)
        self.trainer.fit(self.task, datamodule=dm)
        return self

    # -- inference ----------------------------------------------------------------------------------
    def sample(self, data: Data, num_samples: int | None = None, seed: int = 0) -> np.ndarray:
        """Samples (S, T, K) in original units on the regular grid of ``data``, given its observed values
        (missing values are drawn; observed ones are kept). An (N, L, K) array gives (N, S, T, K)."""
        panel = self._panel(data)
        samples = self._sample_panel(panel, num_samples, seed)  # (N, S, T, K)
        if self.fitted["univariate"]:
            return rearrange(samples, "k s t 1 -> s t k")
        return samples[0] if panel.values.shape[0] == 1 and np.ndim(data) != 3 else samples

    def impute(
        self,
        data: Data,
        num_samples: int | None = None,
        quantiles: Sequence[float] = (0.05, 0.95),
        seed: int = 0,
    ) -> Imputation:
        """Fill the missing values of ``data`` (NaN, or steps missing from the grid): median and quantiles."""
        panel = self._panel(data)
        self._require_one_series(panel, "impute")
        samples = self.sample(data, num_samples, seed)
        names = self._column_names(panel)
        median, qs = _frames(samples, panel.index, names, quantiles)
        observed = pd.DataFrame(self._grid_values(panel), index=panel.index, columns=names).notna()
        return Imputation(median, qs, samples, observed)

    def forecast(
        self,
        data: Data,
        horizon: int | None = None,
        num_samples: int | None = None,
        quantiles: Sequence[float] = (0.05, 0.95),
        seed: int = 0,
    ) -> Forecast:
        """Sample paths for the ``horizon`` steps after the end of ``data``, conditioned on its last
        ``window_length - horizon`` steps (default horizon: the data's ``prediction_length``)."""
        panel = self._panel(data)
        self._require_one_series(panel, "forecast")
        L_ = self.window_length
        H = int(horizon or self.prediction_length)
        if not 1 <= H < L_:
            raise ValueError(f"horizon must be in [1, window_length={L_}), got {H}")
        future = _extend(panel, L_ - H, H)
        samples = self._sample_panel(future, num_samples, seed)[..., -H:, :]  # (N, S, H, K)
        samples = rearrange(samples, "k s h 1 -> s h k") if self.fitted["univariate"] else samples[0]
        names, index = self._column_names(panel), future.index[-H:]
        median, qs = _frames(samples, index, names, quantiles)
        mean = pd.DataFrame(samples.mean(axis=0), index=index, columns=names)
        return Forecast(samples, median, mean, qs)

    def anomaly_scores(self, data: Data, seed: int = 0) -> pd.Series:
        """Per time step anomaly score of ``data`` (``csdi-anomaly``: ``AnomalyTask.score_batch``, averaged
        over the observed series and over overlapping windows)."""
        score_batch = getattr(self._require_task(), "score_batch", None)
        if score_batch is None:
            raise TypeError(f"{type(self.task).__name__} has no anomaly scores; use Model.create('csdi-anomaly')")
        panel = self._panel(data)
        self._require_one_series(panel, "anomaly_scores")
        self.task.eval()
        gen = torch.Generator().manual_seed(seed)
        starts, scores, valid = [], [], []
        for batch, _, steps in self._window_batches(panel):
            with torch.no_grad():
                scores.append(score_batch(batch, gen).cpu().double().numpy())  # (B, L)
            starts.append(steps[:, 0])
            valid.append(batch["observed_mask"].amax(-1).cpu().numpy())
        start = np.concatenate(starts)
        stitched = stitch_windows(np.zeros(len(start)), start, np.concatenate(scores), np.concatenate(valid)).get(0)
        out = np.full(len(panel.index), np.nan)
        if stitched is not None:
            out[: len(stitched)] = stitched
        return pd.Series(out, index=panel.index, name="score")

    def generate(self, num_windows: int, seed: int = 0) -> np.ndarray:
        """(N, L, K) synthetic windows in original units (``GenerationTask.generate``, nothing conditioned on)."""
        task = self._require_task()
        if not hasattr(task, "generate"):
            raise TypeError(f"{type(task).__name__} does not generate; use a tsdiffusion.tasks.generation config")
        task.eval()
        device = next(task.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        windows = task.generate(num_windows, self.window_length, generator=gen)
        return windows.cpu().double().numpy() * np.asarray(self.fitted["scale"]) + np.asarray(self.fitted["loc"])

    def embed(self, data: Data) -> np.ndarray:
        """(W, H) features of the windows that tile ``data`` (``RepresentationTask.features``); an (N, L, K)
        array with ``window_length = L`` gives one row per item."""
        task = self._require_task()
        if not hasattr(task, "features"):
            raise TypeError(f"{type(task).__name__} has no features; use a tsdiffusion.tasks.representation config")
        task.eval()
        batches = self._window_batches(self._panel(data))
        return np.concatenate([task.features(batch, i).cpu().numpy() for i, (batch, _, _) in enumerate(batches)])

    # -- persistence --------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``config.yaml`` (the CLI config), ``fitted.yaml`` (series, frequency, train loc/scale) and
        ``model.pt`` (the task's ``state_dict``, tensors only)."""
        task = self._require_task()
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_text(yaml.safe_dump(self.config, sort_keys=False))
        (folder / FITTED_FILE).write_text(yaml.safe_dump(self.fitted, sort_keys=False))
        torch.save({k: v.detach().cpu() for k, v in task.state_dict().items()}, folder / WEIGHTS_FILE)
        return folder

    @classmethod
    def load(cls, directory: str | Path) -> Model:
        """Rebuild from ``config.yaml`` and load ``model.pt`` with ``torch.load(weights_only=True)``."""
        folder = Path(directory)
        for name in (CONFIG_FILE, FITTED_FILE, WEIGHTS_FILE):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder / name}: not found (Model.save writes it)")
        model = cls.from_config(folder / CONFIG_FILE)
        model.fitted = yaml.safe_load((folder / FITTED_FILE).read_text())
        num_features = 1 if model.fitted["univariate"] else len(model.fitted["series"])
        shape_only = FrameDataModule.from_array(np.zeros((1, model.window_length, num_features)))  # K, no data
        task = model.build_task(shape_only)
        state = torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        task.load_state_dict(state)
        return model

    # -- helpers ------------------------------------------------------------------------------------
    def _require_task(self) -> DiffusionTask:
        if self.task is None or self.fitted is None:
            raise RuntimeError("the model is not trained: call fit() or Model.load() first")
        return self.task

    def _panel(self, data: Data) -> Panel:
        """``data`` on the fitted grid frequency, read with the config's column arguments (a label column
        the data does not have is not required, and no label file is read)."""
        self._require_task()
        args: dict[str, Any] = {"freq": self.fitted["freq"], "label_path": None}
        label = self.data_args.get("label_column")
        if label is not None and isinstance(data, pd.DataFrame) and label not in data.columns:
            args["label_column"] = None
        panel = self.datamodule(data, **args).panel()
        self._check_series(panel)
        return panel

    def _check_series(self, panel: Panel) -> None:
        if self.fitted is None:
            return
        have = list(panel.items if self.fitted["univariate"] else panel.series)
        if have != list(self.fitted["series"]):
            raise ValueError(f"the data has series {have[:10]}, the model was fitted on {self.fitted['series'][:10]}")

    def _column_names(self, panel: Panel) -> list[str]:
        return list(panel.items if self.fitted["univariate"] else panel.series)

    def _grid_values(self, panel: Panel) -> np.ndarray:
        """(T, K) values of a one-series panel (univariate items back as columns)."""
        if self.fitted["univariate"]:
            return rearrange(panel.values, "k t 1 -> t k")
        return panel.values[0]

    def _require_one_series(self, panel: Panel, what: str) -> None:
        if panel.values.shape[0] > 1 and not self.fitted["univariate"]:
            raise ValueError(f"{what} takes one multivariate series (T, K); for an (N, L, K) array use sample()")

    def _window_batches(self, panel: Panel, chunk: int = 64):
        """Windows tiling the panel (the last one ends at its end; a panel shorter than a window is padded
        with missing steps in front) as batches. Yields ``(batch, items (B,), steps (B, L))``, the steps on
        the panel's grid (negative for padding)."""
        task, L_ = self._require_task(), self.window_length
        T = len(panel.index)
        padded = _extend(panel, max(T, L_), 0)
        pad = len(padded.index) - T
        ends = sorted({*range(L_, T + pad + 1, L_), T + pad})
        grid = np.meshgrid(np.arange(panel.values.shape[0]), np.asarray(ends), indexing="ij")
        windows = Windows(grid[0].ravel(), grid[1].ravel(), np.zeros(grid[0].size, dtype=np.int64))
        loc, scale = np.asarray(self.fitted["loc"]), np.asarray(self.fitted["scale"])
        target = np.zeros(padded.values.shape, dtype=bool)
        fields = make_window_fields(padded.values, target, windows, L_, loc, scale, panel_time_features(padded))
        steps = windows.end[:, None] - L_ + np.arange(L_)[None, :] - pad
        device = next(task.parameters()).device
        for start in range(0, len(windows.item), chunk):
            part = slice(start, start + chunk)
            batch = {k: torch.as_tensor(np.asarray(v[part])).to(device) for k, v in fields.items()}
            batch = {k: v.long() if k == "feature_ids" else v.float() for k, v in batch.items()}
            yield batch, windows.item[part], steps[part]

    def _sample_panel(self, panel: Panel, num_samples: int | None, seed: int) -> np.ndarray:
        """(N, S, T, K) samples in original units on the panel's grid; later windows overwrite overlaps."""
        task = self._require_task()
        task.eval()
        S = int(num_samples or task.hparams.num_samples)
        N, T, K = panel.values.shape
        out = np.zeros((N, S, T, K))
        gen = torch.Generator(device=next(task.parameters()).device).manual_seed(seed)
        for batch, items, steps in self._window_batches(panel):
            draws = task.sample(batch, batch["observed_mask"], S, gen).cpu().double().numpy()  # (B, S, L, K)
            loc, scale = (batch[k].cpu().double().numpy()[:, None] for k in ("loc", "scale"))  # (B, 1, 1, K)
            draws = draws * scale + loc
            for b, (n, window_steps) in enumerate(zip(items, steps)):
                keep = window_steps >= 0
                out[n][:, window_steps[keep]] = draws[b][:, keep]
        return out


def _extend(panel: Panel, before: int, after: int) -> Panel:
    """Keep the last ``before`` steps of the panel (padding missing steps in front when it is shorter) and
    append ``after`` missing steps; dates continue on the grid's frequency."""
    N, T, K = panel.values.shape
    pad = max(before - T, 0)
    values = np.concatenate(
        [np.full((N, pad, K), np.nan), panel.values[:, max(T - before, 0) :], np.full((N, after, K), np.nan)],
        axis=1,
    )
    first = panel.index[max(T - before, 0)]
    total = values.shape[1]
    if isinstance(panel.index, pd.DatetimeIndex):
        offset = parse_freq(panel.freq)
        index: pd.Index = pd.date_range(first - pad * offset, periods=total, freq=offset)
    else:
        step = int(panel.index[1] - panel.index[0]) if len(panel.index) > 1 else 1
        index = pd.Index(np.arange(total) * step + int(first) - pad * step)
    point = None if panel.point_label is None else np.zeros((N, total))
    return Panel(values, index, panel.freq, panel.series, panel.items, point, panel.label, panel.source)

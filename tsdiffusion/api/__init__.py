"""A short Python API on the LightningModules, the CLI's config format and :class:`FrameDataModule`.

    >>> model = Model.create("csdi-imputation", window_length=30, max_epochs=20)
    >>> model.fit(df)                                   # a wide/long DataFrame, an array or a file path
    >>> result = model.impute(df_with_gaps)             # median and quantiles as DataFrames
    >>> fc = model.forecast(df, horizon=10)             # sample paths and quantiles
    >>> model.save("my_model"); Model.load("my_model")  # config.yaml + model.pt (state_dict) + fitted.yaml

Nothing here re-implements a model: a :class:`Model` holds a config in the CLI's format (``model``,
``data``, ``trainer``, ``seed_everything``), builds a :class:`tsdiffusion.data.frame.FrameDataModule` from the
data it is given, builds the task with :func:`tsdiffusion.runs.instantiate` (the CLI's parser, defaults and
links) and trains with a Lightning ``Trainer``. Samples come from the task's own ``sample`` (anomaly scores from
``AnomalyTask.score_batch``). Weights are stored as a plain ``state_dict`` and read with
``torch.load(weights_only=True)``.
"""

from tsdiffusion.api.config import PRESETS, apply_overrides, available_presets, preset_config
from tsdiffusion.api.model import Data, Model
from tsdiffusion.api.results import Forecast, Imputation

__all__ = [
    "PRESETS",
    "Data",
    "Forecast",
    "Imputation",
    "Model",
    "apply_overrides",
    "available_presets",
    "preset_config",
]

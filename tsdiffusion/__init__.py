"""tsdiffusion: diffusion models for time series, built on PyTorch Lightning."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # ``tsdiffusion.Model`` without importing Lightning on ``import tsdiffusion``
    if name == "Model":
        from tsdiffusion.api import Model

        return Model
    raise AttributeError(f"module 'tsdiffusion' has no attribute {name!r}")

"""tsdiffusion: diffusion models for time series, built on PyTorch Lightning."""

__version__ = "0.1.0"

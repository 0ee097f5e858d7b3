"""DataModules: benchmarks and user data, all producing :class:`tsdiffusion.batch.TSBatch` dicts."""

from tsdiffusion.data.datamodule import TSDataModule, WindowDataset

__all__ = ["TSDataModule", "WindowDataset"]

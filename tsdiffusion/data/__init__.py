"""DataModules: benchmarks and user data, all producing :class:`tsdiffusion.batch.TSBatch` dicts."""

from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.data.gluonts import GluonTSDataModule
from tsdiffusion.data.physionet import PhysioNetDataModule

__all__ = ["GluonTSDataModule", "PhysioNetDataModule", "TSDataModule", "WindowDataset"]

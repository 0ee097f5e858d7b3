"""DataModules: benchmarks and user data, all producing :class:`tsdiffusion.batch.TSBatch` dicts."""

from tsdiffusion.data.anomaly import NABDataModule, SMAPMSLDataModule
from tsdiffusion.data.datamodule import TSDataModule, WindowDataset
from tsdiffusion.data.frame import FrameDataError, FrameDataModule
from tsdiffusion.data.gluonts import GluonTSDataModule
from tsdiffusion.data.physionet import PhysioNetDataModule
from tsdiffusion.data.synthetic import SyntheticDataModule as SyntheticDataModule
from tsdiffusion.data.ucr import UCRDataModule

__all__ = [
    "FrameDataError",
    "FrameDataModule",
    "GluonTSDataModule",
    "NABDataModule",
    "PhysioNetDataModule",
    "SMAPMSLDataModule",
    "TSDataModule",
    "UCRDataModule",
    "WindowDataset",
]

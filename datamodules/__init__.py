"""LightningDataModules for VOC, Cityscapes, CamVid, image folders and synthetic data."""

from mnm.datamodules.base import DataError, SegmentationDataModule, loader_throughput
from mnm.datamodules.camvid import CamVidDataModule
from mnm.datamodules.cityscapes import CityscapesDataModule
from mnm.datamodules.folder import ImageFolderDataModule
from mnm.datamodules.synthetic import SyntheticDataModule
from mnm.datamodules.voc import VOCDataModule

__all__ = [
    "CamVidDataModule",
    "CityscapesDataModule",
    "DataError",
    "ImageFolderDataModule",
    "SegmentationDataModule",
    "SyntheticDataModule",
    "VOCDataModule",
    "loader_throughput",
]

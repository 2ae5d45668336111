"""LightningDataModules for VOC, Cityscapes, CamVid, image folders and synthetic data; classification data."""

from mnm.datamodules.base import DataError, SegmentationDataModule, loader_throughput
from mnm.datamodules.camvid import CamVidDataModule
from mnm.datamodules.cityscapes import CityscapesDataModule
from mnm.datamodules.classification import (
    Caltech101DataModule,
    ClassificationDataModule,
    DTDDataModule,
    FGVCAircraftDataModule,
    Flowers102DataModule,
    ImageFolderClassificationDataModule,
    OxfordIIITPetDataModule,
    SyntheticClassificationDataModule,
)
from mnm.datamodules.folder import ImageFolderDataModule
from mnm.datamodules.synthetic import SyntheticDataModule
from mnm.datamodules.voc import VOCDataModule

__all__ = [
    "Caltech101DataModule",
    "CamVidDataModule",
    "ClassificationDataModule",
    "DTDDataModule",
    "FGVCAircraftDataModule",
    "Flowers102DataModule",
    "ImageFolderClassificationDataModule",
    "OxfordIIITPetDataModule",
    "SyntheticClassificationDataModule",
    "CityscapesDataModule",
    "DataError",
    "ImageFolderDataModule",
    "SegmentationDataModule",
    "SyntheticDataModule",
    "VOCDataModule",
    "loader_throughput",
]

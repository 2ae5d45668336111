"""LightningDataModules for VOC, Cityscapes, CamVid, MSRC-21 (any images/labels/split-list layout), image
folders and synthetic data; classification data (including crops of a segmentation set labelled by their majority class)."""

from mnm.datamodules.base import DataError, SegmentationDataModule, loader_throughput
from mnm.datamodules.camvid import CamVidDataModule
from mnm.datamodules.cityscapes import Cityscapes27DataModule, CityscapesDataModule
from mnm.datamodules.classification import ClassificationDataModule
from mnm.datamodules.classification_folder import ImageFolderClassificationDataModule
from mnm.datamodules.classification_synthetic import SyntheticClassificationDataModule
from mnm.datamodules.classification_torchvision import (
    Caltech101DataModule,
    DTDDataModule,
    FGVCAircraftDataModule,
    Flowers102DataModule,
    OxfordIIITPetDataModule,
)
from mnm.datamodules.cocostuff import CocoStuff27DataModule
from mnm.datamodules.folder import ImageFolderDataModule
from mnm.datamodules.listed import ListedSegmentationDataModule
from mnm.datamodules.segmentation_crops import SegmentationCropsDataModule
from mnm.datamodules.synthetic import SyntheticDataModule
from mnm.datamodules.voc import VOCDataModule

__all__ = [
    "Caltech101DataModule",
    "CamVidDataModule",
    "Cityscapes27DataModule",
    "ClassificationDataModule",
    "CocoStuff27DataModule",
    "DTDDataModule",
    "FGVCAircraftDataModule",
    "Flowers102DataModule",
    "ImageFolderClassificationDataModule",
    "OxfordIIITPetDataModule",
    "SyntheticClassificationDataModule",
    "CityscapesDataModule",
    "DataError",
    "ImageFolderDataModule",
    "ListedSegmentationDataModule",
    "SegmentationCropsDataModule",
    "SegmentationDataModule",
    "SyntheticDataModule",
    "VOCDataModule",
    "loader_throughput",
]

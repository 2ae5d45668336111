"""LightningDataModules for VOC, Cityscapes, CamVid, image folders and synthetic data."""

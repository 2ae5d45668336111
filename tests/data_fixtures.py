"""Writers for tiny on-disk datasets in the exact VOC, Cityscapes and CamVid layouts (test helpers)."""

from pathlib import Path

import numpy as np
from PIL import Image

from mnm.datamodules.voc import voc_colormap

VOC_PALETTE = [c for rgb in voc_colormap(256) for c in rgb]


def random_image(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Random uint8 RGB image of ``(height, width)``."""
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


def blocks_label(shape: tuple[int, int], classes: list[int], border: bool = True) -> np.ndarray:
    """Vertical bands of the given class ids, with a 255 border line between bands if ``border``."""
    h, w = shape
    label = np.zeros((h, w), dtype=np.uint8)
    edges = np.linspace(0, w, len(classes) + 1).astype(int)
    for cls, x0, x1 in zip(classes, edges[:-1], edges[1:], strict=True):
        label[:, x0:x1] = cls
        if border and x0 > 0:
            label[:, x0] = 255
    return label


def save_palette_png(path: Path, label: np.ndarray, palette: list[int] | None = None) -> None:
    """Write ``label`` as a palette-mode (P) PNG, as VOC ``SegmentationClass`` does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    png = Image.fromarray(label)
    png.putpalette(palette or VOC_PALETTE)
    png.save(path)


def save_gray_png(path: Path, label: np.ndarray) -> None:
    """Write ``label`` as a single-channel (L) PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(label).save(path)


def save_image(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, quality=95)


def write_voc(
    root: Path,
    splits: dict[str, list[str]] | None = None,
    shape: tuple[int, int] = (24, 32),
    classes: list[int] | None = None,
) -> Path:
    """A ``VOC2012`` folder: JPEGImages, palette SegmentationClass PNGs and ImageSets/Segmentation lists."""
    splits = splits or {
        "train": ["2007_000001", "2007_000002", "2007_000003"],
        "val": ["2007_000004", "2007_000005"],
    }
    classes = classes or [0, 15, 7]
    names = sorted({n for split_names in splits.values() for n in split_names})
    for i, name in enumerate(names):
        save_image(root / "JPEGImages" / f"{name}.jpg", random_image(shape, seed=i))
        save_palette_png(root / "SegmentationClass" / f"{name}.png", blocks_label(shape, classes))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    for split, split_names in splits.items():
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in split_names))
    return root


def write_cityscapes_pair(
    root: Path, split: str, city: str, stem: str, label_ids: np.ndarray, train_ids: np.ndarray | None = None
) -> None:
    """One Cityscapes sample: leftImg8bit image, gtFine labelIds (and labelTrainIds if given)."""
    save_image(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", random_image(label_ids.shape))
    save_gray_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", label_ids)
    if train_ids is not None:
        save_gray_png(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", train_ids)


def synthetic_data(root: Path, side: int, crop: int) -> dict:
    """The ``data`` section of a stage config: 8 train and 4 val synthetic images of ``side`` px, ``crop``-px crops."""
    return {"class_path": "mnm.datamodules.SyntheticDataModule",
            "init_args": {"root": str(root), "num_train": 8, "num_val": 4, "image_size": [side, side],
                          "crop_size": [crop, crop], "batch_size": 4, "val_batch_size": 2}}  # fmt: skip

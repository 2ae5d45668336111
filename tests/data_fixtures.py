"""Writers for tiny on-disk datasets in the exact VOC, SBD, Cityscapes and CamVid layouts (test helpers)."""

import io
import shutil
import tarfile
from pathlib import Path

import numpy as np
import scipy.io
import scipy.sparse
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


def tar_folder(folder: Path, archive: Path, arcname: str) -> Path:
    """Pack ``folder`` as ``arcname`` into ``archive`` (gzip-compressed when it ends in ``.tgz``)."""
    with tarfile.open(archive, "w:gz" if archive.suffix == ".tgz" else "w") as tar:
        tar.add(folder, arcname=arcname)
    return archive


def write_voc_archive(archive: Path, splits: dict[str, list[str]], unlisted: tuple[str, ...] = (),
                      shape: tuple[int, int] = (24, 32)) -> Path:
    """``VOCtrainval_11-May-2012.tar``'s layout: ``VOCdevkit/VOC2012/`` with the splits, trainval and more images."""
    staging = archive.parent / f"{archive.name}.staging"
    voc = write_voc(staging / "VOCdevkit" / "VOC2012", splits, shape)
    for i, name in enumerate(unlisted):
        save_image(voc / "JPEGImages" / f"{name}.jpg", random_image(shape, seed=100 + i))
    names = [n for split in ("train", "val") for n in splits[split]]
    (voc / "ImageSets" / "Segmentation" / "trainval.txt").write_text("".join(f"{n}\n" for n in sorted(names)))
    (voc / "Annotations").mkdir()
    (voc / "Annotations" / f"{names[0]}.xml").write_text("<annotation/>\n")
    tar_folder(staging / "VOCdevkit", archive, "VOCdevkit")
    shutil.rmtree(staging)
    return archive


def sbd_cls_mat(labels: np.ndarray) -> bytes:
    """An SBD ``cls/NAME.mat``: struct ``GTcls`` with ``Segmentation`` (HxW uint8), ``Boundaries`` (20x1 cell of
    sparse maps) and ``CategoriesPresent``."""
    boundaries = np.empty((20, 1), dtype=object)
    for i in range(20):
        boundaries[i, 0] = scipy.sparse.csc_matrix(labels.shape, dtype=bool)
    present = np.unique(labels[labels > 0]).astype(np.uint8)
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, {"GTcls": {"Segmentation": labels.astype(np.uint8), "Boundaries": boundaries,
                                        "CategoriesPresent": present}})
    return buffer.getvalue()


def write_sbd_archive(archive: Path, splits: dict[str, list[str]], class_maps: dict[str, np.ndarray],
                      mats: dict[str, bytes] | None = None) -> Path:
    """``benchmark.tgz``'s layout: ``benchmark_RELEASE/dataset/{img,cls,inst,train.txt,val.txt}``.

    ``class_maps`` gives each image's class map; ``mats`` replaces the .mat bytes of some names."""
    staging = archive.parent / f"{archive.name}.staging"
    dataset = staging / "benchmark_RELEASE" / "dataset"
    for sub in ("img", "cls", "inst"):
        (dataset / sub).mkdir(parents=True)
    for i, (name, labels) in enumerate(class_maps.items()):
        save_image(dataset / "img" / f"{name}.jpg", random_image(labels.shape, seed=200 + i))
        (dataset / "cls" / f"{name}.mat").write_bytes((mats or {}).get(name) or sbd_cls_mat(labels))
        scipy.io.savemat(dataset / "inst" / f"{name}.mat", {"GTinst": {"Segmentation": labels}})
    for split, names in splits.items():
        (dataset / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    tar_folder(dataset.parent, archive, "benchmark_RELEASE")
    shutil.rmtree(staging)
    return archive

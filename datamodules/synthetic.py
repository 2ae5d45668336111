"""A small synthetic segmentation dataset written in the exact VOC layout.

Classes share one colour distribution and differ only in shape and texture
(as bus vs car do), so colour alone cannot separate them:

==========  =============================================================
background  cluttered low- and high-frequency colour noise
disk        disk, smooth two-colour gradient
square      rotated square, smooth two-colour gradient
triangle    triangle, smooth two-colour gradient
stripes     disk shape, stripes of the same two colours
checker     rotated square shape, checkerboard of the same two colours
==========  =============================================================

Every colour is drawn from the same uniform RGB distribution. Object outlines
get a thin 255 (ignore) ring as in VOC. Output is deterministic by ``seed``
(PIL writes JPEG at a fixed quality and PNG without timestamps).

CLI: ``mnm data synth --root DIR --num-train N --num-val N --size H W --seed S``.
"""

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from mnm.datamodules.errors import DataError
from mnm.datamodules.voc import VOCDataModule, voc_colormap
from mnm.utils.files import strict_json

SYNTHETIC_CLASSES = ("background", "disk", "square", "triangle", "stripes", "checker")
MARKER = "mnm_synthetic.json"
FORMAT_VERSION = 1
JPEG_QUALITY = 90
COLOUR_RANGE = (30.0, 225.0)


def random_colour(rng: np.random.Generator, shape: tuple[int, ...] = ()) -> np.ndarray:
    """Random RGB colours (in ``COLOUR_RANGE``) of the given leading shape."""
    return rng.uniform(*COLOUR_RANGE, size=(*shape, 3))


def render_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random-colour background image of h×w."""
    cell = int(rng.integers(8, 24))
    coarse = random_colour(rng, (h // cell + 2, w // cell + 2)).astype(np.float32)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return smooth + rng.normal(0.0, 18.0, size=(h, w, 3))


def shape_mask(kind: str, dy: np.ndarray, dx: np.ndarray, r: float, angle: float) -> np.ndarray:
    """Boolean mask of a shape of the given kind, radius and rotation over offset grids dy, dx."""
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if kind == "disk":
        return dy**2 + dx**2 <= r**2
    if kind == "square":
        return (np.abs(u) <= 0.8 * r) & (np.abs(v) <= 0.8 * r)
    # triangle: intersection of three half-planes (circumradius 1.4 r, area close to the others)
    inside = np.ones_like(u, dtype=bool)
    for k in range(3):
        theta = angle + k * 2 * np.pi / 3
        inside &= dx * np.cos(theta) + dy * np.sin(theta) <= 0.7 * r
    return inside


def render_texture(
    kind: str,
    dy: np.ndarray,
    dx: np.ndarray,
    r: float,
    angle: float,
    period: float,
    c1: np.ndarray,
    c2: np.ndarray,
) -> np.ndarray:
    """Colours of a stripes / checker / gradient texture between c1 and c2 over offset grids dy, dx."""
    u = dx * np.cos(angle) + dy * np.sin(angle)
    v = -dx * np.sin(angle) + dy * np.cos(angle)
    if kind == "stripes":
        t = np.floor(u / period) % 2
    elif kind == "checker":
        t = (np.floor(u / period) + np.floor(v / period)) % 2
    else:  # smooth gradient from c1 to c2 across the object
        t = np.clip(0.5 + u / (2 * r), 0.0, 1.0)
    return c1 * (1 - t[..., None]) + c2 * t[..., None]


# class id -> (shape, texture)
_OBJECTS = {1: ("disk", "gradient"), 2: ("square", "gradient"), 3: ("triangle", "gradient"),
            4: ("disk", "stripes"), 5: ("square", "checker")}  # fmt: skip


def render_sample(
    rng: np.random.Generator, image_size: tuple[int, int], max_objects: int
) -> tuple[np.ndarray, np.ndarray]:
    """One ``(image uint8 H×W×3, label uint8 H×W)`` pair with 255 rings around objects."""
    h, w = image_size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = render_background(rng, h, w)
    label = np.zeros((h, w), dtype=np.uint8)
    side = min(h, w)
    for _ in range(int(rng.integers(2, max(2, max_objects) + 1))):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        shape, texture = _OBJECTS[cls]
        r = rng.uniform(0.12, 0.3) * side
        cy, cx = rng.uniform(0.5 * r, h - 0.5 * r), rng.uniform(0.5 * r, w - 0.5 * r)
        dy, dx = yy - cy, xx - cx
        mask = shape_mask(shape, dy, dx, r, rng.uniform(0, 2 * np.pi))
        period = rng.uniform(3.0, 7.0)
        fill = render_texture(texture, dy, dx, r, rng.uniform(0, np.pi), period, random_colour(rng), random_colour(rng))
        image[mask] = fill[mask] + rng.normal(0.0, 6.0, size=(int(mask.sum()), 3))
        label[mask] = cls
    kernel = np.ones((3, 3), np.uint8)
    ring = cv2.dilate(label, kernel) != cv2.erode(label, kernel)
    label[ring] = 255
    return np.clip(image, 0, 255).round().astype(np.uint8), label


def _generation_args(
    num_train: int, num_val: int, image_size: Sequence[int], seed: int, max_objects: int
) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "image_size": [int(s) for s in image_size],
        "seed": int(seed),
        "max_objects": int(max_objects),
    }


def _check_marker(root: Path, args: dict) -> bool:
    """True if ``root`` already holds this exact dataset; raise if it holds anything else."""
    marker = root / MARKER
    if marker.is_file():
        found = json.loads(marker.read_text())
        if found != args:
            raise DataError(
                f"{marker}: {root} holds synthetic data generated with {found}, not the requested {args}; "
                "choose another root or delete it"
            )
        return True
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise DataError(
            f"{root}: exists and is not an mnm synthetic dataset (no {MARKER}); refusing to write into it"
        )
    return False


def generate(
    root: str | Path,
    num_train: int = 200,
    num_val: int = 50,
    image_size: Sequence[int] = (160, 160),
    seed: int = 0,
    max_objects: int = 4,
) -> Path:
    """Write the dataset in the VOC layout under ``root`` (idempotent for the same arguments).

    Layout: ``JPEGImages/*.jpg``, ``SegmentationClass/*.png`` (palette PNGs),
    ``ImageSets/Segmentation/{train,val,trainval}.txt`` and a marker file with
    the arguments. ``root`` must be missing, empty, or marked by an earlier
    call with the same arguments; anything else (another dataset, a user's
    folder, a file) raises :class:`DataError` and is left untouched. Returns ``root``.
    """
    root = Path(root).expanduser()
    if num_train < 1 or num_val < 1 or len(image_size) != 2 or min(image_size) < 16:
        raise DataError(
            f"synthetic data needs num_train, num_val >= 1 and image_size >= 16x16, got "
            f"{num_train}, {num_val}, {tuple(image_size)}"
        )
    args = _generation_args(num_train, num_val, image_size, seed, max_objects)
    if _check_marker(root, args):
        return root
    print(f"[mnm] writing the synthetic dataset ({num_train} train, {num_val} val images) to {root}", flush=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp / sub).mkdir(parents=True)
    palette = [c for rgb in voc_colormap(256) for c in rgb]
    names = [f"synth_{i:06d}" for i in range(num_train + num_val)]
    for i, name in enumerate(names):
        image, label = render_sample(np.random.default_rng([seed, i]), tuple(args["image_size"]), max_objects)
        Image.fromarray(image).save(tmp / "JPEGImages" / f"{name}.jpg", quality=JPEG_QUALITY)
        label_png = Image.fromarray(label)
        label_png.putpalette(palette)
        label_png.save(tmp / "SegmentationClass" / f"{name}.png")
    lists = {"train": names[:num_train], "val": names[num_train:], "trainval": names}
    for split, split_names in lists.items():
        (tmp / "ImageSets" / "Segmentation" / f"{split}.txt").write_text(
            "".join(f"{n}\n" for n in split_names)
        )
    (tmp / MARKER).write_text(strict_json(args))
    try:
        tmp.replace(root)  # atomic; also replaces an empty folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _check_marker(root, args):  # someone else wrote it meanwhile; otherwise re-raise
            raise
    return root


class SyntheticDataModule(VOCDataModule):
    """:mod:`synthetic <mnm.datamodules.synthetic>` data through the VOC loader; generated on demand.

    ``num_train``, ``num_val``, ``image_size``, ``data_seed`` and
    ``max_objects`` are the generation arguments (recorded in the marker file);
    the other arguments are those of :class:`SegmentationDataModule`.
    """

    CLASS_NAMES = SYNTHETIC_CLASSES
    PALETTE = tuple(voc_colormap(len(SYNTHETIC_CLASSES)))

    def __init__(
        self,
        root: str = "data/synthetic",
        num_train: int = 200,
        num_val: int = 50,
        image_size: tuple[int, int] = (160, 160),
        data_seed: int = 0,
        max_objects: int = 4,
        crop_size: tuple[int, int] | None = (128, 128),
        **kwargs,
    ) -> None:
        super().__init__(root=root, crop_size=crop_size, **kwargs)
        self.generation = {
            "num_train": num_train,
            "num_val": num_val,
            "image_size": tuple(image_size),
            "seed": data_seed,
            "max_objects": max_objects,
        }

    def check_source(self) -> None:
        """``root`` is missing, empty, or holds this very dataset (generating would not be refused)."""
        _check_marker(self.root, _generation_args(**self.generation))

    def prepare_data(self) -> None:
        """Generate the data into ``root`` unless it is already there (same arguments)."""
        generate(self.root, **self.generation)

    def setup(self, stage: str | None = None) -> None:
        if stage != "predict":  # prediction reads predict_dir only, so it writes no data
            self.prepare_data()  # no-op when present; checks that root holds the requested data
        super().setup(stage)

"""Reading images, label maps, split lists and image folders from disk — loudly.

Every problem becomes a :class:`DataError` whose message starts with the file
it is about.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from mnm.datamodules.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
LABEL_MODES = ("P", "L")
IGNORE_INDEX = 255

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, UnidentifiedImageError, Image.DecompressionBombError)


@dataclass(frozen=True, eq=False)
class LabelMapping:
    """Raw label value (0..255) → train id; ``lut`` holds -1 where a raw value is invalid."""

    lut: np.ndarray
    expected: str

    @classmethod
    def identity(cls, num_classes: int) -> LabelMapping:
        """Label files already hold train ids ``0..num_classes-1`` or 255."""
        return cls.from_table({i: i for i in range(num_classes)}, f"0..{num_classes - 1} or {IGNORE_INDEX}")

    @classmethod
    def from_table(cls, table: Mapping[int, int], expected: str) -> LabelMapping:
        """Build from ``{raw value: train id}``; 255 always maps to 255, other values are invalid."""
        lut = np.full(256, -1, dtype=np.int16)
        for raw, train_id in table.items():
            lut[raw] = train_id
        lut[IGNORE_INDEX] = IGNORE_INDEX
        return cls(lut, expected)

    def decode(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Map a uint8 label array to train ids; invalid values raise :class:`DataError`."""
        mapped = self.lut[raw]
        if mapped.min() < 0:
            bad = np.unique(raw[mapped < 0])
            shown = ", ".join(str(v) for v in bad[:8]) + (", ..." if len(bad) > 8 else "")
            raise DataError(
                f"{path}: label values [{shown}] are not valid class ids (expected {self.expected}); "
                "is this a colour label instead of an index map?"
            )
        return mapped.astype(np.uint8)


def probe(path: Path, what: str) -> tuple[tuple[int, int], str]:
    """Return ``((height, width), mode)`` from the file header without decoding the pixels."""
    if not path.is_file():
        raise DataError(f"{path}: {what} does not exist")
    try:
        with Image.open(path) as im:
            width, height = im.size
            return (height, width), im.mode
    except _DECODE_ERRORS as err:
        raise DataError(f"{path}: unreadable {what} ({err})") from err


def check_label_mode(path: Path, mode: str) -> None:
    """Label files must be single-channel index maps (palette or grayscale)."""
    if mode not in LABEL_MODES:
        raise DataError(
            f"{path}: label is a mode-{mode} image; expected a single-channel index map "
            f"(PNG mode {' or '.join(LABEL_MODES)}), not a colour-coded label"
        )


def check_pair(image: Path, label: Path | None) -> tuple[int, int]:
    """Fast header check of an image and its label; returns the image ``(height, width)``."""
    size, _ = probe(image, "image")
    if label is not None:
        label_size, mode = probe(label, "label")
        check_label_mode(label, mode)
        if label_size != size:
            raise DataError(
                f"{label}: label size {label_size[0]}x{label_size[1]} differs from "
                f"image size {size[0]}x{size[1]} of {image}"
            )
    return size


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image as ``H×W×3`` uint8 RGB (grayscale, palette and RGBA are converted)."""
    try:
        with Image.open(path) as im:
            im.load()
            rgb = im if im.mode == "RGB" else im.convert("RGB")
            return np.asarray(rgb)
    except FileNotFoundError as err:
        raise DataError(f"{path}: image does not exist") from err
    except _DECODE_ERRORS as err:
        raise DataError(f"{path}: unreadable or truncated image ({err})") from err


def read_label(path: Path, mapping: LabelMapping) -> np.ndarray:
    """Decode a label index map to ``H×W`` uint8 train ids."""
    try:
        with Image.open(path) as im:
            check_label_mode(path, im.mode)
            im.load()
            raw = np.asarray(im)
    except DataError:
        raise
    except FileNotFoundError as err:
        raise DataError(f"{path}: label does not exist") from err
    except _DECODE_ERRORS as err:
        raise DataError(f"{path}: unreadable or truncated label ({err})") from err
    return mapping.decode(raw, path)


def read_list(list_file: Path) -> list[tuple[int, list[str]]]:
    """Read a split list as ``(line number, whitespace-separated tokens)``; blanks and ``#`` skipped."""
    if not list_file.is_file():
        raise DataError(f"{list_file}: split list does not exist")
    entries = []
    for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
        tokens = line.split()
        if tokens and not tokens[0].startswith("#"):
            entries.append((lineno, tokens))
    return entries


def resolve_listed(root: Path, listed: str, strip_prefixes: Iterable[str] = ()) -> Path:
    """Resolve a path from a split list against ``root``.

    Known release prefixes (e.g. ``/SegNet/CamVid/``) are stripped; an absolute
    path that exists is kept; anything else is taken relative to ``root``.
    """
    for prefix in strip_prefixes:
        if listed.startswith(prefix):
            return root / listed[len(prefix) :]
    path = Path(listed)
    if path.is_absolute() and path.exists():
        return path
    return root / listed.lstrip("/")


def list_images(folder: Path) -> list[Path]:
    """All images under ``folder`` (recursive, common extensions), sorted."""
    if not folder.is_dir():
        raise DataError(f"{folder}: image folder does not exist")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())

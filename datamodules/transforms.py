"""Joint image+mask transforms built on albumentations 2.0.8.

Images are bilinear, masks always nearest; padding fills images with 0 (or a given
colour) and masks with 255 (ignore). ``mnm`` (imported as this package's parent) sets
``NO_ALBUMENTATIONS_UPDATE`` before albumentations is loaded.
"""

from __future__ import annotations

import math

import albumentations as A
import cv2
import numpy as np
import torch

from mnm.datamodules.readers import IGNORE_INDEX

Size = tuple[int, int]


def resize_to_cover(
    image: np.ndarray, mask: np.ndarray | None, min_hw: Size
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale up (keeping the aspect ratio) so that the image is at least ``min_hw``; never scales down."""
    h, w = image.shape[:2]
    scale = max(min_hw[0] / h, min_hw[1] / w)
    if scale <= 1.0:
        return image, mask
    size_wh = (math.ceil(w * scale), math.ceil(h * scale))
    image = cv2.resize(image, size_wh, interpolation=cv2.INTER_LINEAR)
    if mask is not None:
        mask = cv2.resize(mask, size_wh, interpolation=cv2.INTER_NEAREST)
    return image, mask


class JointTransform:
    """``(image, mask | None) -> (image, mask | None)``: optional cover-resize, then an ``A.Compose``."""

    def __init__(self, ops: list[A.BasicTransform], seed: int, cover: Size | None = None) -> None:
        self.compose = A.Compose(ops, seed=seed) if ops else None
        self.cover = cover

    def __call__(
        self, image: np.ndarray, mask: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        if self.cover is not None:
            image, mask = resize_to_cover(image, mask, self.cover)
        if self.compose is None:
            return image, mask
        if mask is None:
            return self.compose(image=image)["image"], None
        out = self.compose(image=image, mask=mask)
        return out["image"], out["mask"]

    def set_seed(self, seed: int) -> None:
        """Reseed the random augmentations (called per DataLoader worker)."""
        if self.compose is not None:
            self.compose.set_random_seed(seed)


def build_train_transform(
    *,
    crop_size: Size | None,
    scale_range: tuple[float, float] = (1.0, 1.0),
    hflip: bool = True,
    color_jitter: bool = False,
    seed: int = 0,
    cover: bool = False,
    pad_fill: tuple[int, int, int] = (0, 0, 0),
    pad_position: str = "center",
) -> JointTransform:
    """Random scale → pad (``pad_fill`` / 255) → random crop → flip → optional colour jitter.

    ``cover=True`` first scales small images up to the crop size (unlabeled
    folders), so no padding is ever needed. An image smaller than the crop is padded with the RGB
    colour ``pad_fill`` (0–255) and placed at ``pad_position`` (``center`` or ``random``).
    """
    ops: list[A.BasicTransform] = []
    low, high = scale_range
    if not low <= high or low <= 0:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    if (low, high) != (1.0, 1.0):
        ops.append(
            A.RandomScale(
                scale_limit=(low - 1.0, high - 1.0),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
                p=1.0,
            )
        )
    if crop_size is not None:
        ops.append(
            A.PadIfNeeded(
                min_height=crop_size[0],
                min_width=crop_size[1],
                position=pad_position,
                border_mode=cv2.BORDER_CONSTANT,
                fill=tuple(pad_fill),
                fill_mask=IGNORE_INDEX,
            )
        )
        ops.append(A.RandomCrop(height=crop_size[0], width=crop_size[1]))
    if hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if color_jitter:
        ops.append(
            A.ColorJitter(
                brightness=(0.7, 1.3), contrast=(0.7, 1.3), saturation=(0.7, 1.3), hue=(-0.05, 0.05), p=0.8
            )
        )
    return JointTransform(ops, seed=seed, cover=crop_size if cover and crop_size is not None else None)


def build_eval_transform(
    *, size: Size | None = None, center_crop: Size | None = None, seed: int = 0
) -> JointTransform:
    """Deterministic evaluation transform: full image, fixed resize, or cover-resize + centre crop."""
    ops: list[A.BasicTransform] = []
    if size is not None:
        ops.append(
            A.Resize(
                height=size[0],
                width=size[1],
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=cv2.INTER_NEAREST,
            )
        )
    if center_crop is not None:
        ops.append(A.CenterCrop(height=center_crop[0], width=center_crop[1]))
    return JointTransform(ops, seed=seed, cover=center_crop)


def photometric_ops(
    jitter: tuple[float, float, float, float], jitter_p: float, gray_p: float, blur_p: float
) -> list[A.BasicTransform]:
    """Colour jitter (brightness, contrast, saturation, hue) with ``jitter_p``, grayscale with ``gray_p``,
    Gaussian blur (sigma 0.1–2) with ``blur_p``: no pixel moves."""
    brightness, contrast, saturation, hue = jitter
    return [
        A.ColorJitter(brightness=brightness, contrast=contrast, saturation=saturation, hue=hue, p=jitter_p),
        A.ToGray(p=gray_p),
        A.GaussianBlur(blur_limit=0, sigma_limit=(0.1, 2.0), p=blur_p),
    ]


class StrongView:
    """UniMatch's strong view of a weakly augmented ``H×W×3`` uint8 image: colour jitter (0.5, 0.5, 0.5,
    0.25) with p 0.8, grayscale with p 0.2, Gaussian blur (sigma 0.1–2) with p 0.5; draws fixed by ``seed``."""

    def __init__(self) -> None:
        self.compose = A.Compose(photometric_ops((0.5, 0.5, 0.5, 0.25), jitter_p=0.8, gray_p=0.2, blur_p=0.5))

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        self.compose.set_random_seed(seed)
        return self.compose(image=image)["image"]


class ColorDistortion:
    """Photometric distortion of a batch of images: colour jitter, grayscale, Gaussian blur (albumentations).

    No pixel moves, so the masks of the batch stay aligned with the distorted view. ``strength``
    scales SimCLR's jitter (brightness, contrast, saturation 0.8·s, hue 0.2·s, applied with
    probability ``jitter_p``); grayscale with ``gray_p``; blur (sigma 0.1–2) with ``blur_p``.
    """

    def __init__(self, strength: float = 1.0, jitter_p: float = 0.8, gray_p: float = 0.2, blur_p: float = 0.5) -> None:
        s = strength
        jitter = (0.8 * s, 0.8 * s, 0.8 * s, min(0.2 * s, 0.5))
        self.compose = A.Compose(photometric_ops(jitter, jitter_p, gray_p, blur_p))

    def __call__(self, images: torch.Tensor, seed: int) -> torch.Tensor:
        """The distorted view of ``B×3×H×W`` images in [0, 1]; the draws depend only on ``seed``."""
        self.compose.set_random_seed(seed)
        arrays = images.detach().permute(0, 2, 3, 1).float().cpu().numpy()
        out = np.stack([self.compose(image=np.ascontiguousarray(a))["image"] for a in arrays])
        return torch.from_numpy(out).clip_(0.0, 1.0).permute(0, 3, 1, 2).to(images)

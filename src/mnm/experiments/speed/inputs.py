"""Inputs of the speed benchmark: M&M image batches (CamVid or synthetic) and the numeric variants."""

from __future__ import annotations

import contextlib
import gc
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from mnm.experiments.speed.settings import Settings

__all__ = [
    "NUM_CLASSES", "InputPool", "Variant", "camvid_batch", "peak_memory", "release", "reset_peak",
    "synthetic_batch", "variants_for",
]

NUM_CLASSES = 11  # CamVid; also used for the synthetic label maps


def synthetic_batch(n: int, size: tuple[int, int], seed: int = 0) -> dict[str, Tensor]:
    """Random images with blocky label maps (11 classes, 4% ignore), the data contract's layout."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    coarse = torch.randint(0, NUM_CLASSES, (n, 1, max(1, h // 30), max(1, w // 30)), generator=g)
    mask = F.interpolate(coarse.float(), size=(h, w), mode="nearest")[:, 0].long()
    mask[torch.rand(n, h, w, generator=g) < 0.04] = 255
    return {"image": torch.rand(n, 3, h, w, generator=g), "mask": mask}


def camvid_batch(root: Path, n: int) -> dict[str, Tensor]:
    """The first ``n`` CamVid train images at full size (cycling when ``n`` exceeds the split)."""
    from mnm.datamodules import CamVidDataModule
    from mnm.datamodules.datasets import pad_collate

    dm = CamVidDataModule(root=str(root), val_split="train", max_samples=n)
    dm.setup("validate")
    dataset = dm.datasets["val"]
    batch = pad_collate([dataset[i] for i in range(n)])
    return {"image": batch["image"], "mask": batch["mask"]}


class InputPool:
    """M&M input images, loaded once (CamVid when given, else synthetic) and sliced per measurement."""

    def __init__(self, settings: Settings, needed: int) -> None:
        root = settings.camvid
        if root is not None:
            batch = camvid_batch(root, needed)
            self.source = f"CamVid train ({root})"
        else:
            batch = synthetic_batch(needed, settings.image_size)
            self.source = "synthetic blocky label maps"
        device = settings.torch_device
        self.image, self.mask = batch["image"].to(device), batch["mask"].to(device)
        self.image_size = tuple(self.image.shape[-2:])

    def take(self, n: int) -> dict[str, Tensor]:
        """The first ``n`` images and masks (repeated if the pool is smaller)."""
        index = torch.arange(n, device=self.image.device) % self.image.shape[0]
        return {"image": self.image[index], "mask": self.mask[index]}


@dataclass(frozen=True)
class Variant:
    """Numerics of a training step: fp32, or bf16 autocast, optionally channels-last."""

    name: str
    bf16: bool = False
    channels_last: bool = False

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=torch.bfloat16)

    def prepare_input(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare_module(self, module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        module = module.to(device)
        return module.to(memory_format=torch.channels_last) if self.channels_last else module


def variants_for(device: torch.device) -> list[Variant]:
    """fp32 everywhere; on CUDA also bf16 autocast and bf16 + channels-last."""
    fp32 = Variant("fp32")
    if device.type != "cuda":
        return [fp32]
    return [fp32, Variant("bf16"), Variant("bf16+channels_last", bf16=True, channels_last=True)]


def release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def peak_memory(device: torch.device) -> dict[str, float]:
    if device.type != "cuda":
        return {}
    return {"peak_mem_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

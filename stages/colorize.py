"""Colorization proxy stage: grayscale in, quantised ab colour classes out (no labels used)."""

from __future__ import annotations

from typing import Any

import torch

from mnm.methods.colorization import ColorizationLoss, ab_bins, rgb_to_lab
from mnm.models.heads import build_head
from mnm.stages.base import BaseStage


class ColorizeStage(BaseStage):
    """Hypercolumn head over the gray backbone + Zhang et al.'s soft-encoded ab-bin cross-entropy.

    The backbone sees only luminance (``in_chans=1``: the mean of the RGB
    channels); the head predicts, per pixel at ``1/output_stride`` of the input
    resolution, a distribution over the in-gamut ab bins of a ``grid``-wide
    quantisation. Logs the loss.

    Args:
        grid: ab quantisation step (Zhang et al.: 10, about 300 bins).
        output_stride: the head predicts at this fraction of the input size.
        head_kwargs: extra arguments of the hypercolumn head.
        **kwargs: backbone and optimiser settings of :class:`BaseStage` (``in_chans`` defaults to 1).
    """

    default_max_steps = 100_000

    def __init__(
        self,
        grid: float = 10.0,
        output_stride: int = 4,
        head_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("in_chans", 1)
        super().__init__(**kwargs)
        self.loss_fn = ColorizationLoss(bins=ab_bins(grid))
        self.head = build_head(
            "hypercolumn",
            self.backbone.out_channels,
            self.backbone.out_strides,
            self.loss_fn.num_bins,
            **(head_kwargs or {}),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """ab-bin logits at ``1/output_stride`` of the input size."""
        h, w = image.shape[-2:]
        size = (h // self.hparams.output_stride, w // self.hparams.output_stride)
        return self.head(self.backbone.features(image), size)

    def _step(self, batch: dict[str, Any], prefix: str) -> torch.Tensor:
        image = batch["image"]
        loss = self.loss_fn(self(image), rgb_to_lab(image)[:, 1:])
        self.log_scalars(prefix, {"loss": loss}, prog_bar=prefix == "train", batch_size=len(image))
        return loss

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, "val")

"""Pixel-wise supervised contrastive pre-training (Zhao et al., ICCV 2021): a rival of M&M tuning in the same slot."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from mnm.datamodules.transforms import ColorDistortion
from mnm.methods.losses import (
    PIXEL_CONTRAST_FORMULAS,
    PixelContrastFormula,
    cross_image_pixel_contrastive_loss,
    pixel_contrast_stats,
    within_image_pixel_contrastive_loss,
)
from mnm.models.heads import ProjectionHead
from mnm.models.param_groups import freeze_unreached
from mnm.stages.base import LabelledPretrainingStage

MODES = ("within", "cross")
#: side of the grey image that finds the parameters the loss cannot reach (:func:`mnm.models.param_groups.freeze_unreached`)
PROBE_SIZE = 96


class PixelContrastStage(LabelledPretrainingStage):
    """Projection head on backbone maps + Zhao et al.'s label-based pixel contrastive loss.

    Each step makes a colour-distorted view of the batch (no pixel moves, so the masks stay
    aligned), runs both views through the backbone, resizes the chosen feature maps to a grid of
    ``1/grid_stride`` of the input (labels nearest), projects them (:class:`~mnm.models.heads.ProjectionHead`)
    and computes the loss: ``within`` sums the within-image loss of both views; ``cross`` pairs each
    image with the distorted view of a shuffled image of the batch. Logs the loss, the positives per
    anchor, the share of valid (not ignored) grid pixels, and after each validation the kNN probe of
    the backbone. The head is dropped after pre-training: the next stage takes the backbone only.

    Args:
        mode: ``within`` or ``cross`` (the authors' default).
        formula: ``code`` (negatives only in the denominator, the released code) or ``paper``
            (every valid pixel in the denominator, the paper's equation).
        temperature: logit temperature (0.07).
        feature_maps: indices into ``Backbone.features`` whose maps are concatenated (default: the top one).
        grid_stride: the loss grid is the input size divided by this (1/8 of the input).
        projection_layers: 1×1 convolutions of the projection head (2).
        projection_channels: their width and the embedding size (256).
        distortion_strength: colour-jitter strength of the distorted view (SimCLR's 1.0).
        ignore_index: label value left out of every pair (linked from data).
        knn_probe: at the end of each validation, log the kNN probe of the backbone (:mod:`mnm.evaluation.knn_probe`).
        **kwargs: backbone and optimiser settings of :class:`BaseStage`.
    """

    data_links = ("ignore_index",)
    curve_metrics = {"loss": "train/loss", "positives_per_anchor": "train/positives_per_anchor"}
    variant_arg = "mode"

    def __init__(
        self,
        mode: Literal["within", "cross"] = "cross",
        formula: PixelContrastFormula = "code",
        temperature: float = 0.07,
        feature_maps: list[int] | None = None,
        grid_stride: int = 8,
        projection_layers: int = 2,
        projection_channels: int = 256,
        distortion_strength: float = 1.0,
        ignore_index: int = 255,
        knn_probe: bool = True,
        **kwargs: Any,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"model.mode must be one of {list(MODES)}, got {mode!r}")
        if formula not in PIXEL_CONTRAST_FORMULAS:
            raise ValueError(f"model.formula must be one of {list(PIXEL_CONTRAST_FORMULAS)}, got {formula!r}")
        super().__init__(**kwargs)
        self.feature_maps = list(feature_maps or [-1])
        num_maps = len(self.backbone.out_channels)
        if any(not -num_maps <= i < num_maps for i in self.feature_maps):
            raise ValueError(f"model.feature_maps {self.feature_maps} must index the backbone's {num_maps} maps")
        in_channels = sum(self.backbone.out_channels[i] for i in self.feature_maps)
        self.head = ProjectionHead(in_channels, projection_layers, projection_channels)
        self.distortion = ColorDistortion(distortion_strength)
        # layers past the last map used (conv5 with feature_maps: [3]) get no gradient: frozen, DDP runs without them
        self.unreached_parameters = freeze_unreached(self, lambda: self(torch.full((1, 3, PROBE_SIZE, PROBE_SIZE), 0.5)))

    def grid_size(self, image: torch.Tensor) -> tuple[int, int]:
        """The loss grid of an input batch: its size over ``grid_stride`` (at least 1×1)."""
        h, w = image.shape[-2:]
        return max(1, h // self.hparams.grid_stride), max(1, w // self.hparams.grid_stride)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Unit-length pixel embeddings ``B×N×D`` on the loss grid (``N`` grid pixels, row-major)."""
        maps = self.backbone.features(image)
        return self.head([maps[i] for i in self.feature_maps], self.grid_size(image)).flatten(2).transpose(1, 2)

    def grid_labels(self, mask: torch.Tensor) -> torch.Tensor:
        """The mask on the loss grid (nearest neighbour), ``B×N``."""
        size = self.grid_size(mask)
        return F.interpolate(mask[:, None].float(), size=size, mode="nearest")[:, 0].long().flatten(1)

    def _step(self, batch: dict[str, Any], generator: torch.Generator, prefix: str) -> torch.Tensor:
        image = batch["image"]
        with self.phase_timer("distort"):
            distorted = self.distortion(image, int(torch.randint(2**31, (), generator=generator)))
        with self.phase_timer("forward"):
            original, view = self(torch.cat([image, distorted])).chunk(2)
            labels = self.grid_labels(batch["mask"])
        ignore, tau, formula = [self.hparams.ignore_index], self.hparams.temperature, self.hparams.formula
        with self.phase_timer("loss"):
            if self.hparams.mode == "within":
                loss = within_image_pixel_contrastive_loss(original, labels, ignore, tau, formula)
                loss = loss + within_image_pixel_contrastive_loss(view, labels, ignore, tau, formula)
                stats = pixel_contrast_stats(labels, None, ignore)
            else:
                other = torch.randperm(len(image), generator=generator).to(labels.device)
                loss = cross_image_pixel_contrastive_loss(
                    original, view[other], labels, labels[other], ignore, tau, formula
                )
                stats = pixel_contrast_stats(labels, labels[other], ignore)
        self.log_scalars(prefix, {"loss": loss, **stats}, prog_bar=prefix == "train", batch_size=len(image))
        return loss

"""Segmentation fine-tuning and evaluation: a head on the backbone's feature maps, pixel-wise cross-entropy, mIoU."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from mnm.evaluation.metrics import SegmentationMetrics
from mnm.models.eval_views import EVAL_MODES, padded_probs, sliding_window_probs
from mnm.models.heads import SparseHypercolumnHead, build_head
from mnm.stages.base import BaseStage, MetricEvaluation

#: the head each backbone gets unless the config names one
DEFAULT_HEADS = {"alexnet": "fcn", "alexnet_caffe": "fcn", "vgg16_bn": "hypercolumn", "resnet18": "hypercolumn",
                 "resnet50": "hypercolumn", "resnet101": "hypercolumn"}


def masked_cross_entropy(logits: torch.Tensor, mask: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Pixel-wise cross-entropy; zero (with a graph) for a batch whose pixels are all ignored."""
    if not (mask != ignore_index).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, mask, ignore_index=ignore_index)


class SegmentationEvaluation(MetricEvaluation):
    """Evaluation shared by a segmentation model and an ensemble of them: needs ``predict_probs``,
    ``val_metrics``/``test_metrics`` and ``num_classes``/``ignore_index``/``class_names`` hparams."""

    def _eval_step(self, batch: dict[str, Any], metrics: SegmentationMetrics, prefix: str) -> None:
        probs = self.predict_probs(batch["image"])
        loss = F.nll_loss(probs.clamp_min(1e-8).log(), batch["mask"], ignore_index=self.hparams.ignore_index)
        metrics.update(probs.argmax(1), batch["mask"])
        if torch.isfinite(loss):
            self.log_scalars(prefix, {"loss": loss}, batch_size=len(batch["image"]))

    def _eval_epoch_end(self, metrics: SegmentationMetrics, prefix: str) -> None:
        result = metrics.compute()
        metrics.reset()
        names = self.hparams.class_names or [str(i) for i in range(self.hparams.num_classes)]
        scalars = {"miou": result["miou"], "pixel_acc": result["pixel_acc"]}
        scalars |= {f"iou_{n}": v for n, v in zip(names, result["per_class_iou"], strict=True)}
        self.log_scalars(prefix, scalars, prog_bar=False)
        self.last_eval = {"split": prefix, "class_names": names, **result}

    def read_evaluation(self, logged: dict[str, Any], split: str) -> dict[str, Any]:
        """mIoU, per-class IoU and pixel accuracy of ``split`` from a trainer's logged metrics."""
        names = list(self.hparams.class_names or range(self.hparams.num_classes))
        return {
            "split": split,
            "class_names": [str(n) for n in names],
            "miou": float(logged[f"{split}/miou"]),
            "pixel_acc": float(logged[f"{split}/pixel_acc"]),
            "per_class_iou": [float(logged[f"{split}/iou_{n}"]) for n in names],
        }


class SegmentStage(SegmentationEvaluation, BaseStage):
    """Head + pixel-wise cross-entropy (ignore 255); logs loss, mIoU, pixel accuracy and per-class IoU.

    Args:
        num_classes: number of classes (linked from the data module).
        ignore_index: label value excluded from loss and metrics (linked from data).
        class_names: names for per-class logging and tables (linked from data).
        head: ``fcn``, ``hypercolumn`` or ``sparse_hypercolumn`` (the release's VGG-16 head: trains on
            random points per image, needs ``backbone_kwargs.feature_taps: hypercolumn`` for the release's
            taps); default by backbone (:data:`DEFAULT_HEADS`).
        head_kwargs: extra arguments of the head.
        tta_flip: average the class probabilities of the image and its mirror at evaluation.
        tta_scales: also average over these input scales at evaluation (e.g. ``[0.75, 1.0, 1.25]``).
        eval_mode: how an evaluation image is fed (:data:`mnm.models.eval_views.EVAL_MODES`): ``whole`` at its own
            size; ``pad``, the release's VOC evaluation (resized into an ``eval_size`` square padded with
            ``eval_fill``, scores cut and resized back); ``sliding``, its Cityscapes one
            (``eval_window`` crops every ``eval_stride`` pixels, scores summed).
        eval_fill: the padding of ``pad`` and ``sliding``: ``mean`` (the backbone's mean colour) or ``zero``
            (black; the release's colorization networks).
        eval_size: side of the ``pad`` square (release: 512).
        eval_window: side of the ``sliding`` crops (release: 512).
        eval_stride: step of the ``sliding`` crops (release: 256).
        freeze_backbone: train the head alone on a fixed backbone (weights and batch-norm statistics): the
            frozen read-out of what a pre-trained representation carries, beside full fine-tuning.
        **kwargs: backbone and optimiser settings of :class:`BaseStage`.
    """

    data_links = ("num_classes", "ignore_index", "class_names")
    evaluation_split = "val"
    evaluation_metrics = {"miou": "mIoU", "pixel_acc": "pixel acc."}
    default_max_steps = 40_000

    def __init__(
        self,
        num_classes: int = 21,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        head: str | None = None,
        head_kwargs: dict[str, Any] | None = None,
        tta_flip: bool = False,
        tta_scales: list[float] | None = None,
        eval_mode: str = "whole",
        eval_fill: str = "mean",
        eval_size: int = 512,
        eval_window: int = 512,
        eval_stride: int = 256,
        freeze_backbone: bool = False,
        **kwargs: Any,
    ) -> None:
        if eval_mode not in EVAL_MODES:
            raise ValueError(f"model.eval_mode must be one of {list(EVAL_MODES)}, got {eval_mode!r}")
        if eval_fill not in ("mean", "zero"):
            raise ValueError(f"model.eval_fill must be 'mean' or 'zero', got {eval_fill!r}")
        for key, value in (("eval_size", eval_size), ("eval_window", eval_window), ("eval_stride", eval_stride)):
            if value < 1:
                raise ValueError(f"model.{key} must be a positive int, got {value}")
        super().__init__(**kwargs)
        kind = head or DEFAULT_HEADS.get(self.hparams.backbone, "hypercolumn")
        self.head = build_head(
            kind, self.backbone.out_channels, self.backbone.out_strides, num_classes, **(head_kwargs or {})
        )
        self.val_metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index)
        self.test_metrics = SegmentationMetrics(num_classes, ignore_index=ignore_index)
        if freeze_backbone:
            self.backbone.requires_grad_(False).eval()
        #: the last evaluation's results (``miou``, ``per_class_iou``, ``pixel_acc``), for reports
        self.last_eval: dict[str, Any] = {}

    def train(self, mode: bool = True) -> SegmentStage:
        """As :meth:`torch.nn.Module.train`, but a frozen backbone stays in eval mode (fixed BN statistics)."""
        super().train(mode)
        if self.hparams.freeze_backbone:
            self.backbone.eval()
        return self

    def frozen_modules(self) -> list[torch.nn.Module]:
        """The backbone, when it is frozen (kept in eval mode: :meth:`train`)."""
        return [self.backbone] if self.hparams.freeze_backbone else []

    def features(self, image: torch.Tensor) -> list[torch.Tensor]:
        """The backbone's feature maps; without autograd when the backbone is frozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.hparams.freeze_backbone):
            return self.backbone.features(image)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits at the input resolution."""
        return self.head(self.features(image), image.shape[-2:])

    def predict_probs(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities at the image's size, fed as ``eval_mode`` says, with the configured test-time
        flip / multi-scale averaging of each fed view."""
        hp = self.hparams
        mean = self.backbone.mean.flatten().tolist()
        fill = mean * (3 // len(mean)) if hp.eval_fill == "mean" else [0.0] * 3  # RGB in [0, 1]
        if hp.eval_mode == "pad":
            return padded_probs(self._tta_probs, image, hp.eval_size, fill)
        if hp.eval_mode == "sliding":
            return sliding_window_probs(self._tta_probs, image, hp.eval_window, hp.eval_stride, fill)
        return self._tta_probs(image)

    def _tta_probs(self, image: torch.Tensor) -> torch.Tensor:
        """Class probabilities averaged over the test-time flips and scales."""
        size = image.shape[-2:]
        probs = torch.zeros((), device=image.device)
        views = 0
        for scale in self.hparams.tta_scales or [1.0]:
            x = image if scale == 1.0 else F.interpolate(image, scale_factor=scale, mode="bilinear")
            flips = (False, True) if self.hparams.tta_flip else (False,)
            for flip in flips:
                xi = x.flip(-1) if flip else x
                logits = self(xi)
                logits = logits.flip(-1) if flip else logits
                if logits.shape[-2:] != size:
                    logits = F.interpolate(logits, size=size, mode="bilinear")
                probs = probs + logits.softmax(1)
                views += 1
        return probs / views

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        with self.phase_timer("forward"):
            if isinstance(self.head, SparseHypercolumnHead):  # scores and labels at random points only
                points = self.head.training_points(len(image), image.shape[-2:], self.training_generator(batch_idx))
                logits = self.head(self.features(image), image.shape[-2:], points)
                index = points.long().to(mask.device)
                mask = mask[torch.arange(len(mask), device=mask.device)[:, None], index[..., 0], index[..., 1]]
            else:
                logits = self(image)
        with self.phase_timer("loss"):
            loss = masked_cross_entropy(logits, mask, self.hparams.ignore_index)
        self.log_scalars("train", {"loss": loss}, prog_bar=True, batch_size=len(image))
        return loss

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """``name``, ``probs`` (C×H×W) and ``pred`` (uint8 H×W) per image, at each image's original size.

        Each image's scores are cut to its ``input_size`` (dropping batch padding) and
        resized bilinearly to its ``size`` before the argmax, so masks match the input
        files even when the data module resizes them (``val_size``).
        """
        probs = self.predict_probs(batch["image"])
        sizes, input_sizes = batch.get("size"), batch.get("input_size")
        per_image = []
        for i, p in enumerate(probs):
            if input_sizes is not None:
                p = p[:, : int(input_sizes[i][0]), : int(input_sizes[i][1])]
            if sizes is not None and tuple(p.shape[-2:]) != tuple(int(v) for v in sizes[i]):
                p = F.interpolate(p[None], size=tuple(int(v) for v in sizes[i]), mode="bilinear")[0]
            per_image.append(p)
        return {"name": batch["name"], "probs": per_image, "pred": [p.argmax(0).to(torch.uint8) for p in per_image]}

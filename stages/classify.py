"""Image classification fine-tuning with the M&M objective: cross-entropy plus triplets over the batch's images."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from mnm.evaluation.metrics import ClassificationMetrics
from mnm.methods.losses import TripletLoss
from mnm.methods.match import Nodes, sample_triplets
from mnm.stages.base import BaseStage, MetricEvaluation

#: how the triplets of a batch are made: the class-wise connected graph, random triplets, or none (CE only)
MATCHINGS = ("graph", "random", "none")


class ClassifyStage(MetricEvaluation, BaseStage):
    """Backbone + linear head on the globally pooled features; loss ``CE + mm_weight · triplet``.

    The M&M term treats the images of a batch as the graph's nodes, labelled by their image label:
    ``graph`` builds the paper's class-wise connected graph (:func:`mnm.methods.match.graph_triplets`),
    ``random`` FaceNet-style random triplets, and the triplet loss (:class:`mnm.methods.losses.TripletLoss`,
    squared distances of L2-normalised embeddings, margin ``margin``) runs on the same pooled features
    the head reads. ``triplets: none`` (or ``mm_weight: 0``) is plain cross-entropy fine-tuning.
    Logs ``loss``, ``ce``, ``triplet``, ``active_fraction``, ``d_ap``, ``d_an`` and the batch's ``top1``
    in training, ``loss`` (CE), ``top1`` and ``top5`` in validation and testing.

    Args:
        num_classes: number of classes (linked from the data module).
        triplets: ``graph``, ``random`` or ``none``.
        mm_weight: λ, the weight of the triplet term.
        margin: the triplet margin α; pooled ResNet features follow a ReLU, so D ≤ 2 and α < 2 keeps some
            triplets inactive (see the M&M stage's note on α = 2.1).
        head_dropout: dropout before the linear head (0: none).
        backbone: registry name (default ``resnet50``).
        **kwargs: backbone and optimiser settings of :class:`BaseStage` (``head_lr_mult`` scales the head's lr).
    """

    data_links = ("num_classes",)
    evaluation_split = "val"
    evaluation_metrics = {"top1": "top-1", "balanced": "balanced acc.", "top5": "top-5"}
    curve_metrics = {"loss": "train/loss", "triplet": "train/triplet", "active_fraction": "train/active_fraction"}
    variant_arg = "triplets"
    default_max_steps = 5_000

    def __init__(
        self,
        num_classes: int = 1000,
        triplets: Literal["graph", "random", "none"] = "graph",
        mm_weight: float = 1.0,
        margin: float = 0.5,
        head_dropout: float = 0.0,
        backbone: str = "resnet50",
        **kwargs: Any,
    ) -> None:
        if triplets not in MATCHINGS:
            raise ValueError(f"model.triplets must be one of {list(MATCHINGS)}, got {triplets!r}")
        if mm_weight < 0:
            raise ValueError(f"model.mm_weight must be >= 0, got {mm_weight}")
        if num_classes < 2:
            raise ValueError(f"model.num_classes must be >= 2, got {num_classes}")
        super().__init__(backbone=backbone, **kwargs)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(self.backbone.out_channels[-1], num_classes))
        self.loss_fn = TripletLoss(margin=margin)
        self.val_metrics = ClassificationMetrics(num_classes)
        self.test_metrics = ClassificationMetrics(num_classes)

    @property
    def uses_triplets(self) -> bool:
        """Whether the M&M term is part of the loss."""
        return self.hparams.triplets != "none" and self.hparams.mm_weight > 0

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits ``B×K``."""
        return self.head(self.backbone.embed(image))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image, label = batch["image"], batch["label"]
        with self.phase_timer("forward"):
            features = self.backbone.embed(image)
            logits = self.head(features)
        with self.phase_timer("loss"):
            ce = F.cross_entropy(logits, label)
        scalars = {"ce": ce, "top1": (logits.argmax(1) == label).float().mean()}
        loss = ce
        if self.uses_triplets:
            with self.phase_timer("match"):
                nodes = Nodes(label.cpu(), torch.arange(len(label)), features.detach())  # a node per image
                triplets = sample_triplets(self.hparams.triplets, nodes, self.hparams.margin,
                                           self.step_generator(self.global_step))
            with self.phase_timer("loss"):
                stats = self.loss_fn(features, triplets.to(features.device))
            loss = ce + self.hparams.mm_weight * stats.loss
            scalars |= {"triplet": stats.loss, "active_fraction": stats.active_fraction,
                        "d_ap": stats.d_ap, "d_an": stats.d_an}  # fmt: skip
        self.log_scalars("train", {"loss": loss, **scalars}, prog_bar=True, batch_size=len(image))
        return loss

    def _eval_step(self, batch: dict[str, Any], metrics: ClassificationMetrics, prefix: str) -> None:
        logits = self(batch["image"])
        metrics.update(logits, batch["label"])
        self.log_scalars(prefix, {"loss": F.cross_entropy(logits, batch["label"])}, batch_size=len(logits))

    def _eval_epoch_end(self, metrics: ClassificationMetrics, prefix: str) -> None:
        self.log_scalars(prefix, metrics.compute())
        metrics.reset()

    def read_evaluation(self, logged: dict[str, Any], split: str) -> dict[str, Any]:
        """Top-1, balanced and top-5 accuracy and the mean cross-entropy of ``split`` from a trainer's logs."""
        return {"split": split, **{key: float(logged[f"{split}/{key}"]) for key in (*self.evaluation_metrics, "loss")}}

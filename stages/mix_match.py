"""Mix-and-Match tuning: patches mixed across images, triplets from a class-wise connected graph (or a baseline)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from mnm.methods.losses import REDUCTIONS, TripletLoss, TripletStats
from mnm.methods.match import TRIPLET_SAMPLERS, Nodes, cross_image_fraction, gather_nodes, sample_triplets
from mnm.methods.mix import PatchBatch, PatchSampler
from mnm.models.backbones import EMBEDDINGS
from mnm.stages.base import LabelledPretrainingStage

TripletKind = Literal["graph", "random", "pairs", "graph_cross", "semihard"]


class MixMatchStage(LabelledPretrainingStage):
    """Mix (patch sampling) + match (a triplet sampler) + triplet loss on pool5 embeddings.

    Logs the loss, the number of triplets, the fraction of them active (positive hinge) and the
    fraction whose positive comes from another image, mean D(a,p) and D(a,n), the number of
    nodes per graph, and after each validation the kNN probe of the backbone. Patch sampling
    is seeded by :meth:`BaseStage.step_generator` so that a resumed run draws the same
    patches as an uninterrupted one.

    Args:
        triplets: the sampler (:data:`mnm.methods.match.TRIPLET_SAMPLERS`): ``graph`` (class-wise connected, the
            paper's), ``random`` (independent triplets, one per node), ``pairs`` (the paper's Fig. 3(a)
            baseline: disjoint same-class pairs), ``graph_cross`` (the graph with cross-image positives)
            or ``semihard`` (cross-image positives, semi-hard negatives on the detached embeddings).
        margin: triplet margin alpha (paper: 2.1).
        patches_per_image: patches sampled from each image (paper: 9-10).
        patch_size_range: side of the square patches before resizing, in pixels (paper: 64-256).
        patch_out_size: side the patches are resized to (paper: 128).
        patch_antialias: average several bilinear samples per output pixel when a patch is
            shrunk (torchvision's adaptive roi_align); off: one bilinear sample, a plain resize.
        background_class: class id of background, sampled for about ``background_fraction``
            of the patches; ``None`` when the dataset has no background class.
        background_fraction: share of patch centres on background pixels.
        class_balanced: choose a present class uniformly first, then a pixel of it.
        max_overlap: reject a patch overlapping a chosen one by more than this share.
        ignore_index: label value never used as a patch centre (linked from data).
        global_graph: build one graph over the patches of all devices (embeddings all-gathered
            with gradient), so the graph grows with the number of devices. Every rank draws the
            same training triplets (a generator keyed by the step, not the rank), so the loss is
            that one graph's and DDP's gradient is its gradient (:func:`mnm.methods.match.gather_nodes`).
        knn_probe: at the end of each validation, log the kNN probe of the backbone
            (``val/knn_acc``, ``val/knn_acc_balanced``, ``val/effective_rank``; see :mod:`mnm.evaluation.knn_probe`).
        loss_normalization: ``mean`` (the summed hinge over N triplets / N) or ``release``
            (/ 2N, the Caffe release's TripletLoss layer).
        patch_quota: ``fraction`` (each candidate on background with probability
            ``background_fraction``) or ``release`` (the Caffe release's fixed background count,
            coverage filter and refill; see :func:`mnm.methods.mix.sample_patches`).
        patch_fill: what fills a patch past the image border: ``zero`` (black) or ``mean`` (the
            backbone's mean colour, which it normalises to 0: the release).
        embedding: ``pool5`` (flattened, after the ReLU), ``pool5_prerelu`` (without the last
            ReLU, so D can reach 4) or ``pool5_avg`` (global average); see :data:`mnm.models.backbones.EMBEDDINGS`.
        **kwargs: backbone and optimiser settings of :class:`BaseStage`.
    """

    data_links = ("ignore_index",)
    curve_metrics = {"loss": "train/loss", "active_fraction": "train/active_fraction",
                     "cross_image_fraction": "train/cross_image_fraction"}
    variant_arg = "triplets"
    default_max_steps = 8_000

    def __init__(
        self,
        triplets: TripletKind = "graph",
        margin: float = 2.1,
        patches_per_image: int = 9,
        patch_size_range: tuple[int, int] = (64, 256),
        patch_out_size: int = 128,
        patch_antialias: bool = False,
        background_class: int | None = 0,
        background_fraction: float = 0.1,
        class_balanced: bool = False,
        max_overlap: float = 0.6,
        ignore_index: int = 255,
        global_graph: bool = False,
        knn_probe: bool = True,
        loss_normalization: Literal["mean", "release"] = "mean",
        embedding: Literal["pool5", "pool5_prerelu", "pool5_avg"] = "pool5",
        patch_quota: Literal["fraction", "release"] = "fraction",
        patch_fill: Literal["zero", "mean"] = "zero",
        **kwargs: Any,
    ) -> None:
        if triplets not in TRIPLET_SAMPLERS:
            raise ValueError(f"model.triplets must be one of {sorted(TRIPLET_SAMPLERS)}, got {triplets!r}")
        if embedding not in EMBEDDINGS:
            raise ValueError(f"model.embedding must be one of {list(EMBEDDINGS)}, got {embedding!r}")
        if loss_normalization not in REDUCTIONS:
            raise ValueError(
                f"model.loss_normalization must be one of {sorted(REDUCTIONS)}, got {loss_normalization!r}"
            )
        if patch_fill not in ("zero", "mean"):
            raise ValueError(f"model.patch_fill must be 'zero' or 'mean', got {patch_fill!r}")
        super().__init__(**kwargs)
        mean = self.backbone.mean.flatten().tolist()
        self.loss_fn = TripletLoss(margin=margin, reduction=loss_normalization)
        self.sampler = PatchSampler(
            patches_per_image=patches_per_image,
            size_range=tuple(patch_size_range),
            out_size=patch_out_size,
            background_class=background_class,
            background_fraction=background_fraction,
            class_balanced=class_balanced,
            max_overlap=max_overlap,
            ignore_index=ignore_index,
            antialias=patch_antialias,
            quota=patch_quota,
            fill=tuple(mean * (3 // len(mean))) if patch_fill == "mean" else None,
        )

    def mix(self, batch: dict[str, Any], generator: torch.Generator) -> PatchBatch:
        """Sample, crop and resize the patches of one image batch."""
        return self.sampler.sample(batch["image"], batch["mask"], generator)

    def match_and_score(
        self, embeddings: torch.Tensor, labels: torch.Tensor, images: torch.Tensor, generator: torch.Generator
    ) -> tuple[TripletStats, torch.Tensor]:
        """Sample the triplets over the nodes (on the CPU) and compute the triplet loss; also returns the triplets."""
        with self.phase_timer("match"):
            nodes = Nodes(labels.cpu(), images.cpu(), embeddings.detach())
            triplets = sample_triplets(self.hparams.triplets, nodes, self.hparams.margin, generator)
        with self.phase_timer("loss"):
            return self.loss_fn(embeddings, triplets.to(embeddings.device)), triplets

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        graph = self.training_generator(batch_idx, per_rank=False) if self.hparams.global_graph else None
        return self._step(batch, self.training_generator(batch_idx), "train", graph)

    def _step(
        self, batch: dict[str, Any], generator: torch.Generator, prefix: str, graph: torch.Generator | None = None
    ) -> torch.Tensor | None:
        """Mix with ``generator`` (this rank's), match with ``graph`` where given (the same on every rank)."""
        with self.phase_timer("mix"):
            patches = self.mix(batch, generator)
        with self.phase_timer("forward"):
            embeddings = self.backbone.embed(patches.patches, self.hparams.embedding)
        labels, images = patches.labels, patches.image_index
        if self.hparams.global_graph and self.trainer.world_size > 1:
            embeddings, labels, images = gather_nodes(embeddings, labels, images)
        if labels.numel() < 2:
            # nothing to match: a zero loss that still touches every parameter keeps DDP ranks in step
            return sum(p.sum() * 0.0 for p in self.parameters())
        stats, triplets = self.match_and_score(embeddings, labels, images, graph or generator)
        self.log_scalars(
            prefix,
            {
                "loss": stats.loss,
                "triplets": float((triplets[:, 2] >= 0).sum()),
                "active_fraction": stats.active_fraction,
                "cross_image_fraction": cross_image_fraction(triplets, images.cpu()),
                "d_ap": stats.d_ap,
                "d_an": stats.d_an,
                "nodes": float(labels.numel()),
            },
            prog_bar=prefix == "train",
            batch_size=len(batch["image"]),
        )
        return stats.loss

"""Fully self-supervised segmentation by pixel clustering: a PiCIE-style baseline with FS^4-style additions.

No label is used in training; the masks serve only the evaluation (Hungarian-matched mIoU).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from mnm.datamodules.datasets import pad_collate
from mnm.datamodules.transforms import ColorDistortion
from mnm.evaluation.hungarian import HungarianJaccardIndex
from mnm.methods.clustering import (
    PyramidFusion,
    assign,
    broadcast_cells,
    cell_features,
    context_aware_embedding,
    crop_boxes,
    crop_resize,
    distance_logits,
    fit_spherical_kmeans,
    sample_pixels,
)
from mnm.stages.base import BaseStage
from mnm.stages.segment import SegmentationEvaluation


class ClusterStage(SegmentationEvaluation, BaseStage):
    """FPN embedding at stride 4 trained by cross-entropy to its own k-means clusters, re-estimated each epoch.

    PiCIE-style baseline: at the start of every epoch, the pixel features of (a seeded subset of)
    the train images, eval transform, are sampled and clustered into ``num_clusters`` by
    mini-batch k-means on the unit sphere (:func:`~mnm.methods.clustering.fit_spherical_kmeans`). Each
    step makes two views of the batch — a photometric one (colour distortion) and a geometric one
    (another colour distortion, then a random crop and flip, applied to the first view's features
    too so that both align) — labels each view's pixels by their nearest centroid, and minimises
    the cross-entropy of the distance logits (:func:`~mnm.methods.clustering.distance_logits`) to the
    view's own labels (``within``) and to the other view's (``cross``).

    FS^4-style additions (ours; FS^4 published no code), each off by default:

    - ``pyramid_levels`` (e.g. ``[1, 2, 4]``): pseudo labels at grid levels. At level ``g`` the
      mean feature of each cell of a ``g×g`` grid of the image is clustered too (its own k-means
      each epoch), the cell's cluster is broadcast to its pixels, and every pixel's distance logits
      to that level's centroids are trained towards it, within and across views; the mean over
      the levels is weighted by ``pyramid_weight``. The pixel level (the baseline) is always kept.
    - ``context_kernel`` (odd, e.g. 3): the context-aware embedding, each pixel's feature averaged
      over its ``k×k`` neighbourhood weighted by a Gaussian of the distance (``context_sigma``) times
      the clipped cosine similarity (:func:`~mnm.methods.clustering.context_aware_embedding`), before
      clustering, loss and evaluation.

    The centroids and the epoch they belong to are buffers, so they travel in the checkpoint and a
    resumed run does not re-cluster an epoch it has started. Evaluation clusters the current
    model's pixel features anew (same sampling, seeded) and scores the cluster maps against the
    masks after Hungarian matching (:class:`~mnm.evaluation.hungarian.HungarianJaccardIndex`): ``miou``,
    ``pixel_acc`` and ``iou_<class>`` (of the matched cluster). Logged in training: ``loss``,
    ``loss_within``, ``loss_cross``, ``loss_pyramid`` (with pyramid levels), ``clusters_used``
    (distinct pixel-level labels in the batch) and ``context_shift`` (with the context embedding:
    mean cosine distance between a pixel's feature before and after aggregation).

    Args:
        num_classes: classes of the evaluation masks (linked from data).
        ignore_index: label value left out of the evaluation (linked from data).
        class_names: names for per-class logging (linked from data).
        num_clusters: K (default: ``num_classes``); PiCIE uses 27 on the 27-class benchmarks.
        feature_maps: indices into ``Backbone.features`` fused by the FPN (default: every map of stride ≥ 4).
        channels: FPN width, the embedding size.
        temperature: of the distance logits (PiCIE: 1).
        kmeans_images: train images per clustering pass (``None``: all).
        kmeans_pixels_per_image: pixels sampled from each of them for the pixel level.
        kmeans_batch_size: images per forward pass of the clustering pass.
        photometric: colour-distort the two views (off: both views are the raw images).
        geometric: crop and flip the second view (off: the views align without it).
        crop_min_scale: smallest side of the geometric crop, as a fraction of the image.
        distortion_strength: colour-jitter strength of the photometric views.
        within_weight: weight of the within-view terms.
        cross_weight: weight of the cross-view terms.
        pyramid_levels: grid sizes of the pyramid pseudo labels (``[]``: off).
        pyramid_weight: weight of the pyramid levels' terms (their mean).
        context_kernel: neighbourhood of the context-aware embedding (``0``: off).
        context_sigma: its spatial Gaussian's sigma, in feature-map pixels.
        **kwargs: backbone and optimiser settings of :class:`BaseStage`.
    """

    data_links = ("num_classes", "ignore_index", "class_names")
    evaluation_split = "val"
    evaluation_metrics = {"miou": "mIoU", "pixel_acc": "pixel acc."}  # Hungarian-matched
    curve_metrics = {"loss": "train/loss", "clusters_used": "train/clusters_used"}

    def __init__(
        self,
        num_classes: int = 27,
        ignore_index: int = 255,
        class_names: list[str] | None = None,
        num_clusters: int | None = None,
        feature_maps: list[int] | None = None,
        channels: int = 128,
        temperature: float = 1.0,
        kmeans_images: int | None = None,
        kmeans_pixels_per_image: int = 256,
        kmeans_batch_size: int = 8,
        photometric: bool = True,
        geometric: bool = True,
        crop_min_scale: float = 0.5,
        distortion_strength: float = 1.0,
        within_weight: float = 1.0,
        cross_weight: float = 1.0,
        pyramid_levels: list[int] | None = None,
        pyramid_weight: float = 1.0,
        context_kernel: int = 0,
        context_sigma: float = 1.0,
        **kwargs: Any,
    ) -> None:
        levels = list(pyramid_levels or [])
        if any(g < 1 for g in levels):
            raise ValueError(f"model.pyramid_levels must be positive grid sizes, got {levels}")
        if context_kernel and (context_kernel < 0 or context_kernel % 2 == 0):
            raise ValueError(f"model.context_kernel must be 0 (off) or odd, got {context_kernel}")
        if not 0.0 < crop_min_scale <= 1.0:
            raise ValueError(f"model.crop_min_scale must be in (0, 1], got {crop_min_scale}")
        if num_clusters is not None and num_clusters < num_classes:
            raise ValueError(f"model.num_clusters ({num_clusters}) must be at least model.num_classes ({num_classes})")
        super().__init__(**kwargs)
        self.num_clusters = num_clusters or num_classes
        strides = self.backbone.out_strides
        self.feature_maps = list(feature_maps or [i for i, s in enumerate(strides) if s >= 4])
        if not self.feature_maps or any(not -len(strides) <= i < len(strides) for i in self.feature_maps):
            raise ValueError(f"model.feature_maps {self.feature_maps} must index the backbone's {len(strides)} maps")
        self.fusion = PyramidFusion([self.backbone.out_channels[i] for i in self.feature_maps], channels)
        self.levels = levels
        self.distortion = ColorDistortion(distortion_strength)
        self.register_buffer("centroids", torch.zeros(1 + len(levels), self.num_clusters, channels))
        self.register_buffer("clustered_epoch", torch.tensor(-1))
        self.val_metrics = HungarianJaccardIndex(num_classes, self.num_clusters, ignore_index)
        self.test_metrics = HungarianJaccardIndex(num_classes, self.num_clusters, ignore_index)
        self._eval_centroids: tuple[int, torch.Tensor] | None = None
        #: the last evaluation's results (``miou``, ``per_class_iou``, ``pixel_acc``, ``assignment``), for reports
        self.last_eval: dict[str, Any] = {}

    # -- embedding --------------------------------------------------------------------------------
    def fused(self, image: torch.Tensor) -> torch.Tensor:
        """The FPN's fused maps ``B×channels×h×w`` at the finest chosen stride (4), before any context."""
        maps = self.backbone.features(image)
        return self.fusion([maps[i] for i in self.feature_maps])

    def with_context(self, features: torch.Tensor) -> torch.Tensor:
        """The context-aware embedding of fused maps when ``context_kernel`` is on (else the maps)."""
        if not self.hparams.context_kernel:
            return features
        return context_aware_embedding(features, self.hparams.context_kernel, self.hparams.context_sigma)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Pixel embeddings ``B×channels×h×w``: fused maps, context-aggregated if on."""
        return self.with_context(self.fused(image))

    # -- clustering -------------------------------------------------------------------------------
    @torch.no_grad()
    def cluster_samples(self, seed: int, datamodule: Any = None) -> list[torch.Tensor]:
        """Pixel samples (level 0) and cell features (each pyramid level) of the train images, eval mode.

        The images come from ``datamodule`` (default: the trainer's), eval transform, a seeded subset.
        """
        hp = self.hparams
        dataset = (datamodule or self.trainer.datamodule).eval_dataset("train")
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(dataset), generator=generator)[: hp.kmeans_images or len(dataset)]
        loader = DataLoader(Subset(dataset, sorted(order.tolist())), batch_size=hp.kmeans_batch_size,
                            collate_fn=pad_collate)  # fmt: skip
        was_training = self.training
        self.eval()
        samples: list[list[torch.Tensor]] = [[] for _ in range(1 + len(self.levels))]
        for batch in loader:
            features = self(batch["image"].to(self.device))
            samples[0].append(sample_pixels(features, hp.kmeans_pixels_per_image, generator).cpu())
            for i, g in enumerate(self.levels, 1):
                samples[i].append(cell_features(features, g).permute(0, 2, 3, 1).reshape(-1, features.shape[1]).cpu())
        self.train(was_training)
        return [torch.cat(s) for s in samples]

    def recluster(self, epoch: int) -> None:
        """Fit the centroids of every level for ``epoch`` (seeded by the stage seed and the epoch)."""
        seed = self.hparams.seed * 1_000_003 + epoch * 7_919
        for level, samples in enumerate(self.cluster_samples(seed)):
            self.centroids[level] = fit_spherical_kmeans(samples, self.num_clusters, seed + level).to(self.centroids)
        self.clustered_epoch.fill_(epoch)

    def on_train_epoch_start(self) -> None:
        if int(self.clustered_epoch) != self.current_epoch:  # a resumed epoch keeps its checkpointed centroids
            self.recluster(self.current_epoch)

    # -- training ---------------------------------------------------------------------------------
    def views(self, image: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """The two views of a batch and the geometric transform of the second (``None`` if off)."""
        hp = self.hparams
        seeds = torch.randint(2**31, (2,), generator=generator).tolist()
        first, second = (self.distortion(image, s) for s in seeds) if hp.photometric else (image, image)
        if not hp.geometric:
            return first, second, None
        boxes, flips = crop_boxes(len(image), generator, hp.crop_min_scale)
        return first, crop_resize(second, boxes, flips), (boxes, flips)

    def level_targets(self, features: torch.Tensor) -> list[torch.Tensor]:
        """Pseudo labels of each level: nearest centroid of each pixel, then of each cell broadcast to pixels."""
        size = features.shape[-2:]
        targets = [assign(features, self.centroids[0])]
        for i, g in enumerate(self.levels, 1):
            targets.append(broadcast_cells(assign(cell_features(features.detach(), g), self.centroids[i]), size))
        return targets

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        hp = self.hparams
        generator = self.step_generator(self.global_step)
        with self.phase_timer("views"):
            first, second, geometry = self.views(batch["image"], generator)
        with self.phase_timer("forward"):
            plain = self.fused(torch.cat([first, second]))
            raw1, f2 = self.with_context(plain).chunk(2)
            f1 = raw1 if geometry is None else crop_resize(raw1, *geometry, size=tuple(f2.shape[-2:]))
        with self.phase_timer("loss"):
            t1, t2 = self.level_targets(f1), self.level_targets(f2)
            level_losses = []
            for level, centroids in enumerate(self.centroids):
                l1, l2 = (distance_logits(f, centroids, hp.temperature) for f in (f1, f2))
                within = F.cross_entropy(l1, t1[level]) + F.cross_entropy(l2, t2[level])
                cross = F.cross_entropy(l1, t2[level]) + F.cross_entropy(l2, t1[level])
                level_losses.append((within, cross))
            within, cross = level_losses[0]
            pyramid = sum(hp.within_weight * w + hp.cross_weight * c for w, c in level_losses[1:]) / max(len(self.levels), 1)
            loss = hp.within_weight * within + hp.cross_weight * cross + hp.pyramid_weight * pyramid
        logged = {"loss": loss, "loss_within": within, "loss_cross": cross,
                  "clusters_used": float(t1[0].unique().numel())}  # fmt: skip
        if self.levels:
            logged["loss_pyramid"] = pyramid
        if hp.context_kernel:
            logged["context_shift"] = 1 - F.cosine_similarity(plain.detach(), torch.cat([raw1, f2]).detach()).mean()
        self.log_scalars("train", logged, prog_bar=True, batch_size=len(first))
        return loss

    # -- evaluation -------------------------------------------------------------------------------
    def evaluation_centroids(self, datamodule: Any = None) -> torch.Tensor:
        """Pixel-level centroids of the current model (clustered once per optimiser step count)."""
        if self._eval_centroids is None or self._eval_centroids[0] != self.global_step:
            seed = self.hparams.seed * 1_000_003 + 104_729
            samples = self.cluster_samples(seed, datamodule)[0]
            self._eval_centroids = (self.global_step, fit_spherical_kmeans(samples, self.num_clusters, seed))
        return self._eval_centroids[1].to(self.device)

    def cluster_map(self, image: torch.Tensor, size: tuple[int, int], datamodule: Any = None) -> torch.Tensor:
        """Cluster ids ``B×H×W`` of images at ``size`` (distance logits resized bilinearly, then argmax)."""
        logits = distance_logits(self(image), self.evaluation_centroids(datamodule))
        return F.interpolate(logits, size=size, mode="bilinear").argmax(1)

    def _eval_step(self, batch: dict[str, Any], metrics: HungarianJaccardIndex, prefix: str) -> None:
        if not self.trainer.sanity_checking:
            metrics.update(self.cluster_map(batch["image"], tuple(batch["mask"].shape[-2:])), batch["mask"])

    def _eval_epoch_end(self, metrics: HungarianJaccardIndex, prefix: str) -> None:
        if not self.trainer.sanity_checking:
            super()._eval_epoch_end(metrics, prefix)

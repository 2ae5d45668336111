"""Semi-supervised segmentation: a UniMatch-style baseline, with class-wise masked image modelling as switchable terms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mnm.methods.mim import (
    ReconstructionDecoder,
    aggregation_loss,
    block_mask,
    class_views,
    largest_classes,
    reconstruction_loss,
    running_stats_frozen,
)
from mnm.methods.semi_supervised import PseudoLabels, mix_boxes, pseudo_labels, unlabelled_loss
from mnm.stages.segment import SegmentStage, masked_cross_entropy

#: salt of the step-keyed generator of the MIM block masks
_MASK_SALT = 12


class SemiStage(SegmentStage):
    """UniMatch (Yang et al., CVPR 2023) on the segmentation model of :class:`SegmentStage`, plus class-wise MIM.

    Needs the data module's semi-supervised mode (``data.init_args.train_on: semi``): per step a labelled
    batch and an unlabelled one with a weak view, two strong views and a CutMix box for each. The
    pseudo labels of the weak view (its argmax, counted where the softmax confidence reaches
    ``threshold``) supervise the strong views, where each strong view's CutMix box holds the strong view
    of the next image of the batch (and its pseudo labels), and a feature-perturbed pass of the weak view
    (``Dropout2d(fp_dropout)`` on every backbone map before the head). The loss is
    ``(L_x + w_s·L_s1 + w_s·L_s2 + w_fp·L_fp) / 2`` (UniMatch: ``w_s`` 0.25, ``w_fp`` 0.5).

    With ``mim`` on, three terms are added (:mod:`mnm.methods.mim`): on a block mask of each image (``mim_block``
    px blocks masked with probability ``mim_mask_ratio``, drawn from a generator keyed by the step),
    *class-wise reconstruction* (one encoder pass per image and class, seeing only that class's visible
    pixels; a SimMIM decoder on backbone map ``mim_feature_map`` predicts the class's masked pixels;
    L1 on the normalised RGB) over the ``mim_max_classes`` largest classes of each image (labels on the
    labelled images, confident pseudo labels on the unlabelled ones), *feature aggregation* (1 - cos of
    the class's mean map feature over masked and over visible pixels, same passes), and *MIM in semantic
    space* (the unlabelled loss of the masked weak view against the full weak view's pseudo labels).
    The MIM passes leave the batch-norm running statistics alone (ours: their inputs are mostly fill
    colour). Each term is logged; the defaults of the three weights are ours (the paper's are not public).

    Args:
        threshold: confidence a pseudo label needs to count (UniMatch: 0.95 VOC, 0 Cityscapes).
        strong_weight: weight of each strong view's loss.
        fp_weight: weight of the feature-perturbation loss.
        fp_dropout: channel-dropout probability of the feature perturbation.
        mim: add the class-wise MIM terms.
        mim_mask_ratio: share of blocks masked (MIC: 0.7).
        mim_block: block size in pixels (MIC: 64).
        mim_max_classes: classes per image given their own encoder pass (ours: 3; each costs a pass).
        mim_feature_map: index into ``Backbone.features`` of the map decoded and aggregated (ours: the last).
        mim_recon_weight: weight of the class-wise reconstruction loss (ours: 1).
        mim_aggregate_weight: weight of the feature-aggregation loss (ours: 0.5).
        mim_semantic_weight: weight of the semantic-space loss (ours: 0.5).
        **kwargs: head, data links and optimiser settings of :class:`SegmentStage`.
    """

    def __init__(
        self,
        threshold: float = 0.95,
        strong_weight: float = 0.25,
        fp_weight: float = 0.5,
        fp_dropout: float = 0.5,
        mim: bool = False,
        mim_mask_ratio: float = 0.7,
        mim_block: int = 64,
        mim_max_classes: int = 3,
        mim_feature_map: int = -1,
        mim_recon_weight: float = 1.0,
        mim_aggregate_weight: float = 0.5,
        mim_semantic_weight: float = 0.5,
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"model.threshold must be in [0, 1], got {threshold}")
        if mim_max_classes < 1:
            raise ValueError(f"model.mim_max_classes must be >= 1, got {mim_max_classes}")
        super().__init__(**kwargs)
        self.fp_dropout = nn.Dropout2d(fp_dropout)
        num_maps = len(self.backbone.out_channels)
        if not -num_maps <= mim_feature_map < num_maps:
            raise ValueError(f"model.mim_feature_map {mim_feature_map} must index the backbone's {num_maps} maps")
        self.decoder = (
            ReconstructionDecoder(self.backbone.out_channels[mim_feature_map], self.backbone.out_strides[mim_feature_map])
            if mim
            else None
        )

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        if "unlabeled" not in batch:
            raise ValueError("the semi stage needs labelled and unlabelled batches: set data.init_args.train_on: semi")
        hp = self.hparams
        labeled, unlabeled = batch["labeled"], batch["unlabeled"]
        x, weak = labeled["image"], unlabeled["image"]
        size = weak.shape[-2:]
        with self.phase_timer("forward"):
            maps = self.backbone.features(torch.cat([x, weak]))
            logits = self.head(maps, size)
            logits_fp = self.head([self.fp_dropout(m[len(x) :]) for m in maps], size)
            logits_x, logits_w = logits[: len(x)], logits[len(x) :]
            target = pseudo_labels(logits_w, ~unlabeled["padding"])
            order = torch.roll(torch.arange(len(weak), device=weak.device), -1)
            strong = [mix_boxes(unlabeled[f"image_s{v}"], unlabeled[f"image_s{v}"][order], unlabeled[f"box{v}"])
                      for v in (1, 2)]  # fmt: skip
            logits_s1, logits_s2 = self(torch.cat(strong)).chunk(2)
        with self.phase_timer("loss"):
            terms = {
                "loss_x": masked_cross_entropy(logits_x, labeled["mask"], hp.ignore_index),
                "loss_s1": unlabelled_loss(logits_s1, target.mixed(unlabeled["box1"], order), hp.threshold),
                "loss_s2": unlabelled_loss(logits_s2, target.mixed(unlabeled["box2"], order), hp.threshold),
                "loss_fp": unlabelled_loss(logits_fp, target, hp.threshold),
            }
            loss = (terms["loss_x"] + hp.strong_weight * (terms["loss_s1"] + terms["loss_s2"])
                    + hp.fp_weight * terms["loss_fp"]) / 2  # fmt: skip
        if self.decoder is not None:
            mim_terms = self.mim_losses(labeled, unlabeled, target)
            terms |= mim_terms
            loss = loss + (hp.mim_recon_weight * mim_terms["mim_recon"]
                           + hp.mim_aggregate_weight * mim_terms["mim_aggregate"]
                           + hp.mim_semantic_weight * mim_terms["mim_semantic"])  # fmt: skip
        stats = {"confident": ((target.confidence >= hp.threshold) & target.valid).float().mean()}
        self.log_scalars("train", {"loss": loss, **terms, **stats}, prog_bar=True, batch_size=len(x))
        return loss

    def mim_losses(
        self, labeled: dict[str, Any], unlabeled: dict[str, Any], target: PseudoLabels
    ) -> dict[str, torch.Tensor]:
        """The class-wise MIM terms of a step: ``mim_recon``, ``mim_aggregate``, ``mim_semantic``."""
        hp = self.hparams
        image = torch.cat([labeled["image"], unlabeled["image"]])
        labels = torch.cat([labeled["mask"], target.with_ignore(hp.threshold, hp.ignore_index)])
        h, w = image.shape[-2:]
        generator = self.step_generator(self.global_step, salt=_MASK_SALT)
        mask = block_mask(len(image), h, w, hp.mim_block, hp.mim_mask_ratio, generator).to(image.device)
        fill = self.backbone.mean.expand(1, 3, 1, 1)  # the dataset mean: zero after the backbone's normalisation
        with self.phase_timer("mim"), running_stats_frozen(self):
            views = class_views(image, labels, mask, largest_classes(labels, hp.ignore_index, hp.mim_max_classes), fill)
            if len(views):
                features = self.backbone.features(views.inputs)[hp.mim_feature_map]
                normalised = (image[views.image_index] - self.backbone.mean) / self.backbone.std
                recon = reconstruction_loss(self.decoder(features, (h, w)), normalised, views.masked)
                aggregate = aggregation_loss(features, views.masked, views.visible)
            else:  # no (confident) class anywhere in the batch
                recon = aggregate = sum(p.sum() for p in self.decoder.parameters()) * 0.0  # DDP: every one used
            masked_weak = torch.where(mask[len(labeled["image"]) :, None], fill, unlabeled["image"])
            semantic = unlabelled_loss(self(masked_weak), target, hp.threshold)
        return {"mim_recon": recon, "mim_aggregate": aggregate, "mim_semantic": semantic,
                "mim_views": torch.tensor(float(len(views)), device=image.device)}  # fmt: skip

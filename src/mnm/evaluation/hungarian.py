"""The unsupervised-segmentation evaluation: clusters matched one-to-one to classes (Hungarian), then mIoU.

The protocol of the unsupervised-segmentation literature (IIC, PiCIE, STEGO): accumulate the
cluster × class confusion matrix over a whole split, find the one-to-one assignment of clusters
to classes that maximises the matched pixels (:func:`scipy.optimize.linear_sum_assignment`), and
score the relabelled prediction with IoU per class and pixel accuracy. With more clusters than
classes, the pixels of the unmatched clusters count as wrong (a false negative of their class,
a false positive of none).
"""

from __future__ import annotations

import math

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchmetrics import Metric


class HungarianJaccardIndex(Metric):
    """mIoU and pixel accuracy of cluster maps after the Hungarian matching of clusters to classes.

    Args:
        num_classes: ground-truth classes.
        num_clusters: predicted clusters (default: ``num_classes``); at least ``num_classes``.
        ignore_index: target value left out.

    ``update(preds, target)`` takes cluster ids (or ``B×K×H×W`` scores, argmax taken) and labels;
    ``compute()`` returns ``miou`` (mean over classes present in target or matched prediction),
    ``pixel_acc``, ``per_class_iou`` (NaN = absent class) and ``assignment`` (class -> cluster).
    The confusion matrix is summed across DDP ranks.
    """

    full_state_update = False

    def __init__(self, num_classes: int, num_clusters: int | None = None, ignore_index: int = 255, **kw) -> None:
        super().__init__(**kw)
        num_clusters = num_classes if num_clusters is None else num_clusters
        if num_clusters < num_classes:
            raise ValueError(f"num_clusters ({num_clusters}) must be at least num_classes ({num_classes})")
        self.num_classes, self.num_clusters, self.ignore_index = num_classes, num_clusters, ignore_index
        self.add_state("confusion", torch.zeros(num_clusters, num_classes, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        """Add a batch of cluster ids ``B×H×W`` (or scores ``B×K×H×W``) and labels ``B×H×W``."""
        if preds.ndim == target.ndim + 1:
            preds = preds.argmax(1)
        if preds.shape != target.shape:
            raise ValueError(f"preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")
        keep = target != self.ignore_index
        p, t = preds[keep].long(), target[keep].long()
        if len(p) and (p.min() < 0 or p.max() >= self.num_clusters or t.min() < 0 or t.max() >= self.num_classes):
            raise ValueError(
                f"cluster ids must lie in [0, {self.num_clusters}) and labels in [0, {self.num_classes}) "
                f"(or be {self.ignore_index})"
            )
        counts = torch.bincount(p * self.num_classes + t, minlength=self.num_clusters * self.num_classes)
        self.confusion += counts.view(self.num_clusters, self.num_classes)

    def compute(self) -> dict[str, float | list[float] | list[int]]:
        """``{"miou", "pixel_acc", "per_class_iou", "assignment"}`` over all updates."""
        return hungarian_scores(self.confusion)


def hungarian_scores(confusion: Tensor) -> dict[str, float | list[float] | list[int]]:
    """Scores of a cluster × class confusion matrix after the maximum-overlap one-to-one matching."""
    conf = confusion.double().cpu()
    clusters, classes = linear_sum_assignment(conf.numpy(), maximize=True)
    assignment = [-1] * conf.shape[1]
    for k, c in zip(clusters.tolist(), classes.tolist(), strict=True):
        assignment[c] = k
    gt_total, pred_total = conf.sum(0), conf.sum(1)
    per_class = []
    for c, k in enumerate(assignment):
        tp = float(conf[k, c]) if k >= 0 else 0.0
        union = float(gt_total[c]) + (float(pred_total[k]) if k >= 0 else 0.0) - tp
        per_class.append(tp / union if union > 0 else math.nan)
    present = [v for v in per_class if not math.isnan(v)]
    total = float(conf.sum())
    matched = float(conf[clusters, classes].sum())
    return {
        "miou": sum(present) / len(present) if present else math.nan,
        "pixel_acc": matched / total if total else math.nan,
        "per_class_iou": per_class,
        "assignment": assignment,
    }

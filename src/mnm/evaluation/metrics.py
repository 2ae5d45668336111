"""Segmentation and classification evaluation on torchmetrics, plus per-class tables.

:class:`SegmentationMetrics` accumulates ONE confusion matrix over a whole
split (synced across DDP ranks by torchmetrics) and reports mIoU, per-class
IoU and pixel accuracy.

Absent classes: torchmetrics' ``MulticlassJaccardIndex(average="none")``
returns ``zero_division`` (default 0) for a class whose union (ground truth ∪
prediction, ignore pixels excluded) is empty, and its ``average="macro"``
drops such classes. Here the metric is built with ``zero_division=nan``, so
absent classes show up as NaN in ``per_class_iou`` and mIoU is the mean over
the classes present in the split (the VOC / Cityscapes convention).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex, MulticlassRecall


class SegmentationMetrics(nn.Module):
    """mIoU (present classes), per-class IoU and pixel accuracy over a split."""

    def __init__(self, num_classes: int, ignore_index: int = 255, validate_args: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.iou = MulticlassJaccardIndex(
            num_classes,
            average="none",
            ignore_index=ignore_index,
            zero_division=math.nan,
            validate_args=validate_args,
        )
        self.pixel_acc = MulticlassAccuracy(
            num_classes, average="micro", ignore_index=ignore_index, validate_args=validate_args
        )

    @torch.no_grad()
    def update(self, logits_or_preds: Tensor, target: Tensor) -> None:
        """Add a batch: logits ``B×K×H×W`` (argmax taken here) or labels ``B×H×W``."""
        preds = logits_or_preds.argmax(dim=1) if logits_or_preds.ndim == target.ndim + 1 else logits_or_preds
        self.iou.update(preds, target)
        self.pixel_acc.update(preds, target)

    def compute(self) -> dict[str, float | list[float]]:
        """``{"miou", "per_class_iou" (NaN = absent class), "pixel_acc"}`` over all updates."""
        per_class = self.iou.compute()
        return {
            "miou": float(per_class.nanmean()),
            "per_class_iou": [float(v) for v in per_class],
            "pixel_acc": float(self.pixel_acc.compute()),
        }

    def reset(self) -> None:
        """Clear the accumulated state (start of a new split / epoch)."""
        self.iou.reset()
        self.pixel_acc.reset()


class ClassificationMetrics(nn.Module):
    """Top-1 and top-5 accuracy over a split (torchmetrics' ``MulticlassAccuracy(top_k=k, average="micro")``:
    the share of samples whose label is among the ``k`` highest scores; top-5 is top-``K`` when ``K < 5``),
    and ``balanced``: the mean over classes of their top-1 recall (``MulticlassRecall(average="macro")``;
    classes neither present nor predicted are left out), the fair number when classes are skewed."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.metrics = nn.ModuleDict({
            "top1": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
            "top5": MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"),
            "balanced": MulticlassRecall(num_classes, average="macro"),
        })  # fmt: skip

    @torch.no_grad()
    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch: logits ``B×K``, labels ``B``."""
        for metric in self.metrics.values():
            metric.update(logits, target)

    def compute(self) -> dict[str, float]:
        """``{"top1", "top5", "balanced"}`` over all updates, as fractions."""
        return {name: float(metric.compute()) for name, metric in self.metrics.items()}

    def reset(self) -> None:
        """Clear the accumulated state."""
        for metric in self.metrics.values():
            metric.reset()


def _nanmean(values: Sequence[float]) -> float:
    present = [v for v in values if not math.isnan(v)]
    return sum(present) / len(present) if present else math.nan


def _as_rows(
    rows: Mapping[str, Sequence[float]] | Sequence[float],
) -> Mapping[str, Sequence[float]]:
    return rows if isinstance(rows, Mapping) else {"model": rows}


def per_class_table(
    per_class_iou: Mapping[str, Sequence[float]] | Sequence[float],
    class_names: Sequence[str],
    miou: Mapping[str, float] | float | None = None,
    digits: int = 1,
) -> str:
    """Markdown table in the style of the paper's Table 2 (IoU in %).

    ``per_class_iou`` is one list (a row called "model") or a dict
    ``model name -> per-class IoU`` (fractions in [0, 1]); one column per class
    plus mIoU. ``miou`` (fraction, or dict by model) defaults to the mean over
    non-NaN classes. NaN (absent class) prints as "–".
    """
    rows = _as_rows(per_class_iou)
    mious = miou if isinstance(miou, Mapping) else {name: miou for name in rows}

    def fmt(v: float | None) -> str:
        return "–" if v is None or math.isnan(v) else f"{100.0 * v:.{digits}f}"

    lines = [
        "| model | " + " | ".join(class_names) + " | mIoU |",
        "|---|" + "---:|" * (len(class_names) + 1),
    ]
    for name, values in rows.items():
        if len(values) != len(class_names):
            raise ValueError(f"row {name!r} has {len(values)} values for {len(class_names)} classes")
        m = mious.get(name)
        m = _nanmean(values) if m is None else m
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in values) + f" | {fmt(m)} |")
    return "\n".join(lines) + "\n"


def write_per_class_csv(
    path: str | Path,
    rows: Mapping[str, Sequence[float]] | Sequence[float],
    class_names: Sequence[str] | None = None,
) -> None:
    """Write ``model, <class...>, miou`` rows (IoU as fractions; NaN = absent class).

    Columns are named ``class_<i>`` when ``class_names`` is not given; mIoU is
    the mean over non-NaN classes.
    """
    rows = _as_rows(rows)
    width = len(next(iter(rows.values()), []))
    names = list(class_names) if class_names is not None else [f"class_{i}" for i in range(width)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", *names, "miou"])
        for name, values in rows.items():
            if len(values) != len(names):
                raise ValueError(f"row {name!r} has {len(values)} values for {len(names)} classes")
            writer.writerow([name, *(repr(float(v)) for v in values), repr(_nanmean(values))])

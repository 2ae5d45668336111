import csv
import math

import numpy as np
import pytest
import torch

from mnm.evaluation.metrics import SegmentationMetrics, per_class_table, write_per_class_csv

IGN = 255


def _hand_case():
    """Class 2 is predicted only on ignore pixels (absent); class 3 only as a false positive."""
    target = torch.tensor([[[0, 0, 1, IGN], [1, 1, 0, IGN], [0, 0, 0, 0]]])
    preds = torch.tensor([[[0, 1, 1, 2], [1, 1, 0, 0], [3, 0, 0, 0]]])
    # 10 pixels off ignore: class 0: 7 in GT, TP 5, FN 2 (->1, ->3); class 1: 3 in GT, TP 3, FP 1; class 3: FP 1
    return preds, target


def test_hand_made_confusion_exact_iou():
    metrics = SegmentationMetrics(4, ignore_index=IGN)
    metrics.update(*_hand_case())
    out = metrics.compute()
    iou = out["per_class_iou"]
    assert iou[0] == pytest.approx(5 / 7)
    assert iou[1] == pytest.approx(3 / 4)
    assert math.isnan(iou[2])  # absent: union empty once ignore pixels are dropped
    assert iou[3] == 0.0  # present (predicted) but never right: counts as 0
    assert out["miou"] == pytest.approx((5 / 7 + 3 / 4 + 0.0) / 3)
    assert out["pixel_acc"] == pytest.approx(8 / 10)


def test_absent_class_convention_differs_from_torchmetrics_default():
    from torchmetrics.classification import MulticlassJaccardIndex

    preds, target = _hand_case()
    default = MulticlassJaccardIndex(4, ignore_index=IGN, average="none")(preds, target)
    assert default[2] == 0.0  # torchmetrics: absent class -> zero_division (0) ...
    macro = MulticlassJaccardIndex(4, ignore_index=IGN, average="macro")(preds, target)
    metrics = SegmentationMetrics(4)
    metrics.update(preds, target)
    miou = metrics.compute()["miou"]
    assert miou == pytest.approx(float(macro))  # ... and macro drops it, as we do
    assert miou != pytest.approx(float(default.mean()))


def test_accumulates_one_confusion_matrix_and_resets():
    preds, target = _hand_case()
    metrics = SegmentationMetrics(4)
    metrics.update(preds[..., :2, :], target[..., :2, :])
    metrics.update(preds[..., 2:, :], target[..., 2:, :])
    whole = SegmentationMetrics(4)
    whole.update(preds, target)
    split, joint = metrics.compute(), whole.compute()
    assert split["per_class_iou"] == pytest.approx(joint["per_class_iou"], nan_ok=True)
    assert (split["miou"], split["pixel_acc"]) == pytest.approx((joint["miou"], joint["pixel_acc"]))
    metrics.reset()
    metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))
    assert metrics.compute()["miou"] == 1.0


def _numpy_iou(preds: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    keep = target != IGN
    conf = np.bincount(target[keep] * k + preds[keep], minlength=k * k).reshape(k, k)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def test_matches_numpy_confusion_matrix_on_random_logits():
    g = torch.Generator().manual_seed(0)
    k = 6
    metrics = SegmentationMetrics(k)
    all_preds, all_targets = [], []
    for _ in range(3):
        logits = torch.randn(2, k, 9, 11, generator=g)
        target = torch.randint(0, k - 1, (2, 9, 11), generator=g)  # class k-1 only ever predicted
        target[torch.rand(2, 9, 11, generator=g) < 0.2] = IGN
        metrics.update(logits, target)
        all_preds.append(logits.argmax(1).numpy().ravel())
        all_targets.append(target.numpy().ravel())
    preds, targets = np.concatenate(all_preds), np.concatenate(all_targets)
    expected = _numpy_iou(preds, targets, k)
    out = metrics.compute()
    np.testing.assert_allclose(out["per_class_iou"], expected, rtol=1e-6)
    assert out["miou"] == pytest.approx(np.nanmean(expected))
    keep = targets != IGN
    assert out["pixel_acc"] == pytest.approx((preds[keep] == targets[keep]).mean())


def test_per_class_table_markdown():
    table = per_class_table(
        {"random": [0.5, 0.25, float("nan")], "M&M": [0.75, 0.5, 0.125]},
        ["bg", "aero", "bike"],
        miou={"M&M": 0.6},
    )
    assert table == (
        "| model | bg | aero | bike | mIoU |\n"
        "|---|---:|---:|---:|---:|\n"
        "| random | 50.0 | 25.0 | – | 37.5 |\n"
        "| M&M | 75.0 | 50.0 | 12.5 | 60.0 |\n"
    )
    single = per_class_table([0.5, 1.0], ["a", "b"], 0.75, digits=2)
    assert single.splitlines()[-1] == "| model | 50.00 | 100.00 | 75.00 |"
    with pytest.raises(ValueError):
        per_class_table([0.5], ["a", "b"])


def test_write_per_class_csv(tmp_path):
    path = tmp_path / "per_class.csv"
    write_per_class_csv(path, {"a": [0.5, float("nan")], "b": [0.25, 0.75]}, ["bg", "cat"])
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["model", "bg", "cat", "miou"]
    assert rows[1][:2] == ["a", "0.5"] and math.isnan(float(rows[1][2])) and float(rows[1][3]) == 0.5
    assert [float(v) for v in rows[2][1:]] == [0.25, 0.75, 0.5]
    write_per_class_csv(path, [0.1, 0.2, 0.3])
    with open(path, newline="") as fh:
        assert next(csv.reader(fh)) == ["model", "class_0", "class_1", "class_2", "miou"]

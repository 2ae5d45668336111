import math

import pytest
import torch

from mnm.evaluation.hungarian import HungarianJaccardIndex, hungarian_scores

IGN = 255


def _pixels_from_confusion(confusion: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """One pixel per count: cluster ids and labels, as a 1×N "image"."""
    preds, target = [], []
    for k, row in enumerate(confusion):
        for c, n in enumerate(row):
            preds += [k] * n
            target += [c] * n
    return torch.tensor([preds]), torch.tensor([target])


def test_permuted_ground_truth_scores_one():
    target = torch.randint(0, 5, (2, 16, 16), generator=torch.Generator().manual_seed(0))
    perm = torch.tensor([3, 0, 4, 1, 2])
    metric = HungarianJaccardIndex(5)
    metric.update(perm[target], target)
    out = metric.compute()
    assert out["miou"] == pytest.approx(1.0)
    assert out["pixel_acc"] == pytest.approx(1.0)
    assert out["assignment"] == perm.tolist()


def test_hand_made_confusion_gives_hand_computed_scores():
    # clusters x classes; best matching: class 0 -> cluster 0 (5), class 1 -> cluster 1 (4); cluster 2 unmatched
    confusion = [[5, 1], [2, 4], [0, 3]]
    metric = HungarianJaccardIndex(2, num_clusters=3)
    metric.update(*_pixels_from_confusion(confusion))
    out = metric.compute()
    assert out["assignment"] == [0, 1]
    # class 0: TP 5, GT 7, predicted 6 -> 5/8; class 1: TP 4, GT 8, predicted 6 -> 4/10
    assert out["per_class_iou"] == pytest.approx([5 / 8, 4 / 10])
    assert out["miou"] == pytest.approx((5 / 8 + 4 / 10) / 2)
    assert out["pixel_acc"] == pytest.approx(9 / 15)  # the 3 pixels of the unmatched cluster count as wrong
    assert hungarian_scores(torch.tensor(confusion))["miou"] == pytest.approx(out["miou"])


def test_ignore_index_left_out_and_absent_class_nan():
    target = torch.tensor([[[0, 0, IGN, IGN]]])
    preds = torch.tensor([[[1, 1, 0, 2]]])  # the ignored pixels' clusters would be wrong if counted
    metric = HungarianJaccardIndex(3)
    metric.update(preds, target)
    out = metric.compute()
    assert out["pixel_acc"] == 1.0
    assert out["per_class_iou"][0] == 1.0
    assert all(math.isnan(v) for v in out["per_class_iou"][1:])
    assert out["miou"] == 1.0


def test_scores_accumulate_over_updates_and_take_logits():
    metric = HungarianJaccardIndex(2)
    target = torch.tensor([[[0, 1]]])
    metric.update(torch.tensor([[[1, 0]]]), target)
    logits = torch.zeros(1, 2, 1, 2)
    logits[0, 0, 0, 0] = logits[0, 1, 0, 1] = 1  # argmax: [0, 1], the other permutation
    metric.update(logits, target)
    assert metric.compute()["pixel_acc"] == pytest.approx(0.5)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="num_clusters"):
        HungarianJaccardIndex(5, num_clusters=3)
    with pytest.raises(ValueError, match="cluster ids"):
        HungarianJaccardIndex(2).update(torch.tensor([[[2]]]), torch.tensor([[[0]]]))

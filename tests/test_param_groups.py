"""Optimiser parameter groups: the single-group default, and the Caffe release's bias and norm settings."""

from __future__ import annotations

from torch import nn

from mnm.models.backbones import build_backbone
from mnm.models.param_groups import param_groups


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = build_backbone("alexnet")
        self.head = nn.Sequential(nn.Conv2d(256, 8, 1), nn.BatchNorm2d(8))


def settings(groups: list[dict]) -> list[tuple[float, float, int]]:
    return [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups]


def test_defaults_give_one_backbone_group_and_one_head_group() -> None:
    net = Net()
    groups = param_groups(net, net.backbone, lr=0.01, weight_decay=5e-4, head_lr_mult=10)
    assert settings(groups) == [(0.01, 5e-4, 20), (0.1, 5e-4, 4)]
    assert groups[0]["params"] == list(net.backbone.parameters())


def test_release_settings_split_biases_and_norms() -> None:
    net = Net()
    groups = param_groups(
        net, net.backbone, lr=0.01, weight_decay=5e-4, bias_lr_mult=2, bias_weight_decay=0, norm_weight_decay=0
    )
    # backbone: 5 conv weights; 5 conv biases at lr x2 without decay; 10 BN tensors without decay; then the head
    assert settings(groups) == [(0.01, 5e-4, 5), (0.02, 0, 5), (0.01, 0, 10), (0.01, 5e-4, 1), (0.02, 0, 1),
                                (0.01, 0, 2)]  # fmt: skip
    conv1 = net.backbone.body[0]
    assert any(p is conv1.bias for p in groups[1]["params"])
    assert all(p is not conv1.weight for g in groups[1:] for p in g["params"])


def test_frozen_head_parameters_are_left_out() -> None:
    net = Net()
    net.head[0].weight.requires_grad_(False)
    groups = param_groups(net, net.backbone, lr=0.01, weight_decay=5e-4, head_lr_mult=10)
    assert settings(groups) == [(0.01, 5e-4, 20), (0.1, 5e-4, 3)]

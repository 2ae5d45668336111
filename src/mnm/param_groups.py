"""Optimiser parameter groups: backbone vs head learning rate, and Caffe-style bias and norm settings."""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["NORM_LAYERS", "param_groups"]

#: layers whose parameters (scale and shift) follow ``norm_weight_decay``
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm)


def param_groups(
    model: nn.Module,
    backbone: nn.Module,
    lr: float,
    weight_decay: float,
    head_lr_mult: float = 1.0,
    bias_lr_mult: float = 1.0,
    bias_weight_decay: float | None = None,
    norm_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """SGD parameter groups of ``model``: ``backbone`` at ``lr``, the rest at ``lr * head_lr_mult``.

    Within each part, the parameters of normalisation layers take ``norm_weight_decay``, the
    other biases ``lr * bias_lr_mult`` and ``bias_weight_decay`` (the Caffe release: lr x2, no
    decay); ``None`` keeps ``weight_decay``. Parameters with the same settings share a group, so
    the defaults give one backbone group and one head group (the head's frozen parameters left out).
    """
    in_backbone = {id(p) for p in backbone.parameters()}
    in_norm = {id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)}
    groups: dict[tuple[bool, float, float], dict[str, Any]] = {}
    for name, p in model.named_parameters():
        part_of_backbone = id(p) in in_backbone
        if not (part_of_backbone or p.requires_grad):
            continue
        group_lr = lr if part_of_backbone else lr * head_lr_mult
        decay = weight_decay
        if id(p) in in_norm:
            decay = weight_decay if norm_weight_decay is None else norm_weight_decay
        elif name.endswith("bias"):
            group_lr *= bias_lr_mult
            decay = weight_decay if bias_weight_decay is None else bias_weight_decay
        key = (part_of_backbone, group_lr, decay)
        groups.setdefault(key, {"params": [], "lr": group_lr, "weight_decay": decay})["params"].append(p)
    # backbone groups first, as the single-group layout always had them
    return [g for (part, *_), g in groups.items() if part] + [g for (part, *_), g in groups.items() if not part]

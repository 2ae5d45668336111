"""Optimiser parameter groups: backbone vs head learning rate, Caffe-style bias and norm settings, and
freezing the parameters a loss never reaches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["NORM_LAYERS", "freeze_unreached", "param_groups"]

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


def freeze_unreached(module: nn.Module, forward: Callable[[], torch.Tensor]) -> list[str]:
    """Freeze (``requires_grad=False``) the parameters ``forward()``'s output does not depend on; their names.

    Such parameters never get a gradient, which stops DDP ("parameters that were not used in
    producing the loss"); frozen, DDP leaves them out and the optimiser never touches them, as
    before. ``forward`` runs once in eval mode (batch-norm statistics are left alone).
    """
    named = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    was_training = module.training
    module.eval()
    try:
        output = forward()
        grads = torch.autograd.grad(output.float().sum(), [p for _, p in named], allow_unused=True)
    finally:
        module.train(was_training)
    unreached = [(name, p) for (name, p), grad in zip(named, grads, strict=True) if grad is None]
    for _, p in unreached:
        p.requires_grad_(False)
    return [name for name, _ in unreached]

"""``mnm ensemble``: evaluate the average class probabilities of several segmentation checkpoints.

This is the paper's "ImageNet + M&M" row: two networks trained from different
starts, averaged at test time.
"""

from __future__ import annotations

import lightning as L
import torch
import yaml
from torch import nn

from mnm.datamodules.factory import instantiate_datamodule
from mnm.evaluation.metrics import SegmentationMetrics
from mnm.runs.yaml_layers import set_by_path
from mnm.stages.base import ScalarLogging
from mnm.stages.segment import SegmentationEvaluation, SegmentStage
from mnm.utils.paths import find_file, repo_relative_paths, where_to_run_hint


class SegmentEnsemble(SegmentationEvaluation, ScalarLogging, L.LightningModule):
    """Averages the class probabilities of its members (each with its own test-time settings)."""

    def __init__(self, members: list[SegmentStage]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one checkpoint")
        first = members[0].hparams
        for m in members[1:]:
            if m.hparams.num_classes != first.num_classes:
                raise ValueError(f"members disagree on num_classes: {m.hparams.num_classes} vs {first.num_classes}")
        self.save_hyperparameters(
            {k: first[k] for k in ("num_classes", "ignore_index", "class_names")}, logger=False
        )
        self.members = nn.ModuleList(members)
        self.val_metrics = SegmentationMetrics(first.num_classes, ignore_index=first.ignore_index)
        self.test_metrics = SegmentationMetrics(first.num_classes, ignore_index=first.ignore_index)

    def predict_probs(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([m.predict_probs(image) for m in self.members]).mean(0)


def load_member(path: str) -> SegmentStage:
    """A fine-tuned segmentation model from a checkpoint (weights only; no re-loading of its init weights)."""
    return SegmentStage.load_from_checkpoint(path, map_location="cpu", weights_only=True, pretrained_backbone=None)


def build_datamodule(config_path: str, sets: list[str]) -> L.LightningDataModule:
    """The ``data`` section of a LightningCLI config file, with ``--set data.x=y`` overrides."""
    path = find_file(config_path)
    if not path.is_file():
        raise FileNotFoundError(f"data config file not found: {config_path}{where_to_run_hint()}")
    cfg = repo_relative_paths(yaml.safe_load(path.read_text()) or {})
    for item in sets:
        key, _, value = item.partition("=")
        set_by_path(cfg, key, yaml.safe_load(value))
    data = cfg.get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{config_path}: needs a data section with class_path/init_args")
    return instantiate_datamodule(data)

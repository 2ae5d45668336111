"""Fault injection for the reliability tests (importable as ``faults`` from tests and their subprocesses)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class PoisonWeightsAt(Callback):
    """Set every parameter to NaN at the start of training step ``step``."""

    def __init__(self, step: int = 3) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))

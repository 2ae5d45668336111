"""Fault injection for the reliability tests (importable as ``faults`` from tests and their subprocesses)."""

from __future__ import annotations

import time
from pathlib import Path

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


class PauseOnceAt(Callback):
    """At the start of training step ``step``, create ``marker`` and wait (up to ``seconds``) until the process
    is signalled; only when ``marker`` does not exist yet, so a rerun with the same config runs through."""

    def __init__(self, step: int, marker: str, seconds: float = 120.0) -> None:
        self.step = step
        self.marker = Path(marker)
        self.seconds = seconds

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step != self.step or self.marker.exists():
            return
        self.marker.touch()
        deadline = time.monotonic() + self.seconds
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)

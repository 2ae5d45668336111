"""Fault injection for the reliability tests (importable as ``faults`` from tests and their subprocesses)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class PoisonWeightsAt(Callback):
    """Set every parameter to NaN at the start of training step ``step`` (on global rank ``rank`` only, if given)."""

    def __init__(self, step: int = 3, rank: int | None = None) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step and self.rank in (None, trainer.global_rank):
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


class SigtermAt(Callback):
    """Send SIGTERM to this process at the end of training step ``step`` on global rank ``rank`` (once)."""

    def __init__(self, step: int = 2, rank: int = 0) -> None:
        self.step = step
        self.rank = rank

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step == self.step and trainer.global_rank == self.rank and not trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)

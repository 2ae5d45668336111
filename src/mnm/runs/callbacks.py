"""Callbacks that make long stages safe: stop on a non-finite loss, checkpoint on SIGTERM; and the W&B logger."""

from __future__ import annotations

import ast
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter, Callback
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from PIL import Image


class WandbLogger(LightningWandbLogger):
    """Lightning's W&B logger without the ``anonymous=None`` it always hands to ``wandb.init``: W&B (0.19 on) warns
    that "the anonymous setting has no effect" whenever the argument is there, even as ``None``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self._wandb_init.get("anonymous", False) is None:
            del self._wandb_init["anonymous"]


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class FiniteLossGuard(Callback):
    """Stop before the optimiser step when the loss is not finite, naming stage, step and value.

    The check runs before ``backward``, so no weight is touched by the bad
    step and no checkpoint is written after it: the last good one is kept.
    Under DDP the ranks decide together (one gathered scalar per step), so a
    NaN on one rank stops every rank instead of leaving the others waiting.
    """

    def __init__(self, stage: str = "") -> None:
        self.stage = stage

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        values = loss.detach().float().reshape(1)
        if trainer.world_size > 1:
            values = trainer.strategy.all_gather(values).flatten()
        finite = torch.isfinite(values)
        if bool(finite.all()):
            return
        rank = int((~finite).nonzero()[0])
        where = f"stage {self.stage!r}" if self.stage else type(pl_module).__name__
        on_rank = f" on rank {rank} of {trainer.world_size}" if trainer.world_size > 1 else ""
        ckpt = trainer.checkpoint_callback
        kept = getattr(ckpt, "last_model_path", "") or getattr(ckpt, "best_model_path", "") or "none yet"
        raise NonFiniteLossError(
            f"{where}: loss is {float(values[rank])} at step {trainer.global_step}{on_rank}; training stopped. "
            f"Last good checkpoint: {kept}"
        )


class SigtermCheckpoint(Callback):
    """On SIGTERM (what schedulers send before a kill), save ``last.ckpt`` so a rerun resumes.

    Lightning notices the signal and raises ``SIGTERMException`` after the
    batch; this callback writes the checkpoint first. Under DDP a signal may
    reach one rank only, so the ranks decide together after each batch (any
    rank signalled: all save, all stop); the signal handler then only records
    the signal (Lightning's own one starts a collective from inside the handler,
    which hangs when the other ranks are not signalled).
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.world_size > 1 and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: _record_sigterm(trainer, True))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        stop = trainer.received_sigterm
        if trainer.world_size > 1:
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            _record_sigterm(trainer, stop)  # every rank raises SIGTERMException after this batch
        if not stop:
            return
        ckpt = trainer.checkpoint_callback
        folder = Path(getattr(ckpt, "dirpath", None) or trainer.default_root_dir)
        trainer.save_checkpoint(folder / self.filename, weights_only=False)


def _record_sigterm(trainer: L.Trainer, received: bool) -> None:
    """Set the flag ``trainer.received_sigterm`` reads (Lightning's signal connector has no setter)."""
    trainer._signal_connector.received_sigterm = received


class RNGStateCheckpoint(Callback):
    """Give each rank its own random stream, store every rank's torch (CPU and CUDA), numpy and Python
    RNG states in each checkpoint, and restore them on resume.

    Lightning restores weights, optimiser and loop state but not the random
    generators, so without this a resumed run would draw other dropout masks
    than an uninterrupted one. Every rank starts from the same ``seed_everything``
    seed; at setup rank ``r > 0`` reseeds with ``seed + r`` so ranks draw different
    dropout masks (data order and augmentation are keyed by the data modules' own
    seeds and ranks, :mod:`mnm.datamodules.sampling`). A resume on more ranks than
    were saved keeps that seeding on the extra ranks.
    """

    def __init__(self) -> None:
        self._trainer: L.Trainer | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer
        if stage == "fit" and trainer.global_rank > 0:  # before a resume restores the saved states
            seed = int(os.environ.get("PL_GLOBAL_SEED", torch.initial_seed())) + trainer.global_rank  # seed_everything's
            torch.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        state = _rng_state()
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1 or not torch.distributed.is_initialized():
            return {"ranks": [state]}
        ranks: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(ranks, state)  # every rank is in save_checkpoint (SigtermCheckpoint)
        return {"ranks": ranks}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ranks = state.get("ranks", [state])  # a checkpoint from before per-rank states holds one flat state
        rank = self._trainer.global_rank if self._trainer is not None else 0
        if rank < len(ranks):
            _set_rng_state(ranks[rank])


def _rng_state() -> dict[str, Any]:
    """This process's random states: torch CPU, the current CUDA device's (if CUDA is in use), numpy, Python."""
    state = {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
        "numpy_pos": int(np.random.get_state()[2]),
        "python": repr(random.getstate()),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state(torch.cuda.current_device())
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    random.setstate(ast.literal_eval(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"], torch.cuda.current_device())


class PaletteMaskWriter(BasePredictionWriter):
    """Write each predicted mask as ``<output_dir>/<name>.png``: palette mode, index = class id.

    Masks have the size of the input image (see ``SegmentStage.predict_step``);
    the palette is the data module's (VOC, CamVid, ...). ``overlays`` also
    writes ``<output_dir>/overlays/<name>.jpg`` (the input blended with the mask
    colours) and ``probs`` ``<output_dir>/probs/<name>.npy`` (float16 C×H×W class
    probabilities).
    """

    def __init__(self, output_dir: str, overlays: bool = False, probs: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.overlays = overlays
        self.probs = probs
        self.written = 0

    def write_on_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any, batch_indices: Any,
        batch: Any, batch_idx: int, dataloader_idx: int = 0,
    ) -> None:
        palette = [tuple(rgb) for rgb in getattr(trainer.datamodule, "palette", [])]
        flat = [c for rgb in palette for c in rgb]
        for i, name in enumerate(prediction["name"]):
            mask = prediction["pred"][i].cpu().numpy().astype(np.uint8)
            image = Image.fromarray(mask, mode="P")
            if flat:
                image.putpalette(flat)
            image.save(_output_file(self.output_dir, name, ".png"))
            if self.overlays:
                overlay_image(batch, i, mask, palette).save(_output_file(self.output_dir / "overlays", name, ".jpg"))
            if self.probs:
                np.save(_output_file(self.output_dir / "probs", name, ".npy"),
                        prediction["probs"][i].cpu().numpy().astype(np.float16))
            self.written += 1


def _output_file(folder: Path, name: str, suffix: str) -> Path:
    path = folder / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def overlay_image(batch: dict[str, Any], i: int, mask: np.ndarray, palette: list[tuple[int, ...]]) -> Image.Image:
    """Image ``i`` of a prediction batch, resized back to the mask's size, half-blended with the mask colours."""
    height, width = mask.shape
    if "input_size" in batch:
        image = batch["image"][i, :, : int(batch["input_size"][i][0]), : int(batch["input_size"][i][1])]
    else:
        image = batch["image"][i]
    rgb = Image.fromarray((image.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)).resize((width, height))
    colours = np.array(palette or [(0, 0, 0)], dtype=np.uint8)[np.minimum(mask, len(palette or [0]) - 1)]
    return Image.blend(rgb, Image.fromarray(colours), 0.5)

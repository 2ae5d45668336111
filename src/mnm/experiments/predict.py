"""``mnm predict STAGE_DIR IMAGES --out DIR``: masks for new images from a trained segment stage.

Loads the stage's model from its checkpoint (``final.ckpt`` unless ``--ckpt``)
and its data settings (palette, ``val_size``) from ``STAGE_DIR/config.yaml``,
then predicts with a Trainer that has no logger and no checkpointing: nothing
is written except under ``--out``, which may not lie inside the stage folder.
Every mask has the size of its input image.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from mnm.runs.rundir import StageDir
from mnm.weights.checkpoints import read_checkpoint


def stage_checkpoint(stage_dir: Path, ckpt: Path | None) -> Path:
    """The checkpoint to predict with: ``ckpt`` if given, else the stage's ``final.ckpt``."""
    if ckpt is not None:
        return ckpt
    final = StageDir(stage_dir).final_checkpoint
    if not final.is_file():
        raise FileNotFoundError(f"{final}: no final checkpoint (is the stage finished?); pass --ckpt FILE")
    return final


def read_stage_config(stage_dir: Path) -> dict[str, Any]:
    """``STAGE_DIR/config.yaml``, checked to name a data module."""
    path = StageDir(stage_dir).config
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; STAGE_DIR must be a stage folder of a run (runs/<pipeline>/<stage>)")
    config = yaml.safe_load(path.read_text()) or {}
    data = config.get("data")
    if not isinstance(data, dict) or "class_path" not in data:
        raise ValueError(f"{path}: no data.class_path; cannot tell the data module (palette, val_size)")
    return config


def load_model(path: Path) -> Any:
    """The segment stage of a checkpoint, rebuilt from its hyperparameters with its weights loaded."""
    from mnm.stages.segment import SegmentStage

    contents = read_checkpoint(path)
    hparams = contents.get("hyper_parameters")
    if not isinstance(hparams, dict) or "state_dict" not in contents:
        raise ValueError(f"{path}: not an mnm stage checkpoint (no hyper_parameters/state_dict)")
    kwargs = {k: v for k, v in hparams.items() if not k.startswith("_")}
    kwargs["pretrained_backbone"] = None  # the weights come from this checkpoint's state_dict
    try:
        model = SegmentStage(**kwargs)
        model.load_state_dict(contents["state_dict"])
    except (TypeError, RuntimeError) as err:
        raise ValueError(
            f"{path}: not a segment stage checkpoint ({str(err).splitlines()[0]}); masks come from segment stages"
        ) from None
    return model.eval()


def load_datamodule(data: dict[str, Any], images: Path, batch_size: int, num_workers: int | None) -> Any:
    """The stage's data module (``data`` section of its config) reading ``images`` for prediction."""
    from mnm.datamodules.factory import instantiate_datamodule

    data = copy.deepcopy(data)
    init = data.setdefault("init_args", {})
    init.update(predict_dir=str(images), val_batch_size=batch_size)
    if num_workers is not None:
        init["num_workers"] = num_workers
    return instantiate_datamodule(data)


def check_out_dir(out: Path, stage_dir: Path) -> None:
    """Refuse an output folder inside the stage folder: only the stage's training writes there."""
    if out.resolve().is_relative_to(stage_dir.resolve()):
        raise ValueError(f"--out {out} lies inside the stage folder {stage_dir}; choose a folder outside it")


def predict(
    stage_dir: Path, images: Path, out: Path, *, ckpt: Path | None = None, overlays: bool = False,
    probs: bool = False, batch_size: int = 1, num_workers: int | None = 0, accelerator: str = "auto",
) -> int:
    """Write one mask per image of ``images`` (a folder or a file) under ``out``; returns the count."""
    import lightning as L

    from mnm.runs.callbacks import PaletteMaskWriter

    if not images.exists():
        raise FileNotFoundError(f"{images}: no such image file or folder")
    check_out_dir(out, stage_dir)
    config = read_stage_config(stage_dir)
    model = load_model(stage_checkpoint(stage_dir, ckpt))
    datamodule = load_datamodule(config["data"], images, batch_size, num_workers)
    writer = PaletteMaskWriter(str(out), overlays=overlays, probs=probs)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[writer], default_root_dir=str(out),
    )
    trainer.predict(model, datamodule=datamodule, return_predictions=False)
    return writer.written

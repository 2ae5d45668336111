"""LightningCLI for one stage: the same parser serves ``mnm <stage> fit ...`` and the pipeline orchestrator."""

from __future__ import annotations

import inspect
from argparse import ArgumentError
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter, ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO

from mnm.runs.callbacks import FiniteLossGuard, RNGStateCheckpoint, SigtermCheckpoint
from mnm.runs.parse_errors import parse_error_line
from mnm.runs.rundir import StageDir, read_manifest
from mnm.stages import stage_class
from mnm.utils.files import atomic_torch_save
from mnm.utils.quiet import quiet_library_messages
from mnm.weights.checkpoints import read_checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO that never leaves a truncated file and loads weights only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_torch_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict:
        return read_checkpoint(path)


#: optimiser steps between the ``last.ckpt`` saves of ``mnm <stage> fit`` (and one at the end)
STAGE_CLI_CHECKPOINT_EVERY = 100


class StageCLI(LightningCLI):
    """LightningCLI with data→model links, atomic checkpoints and the safety callbacks.

    With ``save_checkpoints`` (the ``mnm <stage>`` commands; the pipeline runner adds its own) ``fit`` keeps
    ``last.ckpt`` in the log folder's ``checkpoints/``, every :data:`STAGE_CLI_CHECKPOINT_EVERY` steps and at
    the end, and says where; ``--trainer.enable_checkpointing false`` turns it off.
    """

    def __init__(
        self, stage: str, *args: Any, label: str | None = None, parse_only: bool = False,
        save_checkpoints: bool = False, **kwargs: Any,
    ) -> None:
        self.stage = stage
        self.parse_only = parse_only
        self.save_checkpoints = save_checkpoints
        kwargs.setdefault("trainer_defaults", {})
        kwargs["trainer_defaults"] = {
            "use_distributed_sampler": False,  # the data modules' samplers shard by rank themselves
            "max_steps": stage_class(stage).default_max_steps,
            **kwargs["trainer_defaults"],
        }
        kwargs.setdefault("seed_everything_default", 0)  # seeded like the stages' own ``model.seed``
        callbacks = [FiniteLossGuard(label or stage), SigtermCheckpoint(), RNGStateCheckpoint()]
        if save_checkpoints:
            callbacks.append(ModelCheckpoint(save_last=True, save_top_k=0,
                                             every_n_train_steps=STAGE_CLI_CHECKPOINT_EVERY))
        kwargs["trainer_defaults"].setdefault("callbacks", callbacks)
        super().__init__(stage_class(stage), L.LightningDataModule, *args, subclass_mode_data=True, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attr in stage_class(self.stage).data_links:
            parser.link_arguments(f"data.{attr}", f"model.{attr}", apply_on="instantiate")
        _read_counts_as_int(parser)

    def _set_seed(self) -> None:  # LightningCLI seeds right after parsing; a parse-only check must not
        if not self.parse_only:
            super()._set_seed()

    def instantiate_classes(self) -> None:
        """Build model, data and trainer (not with ``parse_only``: then only ``self.config`` is set)."""
        if not self.parse_only:
            super().instantiate_classes()

    def before_instantiate_classes(self) -> None:
        """Only ``fit`` writes into the stage folder: evaluating or predicting with a stage's ``config.yaml``
        opens no logger (which would wipe or extend the training logs) and saves no ``config.yaml``."""
        if self.subcommand not in (None, "fit"):
            self.config[self.subcommand]["trainer"]["logger"] = False
            self.save_config_callback = None

    def before_predict(self) -> None:
        """Refuse a prediction whose results nobody writes (no prediction-writer callback)."""
        if not any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
            raise ValueError(
                f"mnm {self.stage} predict writes nothing without a prediction writer callback; "
                "use `mnm predict STAGE_DIR IMAGES --out DIR`, which writes one mask per image"
            )

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        config = self._get(self.config_init, "trainer", default={})
        if not config.get("plugins"):
            kwargs.setdefault("plugins", [AtomicCheckpointIO()])
        if config.get("enable_checkpointing") is False:  # the user's choice; Lightning refuses a ModelCheckpoint then
            defaults = self.trainer_defaults.get("callbacks") or []
            self.trainer_defaults["callbacks"] = [c for c in defaults if not isinstance(c, ModelCheckpoint)]
        return super().instantiate_trainer(**kwargs)

    def before_fit(self) -> None:
        if self.save_checkpoints and self.trainer.is_global_zero:
            print(f"[mnm] {self.stage} fit: logs and checkpoints in {self.trainer.log_dir or self.trainer.default_root_dir}")

    def after_fit(self) -> None:
        """Save ``last.ckpt`` at the step training ended on (the periodic saves may be older) and say where."""
        ckpt = self.trainer.checkpoint_callback
        if not self.save_checkpoints or not isinstance(ckpt, ModelCheckpoint) or ckpt.dirpath is None:
            return
        last = Path(ckpt.dirpath) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        self.trainer.save_checkpoint(last)
        if self.trainer.is_global_zero:
            print(f"[mnm] {self.stage} fit: step {self.trainer.global_step}, checkpoint {last} "
                  f"(resume: --ckpt_path {last}; next stage: --model.pretrained_backbone {last})")


#: Trainer settings where an int counts batches and a float is a fraction of them
COUNT_OR_FRACTION = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                     "overfit_batches", "val_check_interval")


def _read_counts_as_int(parser: LightningArgumentParser) -> None:
    """Read ``--trainer.limit_val_batches 1`` as 1 batch, not as 1.0 (the whole split).

    Lightning types these settings ``Union[float, int, None]``, so the parser tries ``float`` first and turns
    every integer into a fraction; trying ``int`` first keeps what the user wrote (jsonargparse keeps the type
    hint of each option in its action).
    """
    for action in parser._actions:
        if action.dest.rpartition(".")[2] in COUNT_OR_FRACTION and hasattr(action, "_typehint"):
            action._typehint = int | float | None


def build_stage(stage: str, config: dict[str, Any], label: str | None = None, **kwargs: Any) -> StageCLI:
    """Parse and instantiate a stage from a config dict (``model``/``data``/``trainer``/...), without running it.

    ``label`` names the stage in error messages (default: the stage command).
    Configuration errors raise (they do not exit), so callers can name the stage.
    """
    quiet_library_messages()
    return StageCLI(
        stage,
        label=label,
        args=config,
        run=False,
        save_config_callback=None,
        parser_kwargs={"exit_on_error": False},
        **kwargs,
    )


def parse_stage(stage: str, config: dict[str, Any], label: str | None = None) -> Any:
    """Check a stage's config as :func:`build_stage` would, building nothing; returns the parsed config.

    Raises ``ValueError`` on unknown keys, wrong types and unknown classes: one line naming the key
    (:func:`parse_error_line`).
    """
    try:
        return build_stage(stage, config, label=label, parse_only=True).config
    except ArgumentError as err:
        raise ValueError(parse_error_line(str(err), stage, config)) from err


def stage_parser_kwargs(stage: str) -> dict[str, Any]:
    """LightningCLI ``parser_kwargs`` that name the stage in ``mnm <stage> [subcommand] --help``."""
    summary = (inspect.getdoc(stage_class(stage)) or "").split("\n", 1)[0]
    kwargs: dict[str, Any] = {"prog": f"mnm {stage}", "description": f"mnm {stage}: {summary}"}
    for subcommand in LightningCLI.subcommands():
        kwargs[subcommand] = {"prog": f"mnm {stage} {subcommand}",
                              "description": f"mnm {stage} {subcommand}: {subcommand} the {stage} stage. {summary}"}
    return kwargs


def main_stage(stage: str, argv: list[str]) -> None:
    """``mnm <stage> fit|validate|test|predict ...`` — the LightningCLI subcommands of one stage."""
    quiet_library_messages()
    StageCLI(stage, args=argv, save_config_kwargs={"overwrite": True}, parser_kwargs=stage_parser_kwargs(stage),
             save_checkpoints=True, trainer_defaults={"default_root_dir": str(Path("runs") / stage)})


def load_stage(run_dir: Path, stage: str, weights: bool = True, kind: str | None = None) -> tuple[Any, Any]:
    """``(model, datamodule)`` of a finished stage, rebuilt from its resolved config.

    With ``weights`` the model gets the stage's final weights; without, it has
    the stage's initial weights for a random-init stage (same ``seed_everything``).
    The model is in eval mode on the CPU. ``kind`` (the stage kind) saves reading the manifest.
    """
    folder = StageDir.of(run_dir, stage)
    kind = kind or read_manifest(Path(run_dir))["stages"][stage]["stage"]
    cfg = folder.read_config()
    cfg["model"]["pretrained_backbone"] = None
    cfg["trainer"] = {"accelerator": "cpu", "devices": 1, "logger": False, "enable_checkpointing": False,
                      "enable_progress_bar": False, "enable_model_summary": False}
    cli = build_stage(kind, cfg)
    model = cli.model
    if weights:
        model.load_state_dict(read_checkpoint(folder.final_checkpoint)["state_dict"])
    return model.eval(), cli.datamodule

"""The base LightningModule every stage shares: backbone, optimiser, schedule, weight hand-off."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn

from mnm.evaluation.knn_probe import RepresentationProbe, score_backbone
from mnm.models.backbones import Backbone, build_backbone
from mnm.models.param_groups import param_groups
from mnm.utils.phases import PhaseTimer, no_phase_timer
from mnm.weights.checkpoints import read_checkpoint
from mnm.weights.formats import load_backbone_weights
from mnm.weights.record import ARCH_KEY, backbone_record, check_backbone_matches

#: learning-rate schedules of :class:`BaseStage` (``lr_schedule``)
LR_SCHEDULES = ("multistep", "cosine")


class ScalarLogging:
    """``log_scalars`` for LightningModules: one call logs a dict under a ``train``/``val``/``test`` prefix."""

    def log_scalars(self, prefix: str, values: dict[str, torch.Tensor | float], **kw: Any) -> None:
        """Log ``prefix/name`` for each value (per step in training, per epoch otherwise)."""
        on_step = prefix == "train"
        self.log_dict(
            {f"{prefix}/{k}": v for k, v in values.items()},
            on_step=on_step,
            on_epoch=not on_step,
            sync_dist=not on_step,
            **kw,
        )



class MetricEvaluation:
    """Validation and test steps scored by ``val_metrics``/``test_metrics``: a stage that uses it writes
    ``_eval_step(batch, metrics, prefix)`` and ``_eval_epoch_end(metrics, prefix)``."""

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self.val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self.test_metrics, "test")


class BaseStage(ScalarLogging, L.LightningModule):
    """Owns the backbone (from the registry), SGD with a step schedule, and weight hand-off.

    ``pretrained_backbone`` loads only the ``backbone.*`` tensors of an earlier
    stage's checkpoint (or a plain torchvision state dict) when the module is
    built; it never restores optimiser or loop state. To resume the *same*
    stage, pass ``ckpt_path`` to ``Trainer.fit`` instead.

    Args:
        backbone: registry name (``alexnet``, ``alexnet_caffe``, ``vgg16_bn``, ``resnet18``, ``resnet50``, ``resnet101``).
        in_chans: 1 for a grayscale network (colorization-pretrained), 3 for RGB.
        backbone_kwargs: backbone options (``bn_affine``, ``init``, ``input_norm``; see :mod:`mnm.models.backbones`),
            stored in the checkpoint so the next stage builds the same parameter set.
        pretrained_backbone: a checkpoint or weights file to initialise the backbone from.
        lr: base learning rate of SGD.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        milestones: optimiser steps at which the learning rate is multiplied by ``gamma``.
        gamma: the factor applied at each milestone.
        lr_schedule: ``multistep`` (``milestones`` and ``gamma``) or ``cosine`` (from ``lr`` to 0 over the
            trainer's steps, per step; ``milestones`` must then be empty).
        head_lr_mult: learning-rate multiplier for everything that is not the backbone.
        bias_lr_mult: learning-rate multiplier for biases (the Caffe release: 2).
        bias_weight_decay: weight decay of biases (release: 0); ``None`` keeps ``weight_decay``.
        norm_weight_decay: weight decay of batch-norm parameters (release VGG: 0); ``None`` keeps it.
        seed: base seed of the stage's own random draws (patches, tiles, permutations).

    A stage kind says what the runner, reports and comparisons need to know about it
    through the class attributes below, so that they never match kind names.
    """

    #: data-module attributes the stage CLI links into the model's arguments
    data_links: tuple[str, ...] = ()
    #: the split a pipeline evaluates the stage on after fitting (``None``: not evaluated)
    evaluation_split: str | None = None
    #: scalars of ``read_evaluation`` that reports show, key -> label; the first is the kind's main metric
    evaluation_metrics: dict[str, str] = {}
    #: training curves reports plot: label -> logged metric (its CSV column)
    curve_metrics: dict[str, str] = {}
    #: the model argument that names a run's variant (a W&B tag, a label in comparisons)
    variant_arg: str | None = None
    #: ``trainer.max_steps`` of a bare ``mnm <stage> fit`` (the stage's schedule in ``conf/stages``)
    default_max_steps: int = -1
    #: wraps the phases of a training step; the speed benchmark sets a timer
    phase_timer: PhaseTimer = staticmethod(no_phase_timer)

    def __init__(
        self,
        backbone: str = "alexnet",
        in_chans: int = 3,
        pretrained_backbone: str | None = None,
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        milestones: list[int] | None = None,
        gamma: float = 0.1,
        head_lr_mult: float = 1.0,
        seed: int = 0,
        backbone_kwargs: dict[str, Any] | None = None,
        bias_lr_mult: float = 1.0,
        bias_weight_decay: float | None = None,
        norm_weight_decay: float | None = None,
        lr_schedule: Literal["multistep", "cosine"] = "multistep",
    ) -> None:
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"model.lr_schedule must be one of {list(LR_SCHEDULES)}, got {lr_schedule!r}")
        if lr_schedule == "cosine" and milestones:
            raise ValueError("model.milestones must be empty with lr_schedule: cosine")
        super().__init__()
        self.save_hyperparameters()
        self.backbone: Backbone = build_backbone(backbone, in_chans=in_chans, **(backbone_kwargs or {}))
        if pretrained_backbone:
            contents = read_checkpoint(pretrained_backbone)
            check_backbone_matches(pretrained_backbone, contents, backbone, in_chans, backbone_kwargs)
            load_backbone_weights(self.backbone, pretrained_backbone, contents)
        self._probe: RepresentationProbe | None = None

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        groups = param_groups(
            self, self.backbone, hp.lr, hp.weight_decay, hp.head_lr_mult,
            hp.bias_lr_mult, hp.bias_weight_decay, hp.norm_weight_decay,
        )  # fmt: skip
        opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
        if hp.get("lr_schedule", "multistep") == "cosine":
            total = max(1, int(self.trainer.estimated_stepping_batches))
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        else:
            sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(hp.milestones or []), gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def step_generator(self, step: int, salt: int = 0, per_rank: bool = True) -> torch.Generator:
        """A CPU generator seeded by ``(seed, step, rank, salt)`` (without the rank: the same on every rank).

        Draws made from it depend only on the step, so a run resumed from a
        checkpoint makes the same draws as an uninterrupted one.
        """
        rank = self.global_rank if per_rank else 0
        seed = self.hparams.seed * 1_000_003 + step * 7_919 + rank * 104_729 + salt * 15_485_863
        return torch.Generator().manual_seed(seed % (2**63))

    def training_generator(self, batch_idx: int, per_rank: bool = True) -> torch.Generator:
        """:meth:`step_generator` of a training batch, keyed by the optimiser step and, under gradient
        accumulation, the batch's place in it (so the batches of one step draw differently)."""
        accumulate = self._trainer.accumulate_grad_batches if self._trainer is not None else 1
        return self.step_generator(self.global_step * accumulate + batch_idx % accumulate, per_rank=per_rank)

    def probe_scores(self) -> dict[str, float]:
        """kNN probe of the backbone (:mod:`mnm.evaluation.knn_probe`) on fixed patch sets of the data module.

        The patch sets are cut on the first call and kept for the rest of the run.
        """
        if self._probe is None:
            self._probe = RepresentationProbe.from_datamodule(self.trainer.datamodule)
        return score_backbone(self._probe, self.backbone)

    def frozen_modules(self) -> list[torch.nn.Module]:
        """Modules the stage keeps in eval mode while it trains, on purpose (a frozen backbone's batch norm)."""
        return []

    def on_train_start(self) -> None:
        """Warn of modules in eval mode at the start of training, as Lightning does, but not of
        :meth:`frozen_modules` (Lightning's warning cannot tell them apart: :mod:`mnm.utils.quiet` filters it)."""
        kept = {id(m) for frozen in self.frozen_modules() for m in frozen.modules()}
        stray = [name for name, m in self.named_modules() if not m.training and id(m) not in kept]
        if stray:
            rank_zero_warn(f"{len(stray)} module(s) in eval mode at the start of training, which may lead to "
                           f"unexpected behaviour: {', '.join(stray[:5])}{' ...' if len(stray) > 5 else ''}")

    @classmethod
    def run_tags(cls, model_args: dict[str, Any]) -> list[str]:
        """W&B tags of a run with these model arguments (its variant, if the kind has one)."""
        value = model_args.get(cls.variant_arg) if cls.variant_arg else None
        return [f"{cls.variant_arg}-{value}"] if value is not None else []

    # -- checkpoint metadata ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        hp = self.hparams
        checkpoint[ARCH_KEY] = backbone_record(hp.backbone, hp.in_chans, hp.backbone_kwargs)


class LabelledPretrainingStage(BaseStage):
    """A stage that pre-trains the backbone on labelled batches (M&M, pixel contrast) before fine-tuning.

    A subclass writes ``_step(batch, generator, prefix)``; its random draws come from
    :meth:`BaseStage.step_generator`, keyed by the step in training and by the batch in validation,
    so a resumed run draws the same. Each validation ends with the kNN probe of the backbone
    (:meth:`BaseStage.probe_scores`) when the subclass's ``knn_probe`` argument is on.
    """

    def _step(self, batch: dict[str, Any], generator: torch.Generator, prefix: str) -> torch.Tensor | None:
        raise NotImplementedError

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        return self._step(batch, self.training_generator(batch_idx), "train")

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._step(batch, self.step_generator(batch_idx, salt=1), "val")

    def on_validation_epoch_end(self) -> None:
        if self.hparams.knn_probe and not self.trainer.sanity_checking:
            self.log_scalars("val", self.probe_scores())

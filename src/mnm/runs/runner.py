"""The pipeline runner: runs a :class:`~mnm.runs.config.Pipeline` stage by stage, handing weights on.

Each stage writes its folder of the run (layout: :mod:`mnm.runs.rundir`) and an entry
of the run's manifest. A stage receives the final weights of its ``init_from``
stage as ``model.pretrained_backbone``. Rerunning skips finished stages whose
configuration hash is unchanged, resumes an interrupted stage from its last
training state, and re-runs a changed stage and every stage after it (the old
outputs are moved to ``<out>/../.superseded-<run>/``).

(About 400 lines: one class whose steps share the run's manifest and settings — the pre-flight check, the stage
configs it composes, running, stopping and recording a stage; resuming is :mod:`mnm.runs.resume`.)
"""

from __future__ import annotations

import copy
import logging
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnm.datamodules.factory import instantiate_datamodule
from mnm.runs.config import Pipeline, StageSpec
from mnm.runs.hashing import config_changes, stage_hashes
from mnm.runs.interrupt import CtrlC
from mnm.runs.resume import earlier_wall_time, resume_checkpoint, resume_point, resuming_message
from mnm.runs.rundir import (
    STEP_CHECKPOINT_FILENAME,
    TIME_FORMAT,
    StageDir,
    merge_csv_logs,
    read_manifest,
    set_aside_csv_log,
    update_manifest,
)
from mnm.runs.runlock import lock_stages
from mnm.runs.stage_cli import build_stage, parse_stage
from mnm.runs.wandb_mode import wandb_offline, wandb_unreachable
from mnm.runs.yaml_layers import ConfigError
from mnm.stages import stage_class
from mnm.utils.errors import error_message
from mnm.utils.files import atomic_write_json, atomic_write_text
from mnm.weights.checkpoints import CheckpointError, read_checkpoint

__all__ = ["PipelineRunner", "evaluate"]

log = logging.getLogger(__name__)


def _grew_from(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Whether ``new`` is the pipeline of ``old`` with stages added (same name, every old stage kept with its
    kind): its run folder stays valid, since each stage's own hash still guards what it reuses."""
    kept = {tuple(stage) for stage in new["stages"]}
    return old["name"] == new["name"] and all(tuple(stage) in kept for stage in old["stages"])


class PipelineRunner:
    """Runs the stages of a :class:`Pipeline`, keeping the run's manifest up to date."""

    def __init__(self, pipeline: Pipeline, overwrite: bool = False, fallback_checkpoint: bool = False,
                 ran_with: dict[str, Any] | None = None) -> None:
        self.p = pipeline
        self.overwrite = overwrite
        self.fallback_checkpoint = fallback_checkpoint
        #: what runs the stages (command's overrides, code, machine), recorded in each stage's manifest entry
        self.ran_with = ran_with
        self._offline: bool | None = None
        self.out = pipeline.out_dir
        self.manifest = read_manifest(self.out)
        self._guard_run_dir()
        self.manifest.setdefault("stages", {})
        self.manifest.update({"pipeline": pipeline.name, "identity": pipeline.identity, "file": str(pipeline.path)})

    def _guard_run_dir(self) -> None:
        old = self.manifest.get("identity")
        if old is None or old == self.p.identity or _grew_from(old, self.p.identity):
            return
        if not self.overwrite:
            raise ConfigError(
                f"run directory {self.out} belongs to another pipeline ({old['name']}: "
                f"{[s[0] for s in old['stages']]}); use a new name/--out, or --overwrite to replace it"
            )
        with lock_stages(self.out, [name for name, _ in old["stages"]]):  # nobody runs what is moved aside
            self._supersede(self.out, "overwrite")
        self.manifest = {}

    def _supersede(self, folder: Path, tag: str) -> Path:
        """Move ``folder`` aside (never deleted) to ``.superseded-<run>/``; returns where it goes."""
        dest = self.out.parent / f".superseded-{self.out.name}" / f"{folder.name}-{tag}-{int(time.time())}"
        if folder.exists() and rank_zero_only.rank == 0:
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(dest))
            log.info("moved %s to %s", folder, dest)
        return dest

    def _save_manifest(self, stage: str) -> None:
        """Write this run's identity and ``stage``'s entry (other stages' entries on disk are kept)."""
        fields = {k: v for k, v in self.manifest.items() if k != "stages"}
        update_manifest(self.out, fields, stage, self.manifest["stages"][stage])

    def _finished(self, spec: StageSpec, h: str) -> bool:
        """Whether the stage finished earlier with the same configuration hash (and kept its final weights)."""
        entry = self.manifest["stages"].get(spec.name, {})
        final = StageDir.of(self.out, spec.name).final_checkpoint
        return entry.get("config_hash") == h and entry.get("status") == "finished" and final.exists()

    def check(self, only: list[str] | None = None) -> None:
        """Check every stage that is to run before the first one starts: its full config (parsed as the
        stage CLI parses it), its data source, explicit weight files, and that its accelerator exists.

        Raises one :class:`ConfigError` that lists every problem found, by stage.
        """
        hashes = stage_hashes(self.p.stages)
        problems = []
        not_run = self.stages_not_run()
        for spec in self.p.stages:
            if spec.final_weights:
                problems += [f"stage {spec.name!r} ({spec.kind}): final_weights: {p}" for p in _weights_problems(spec)]
            if spec.name in not_run or (only and spec.name not in only) or self._finished(spec, hashes[spec.name]):
                continue
            problems += [f"stage {spec.name!r} ({spec.kind}): {p}" for p in self._stage_problems(spec)]
        if len(problems) == 1:
            raise ConfigError(problems[0])
        if problems:
            raise ConfigError(f"{len(problems)} problems, found before any stage started:\n  " + "\n  ".join(problems))

    def stages_not_run(self) -> set[str]:
        """Stages that do not run: those a ``final_weights`` file stands for, and those whose weights only
        such stages would take (``proxy`` before a given ``mix_match``), unless they are evaluated."""
        skip: set[str] = set()
        for spec in reversed(self.p.stages):
            takers = [s.name for s in self.p.stages if s.init_from == spec.name]
            if spec.final_weights or (takers and all(t in skip for t in takers) and not spec.evaluate):
                skip.add(spec.name)
        return skip

    def _given_weights(self, name: str | None) -> str | None:
        """The ``final_weights`` file that stands for stage ``name``, if one does."""
        return next((s.final_weights for s in self.p.stages if s.name == name), None)

    def _final_weights(self, name: str) -> str:
        """Where stage ``name``'s final weights are (or will be): its ``final_weights`` file or its run folder."""
        return self._given_weights(name) or str(StageDir.of(self.out, name).final_checkpoint)

    def _stage_problems(self, spec: StageSpec) -> list[str]:
        upstream = self._final_weights(spec.init_from) if spec.init_from else None
        cfg = self._stage_config(spec, StageDir.of(self.out, spec.name), upstream, "check")
        try:
            parsed = parse_stage(spec.kind, cfg, label=spec.name)
        except Exception as err:  # jsonargparse errors name the key
            return [error_message(err)]
        problems = []
        if spec.evaluate not in (None, "val", "test"):
            problems.append(f"evaluate must be 'val' or 'test', got {spec.evaluate!r}")
        weights = (spec.config.get("model") or {}).get("pretrained_backbone")
        if weights and not Path(weights).is_file():
            problems.append(f"model.pretrained_backbone: file not found: {weights}")
        given = self._given_weights(spec.init_from)
        if given and not weights and Path(given).is_file():
            problems += _handoff_problems(given, parsed.model.as_dict())
        try:
            instantiate_datamodule(parsed.data.as_dict()).check_source()
        except Exception as err:  # bad settings or a missing data root
            problems.append(error_message(err))
        accelerator = str(parsed.trainer.accelerator)
        if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            problems.append(
                f"trainer.accelerator is {accelerator!r} but this machine has no CUDA GPU; add --set trainer=cpu "
                "(the hardware settings of conf/trainer/cpu.yaml) to run on the CPU"
            )
        return problems

    def run(self, only: list[str] | None = None) -> dict[str, Any]:
        """Check every stage, then run (or skip, or resume) them in order; returns the manifest.

        The stages in scope (``only``, or all) stay locked for the whole run (:mod:`mnm.runs.runlock`): another
        command that wants one of them stops at once.
        """
        self.check(only)  # before the locks: a run refused here leaves no trace in --out
        scope = [spec.name for spec in self.p.stages if not only or spec.name in only]
        with lock_stages(self.out, scope) if rank_zero_only.rank == 0 else nullcontext():
            return self._run(only)

    def _run(self, only: list[str] | None) -> dict[str, Any]:
        hashes = stage_hashes(self.p.stages)
        ckpts: dict[str, str] = {}
        not_run = self.stages_not_run()
        for spec in self.p.stages:
            h = hashes[spec.name]
            if spec.final_weights:
                ckpts[spec.name] = self._stand_in(spec, h)
                continue
            if spec.name in not_run:
                print(f"[mnm] stage {spec.name}: not run; the stages that start from it are given as weights files")
                continue
            if only and spec.name not in only:
                entry = self.manifest["stages"].get(spec.name, {})
                if entry.get("status") == "finished":
                    ckpts[spec.name] = entry["checkpoint"]
                continue
            ckpts[spec.name] = self.run_stage(spec, h, ckpts.get(spec.init_from) if spec.init_from else None)
        return self.manifest

    def _stand_in(self, spec: StageSpec, h: str) -> str:
        """Record that ``spec.final_weights`` stands for the stage (it is not run); returns the file."""
        print(f"[mnm] stage {spec.name}: not run; its final weights are {spec.final_weights}")
        self.manifest["stages"][spec.name] = {"stage": spec.kind, "status": "given", "config_hash": h,
                                              "checkpoint": spec.final_weights}
        self._save_manifest(spec.name)
        return str(spec.final_weights)

    def _wandb_offline(self) -> bool:
        """Offline unless set up (:func:`wandb_offline`), and offline with a warning when the server is out of reach
        (asked once per runner) instead of a long wait and a traceback at the first stage."""
        if self._offline is None:
            reason = None if wandb_offline() else wandb_unreachable()
            if reason:
                print(f"[mnm] warning: W&B is set up to log online but its server takes no connection ({reason}); "
                      "logging offline instead (upload later with make wandb-sync)", file=sys.stderr)
            self._offline = wandb_offline() or reason is not None
        return self._offline

    def _stage_config(self, spec: StageSpec, stage: StageDir, pretrained_backbone: str | None, wandb_id: str) -> dict:
        cfg = copy.deepcopy(spec.config)
        model = cfg.setdefault("model", {})
        if pretrained_backbone and not model.get("pretrained_backbone"):
            model["pretrained_backbone"] = pretrained_backbone
        trainer = cfg.setdefault("trainer", {})
        trainer["default_root_dir"] = str(stage.root)
        ck = {"every_n_train_steps": 100, "keep_last": 2, **self.p.checkpoint}
        trainer["callbacks"] = list(trainer.get("callbacks") or []) + [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(stage.checkpoints),
                    "filename": STEP_CHECKPOINT_FILENAME,
                    "monitor": "step",
                    "mode": "max",
                    "save_top_k": ck["keep_last"],
                    "every_n_train_steps": ck["every_n_train_steps"],
                    "save_last": True,
                    # save when due: otherwise a save due at an epoch's last batch waits for the next
                    # validation (every val_check_interval steps, or never)
                    "save_on_train_epoch_end": True,
                },
            }
        ]
        loggers: list[dict[str, Any]] = [
            {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": stage.csv_logger_args()}
        ]
        wb = {"enabled": True, "project": "mnm", **self.p.wandb}
        if wb.pop("enabled"):
            tags = [spec.kind, *stage_class(spec.kind).run_tags(model)]
            loggers.append(
                {
                    "class_path": "mnm.runs.callbacks.WandbLogger",
                    "init_args": {
                        "save_dir": str(stage.root), "project": wb.pop("project"), "group": self.p.name,
                        "job_type": spec.kind, "name": f"{self.p.name}/{spec.name}", "id": wandb_id,
                        "offline": self._wandb_offline(), "tags": tags, "resume": "allow", **wb,
                    },
                }
            )
        trainer["logger"] = loggers
        return cfg

    def run_stage(self, spec: StageSpec, h: str, pretrained_backbone: str | None) -> str:
        """Run one stage unless it is finished with the same hash; returns its final checkpoint."""
        stage = StageDir.of(self.out, spec.name)
        entry = self.manifest["stages"].get(spec.name, {})
        final = stage.final_checkpoint
        if self._finished(spec, h):
            log.info("stage %s: finished with the same config, skipped", spec.name)
            print(f"[mnm] stage {spec.name}: finished earlier with the same config — skipped")
            return str(final)
        if entry and entry.get("config_hash") != h:
            changes = config_changes(stage.config, spec.config)
            reason = "; ".join(changes[:6]) + (f"; {len(changes) - 6} more" if len(changes) > 6 else "")
            if not changes:
                reason = f"its init_from stage {spec.init_from!r} changed" if spec.init_from else "its config changed"
            dest = self._supersede(stage.root, f"config-{entry.get('config_hash', 'unknown')}")
            print(f"[mnm] stage {spec.name}: not the config of its earlier run ({reason}); "
                  f"that run is moved to {dest} and the stage starts anew")
            entry = {}
        resume = resume_checkpoint(stage, entry, self.fallback_checkpoint) if entry else None
        if resume:
            set_aside_csv_log(stage)
        wandb_id = entry.get("wandb_id") or f"{self.p.name}-{spec.name}-{h[:8]}".replace("/", "-")
        cfg = self._stage_config(spec, stage, pretrained_backbone, wandb_id)
        try:
            cli = build_stage(spec.kind, cfg, label=spec.name)
        except Exception as err:  # jsonargparse / instantiation errors
            raise ConfigError(f"stage {spec.name!r} ({spec.kind}): {err}") from err
        stage.root.mkdir(parents=True, exist_ok=True)
        if rank_zero_only.rank == 0:
            atomic_write_text(stage.config, cli.parser.dump(cli.config, skip_none=False))
        earlier = earlier_wall_time(entry, resume)
        resuming = resuming_message(resume, entry) if resume else ""
        entry = {
            "stage": spec.kind, "status": "running", "config_hash": h, "wandb_id": wandb_id,
            "init_from": spec.init_from, "pretrained_backbone": cfg["model"].get("pretrained_backbone"),
            "resumed_from": resume, "started": time.strftime(TIME_FORMAT), "dir": str(stage.root),
            **({"wall_time_s": earlier} if earlier else {}), **({"ran_with": self.ran_with} if self.ran_with else {}),
        }
        self.manifest["stages"][spec.name] = entry
        self._save_manifest(spec.name)
        print(f"[mnm] stage {spec.name} ({spec.kind})" + (f": {resuming}" if resume else ""))
        t0 = time.perf_counter()
        trainer, model = cli.trainer, cli.model
        with CtrlC() as ctrl_c:
            try:
                trainer.fit(model, datamodule=cli.datamodule, ckpt_path=resume)
                if trainer.interrupted:
                    raise KeyboardInterrupt
                trainer.save_checkpoint(final, weights_only=True)  # global rank 0 writes it, then every rank waits
                if not final.is_file():  # the next stage on this node reads it
                    raise RuntimeError(
                        f"stage {spec.name!r}: {final}, written by global rank 0, is missing on node "
                        f"{trainer.node_rank}: a multi-node run needs its run folder (--out) on a file system "
                        "every node shares")
                metrics: dict[str, Any] = {"fit": _scalars(trainer.callback_metrics)}
                if spec.evaluate:
                    metrics["eval"] = evaluate(trainer, model, cli.datamodule, spec.evaluate)
            except BaseException as err:
                stopped = ctrl_c.pressed or isinstance(err, SIGTERMException | KeyboardInterrupt)
                entry["wall_time_s"] = earlier + time.perf_counter() - t0
                if stopped:
                    entry.update(status="interrupted", step=trainer.global_step)
                else:
                    entry.update(status="failed", error=f"{type(err).__name__}: {error_message(err)}",
                                 step=trainer.global_step)
                self._save_manifest(spec.name)
                if stopped:
                    print(f"[mnm] stage {spec.name}: stopped at step {trainer.global_step}; "
                          f"{resume_point(stage)}", file=sys.stderr)
                if ctrl_c.pressed and not isinstance(err, KeyboardInterrupt):
                    raise KeyboardInterrupt from None  # Lightning's SystemExit(1) or SIGTERMException: a Ctrl-C
                raise
            finally:
                _finish_wandb()
        merge_csv_logs(stage)
        metrics.update(stage=spec.name, kind=spec.kind, wall_time_s=earlier + time.perf_counter() - t0,
                       steps=trainer.global_step)
        if rank_zero_only.rank == 0:
            atomic_write_json(stage.metrics, metrics, sort_keys=True, default=str)
        entry.update(status="finished", checkpoint=str(final), finished=time.strftime(TIME_FORMAT),
                     wall_time_s=metrics["wall_time_s"], steps=trainer.global_step)
        if "eval" in metrics:
            key, label = next(iter(type(model).evaluation_metrics.items()))
            entry["score"] = {"metric": label, "value": metrics["eval"][key]}
        self._save_manifest(spec.name)
        return str(final)


def _weights_problems(spec: StageSpec) -> list[str]:
    """Why ``spec.final_weights`` cannot start the next stage (a missing or unreadable file), if it cannot."""
    try:
        read_checkpoint(str(spec.final_weights))
    except (FileNotFoundError, CheckpointError) as err:
        return [str(err)]
    return []


def _handoff_problems(path: str, model: dict[str, Any]) -> list[str]:
    """Why the weights file ``path`` cannot start a stage of these model settings (another backbone,
    ``in_chans``, ``bn_affine`` or ``input_norm``), if it cannot."""
    from mnm.weights.record import check_backbone_matches

    try:
        check_backbone_matches(path, read_checkpoint(path), model["backbone"], model["in_chans"],
                               model.get("backbone_kwargs"))
    except (ValueError, FileNotFoundError) as err:
        return [str(err)]
    return []


def evaluate(trainer: Any, model: Any, datamodule: Any, split: str) -> dict[str, Any]:
    """Validate or test a model; returns what its ``read_evaluation`` makes of the logged metrics.

    Read from the trainer's logged metrics, so it works for every strategy (with
    ``ddp_spawn`` the evaluation runs in other processes).
    """
    if split not in ("val", "test"):
        raise ConfigError(f"evaluate must be 'val' or 'test', got {split!r}")
    run = trainer.validate if split == "val" else trainer.test
    run(model, datamodule=datamodule, verbose=False)
    return model.read_evaluation(trainer.callback_metrics, split)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def _finish_wandb() -> None:
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()

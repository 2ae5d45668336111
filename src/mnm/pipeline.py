"""Stage orchestrator: runs a pipeline YAML stage by stage, handing backbones from checkpoint to checkpoint.

A pipeline file::

    name: demo
    seed: 0
    deterministic: true
    vars: {data_root: data/synthetic}          # ${data_root} is substituted in every string
    defaults: [conf/data/synthetic.yaml, conf/trainer/cpu.yaml]   # merged under every stage
    wandb: {enabled: true, project: mnm}
    stages:
      - {name: mnm, stage: mix-match, config: conf/stages/mix_match_alexnet.yaml, model: {triplets: graph}}
      - {name: finetune, stage: segment, config: conf/stages/segment_alexnet.yaml, evaluate: val}

Config files are LightningCLI configs (top-level ``model``/``data``/``trainer``),
so the same files serve ``mnm <stage> fit -c FILE``. Each stage writes ``<out>/<stage>/`` (checkpoints, resolved ``config.yaml``,
``metrics.json``, CSV and W&B logs) and an entry of ``<out>/manifest.json``.
A stage receives the previous stage's final checkpoint (or the one named by
``init_from``) as ``model.pretrained_backbone``. Rerunning skips finished
stages whose configuration hash is unchanged, resumes an interrupted stage
from its ``last.ckpt``, and re-runs a changed stage and every stage after it
(the old outputs are moved to ``<out>/.superseded/``).
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from mnm.checkpoints import CheckpointError, atomic_write_text, newest_loadable, read_checkpoint
from mnm.stage_cli import STAGES, build_stage

log = logging.getLogger(__name__)

PIPELINE_KEYS = {"extends", "name", "seed", "deterministic", "vars", "defaults", "wandb", "stages", "out_dir", "checkpoint", "report"}
STAGE_KEYS = {"name", "stage", "config", "init_from", "evaluate", "model", "data", "trainer", "seed_everything"}
SECTIONS = ("model", "data", "trainer")


class ConfigError(ValueError):
    """A pipeline or stage configuration that cannot run; the message names the file and key."""


# -- loading -------------------------------------------------------------------------------------------
def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; a ``class_path`` that changes replaces the whole sub-dict."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        old = out.get(key)
        same_class = not (
            isinstance(value, dict) and isinstance(old, dict) and value.get("class_path", old.get("class_path"))
            != old.get("class_path")
        )
        if isinstance(value, dict) and isinstance(old, dict) and same_class:
            out[key] = deep_merge(old, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what}: file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping, not {type(data).__name__}")
    return data


def _resolve_file(ref: str, base_dir: Path) -> Path:
    """A config path as given, relative to the working directory or to the pipeline file's folders."""
    candidates = [Path(ref)] + [d / ref for d in (base_dir, *base_dir.parents)]
    for c in candidates:
        if c.is_file():
            return c
    return Path(ref)


def _load_layers(refs: Any, base_dir: Path, what: str) -> dict[str, Any]:
    """Merge one or more config files/dicts in order."""
    merged: dict[str, Any] = {}
    for ref in refs if isinstance(refs, list) else [refs]:
        layer = ref if isinstance(ref, dict) else _read_yaml(_resolve_file(str(ref), base_dir), what)
        merged = deep_merge(merged, layer)
    return merged


def _substitute(obj: Any, variables: dict[str, Any], where: str) -> Any:
    if isinstance(obj, dict):
        return {_substitute(k, variables, where): _substitute(v, variables, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_substitute(v, variables, where) for v in obj]
    if isinstance(obj, str):

        def repl(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise ConfigError(f"{where}: ${{{m.group(1)}}} is not defined in vars (known: {sorted(variables)})")
            return str(variables[m.group(1)])

        whole = re.fullmatch(r"\$\{(\w+)\}", obj)
        if whole and whole.group(1) in variables:
            return variables[whole.group(1)]
        return re.sub(r"\$\{(\w+)\}", repl, obj)
    return obj


def set_by_path(cfg: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts, descending into ``init_args`` where a key lives there."""
    keys = dotted.split(".")
    node = cfg
    for key in keys[:-1]:
        if key not in node and isinstance(node.get("init_args"), dict):
            node = node["init_args"]
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {key} is not a mapping")
    last = keys[-1]
    if last not in node and isinstance(node.get("init_args"), dict):
        node = node["init_args"]
    node[last] = value


@dataclass
class StageSpec:
    """One stage of a pipeline, its configuration fully merged."""

    name: str
    kind: str
    config: dict[str, Any]
    init_from: str | None
    evaluate: str | None


@dataclass
class Pipeline:
    """A parsed pipeline file."""

    name: str
    path: Path
    seed: int
    stages: list[StageSpec]
    out_dir: Path
    wandb: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    #: free-form settings for ``mnm benchmark`` reports (arms, curves, t-SNE); not used to run stages
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> dict[str, Any]:
        """What makes a run directory belong to this pipeline: its name and stage list."""
        return {"name": self.name, "stages": [[s.name, s.kind] for s in self.stages]}


def read_pipeline_file(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A pipeline file's mapping, with ``extends: base.yaml`` merged in.

    ``vars``, ``defaults`` and the other settings merge; ``stages`` and ``report`` (which names stages) replace.
    """
    raw = _read_yaml(path, "pipeline")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base_path = _resolve_file(str(parent), path.resolve().parent)
    if base_path.resolve() in _seen:
        raise ConfigError(f"{path}: extends {parent} makes a cycle")
    base = read_pipeline_file(base_path, (*_seen, path.resolve()))
    return deep_merge(base, raw) | {key: raw[key] for key in ("stages", "report") if key in raw}


def load_pipeline(path: str | Path, sets: list[str] | None = None, out_dir: str | None = None) -> Pipeline:
    """Parse a pipeline YAML, apply ``--set key=value`` overrides, and merge every stage's config layers."""
    path = Path(path)
    raw = read_pipeline_file(path)
    unknown = set(raw) - PIPELINE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PIPELINE_KEYS)}")
    variables = dict(raw.get("vars") or {})
    base_dir = path.resolve().parent
    defaults = _load_layers(raw.get("defaults") or [], base_dir, f"{path}: defaults")
    stage_overrides: dict[str, list[tuple[str, Any]]] = {}
    for item in sets or []:
        key, eq, text = item.partition("=")
        if not eq:
            raise ConfigError(f"--set {item!r}: expected key=value")
        value = yaml.safe_load(text) if text else None
        if key in variables or "." not in key:
            variables[key] = value
        elif key.startswith("stages."):
            name, _, rest = key[len("stages.") :].partition(".")
            stage_overrides.setdefault(name, []).append((rest, value))
        else:
            set_by_path(defaults, key, value)

    stages: list[StageSpec] = []
    names = set()
    for i, entry in enumerate(raw.get("stages") or []):
        where = f"{path}: stages[{i}]"
        if not isinstance(entry, dict) or "name" not in entry or "stage" not in entry:
            raise ConfigError(f"{where}: each stage needs 'name' and 'stage'")
        unknown = set(entry) - STAGE_KEYS
        if unknown:
            raise ConfigError(f"{where} ({entry['name']}): unknown key(s) {sorted(unknown)}; allowed: {sorted(STAGE_KEYS)}")
        if entry["stage"] not in STAGES:
            raise ConfigError(
                f"{where} ({entry['name']}): unknown stage {entry['stage']!r}; known stages: {', '.join(sorted(STAGES))}"
            )
        if entry["name"] in names:
            raise ConfigError(f"{where}: duplicate stage name {entry['name']!r}")
        init_from = entry.get("init_from", stages[-1].name if stages else None)
        if init_from not in (None, "none") and init_from not in names:
            raise ConfigError(f"{where} ({entry['name']}): init_from {init_from!r} is not an earlier stage")
        names.add(entry["name"])
        config = {k: v for k, v in defaults.items() if k in SECTIONS}
        if "config" in entry:
            config = deep_merge(config, _load_layers(entry["config"], base_dir, f"{where}.config"))
        config = deep_merge(config, {k: entry[k] for k in (*SECTIONS, "seed_everything") if k in entry})
        for key, value in stage_overrides.pop(entry["name"], []):
            set_by_path(config, key, value)
        stages.append(
            StageSpec(
                name=entry["name"],
                kind=entry["stage"],
                config=config,
                init_from=None if init_from == "none" else init_from,
                evaluate=entry.get("evaluate", "val" if entry["stage"] == "segment" else None),
            )
        )
    if stage_overrides:
        raise ConfigError(f"--set names unknown stage(s) {sorted(stage_overrides)}; stages: {sorted(names)}")
    if not stages:
        raise ConfigError(f"{path}: no stages")
    seed = int(raw.get("seed", 0))
    for s in stages:
        s.config = _substitute(s.config, variables, f"{path}: stage {s.name}")
        s.config.setdefault("seed_everything", seed)
        s.config.setdefault("model", {}).setdefault("seed", seed)
        if raw.get("deterministic"):
            s.config.setdefault("trainer", {})["deterministic"] = True
    name = str(raw.get("name") or path.stem)
    return Pipeline(
        name=name,
        path=path,
        seed=seed,
        stages=stages,
        out_dir=Path(out_dir or raw.get("out_dir") or Path("runs") / name),
        wandb=dict(raw.get("wandb") or {}),
        checkpoint=dict(raw.get("checkpoint") or {}),
        report=_substitute(dict(raw.get("report") or {}), variables, f"{path}: report"),
    )


def config_hash(obj: Any) -> str:
    """A stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# -- manifest ------------------------------------------------------------------------------------------
def read_manifest(out_dir: Path) -> dict[str, Any]:
    path = out_dir / "manifest.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{path} is not valid JSON ({err}); move it away to start this run over") from None


@rank_zero_only
def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# -- running -------------------------------------------------------------------------------------------
def wandb_offline() -> bool:
    """W&B stays offline unless the user has set it up (an API key or ``WANDB_MODE=online``)."""
    mode = os.environ.get("WANDB_MODE", "")
    return mode != "online" and not (os.environ.get("WANDB_API_KEY") and mode != "offline")


class PipelineRunner:
    """Runs the stages of a :class:`Pipeline`, keeping ``manifest.json`` up to date."""

    def __init__(self, pipeline: Pipeline, overwrite: bool = False, fallback_checkpoint: bool = False) -> None:
        self.p = pipeline
        self.overwrite = overwrite
        self.fallback_checkpoint = fallback_checkpoint
        self.out = pipeline.out_dir
        self.manifest = read_manifest(self.out)
        self._guard_run_dir()
        self.manifest.setdefault("stages", {})
        self.manifest.update({"pipeline": pipeline.name, "identity": pipeline.identity, "file": str(pipeline.path)})

    def _guard_run_dir(self) -> None:
        old = self.manifest.get("identity")
        if old is None or old == self.p.identity:
            return
        if not self.overwrite:
            raise ConfigError(
                f"run directory {self.out} belongs to another pipeline ({old['name']}: "
                f"{[s[0] for s in old['stages']]}); use a new name/--out, or --overwrite to replace it"
            )
        self._supersede(self.out, "overwrite")
        self.manifest = {}

    def _supersede(self, folder: Path, tag: str) -> None:
        if folder.exists() and rank_zero_only.rank == 0:
            dest = self.out.parent / f".superseded-{self.out.name}" / f"{folder.name}-{tag}-{int(time.time())}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(folder), str(dest))
            log.info("moved %s to %s", folder, dest)

    def _save_manifest(self) -> None:
        write_json(self.out / "manifest.json", self.manifest)

    def run(self, only: list[str] | None = None) -> dict[str, Any]:
        """Run (or skip, or resume) every stage in order; returns the manifest."""
        hashes: dict[str, str] = {}
        ckpts: dict[str, str] = {}
        for spec in self.p.stages:
            upstream = spec.init_from
            h = config_hash(
                {"kind": spec.kind, "config": spec.config, "evaluate": spec.evaluate,
                 "upstream": hashes.get(upstream) if upstream else None}
            )
            hashes[spec.name] = h
            if only and spec.name not in only:
                entry = self.manifest["stages"].get(spec.name, {})
                if entry.get("status") == "finished":
                    ckpts[spec.name] = entry["checkpoint"]
                continue
            ckpts[spec.name] = self.run_stage(spec, h, ckpts.get(upstream) if upstream else None)
        return self.manifest

    def _resume_checkpoint(self, stage_dir: Path) -> str | None:
        folder = stage_dir / "checkpoints"
        last = folder / "last.ckpt"
        if not last.exists():
            return None
        try:
            read_checkpoint(last)
            return str(last)
        except CheckpointError as err:
            if not self.fallback_checkpoint:
                raise CheckpointError(
                    f"{err}. Rerun with --fallback-checkpoint to resume from the newest readable "
                    f"checkpoint in {folder}, or delete {last} to restart the stage"
                ) from None
            others = list(folder.glob("step=*.ckpt"))  # full training states (final.ckpt holds weights only)
            good, _ = newest_loadable(others)
            log.warning("%s is unreadable; falling back to %s", last, good)
            return str(good) if good else None

    def _stage_config(self, spec: StageSpec, stage_dir: Path, pretrained: str | None, wandb_id: str) -> dict:
        cfg = copy.deepcopy(spec.config)
        model = cfg.setdefault("model", {})
        if pretrained and not model.get("pretrained_backbone"):
            model["pretrained_backbone"] = pretrained
        trainer = cfg.setdefault("trainer", {})
        trainer["default_root_dir"] = str(stage_dir)
        ck = {"every_n_train_steps": 100, "keep_last": 2, **self.p.checkpoint}
        trainer["callbacks"] = list(trainer.get("callbacks") or []) + [
            {
                "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                "init_args": {
                    "dirpath": str(stage_dir / "checkpoints"),
                    "filename": "{step:07d}",
                    "monitor": "step",
                    "mode": "max",
                    "save_top_k": ck["keep_last"],
                    "every_n_train_steps": ck["every_n_train_steps"],
                    "save_last": True,
                },
            }
        ]
        loggers: list[dict[str, Any]] = [
            {"class_path": "lightning.pytorch.loggers.CSVLogger",
             "init_args": {"save_dir": str(stage_dir), "name": "csv", "version": ""}}
        ]
        wb = {"enabled": True, "project": "mnm", **self.p.wandb}
        if wb.pop("enabled"):
            tags = [spec.kind] + ([f"triplets-{model['triplets']}"] if "triplets" in model else [])
            loggers.append(
                {
                    "class_path": "lightning.pytorch.loggers.WandbLogger",
                    "init_args": {
                        "save_dir": str(stage_dir), "project": wb.pop("project"), "group": self.p.name,
                        "job_type": spec.kind, "name": f"{self.p.name}/{spec.name}", "id": wandb_id,
                        "offline": wandb_offline(), "tags": tags, "resume": "allow", **wb,
                    },
                }
            )
        trainer["logger"] = loggers
        return cfg

    def run_stage(self, spec: StageSpec, h: str, pretrained: str | None) -> str:
        """Run one stage unless it is finished with the same hash; returns its final checkpoint."""
        stage_dir = self.out / spec.name
        entry = self.manifest["stages"].get(spec.name, {})
        final = stage_dir / "checkpoints" / "final.ckpt"
        if entry.get("config_hash") == h and entry.get("status") == "finished" and final.exists():
            log.info("stage %s: finished with the same config, skipped", spec.name)
            print(f"[mnm] stage {spec.name}: finished earlier with the same config — skipped")
            return str(final)
        if entry and entry.get("config_hash") != h:
            self._supersede(stage_dir, f"config-{entry.get('config_hash', 'unknown')}")
            entry = {}
        resume = self._resume_checkpoint(stage_dir) if entry else None
        if resume:
            set_aside_csv_log(stage_dir)
        wandb_id = entry.get("wandb_id") or f"{self.p.name}-{spec.name}-{h[:8]}".replace("/", "-")
        cfg = self._stage_config(spec, stage_dir, pretrained, wandb_id)
        try:
            cli = build_stage(spec.kind, cfg, label=spec.name)
        except Exception as err:  # jsonargparse / instantiation errors
            raise ConfigError(f"stage {spec.name!r} ({spec.kind}): {err}") from err
        stage_dir.mkdir(parents=True, exist_ok=True)
        if rank_zero_only.rank == 0:
            atomic_write_text(stage_dir / "config.yaml", cli.parser.dump(cli.config, skip_none=False))
        entry = {
            "stage": spec.kind, "status": "running", "config_hash": h, "wandb_id": wandb_id,
            "pretrained_backbone": cfg["model"].get("pretrained_backbone"), "resumed_from": resume,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "dir": str(stage_dir),
        }
        self.manifest["stages"][spec.name] = entry
        self._save_manifest()
        print(f"[mnm] stage {spec.name} ({spec.kind})" + (f": resuming from {resume}" if resume else ""))
        t0 = time.perf_counter()
        trainer, model = cli.trainer, cli.model
        try:
            trainer.fit(model, datamodule=cli.datamodule, ckpt_path=resume)
            if trainer.interrupted:
                raise KeyboardInterrupt
            trainer.save_checkpoint(final, weights_only=True)
            metrics: dict[str, Any] = {"fit": _scalars(trainer.callback_metrics)}
            if spec.evaluate:
                metrics["eval"] = evaluate(trainer, model, cli.datamodule, spec.evaluate)
        except (SIGTERMException, KeyboardInterrupt):
            entry.update(status="interrupted", step=trainer.global_step)
            self._save_manifest()
            raise
        except BaseException as err:
            entry.update(status="failed", error=f"{type(err).__name__}: {err}", step=trainer.global_step)
            self._save_manifest()
            raise
        finally:
            _finish_wandb()
        merge_csv_logs(stage_dir)
        metrics.update(stage=spec.name, kind=spec.kind, wall_time_s=time.perf_counter() - t0,
                       steps=trainer.global_step)
        write_json(stage_dir / "metrics.json", metrics)
        entry.update(status="finished", checkpoint=str(final), finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
                     wall_time_s=metrics["wall_time_s"], steps=trainer.global_step)
        if "eval" in metrics:
            entry["miou"] = metrics["eval"]["miou"]
        self._save_manifest()
        return str(final)


def _csv_parts(stage_dir: Path) -> tuple[Path, list[Path]]:
    folder = stage_dir / "csv"
    return folder / "metrics.csv", sorted(folder.glob("metrics.part*.csv"), key=lambda p: int(p.stem[12:]))


@rank_zero_only
def set_aside_csv_log(stage_dir: Path) -> None:
    """Keep the CSV log of an interrupted attempt (Lightning's CSVLogger would replace it on resume)."""
    current, parts = _csv_parts(stage_dir)
    if current.exists():
        current.rename(current.with_name(f"metrics.part{len(parts)}.csv"))


@rank_zero_only
def merge_csv_logs(stage_dir: Path) -> None:
    """Join the CSV logs of all attempts into ``metrics.csv``; rows of a later attempt replace
    those of earlier ones from the step it resumed at."""
    current, parts = _csv_parts(stage_dir)
    if not parts:
        return
    tables = [read_csv_rows(p) for p in [*parts, current] if p.exists()]
    rows: list[dict[str, str]] = []
    for table in tables:
        steps = [int(r["step"]) for r in table if r.get("step")]
        first = min(steps, default=0)
        rows = [r for r in rows if int(r.get("step") or 0) < first] + table
    fields = list(dict.fromkeys(k for t in tables for r in t for k in r))
    with open(current, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    for p in parts:
        p.unlink()


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV log as dicts."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def evaluate(trainer: Any, model: Any, datamodule: Any, split: str) -> dict[str, Any]:
    """Validate or test a segmentation model; returns mIoU, per-class IoU and pixel accuracy.

    Read from the trainer's logged metrics, so it works for every strategy (with
    ``ddp_spawn`` the evaluation runs in other processes).
    """
    if split not in ("val", "test"):
        raise ConfigError(f"evaluate must be 'val' or 'test', got {split!r}")
    run = trainer.validate if split == "val" else trainer.test
    run(model, datamodule=datamodule, verbose=False)
    logged = trainer.callback_metrics
    names = list(model.hparams.class_names or range(model.hparams.num_classes))
    return {
        "split": split,
        "class_names": [str(n) for n in names],
        "miou": float(logged[f"{split}/miou"]),
        "pixel_acc": float(logged[f"{split}/pixel_acc"]),
        "per_class_iou": [float(logged[f"{split}/iou_{n}"]) for n in names],
    }


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if getattr(v, "numel", lambda: 1)() == 1}


def _finish_wandb() -> None:
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()

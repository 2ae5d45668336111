"""The pipeline config language: files, ``extends``, ``defaults``, ``${vars}`` and ``--set`` overrides.

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
so the same files serve ``mnm <stage> fit -c FILE``. ``init_from`` names the
stage whose final weights start this one (default: the previous stage; ``none``:
random init); the runner passes them as ``model.pretrained_backbone``.
``evaluate`` defaults to the stage class's ``evaluation_split``. ``final_weights: FILE`` (e.g.
``"${proxy_weights}"``, null by default) stands for the stage's final weights: the stage is not run and
the stages that start from it get FILE (an imported model: ``mnm import-caffe``).

The language is small and hand-rolled (see the commit message of its split from
the runner): a ``class_path`` that changes replaces a whole sub-mapping, a whole
``${var}`` string keeps the variable's type, and every error names the file and key.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

from mnm.stages import STAGES, stage_class
from mnm.utils.paths import find_file, repo_relative_paths, where_to_run_hint

PIPELINE_KEYS = {"extends", "name", "seed", "deterministic", "vars", "defaults", "wandb", "stages", "out_dir", "checkpoint", "report",
                 "protocol"}
STAGE_KEYS = {"name", "stage", "config", "init_from", "evaluate", "model", "data", "trainer", "seed_everything",
              "final_weights"}
SECTIONS = ("model", "data", "trainer")
#: pipeline settings a ``--set`` may change (besides vars, config sections and ``stages.<name>.``)
SETTABLE = ("name", "seed", "deterministic", "out_dir", "wandb", "checkpoint")
#: the trainer settings a hardware profile (``--set trainer=cpu`` -> ``conf/trainer/cpu.yaml``) replaces
HARDWARE_KEYS = ("accelerator", "devices", "num_nodes", "strategy", "precision", "sync_batchnorm", "benchmark")
#: the numerics of an experiment: a setting of these outside ``conf/trainer/`` (``conf/release/training.yaml``)
#: survives ``--set trainer=<profile>``
EXPERIMENT_KEYS = ("precision", "sync_batchnorm")


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
        raise ConfigError(f"{what}: file not found: {path}{where_to_run_hint()}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping, not {type(data).__name__}")
    return data


def _resolve_file(ref: str, base_dir: Path) -> Path:
    """A config path as given, relative to the working directory, to the pipeline file's folders or to the
    repository (:func:`mnm.utils.paths.find_file`)."""
    candidates = [Path(ref)] + [d / ref for d in (base_dir, *base_dir.parents)] + [find_file(ref)]
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
    #: a weights file that stands for the stage's final weights: the stage is not run
    final_weights: str | None = None


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
    #: label fractions x seeds for ``mnm protocol`` (:mod:`mnm.experiments.protocol`); not used to run stages
    protocol: dict[str, Any] = field(default_factory=dict)

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


def _did_you_mean(word: str, choices: list[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``choices``, or ``""``; a dotted word is matched by its head."""
    head, dot, rest = word.partition(".")
    close = difflib.get_close_matches(head if dot else word, choices, n=1)
    return f"; did you mean {close[0] + dot + rest!r}?" if close else ""


@dataclass
class Overrides:
    """``--set key=value`` items sorted by what they change; unknown keys raise :class:`ConfigError`."""

    variables: dict[str, Any] = field(default_factory=dict)
    settings: list[tuple[str, Any]] = field(default_factory=list)
    hardware: str | None = None
    sections: list[tuple[str, Any]] = field(default_factory=list)
    stages: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, sets: list[str], variables: dict[str, Any]) -> Overrides:
        """Sort ``key=value`` items; ``variables`` are the pipeline's vars."""
        out = cls()
        for item in sets:
            key, eq, text = item.partition("=")
            if not eq:
                raise ConfigError(f"--set {item!r}: expected key=value")
            value = yaml.safe_load(text) if text else None
            head = key.split(".")[0]
            if key in variables or (head == "vars" and "." in key):
                out.variables[key.removeprefix("vars.")] = value
            elif head in SETTABLE:
                out.settings.append((key, value))
            elif key == "trainer":
                out.hardware = str(value)
            elif head in SECTIONS:
                out.sections.append((key, value))
            elif head == "stages":
                name, _, rest = key[len("stages.") :].partition(".")
                if rest.split(".")[0] not in (*SECTIONS, "seed_everything"):
                    raise ConfigError(f"--set {key}: expected stages.<name>.model|data|trainer.<key> "
                                      "or stages.<name>.seed_everything")
                out.stages.setdefault(name, []).append((rest, value))
            else:
                choices = [*SETTABLE, *SECTIONS, "stages"] if "." in key else [*variables, *SETTABLE]
                raise ConfigError(
                    f"--set {key}: unknown key: not a var of this pipeline (vars: {', '.join(variables) or 'none'}), "
                    f"a pipeline setting ({', '.join(SETTABLE)}), trainer=<profile>, model.*, data.*, trainer.* "
                    f"or stages.<name>.*{_did_you_mean(key, choices)}"
                )
        return out


def _class_path(section: Any) -> str | None:
    return section.get("class_path") if isinstance(section, dict) else None


def hardware_profile(name: str, base_dir: Path) -> dict[str, Any]:
    """The hardware settings (:data:`HARDWARE_KEYS`) of ``conf/trainer/<name>.yaml`` (or of the file ``name``)."""
    ref = name if name.endswith((".yaml", ".yml")) else f"conf/trainer/{name}.yaml"
    path = _resolve_file(ref, base_dir)
    if not path.is_file():
        folder = _resolve_file("conf/trainer", base_dir)
        known = sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []
        raise ConfigError(f"--set trainer={name}: no trainer profile {ref} (profiles: {', '.join(known) or 'none'})")
    trainer = _read_yaml(path, f"--set trainer={name}").get("trainer") or {}
    return {k: v for k, v in trainer.items() if k in HARDWARE_KEYS}


def _is_profile(ref: Any, base_dir: Path) -> bool:
    """Whether a config layer is a hardware profile (a file in ``conf/trainer/``)."""
    return isinstance(ref, str) and _resolve_file(ref, base_dir).resolve().parent == (
        _resolve_file("conf/trainer", base_dir).resolve())


def _experiment_settings(layers: dict[str, Any]) -> dict[str, Any]:
    """The :data:`EXPERIMENT_KEYS` a merged layer sets in its ``trainer`` section."""
    return {k: v for k, v in (layers.get("trainer") or {}).items() if k in EXPERIMENT_KEYS}


def _process_count(trainer: dict[str, Any]) -> int | None:
    """Training processes of a trainer section (devices x num_nodes); None where only the machine knows."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, list):
        count = len(devices)
    elif str(devices).isdigit() and int(devices) > 0:
        count = int(devices)
    elif trainer.get("accelerator") in ("gpu", "cuda") and torch.cuda.is_available():  # -1 / "auto": every GPU
        count = torch.cuda.device_count()
    else:
        return None
    return count * int(trainer.get("num_nodes", 1))


def keep_images_per_update(stage: StageSpec, profile: str) -> None:
    """Divide a stage's ``accumulate_grad_batches`` by its processes so an update sees the pipeline's images.

    A stage that sets ``accumulate_grad_batches`` (``A``, 1 included) fixes its images per update
    as on one device; on ``W`` processes it accumulates ``A / W``, and a ``W`` that does not divide
    ``A`` is refused. A stage that leaves it unset takes a batch per process.
    """
    trainer = stage.config.setdefault("trainer", {})
    if "accumulate_grad_batches" not in trainer:
        return
    batches = int(trainer["accumulate_grad_batches"])
    where = f"--set trainer={profile}: stage {stage.name!r} accumulates {batches} batch(es) per update as on one device"
    processes = _process_count(trainer)
    if processes is None:
        raise ConfigError(f"{where}, and devices: {trainer.get('devices')} cannot be counted on this machine; "
                          "set trainer.devices=N")
    if batches % processes:
        raise ConfigError(
            f"{where}; {processes} processes cannot share them, so each update would see other images than the "
            f"pipeline's (docs/release-fidelity.md); use a device count dividing {batches}, or "
            f"--set stages.{stage.name}.trainer.devices=1")
    trainer["accumulate_grad_batches"] = batches // processes


def load_pipeline(path: str | Path, sets: list[str] | None = None, out_dir: str | None = None) -> Pipeline:
    """Parse a pipeline YAML, apply ``--set key=value`` overrides, and merge every stage's config layers.

    Every ``--set`` changes the run or raises :class:`ConfigError` naming the key: a var
    must be used as ``${var}`` somewhere; ``seed``, ``name``, ``wandb.*``, ... change the
    pipeline's settings; ``trainer=cpu`` replaces every stage's hardware settings with
    ``conf/trainer/cpu.yaml`` (except :data:`EXPERIMENT_KEYS` set outside ``conf/trainer/``, and
    dividing ``accumulate_grad_batches`` by the processes, :func:`keep_images_per_update`); ``model.*``/``data.*``/``trainer.*`` apply on top of every
    stage (except stages whose section is another class than the defaults'); and
    ``stages.<name>.*`` to that stage.
    """
    path = find_file(path)
    raw = read_pipeline_file(path)
    unknown = set(raw) - PIPELINE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PIPELINE_KEYS)}")
    variables = dict(raw.get("vars") or {})
    base_dir = path.resolve().parent
    defaults = _load_layers(raw.get("defaults") or [], base_dir, f"{path}: defaults")
    fixed = _experiment_settings(_load_layers([ref for ref in raw.get("defaults") or [] if not _is_profile(ref, base_dir)],
                                              base_dir, f"{path}: defaults"))
    file_text = [yaml.safe_dump([raw.get("report"), raw.get("out_dir")])]  # what the file uses, before any --set
    overrides = Overrides.parse(list(sets or []), variables)
    variables.update(overrides.variables)
    for key, value in overrides.settings:
        set_by_path(raw, key, value)
    hardware = hardware_profile(overrides.hardware, base_dir) if overrides.hardware else None
    applied = dict.fromkeys((key for key, _ in overrides.sections), False)

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
        own = deep_merge(_load_layers(entry.get("config", []), base_dir, f"{where}.config"),
                         {k: entry[k] for k in (*SECTIONS, "seed_everything") if k in entry})
        config = deep_merge({k: v for k, v in defaults.items() if k in SECTIONS}, own)
        file_text.append(yaml.safe_dump([config, entry.get("final_weights")]))
        if hardware is not None:
            trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k not in HARDWARE_KEYS}
            config["trainer"] = {**trainer, **hardware, **fixed, **_experiment_settings(own)}
        for key, value in overrides.sections:
            section = key.split(".")[0]
            if _class_path(defaults.get(section)) in (None, _class_path(config.get(section))):
                set_by_path(config, key, value)
                applied[key] = True
        for key, value in overrides.stages.pop(entry["name"], []):
            set_by_path(config, key, value)
        stages.append(
            StageSpec(
                name=entry["name"],
                kind=entry["stage"],
                config=config,
                init_from=None if init_from == "none" else init_from,
                evaluate=entry.get("evaluate", stage_class(entry["stage"]).evaluation_split),
                final_weights=entry.get("final_weights"),
            )
        )
    for name in overrides.stages:
        raise ConfigError(f"--set stages.{name}.*: no stage {name!r}; stages: {sorted(names)}"
                          f"{_did_you_mean(name, sorted(names))}")
    if not stages:
        raise ConfigError(f"{path}: no stages")
    for key, used in applied.items():
        if not used:
            raise ConfigError(f"--set {key}: changes no stage (each replaces {key.split('.')[0]} with another class); "
                              f"use --set stages.<name>.{key} (stages: {sorted(names)})")
    used_text = yaml.safe_dump([[[s.config, s.final_weights] for s in stages], raw.get("report"), raw.get("out_dir")])
    for var in overrides.variables:
        if f"${{{var}}}" not in used_text:
            raise ConfigError(f"--set {var}: the pipeline never uses ${{{var}}}, so it would change nothing")
    seed = int(raw.get("seed", 0))
    for s in stages:
        s.config = repo_relative_paths(_substitute(s.config, variables, f"{path}: stage {s.name}"))
        s.final_weights = _substitute(s.final_weights, variables, f"{path}: stage {s.name}")
        if s.final_weights is not None and not isinstance(s.final_weights, str):
            raise ConfigError(f"{path}: stage {s.name}: final_weights must be a file path, got {s.final_weights!r}")
        s.config.setdefault("seed_everything", seed)
        s.config.setdefault("model", {}).setdefault("seed", seed)
        trainer = s.config.setdefault("trainer", {})
        if raw.get("deterministic"):  # CUDA lacks deterministic kernels for cross-entropy, pooling and resize backward
            trainer["deterministic"] = True if trainer.get("accelerator") == "cpu" else "warn"
        if overrides.hardware:
            keep_images_per_update(s, overrides.hardware)
    for var in _read_yaml(path, "pipeline").get("vars") or {}:  # the file's own vars (an inherited one may go unused)
        if not any(f"${{{var}}}" in text for text in file_text):
            raise ConfigError(f"{path}: vars.{var} is declared but no setting uses ${{{var}}}, so it changes nothing")
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
        protocol=dict(raw.get("protocol") or {}),
    )

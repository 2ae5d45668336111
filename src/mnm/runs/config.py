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

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnm.runs.hardware import (
    HARDWARE_KEYS,
    experiment_settings,
    hardware_profile,
    is_profile,
    keep_images_per_update,
)
from mnm.runs.yaml_layers import (
    ConfigError,
    deep_merge,
    load_layers,
    read_yaml,
    resolve_file,
    set_by_path,
    substitute,
)
from mnm.stages import STAGES, stage_class
from mnm.utils.paths import find_file, repo_relative_paths

PIPELINE_KEYS = {"extends", "name", "seed", "deterministic", "vars", "defaults", "wandb", "stages", "out_dir", "checkpoint", "report",
                 "protocol"}
STAGE_KEYS = {"name", "stage", "config", "init_from", "evaluate", "model", "data", "trainer", "seed_everything",
              "final_weights"}
SECTIONS = ("model", "data", "trainer")
#: pipeline settings a ``--set`` may change (besides vars, config sections and ``stages.<name>.``)
SETTABLE = ("name", "seed", "deterministic", "out_dir", "wandb", "checkpoint")


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
    raw = read_yaml(path, "pipeline")
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    base_path = resolve_file(str(parent), path.resolve().parent)
    if base_path.resolve() in _seen:
        raise ConfigError(f"{path}: extends {parent} makes a cycle")
    base = read_pipeline_file(base_path, (*_seen, path.resolve()))
    return deep_merge(base, raw) | {key: raw[key] for key in ("stages", "report") if key in raw}


def _class_path(section: Any) -> str | None:
    return section.get("class_path") if isinstance(section, dict) else None


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


@dataclass
class _Layers:
    """What every stage of a pipeline is merged from and with: the defaults, the settings a hardware profile keeps,
    the profile's own settings and the ``--set`` overrides (with which section overrides changed a stage)."""

    base_dir: Path
    defaults: dict[str, Any]
    fixed: dict[str, Any]
    hardware: dict[str, Any] | None
    overrides: Overrides
    applied: dict[str, bool]


def _stage_spec(entry: Any, where: str, earlier: list[StageSpec], layers: _Layers) -> tuple[StageSpec, str]:
    """One ``stages:`` entry, checked and merged: its config files and sections over the defaults, the hardware
    profile, then the ``--set`` overrides of every stage and of this one; and the text of what the file itself
    sets for it (before the profile and the overrides), where its vars must be used."""
    if not isinstance(entry, dict) or "name" not in entry or "stage" not in entry:
        raise ConfigError(f"{where}: each stage needs 'name' and 'stage'")
    unknown = set(entry) - STAGE_KEYS
    if unknown:
        raise ConfigError(f"{where} ({entry['name']}): unknown key(s) {sorted(unknown)}; allowed: {sorted(STAGE_KEYS)}")
    if entry["stage"] not in STAGES:
        raise ConfigError(
            f"{where} ({entry['name']}): unknown stage {entry['stage']!r}; known stages: {', '.join(sorted(STAGES))}"
        )
    names = [spec.name for spec in earlier]
    if entry["name"] in names:
        raise ConfigError(f"{where}: duplicate stage name {entry['name']!r}")
    init_from = entry.get("init_from", earlier[-1].name if earlier else None)
    if init_from not in (None, "none") and init_from not in names:
        raise ConfigError(f"{where} ({entry['name']}): init_from {init_from!r} is not an earlier stage")
    own = deep_merge(load_layers(entry.get("config", []), layers.base_dir, f"{where}.config"),
                     {k: entry[k] for k in (*SECTIONS, "seed_everything") if k in entry})
    config = deep_merge({k: v for k, v in layers.defaults.items() if k in SECTIONS}, own)
    file_text = yaml.safe_dump([config, entry.get("final_weights")])
    if layers.hardware is not None:
        trainer = {k: v for k, v in (config.get("trainer") or {}).items() if k not in HARDWARE_KEYS}
        config["trainer"] = {**trainer, **layers.hardware, **layers.fixed, **experiment_settings(own)}
    for key, value in layers.overrides.sections:
        section = key.split(".")[0]
        if _class_path(layers.defaults.get(section)) in (None, _class_path(config.get(section))):
            set_by_path(config, key, value)
            layers.applied[key] = True
    for key, value in layers.overrides.stages.pop(entry["name"], []):
        set_by_path(config, key, value)
    spec = StageSpec(name=entry["name"], kind=entry["stage"], config=config,
                     init_from=None if init_from == "none" else init_from,
                     evaluate=entry.get("evaluate", stage_class(entry["stage"]).evaluation_split),
                     final_weights=entry.get("final_weights"))
    return spec, file_text


def _check_stages(layers: _Layers, stages: list[StageSpec], path: Path) -> None:
    """Refuse a ``--set stages.<name>.*`` of a stage that does not exist, and a pipeline without stages."""
    names = [spec.name for spec in stages]
    for name in layers.overrides.stages:
        raise ConfigError(f"--set stages.{name}.*: no stage {name!r}; stages: {sorted(names)}"
                          f"{_did_you_mean(name, sorted(names))}")
    if not stages:
        raise ConfigError(f"{path}: no stages")


def _check_overrides_used(layers: _Layers, stages: list[StageSpec], raw: dict[str, Any]) -> None:
    """Refuse a ``--set`` that changes nothing: a section override no stage takes, a var the pipeline never uses."""
    names = [spec.name for spec in stages]
    for key, used in layers.applied.items():
        if not used:
            raise ConfigError(f"--set {key}: changes no stage (each replaces {key.split('.')[0]} with another class); "
                              f"use --set stages.<name>.{key} (stages: {sorted(names)})")
    used_text = yaml.safe_dump([[[s.config, s.final_weights] for s in stages], raw.get("report"), raw.get("out_dir")])
    for var in layers.overrides.variables:
        if f"${{{var}}}" not in used_text:
            raise ConfigError(f"--set {var}: the pipeline never uses ${{{var}}}, so it would change nothing")


def _check_file_vars_used(path: Path, file_text: list[str]) -> None:
    """Refuse a var the file declares (``vars:``) that none of its own settings uses (an inherited one may go
    unused)."""
    for var in read_yaml(path, "pipeline").get("vars") or {}:
        if not any(f"${{{var}}}" in text for text in file_text):
            raise ConfigError(f"{path}: vars.{var} is declared but no setting uses ${{{var}}}, so it changes nothing")


def _finish_stage(spec: StageSpec, variables: dict[str, Any], raw: dict[str, Any], path: Path,
                  hardware: str | None) -> None:
    """Substitute the vars, find repository paths, set the seeds and determinism, share accumulation over the
    processes of a hardware profile."""
    seed = int(raw.get("seed", 0))
    spec.config = repo_relative_paths(substitute(spec.config, variables, f"{path}: stage {spec.name}"))
    spec.final_weights = substitute(spec.final_weights, variables, f"{path}: stage {spec.name}")
    if spec.final_weights is not None and not isinstance(spec.final_weights, str):
        raise ConfigError(f"{path}: stage {spec.name}: final_weights must be a file path, got {spec.final_weights!r}")
    spec.config.setdefault("seed_everything", seed)
    spec.config.setdefault("model", {}).setdefault("seed", seed)
    trainer = spec.config.setdefault("trainer", {})
    if raw.get("deterministic"):  # CUDA lacks deterministic kernels for cross-entropy, pooling and resize backward
        trainer["deterministic"] = True if trainer.get("accelerator") == "cpu" else "warn"
    if hardware:
        keep_images_per_update(spec, hardware)


def load_pipeline(path: str | Path, sets: list[str] | None = None, out_dir: str | None = None) -> Pipeline:
    """Parse a pipeline YAML, apply ``--set key=value`` overrides, and merge every stage's config layers.

    Every ``--set`` changes the run or raises :class:`ConfigError` naming the key: a var
    must be used as ``${var}`` somewhere; ``seed``, ``name``, ``wandb.*``, ... change the
    pipeline's settings; ``trainer=cpu`` replaces every stage's hardware settings with
    ``conf/trainer/cpu.yaml`` (except :data:`~mnm.runs.hardware.EXPERIMENT_KEYS` set outside ``conf/trainer/``, and
    dividing ``accumulate_grad_batches`` by the processes, :func:`~mnm.runs.hardware.keep_images_per_update`);
    ``model.*``/``data.*``/``trainer.*`` apply on top of every stage (except stages whose section is another class
    than the defaults'); and ``stages.<name>.*`` to that stage.
    """
    path = find_file(path)
    raw = read_pipeline_file(path)
    unknown = set(raw) - PIPELINE_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {sorted(unknown)}; allowed: {sorted(PIPELINE_KEYS)}")
    variables = dict(raw.get("vars") or {})
    base_dir = path.resolve().parent
    refs = raw.get("defaults") or []
    file_text = [yaml.safe_dump([raw.get("report"), raw.get("out_dir")])]  # what the file uses, before any --set
    overrides = Overrides.parse(list(sets or []), variables)
    variables.update(overrides.variables)
    for key, value in overrides.settings:
        set_by_path(raw, key, value)
    layers = _Layers(
        base_dir=base_dir, defaults=load_layers(refs, base_dir, f"{path}: defaults"),
        fixed=experiment_settings(load_layers([r for r in refs if not is_profile(r, base_dir)], base_dir,
                                              f"{path}: defaults")),
        hardware=hardware_profile(overrides.hardware, base_dir) if overrides.hardware else None,
        overrides=overrides, applied=dict.fromkeys((key for key, _ in overrides.sections), False))
    stages: list[StageSpec] = []
    for i, entry in enumerate(raw.get("stages") or []):
        spec, text = _stage_spec(entry, f"{path}: stages[{i}]", stages, layers)
        stages.append(spec)
        file_text.append(text)
    _check_stages(layers, stages, path)
    _check_overrides_used(layers, stages, raw)
    for spec in stages:
        _finish_stage(spec, variables, raw, path, overrides.hardware)
    _check_file_vars_used(path, file_text)
    name = str(raw.get("name") or path.stem)
    return Pipeline(
        name=name,
        path=path,
        seed=int(raw.get("seed", 0)),
        stages=stages,
        out_dir=Path(out_dir or raw.get("out_dir") or Path("runs") / name),
        wandb=dict(raw.get("wandb") or {}),
        checkpoint=dict(raw.get("checkpoint") or {}),
        report=substitute(dict(raw.get("report") or {}), variables, f"{path}: report"),
        protocol=dict(raw.get("protocol") or {}),
    )

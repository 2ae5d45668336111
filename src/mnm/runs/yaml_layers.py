"""YAML config files and their layers: reading (with clear errors), finding a file from the pipeline's folder or
the repository, merging layers (a changed ``class_path`` replaces a whole sub-mapping), ``${var}`` substitution and
dotted keys."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import yaml

from mnm.utils.paths import find_file, where_to_run_hint

__all__ = ["ConfigError", "deep_merge", "load_layers", "read_yaml", "resolve_file", "set_by_path", "substitute"]


class ConfigError(ValueError):
    """A pipeline or stage configuration that cannot run; the message names the file and key."""


# -- merging -------------------------------------------------------------------------------------------
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


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """The mapping of a YAML config file (``what`` names it in errors), parsed once per file version: a protocol
    loads its file for every cell, and each load gets its own copy."""
    if not path.is_file():
        raise ConfigError(f"{what}: file not found: {path}{where_to_run_hint()}")
    try:
        data = _parsed(str(path.resolve()), path.stat().st_mtime_ns)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what}: {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {path} must hold a mapping, not {type(data).__name__}")
    return copy.deepcopy(data)


@functools.lru_cache(maxsize=256)
def _parsed(path: str, mtime_ns: int) -> Any:
    return yaml.safe_load(Path(path).read_text()) or {}


def resolve_file(ref: str, base_dir: Path) -> Path:
    """A config path as given, relative to the working directory, to the pipeline file's folders or to the
    repository (:func:`mnm.utils.paths.find_file`)."""
    candidates = [Path(ref)] + [d / ref for d in (base_dir, *base_dir.parents)] + [find_file(ref)]
    for c in candidates:
        if c.is_file():
            return c
    return Path(ref)


def load_layers(refs: Any, base_dir: Path, what: str) -> dict[str, Any]:
    """Merge one or more config files/dicts in order."""
    merged: dict[str, Any] = {}
    for ref in refs if isinstance(refs, list) else [refs]:
        layer = ref if isinstance(ref, dict) else read_yaml(resolve_file(str(ref), base_dir), what)
        merged = deep_merge(merged, layer)
    return merged


def substitute(obj: Any, variables: dict[str, Any], where: str) -> Any:
    """``obj`` with every ``${var}`` of its strings replaced (a whole ``${var}`` string keeps the variable's type)."""
    if isinstance(obj, dict):
        return {substitute(k, variables, where): substitute(v, variables, where) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, variables, where) for v in obj]
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

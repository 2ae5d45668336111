"""One line for a LightningCLI (jsonargparse) error: the dotted key and what is wrong with it, with a did-you-mean."""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from typing import Any

import lightning as L

from mnm.stages import stage_class

__all__ = ["init_parameters", "parse_error_line"]

_PARSER_KEY = re.compile(r'Parser key "([\w.]+)":')
_CLASS_PATH = re.compile(r"Problem with given class_path '([\w.]+)'")
_UNKNOWN = re.compile(r"Option '([\w.]+)' is not accepted|Group '(\w+)' does not accept option '([\w.]+)'")
_EXPECTED = re.compile(r"Expected a <class '(\w+)'>\. Got value: (.*)")


def init_parameters(cls: type) -> list[str]:
    """The keyword arguments ``cls`` takes, its bases' included (for ``**kwargs`` handed up)."""
    names = [p.name for klass in cls.__mro__ if "__init__" in vars(klass)
             for p in inspect.signature(klass.__init__).parameters.values()
             if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return list(dict.fromkeys(names))


def _section_class(stage: str, section: str, class_path: str | None) -> type | None:
    """The class a config section configures: the stage's model, the trainer or a ``class_path``."""
    if class_path:
        module, _, name = class_path.rpartition(".")
        return getattr(importlib.import_module(module), name, None)
    return {"model": stage_class(stage), "trainer": L.Trainer}.get(section)


def parse_error_line(message: str, stage: str, config: dict[str, Any]) -> str:
    """One line for a LightningCLI (jsonargparse) error: the dotted key and what is wrong with it, with a
    did-you-mean for an unknown key; the message unchanged when it has no form known here."""
    keys = _PARSER_KEY.findall(message)
    class_path = next(iter(_CLASS_PATH.findall(message)), None)
    unknown, expected = _UNKNOWN.search(message), _EXPECTED.search(message)
    if unknown:
        section, option = (keys[0] if keys else None, unknown.group(1)) if unknown.group(1) else unknown.groups()[1:]
        cls = _section_class(stage, section or "", class_path)
        close = difflib.get_close_matches(option, init_parameters(cls), n=1) if cls else []
        hint = f"; did you mean {section}.{close[0]}?" if close else ""
        owner = f" of {cls.__name__}" if cls else ""
        return f"{section}.{option}: not a setting{owner}{hint}"
    if expected and keys:
        kind = expected.group(1)
        article = "an" if kind[0] in "aeiou" else "a"
        return f"{'.'.join(keys)}: expected {article} {kind}, got {expected.group(2).strip()}"
    return message

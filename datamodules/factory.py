"""A data module from a config's ``data`` section (``class_path`` + ``init_args``)."""

from __future__ import annotations

import importlib
from typing import Any

import lightning as L
from lightning.pytorch.cli import instantiate_class

__all__ = ["instantiate_datamodule"]


def instantiate_datamodule(data: dict[str, Any]) -> L.LightningDataModule:
    """A data module from a config's ``data`` section (``class_path`` + ``init_args``); an init argument that is
    itself a ``class_path`` mapping (a wrapped source data module) is instantiated first."""
    importlib.import_module(data["class_path"].rpartition(".")[0])
    init_args = {
        key: instantiate_datamodule(value) if isinstance(value, dict) and "class_path" in value else value
        for key, value in (data.get("init_args") or {}).items()
    }
    return instantiate_class((), {**data, "init_args": init_args})

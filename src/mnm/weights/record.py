"""The backbone record: what every mnm checkpoint says about the backbone it holds (``mnm_backbone``: name,
``in_chans`` and the options that change its parameters or inputs), written when a checkpoint is saved, checked when
weights start another stage, and read to rebuild the backbone from the file alone."""

from __future__ import annotations

from typing import Any

from mnm.models.backbones import BACKBONE_OPTIONS, Backbone, build_backbone
from mnm.weights.checkpoints import read_checkpoint
from mnm.weights.formats import load_backbone_weights

__all__ = ["ARCH_KEY", "backbone_from_checkpoint", "backbone_record", "check_backbone_matches"]

#: the checkpoint key of the backbone record
ARCH_KEY = "mnm_backbone"


def backbone_record(name: str, in_chans: int, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record of a backbone built as ``build_backbone(name, in_chans, **options)``."""
    return {"name": name, "in_chans": in_chans, **(options or {})}


def check_backbone_matches(
    path: str, contents: dict[str, Any], name: str, in_chans: int, backbone_kwargs: dict[str, Any] | None = None
) -> None:
    """Refuse a checkpoint written for another backbone architecture, naming both.

    Compares the name, ``in_chans``, ``bn_affine`` (the options that change the parameter set; a
    checkpoint without it had affine batch norm) and ``input_norm`` (weights expect the input
    scaling they were trained on; a checkpoint without it had ``imagenet``). Only mnm checkpoints
    carry the architecture; other weight files are checked key by key when they are loaded.
    """
    meta = contents.get(ARCH_KEY)
    if not meta:
        return
    kw = backbone_kwargs or {}
    ours = {"backbone": name, "in_chans": in_chans, "bn_affine": kw.get("bn_affine", True),
            "input_norm": kw.get("input_norm", "imagenet")}  # fmt: skip
    theirs = {"backbone": meta.get("name"), "in_chans": int(meta.get("in_chans", 3)),
              "bn_affine": meta.get("bn_affine", True), "input_norm": meta.get("input_norm", "imagenet")}  # fmt: skip
    if ours != theirs:
        raise ValueError(
            f"pretrained_backbone {path} was trained with {_settings(theirs)}, "
            f"but this stage is configured with {_settings(ours)}"
        )


def _settings(values: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in values.items())


def backbone_from_checkpoint(path: str, name: str | None = None, in_chans: int | None = None) -> Backbone:
    """The backbone stored in ``path``, rebuilt from its record (``name``/``in_chans`` for a file without one)."""
    contents = read_checkpoint(path)
    arch = contents.get(ARCH_KEY) or {}
    name = name or arch.get("name")
    if name is None:
        raise ValueError(f"{path} does not record its backbone; pass --backbone NAME (and --in-chans)")
    options = {k: arch[k] for k in BACKBONE_OPTIONS if k in arch}  # bn_affine, input_norm, ...
    backbone = build_backbone(name, in_chans=in_chans or int(arch.get("in_chans", 3)), **options)
    load_backbone_weights(backbone, path, contents)
    return backbone

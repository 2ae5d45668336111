"""Backbone weights from files of other formats: torchvision state dicts, self-supervised checkpoints (MoCo, SimCLR,
solo-learn, MMSelfSup) and mnm stage checkpoints, mapped key by key onto an mnm backbone."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from torch import Tensor

from mnm.models.backbones import Backbone
from mnm.weights.checkpoints import read_checkpoint

__all__ = ["STATE_DICT_PREFIXES", "LoadReport", "load_backbone_weights"]

# torchvision key -> mnm key, per architecture; ``None`` drops the key (classifier / fc).
_ALEXNET_CONV_INDEX = {0: 0, 3: 4, 6: 8, 8: 11, 10: 14}  # torchvision features.i -> body.j


def _alexnet_key(key: str) -> str | None:
    if key.startswith("classifier."):
        return None
    m = re.fullmatch(r"features\.(\d+)\.(.+)", key)
    if m and int(m[1]) in _ALEXNET_CONV_INDEX:
        return f"body.{_ALEXNET_CONV_INDEX[int(m[1])]}.{m[2]}"
    return key


def _vgg_key(key: str) -> str | None:
    if key.startswith("classifier."):
        return None
    return "body." + key.removeprefix("features.") if key.startswith("features.") else key


def _resnet_key(key: str) -> str | None:
    return None if key.startswith("fc.") else key


_TORCHVISION_KEYMAPS: dict[str, Callable[[str], str | None]] = {
    "alexnet": _alexnet_key,
    "vgg16_bn": _vgg_key,
    "resnet18": _resnet_key,
    "resnet50": _resnet_key,
    "resnet101": _resnet_key,
}


#: key prefixes of wrapped or self-supervised state dicts, tried in this order; the first one some key
#: starts with is stripped and keys without it are ignored: an mnm stage checkpoint (``backbone.``),
#: MoCo's query encoder (``module.encoder_q.``), DataParallel (``module.``), SimCLR-style ``encoder.``
#: and solo-learn / MMSelfSup ``backbone.``
STATE_DICT_PREFIXES = (
    "module.encoder_q.", "encoder_q.", "module.encoder.", "module.backbone.", "module.", "encoder.", "backbone.",
)  # fmt: skip
_MAX_NAMED_KEYS = 12  # keys named in an error message; the rest are counted


class LoadReport(NamedTuple):
    """What :func:`load_backbone_weights` did."""

    loaded: int  # tensors copied into the backbone
    ignored: tuple[str, ...]  # file keys not used (classifier/fc/projection head, other prefixes, unknown)
    source: str  # "mnm-checkpoint", "state-dict", or the prefix stripped from the file's keys


def _named(keys: Sequence[str]) -> str:
    shown = list(keys[:_MAX_NAMED_KEYS])
    return str(shown) + (f" and {len(keys) - len(shown)} more" if len(keys) > len(shown) else "")


def _state_dict_of(obj: object, path: Path) -> Mapping[str, Tensor]:
    """The tensors of a file: its ``state_dict`` entry (Lightning, MoCo, MMSelfSup) or the file itself."""
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if isinstance(obj, Mapping) and obj and all(isinstance(v, Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"{path}: expected a state dict or a checkpoint with a 'state_dict', got {type(obj).__name__}")


def load_backbone_weights(backbone: Backbone, path: str | Path, contents: Mapping | None = None) -> LoadReport:
    """Load backbone weights from a local file into ``backbone`` (in place).

    Accepts an mnm stage checkpoint (``{'state_dict': {'backbone.<key>': tensor}}``), a plain
    torchvision state dict of the same architecture, and self-supervised checkpoints whose keys carry
    one of :data:`STATE_DICT_PREFIXES` (MoCo ``module.encoder_q.``, ``module.``, SimCLR ``encoder.``,
    ``backbone.``), bare or under ``state_dict``. The first prefix that some key has is stripped and
    the keys without it (MoCo's key encoder and queue) are ignored; torchvision key names are mapped
    onto this backbone's, and classifier/``fc`` keys (MoCo v2's projection MLP) are ignored. Files
    are read with ``weights_only=True``. Raises ``FileNotFoundError`` for a missing file and
    ``ValueError`` for an unsafe, corrupt or incompatible file, naming the missing backbone keys,
    the file keys that matched none, and shape mismatches.
    ``contents`` is the file already read by :func:`mnm.weights.checkpoints.read_checkpoint`, if the caller has it.
    """
    path = Path(path)
    obj = read_checkpoint(path) if contents is None else contents
    state = _state_dict_of(obj, path)
    prefix = next((p for p in STATE_DICT_PREFIXES if any(k.startswith(p) for k in state)), "")
    source = prefix or "state-dict"
    if prefix == "backbone." and isinstance(obj.get("state_dict"), Mapping):
        source = "mnm-checkpoint"
    keymap = _TORCHVISION_KEYMAPS.get(backbone.name, lambda key: key)  # no torchvision twin: own keys
    weights: dict[str, Tensor] = {}
    ignored = [k for k in state if not k.startswith(prefix)]
    for key, value in state.items():
        if key.startswith(prefix):
            mapped = keymap(key[len(prefix) :])
            if mapped is None:
                ignored.append(key)
            else:
                weights[mapped] = value

    own = backbone.state_dict()
    optional = {k for k in own if k.endswith("num_batches_tracked")}
    missing = sorted(k for k in own if k not in weights and k not in optional)
    mismatched = sorted(
        f"{k} (file {tuple(weights[k].shape)} vs backbone {tuple(v.shape)})"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    )
    unmatched = sorted(prefix + k for k in weights if k not in own)
    if missing or mismatched:
        raise ValueError(
            f"{path} does not fit backbone {backbone.name!r} (in_chans={backbone.in_chans}; "
            f"key prefix stripped: {prefix or 'none'}): missing keys {_named(missing)}; "
            f"shape mismatches {_named(mismatched)}; file keys that match none {_named(unmatched)}"
        )
    ignored += unmatched
    usable = {k: v for k, v in weights.items() if k in own}
    backbone.load_state_dict(usable, strict=False)
    return LoadReport(loaded=len(usable), ignored=tuple(ignored), source=source)

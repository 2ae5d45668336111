"""Caffe layers (:mod:`mnm.weights.caffe_proto`) mapped onto an mnm backbone, as a checkpoint's contents.

:func:`map_onto_backbone` maps the layers onto a plain backbone (:data:`CAFFE_BACKBONES`) by name, with
shape checks: each conv of the backbone takes the file's layer of the same name (``conv3``, ``conv4_2``;
the jigsaw release's ``conv3_s1`` too), grouped convolutions included (Caffe and torch both store
``out × in/groups × kh × kw``). The batch norm after a conv is found by the net's own wiring (the first
``BatchNorm`` or ``BN`` layer reading the conv's output), so the release's ``batch_conv3`` and ResNet-style
``bn_conv3`` names both work: a ``BatchNorm`` (mean, variance and the scale factor they are divided by)
followed by a ``Scale`` (gamma, beta) gives affine batch norm, a ``BatchNorm`` alone statistics-only batch
norm (``bn_affine: false``), and the M&M release's own ``BN`` layer (slope, bias, mean, variance) affine
batch norm. Weighted layers after the backbone's last conv (fc6, fc7, a proxy's classifier) are kept under
:data:`EXTRA_KEY`, fc6/fc7 ``InnerProduct`` weights reshaped into the convolution the FCN head uses; no
stage loads them, so they come back as warnings. Everything else (a backbone conv the file lacks, a
weighted layer between the backbone's convs that maps to nothing, a shape that does not fit) is listed in
one :class:`~mnm.weights.caffe_proto.CaffeImportError`.

Conv1 keeps Caffe's channel order: ``input_norm: caffe_bgr`` (:data:`mnm.models.backbones.INPUT_NORMS`) feeds the
network BGR in 0..255 minus the release's mean (gray / 255 - 0.4488 for a one-channel network), the input
the Caffe nets were trained on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from mnm.models.backbones import Backbone, PlainBackbone, build_backbone
from mnm.weights.caffe_proto import CaffeImportError, CaffeLayer

__all__ = ["CAFFE_BACKBONES", "EXTRA_KEY", "ImportResult", "map_onto_backbone"]

#: the checkpoint key that keeps the file's weighted layers after the backbone (fc6, fc7, a classifier):
#: ``{layer name: [tensor, ...]}`` in Caffe's blob order, fc6/fc7 InnerProduct weights as convolutions
EXTRA_KEY = "caffe_layers"


#: backbones a Caffe net maps onto, and how their convs are named: ``conv1``.. in order (AlexNet) or
#: ``conv<block>_<i>`` (VGG)
CAFFE_BACKBONES = {"alexnet_caffe": "sequential", "alexnet": "sequential", "vgg16_bn": "blocks"}
#: suffixes a conv's name may carry besides the plain one (Noroozi & Favaro's jigsaw tower ``conv1_s1``)
_CONV_SUFFIXES = ("", "_s1")
_WEIGHTED = ("Convolution", "InnerProduct", "Deconvolution")
_BATCH_NORMS = ("BatchNorm", "BN")
_MAX_NAMED = 12


@dataclass
class ImportResult:
    """A backbone with the file's weights, what the checkpoint records, and what was not loaded."""

    backbone: Backbone
    #: the ``mnm_backbone`` entry: name, in_chans, bn_affine, input_norm
    arch: dict[str, Any]
    #: weighted layers after the backbone (:data:`EXTRA_KEY`)
    extra: dict[str, list[torch.Tensor]]
    #: backbone conv -> the file's layers that filled it (conv, batch norm, scale)
    mapping: dict[str, list[str]]
    warnings: list[str]


def _named(items: list[str]) -> str:
    shown = items[:_MAX_NAMED]
    return ", ".join(shown) + (f" and {len(items) - len(shown)} more" if len(items) > len(shown) else "")


def _conv_labels(backbone: PlainBackbone, scheme: str) -> list[str]:
    labels, block, index = [], 1, 0
    for m in backbone.body:
        if isinstance(m, nn.Conv2d):
            index += 1
            labels.append(f"conv{len(labels) + 1}" if scheme == "sequential" else f"conv{block}_{index}")
        elif isinstance(m, nn.MaxPool2d):
            block, index = block + 1, 0
    return labels


def _shape(shape: tuple[int, ...]) -> str:
    return "×".join(map(str, shape)) or "scalar"


class _StateBuilder:
    """Fills a backbone state dict from blobs, collecting shape mismatches."""

    def __init__(self, template: dict[str, torch.Tensor]) -> None:
        self.state = {k: v.clone() for k, v in template.items()}
        self.problems: list[str] = []

    def put(self, key: str, values: np.ndarray, layer: str) -> None:
        want = tuple(self.state[key].shape)
        squeeze = tuple(d for d in values.shape if d != 1)
        if values.shape != want and squeeze != tuple(d for d in want if d != 1):
            self.problems.append(f"{layer} ({key}: file {_shape(values.shape)} vs backbone {_shape(want)})")
            return
        self.state[key] = torch.from_numpy(values.reshape(want).astype(np.float32))


def _find_conv(layers: list[CaffeLayer], label: str) -> int | None:
    names = {label + suffix for suffix in _CONV_SUFFIXES}
    return next((i for i, layer in enumerate(layers) if layer.name in names and layer.type == "Convolution"), None)


def _norm_layers(layers: list[CaffeLayer], conv: int) -> tuple[int | None, int | None]:
    """The batch norm (and the ``Scale`` after a ``BatchNorm``) that read conv ``conv``'s output, by the
    net's wiring (layers without bottoms match by order), up to the next weighted layer on that path."""
    chain, norm, scale = set(layers[conv].tops), None, None
    for i in range(conv + 1, len(layers)):
        layer = layers[i]
        reads = not layer.bottoms or layer.bottoms[0] in chain
        if layer.type in _WEIGHTED and reads:
            break  # the next conv on this path: any batch norm of this one came before it
        if norm is None and layer.type in _BATCH_NORMS and reads:
            norm, chain = i, chain | set(layer.tops)
        elif norm is not None and scale is None and layers[norm].type == "BatchNorm" and layer.type == "Scale" and reads:
            scale = i
    return norm, scale


def _bn_values(norm: CaffeLayer, scale: CaffeLayer | None) -> tuple[dict[str, np.ndarray], str | None]:
    """``running_mean``/``running_var`` (and ``weight``/``bias`` when affine) of a batch norm, or a problem."""
    blobs = [b.data for b in norm.blobs]
    if norm.type == "BN":  # the M&M release's own layer: slope, bias, running mean, running variance
        if len(blobs) != 4:
            return {}, f"{norm.name} (BN with {len(blobs)} blobs; expected slope, bias, mean, variance)"
        return {"weight": blobs[0], "bias": blobs[1], "running_mean": blobs[2], "running_var": blobs[3]}, None
    if len(blobs) != 3 or blobs[2].size != 1:
        return {}, f"{norm.name} (BatchNorm with {len(blobs)} blobs; expected mean, variance, scale factor)"
    factor = blobs[2].ravel()[0]
    inverse = np.float32(0 if factor == 0 else 1 / factor)  # Caffe's rule (in float32): a zero factor gives zero
    values = {"running_mean": blobs[0] * inverse, "running_var": blobs[1] * inverse}
    if scale is not None:
        gamma = scale.blobs[0].data if scale.blobs else None
        if gamma is None:
            return {}, f"{scale.name} (Scale without blobs)"
        values["weight"] = gamma
        values["bias"] = scale.blobs[1].data if len(scale.blobs) > 1 else np.zeros_like(gamma)
    return values, None


def _same_blobs(a: CaffeLayer, b: CaffeLayer) -> bool:
    """Whether two layers hold equal blobs (weights shared between siamese towers)."""
    return len(a.blobs) == len(b.blobs) and all(
        x.shape == y.shape and np.array_equal(x.data, y.data) for x, y in zip(a.blobs, b.blobs, strict=True)
    )


def _as_convolution(layer: CaffeLayer, in_channels: int | None) -> list[torch.Tensor]:
    """A layer's blobs as tensors; an ``InnerProduct`` weight reshaped into the convolution that replaces it:
    k×k over ``in_channels``-channel maps for the one that reads pool5 (fc6), 1×1 for the others (fc7)."""
    tensors = [torch.from_numpy(b.data) for b in layer.blobs]  # each blob's array is its own copy
    if layer.type == "InnerProduct" and tensors and tensors[0].numel():
        weight = tensors[0].reshape(-1, tensors[0].shape[-1])
        out, fan_in = weight.shape
        side = round((fan_in / in_channels) ** 0.5) if in_channels else 0
        square = side > 0 and side * side * in_channels == fan_in
        tensors[0] = weight.reshape((out, in_channels, side, side) if square else (out, fan_in, 1, 1))
    return tensors


@dataclass
class _Mapped:
    """What mapping the convs onto a backbone gave: its state, the file's layers used, by conv, and what went wrong."""

    builder: _StateBuilder
    used: set[int] = field(default_factory=set)
    mapping: dict[str, list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _norm_problems(layers: list[CaffeLayer], convs: dict[str, int | None],
                   norms: dict[str, tuple[int | None, int | None]], bn_affine: bool | None,
                   identity_bn: bool) -> tuple[list[str], bool]:
    """What the file's batch norms do not fit (missing convs, convs without one, a mix of affine and statistics-only,
    a contradicting ``bn_affine``), and the ``bn_affine`` they give."""
    problems: list[str] = []
    missing = [label for label, i in convs.items() if i is None]
    if missing:
        problems.append(f"missing layers {_named(missing)} (Convolution layers of these names, or with a suffix "
                        f"{'/'.join(s for s in _CONV_SUFFIXES if s)})")
    no_norm = [layers[convs[label]].name for label, (norm, _) in norms.items() if norm is None]
    if no_norm and not identity_bn:
        problems.append(f"no BatchNorm or BN layer after {_named(no_norm)} (the backbone has batch norm after "
                        "every conv; --identity-bn gives these an identity one)")
    kinds = {label: layers[norm].type == "BN" or scale is not None for label, (norm, scale) in norms.items()
             if norm is not None}  # fmt: skip
    if len(set(kinds.values())) > 1:
        plain = [label for label, affine in kinds.items() if not affine]
        problems.append(f"a BatchNorm without a Scale layer after {_named(plain)} but with one after the other convs")
    if bn_affine is False and any(kinds.values()):
        problems.append("bn_affine false, but the file's batch norms scale and shift (BN, or BatchNorm with Scale)")
    return problems, any(kinds.values()) if bn_affine is None else bn_affine


def _map_convs(layers: list[CaffeLayer], labels: list[str], convs: dict[str, int | None],
               norms: dict[str, tuple[int | None, int | None]], backbone: PlainBackbone) -> _Mapped:
    """Each backbone conv (and the batch norm after it) from the file's layers, with shape checks."""
    body_convs = [j for j, m in enumerate(backbone.body) if isinstance(m, nn.Conv2d)]
    out = _Mapped(_StateBuilder(backbone.state_dict()))
    for label, j in zip(labels, body_convs, strict=True):
        i = convs[label]
        if i is None:
            continue
        conv, module = layers[i], backbone.body[j]
        out.used.add(i)
        out.mapping[label] = [conv.name]
        if not conv.blobs:
            out.problems.append(f"{conv.name} (no weights)")
            continue
        out.builder.put(f"body.{j}.weight", conv.blobs[0].data, conv.name)
        bias = conv.blobs[1].data if len(conv.blobs) > 1 else np.zeros(module.out_channels, np.float32)
        out.builder.put(f"body.{j}.bias", bias, conv.name)
        stored = (conv.conv.get("stride", 1), conv.conv.get("pad", 0))
        if conv.conv and stored != (module.stride[0], module.padding[0]):
            out.warnings.append(f"{conv.name}: stride {stored[0]} pad {stored[1]} in the file, "
                                f"stride {module.stride[0]} pad {module.padding[0]} in the backbone")
        norm, scale = norms[label]
        if norm is None:
            eps = backbone.body[j + 1].eps
            out.builder.put(f"body.{j + 1}.running_var", np.full(module.out_channels, 1 - eps, np.float32), conv.name)
            continue  # identity_bn: running mean 0, scale 1 and shift 0 as built
        values, problem = _bn_values(layers[norm], layers[scale] if scale is not None else None)
        out.used |= {norm} | ({scale} if scale is not None else set())
        out.mapping[label] += [layers[k].name for k in (norm, scale) if k is not None]
        if problem:
            out.problems.append(problem)
        for key, value in values.items():
            if f"body.{j + 1}.{key}" in out.builder.state:
                out.builder.put(f"body.{j + 1}.{key}", value, layers[norm].name)
    out.problems += out.builder.problems
    return out


def _unmapped_inside(layers: list[CaffeLayer], mapped: _Mapped) -> tuple[list[str], int]:
    """Weighted layers before the last mapped one that map to nothing, and the index of that last mapped layer.

    A layer sharing a mapped one's weights (a siamese tower) counts as used, with a warning.
    """
    last = max(mapped.used, default=-1)
    shared = {i for i, layer in enumerate(layers) if layer.blobs and i not in mapped.used
              and any(_same_blobs(layer, layers[k]) for k in mapped.used)}  # fmt: skip
    if shared:
        mapped.warnings.append(f"layers sharing the weights of mapped ones (siamese towers), loaded once: "
                               f"{_named([layers[i].name for i in sorted(shared)])}")
    mapped.used |= shared
    inside = [f"{layer.name} ({layer.type})" for i, layer in enumerate(layers)
              if layer.blobs and i not in mapped.used and i < last]
    return inside, last


def map_onto_backbone(
    layers: list[CaffeLayer],
    name: str,
    input_norm: str = "caffe_bgr",
    bn_affine: bool | None = None,
    identity_bn: bool = False,
) -> ImportResult:
    """Map Caffe layers onto backbone ``name`` (one of :data:`CAFFE_BACKBONES`) by name, with shape checks.

    ``in_chans`` comes from the file's conv1 (1: a gray-input colorization net). ``bn_affine`` defaults to
    the file's batch norms (a ``Scale`` after each ``BatchNorm``, or the release's ``BN``: affine; a
    ``BatchNorm`` alone: statistics only; none: statistics only); ``True`` also takes statistics-only
    batch norms (as scale 1, shift 0). ``identity_bn`` gives a conv that has no batch norm in the file an
    identity one (mean 0, variance 1 - eps: exact at evaluation; training normalises by batch statistics).
    Raises :class:`CaffeImportError` listing every missing, mis-shaped or unmapped layer.
    """
    if name not in CAFFE_BACKBONES:
        raise CaffeImportError(f"backbone {name!r} cannot take Caffe weights; choose one of {sorted(CAFFE_BACKBONES)}")
    labels = _conv_labels(build_backbone(name), CAFFE_BACKBONES[name])  # the names do not depend on options
    convs = {label: _find_conv(layers, label) for label in labels}
    norms = {label: _norm_layers(layers, i) for label, i in convs.items() if i is not None}
    first = convs[labels[0]]
    in_chans = layers[first].blobs[0].shape[1] if first is not None and layers[first].blobs else 3
    in_chans = in_chans if in_chans in (1, 3) else 3  # another width shows up as conv1's shape mismatch
    problems, bn_affine = _norm_problems(layers, convs, norms, bn_affine, identity_bn)
    backbone = build_backbone(name, in_chans=in_chans, bn_affine=bn_affine, input_norm=input_norm)
    mapped = _map_convs(layers, labels, convs, norms, backbone)
    problems += mapped.problems
    inside, last = _unmapped_inside(layers, mapped)
    if problems or inside:
        unmapped = inside if mapped.used else [f"{layer.name} ({layer.type})" for layer in layers if layer.blobs]
        raise CaffeImportError(
            f"the Caffe net does not fit backbone {name!r} (in_chans={in_chans}, bn_affine={bn_affine}): "
            + "; ".join(problems + ([f"weighted layers that map to nothing: {_named(unmapped)}"] if unmapped else []))
        )
    backbone.load_state_dict(mapped.builder.state)
    after = [layer for i, layer in enumerate(layers) if layer.blobs and i > last and i not in mapped.used]
    extra = {layer.name: _as_convolution(layer, backbone.out_channels[-1] if k == 0 else None)
             for k, layer in enumerate(after)}  # fmt: skip
    if extra:
        shapes = [f"{k} ({_shape(tuple(v[0].shape)) if v else 'no blobs'})" for k, v in extra.items()]
        mapped.warnings.append(f"layers after the backbone, kept under '{EXTRA_KEY}' and loaded by no stage: "
                               f"{_named(shapes)}")
    arch = {"name": name, "in_chans": in_chans, "bn_affine": bn_affine, "input_norm": input_norm}
    return ImportResult(backbone, arch, extra, mapped.mapping, mapped.warnings)

"""Caffe weights (``.caffemodel``) as mnm backbone checkpoints: a protobuf wire-format reader and a layer mapper.

A ``.caffemodel`` is a binary ``NetParameter``. :func:`read_caffemodel` decodes the parts the import needs,
from Caffe's published field numbers, without a compiled ``caffe.proto``: the current ``layer`` list
(``LayerParameter``: name, type as a string, bottom, top, blobs, convolution settings) and the legacy
V1 ``layers`` list (type as an enum); a blob's shape comes from ``shape`` or from the legacy
num/channels/height/width, its values from ``data`` (float) or ``double_data``, packed or not.

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
one :class:`CaffeImportError`.

Conv1 keeps Caffe's channel order: ``input_norm: caffe_bgr`` (:data:`mnm.models.backbones.INPUT_NORMS`) feeds the
network BGR in 0..255 minus the release's mean (gray / 255 - 0.4488 for a one-channel network), the input
the Caffe nets were trained on.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mnm.models.backbones import Backbone, PlainBackbone, build_backbone

__all__ = [
    "CAFFE_BACKBONES",
    "EXTRA_KEY",
    "CaffeBlob",
    "CaffeImportError",
    "CaffeLayer",
    "ImportResult",
    "map_onto_backbone",
    "read_caffemodel",
]

#: the checkpoint key that keeps the file's weighted layers after the backbone (fc6, fc7, a classifier):
#: ``{layer name: [tensor, ...]}`` in Caffe's blob order, fc6/fc7 InnerProduct weights as convolutions
EXTRA_KEY = "caffe_layers"


class CaffeImportError(ValueError):
    """A ``.caffemodel`` that cannot be read or does not fit the backbone; the message names the file and layer."""


# -- protobuf wire format ----------------------------------------------------------------------------------
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class _Truncated(Exception):
    """The wire data ends inside a field; ``offset`` is where that field starts."""

    def __init__(self, offset: int) -> None:
        self.offset = offset


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    start, value, shift = pos, 0, 0
    while True:
        if pos >= end:
            raise _Truncated(start)
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """``(field number, wire type, value)`` of a message in ``buf[start:end]``; a length-delimited value
    is its ``(start, end)`` span, a fixed-width one its raw bytes. Raises :class:`_Truncated`."""
    pos = start
    while pos < end:
        here = pos
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _BYTES:
            length, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + length), pos + length
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            value, pos = buf[pos : pos + size], pos + size
        else:
            raise CaffeImportError(f"unsupported protobuf wire type {wire} (field {number}) at byte {here}")
        if pos > end:
            raise _Truncated(here)
        yield number, wire, value


def _repeated_numbers(buf: bytes, wire: int, value: Any, dtype: str) -> list[float] | np.ndarray:
    """The numbers of one occurrence of a repeated numeric field: packed (a span) or one plain value."""
    if wire == _BYTES:
        start, end = value
        if dtype == "varint":
            out, pos = [], start
            while pos < end:
                number, pos = _varint(buf, pos, end)
                out.append(number)
            return out
        return np.frombuffer(buf, dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize, offset=start)
    if wire == _VARINT:
        return [value]
    return np.frombuffer(value, dtype=dtype)


# -- Caffe messages ----------------------------------------------------------------------------------------
# NetParameter: layer = 100 (LayerParameter), legacy layers = 2 (V1LayerParameter)
_NET_LAYER, _NET_V1_LAYERS = 100, 2
# LayerParameter: name 1, type 2 (string), bottom 3, top 4, blobs 7, convolution_param 106
_LAYER_FIELDS = {"name": 1, "type": 2, "bottom": 3, "top": 4, "blobs": 7, "conv": 106}
# V1LayerParameter: bottom 2, top 3, name 4, type 5 (enum), blobs 6, convolution_param 10
_V1_FIELDS = {"name": 4, "type": 5, "bottom": 2, "top": 3, "blobs": 6, "conv": 10}
#: V1LayerParameter.LayerType values of the layers an import meets (the rest are named by number)
_V1_TYPES = {3: "Concat", 4: "Convolution", 5: "Data", 6: "Dropout", 14: "InnerProduct", 15: "LRN",
             17: "Pooling", 18: "ReLU", 20: "Softmax", 21: "SoftmaxWithLoss", 22: "Split", 39: "Deconvolution"}  # fmt: skip
# BlobProto: num 1, channels 2, height 3, width 4, data 5 (float), shape 7 (BlobShape: dim 1), double_data 8
_BLOB_LEGACY_DIMS, _BLOB_DATA, _BLOB_SHAPE, _BLOB_DOUBLE = (1, 2, 3, 4), 5, 7, 8
# ConvolutionParameter: pad 3, kernel_size 4, group 5, stride 6
_CONV_PAD, _CONV_STRIDE = 3, 6


@dataclass(frozen=True)
class CaffeBlob:
    """One parameter blob: its values (float32) in Caffe's shape."""

    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)


@dataclass(frozen=True)
class CaffeLayer:
    """The parts of a Caffe layer the import uses."""

    name: str
    type: str
    bottoms: tuple[str, ...] = ()
    tops: tuple[str, ...] = ()
    blobs: tuple[CaffeBlob, ...] = ()
    #: ``pad``/``stride`` of a convolution as stored (empty: Caffe's defaults 0 and 1)
    conv: dict[str, int] = field(default_factory=dict)


def _read_blob(buf: bytes, start: int, end: int) -> CaffeBlob:
    legacy = dict.fromkeys(_BLOB_LEGACY_DIMS, 0)
    dims: list[int] | None = None
    chunks: list[np.ndarray] = []
    for number, wire, value in _fields(buf, start, end):
        if number in legacy and wire == _VARINT:
            legacy[number] = value
        elif number == _BLOB_SHAPE:
            dims = [int(d) for _, w, v in _fields(buf, *value) for d in _repeated_numbers(buf, w, v, "varint")]
        elif number == _BLOB_DATA:
            chunks.append(np.asarray(_repeated_numbers(buf, wire, value, "<f4"), dtype=np.float32))
        elif number == _BLOB_DOUBLE:
            chunks.append(np.asarray(_repeated_numbers(buf, wire, value, "<f8"), dtype=np.float32))
    shape = dims if dims is not None else [legacy[n] for n in _BLOB_LEGACY_DIMS]
    data = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if int(np.prod(shape)) != data.size:
        raise CaffeImportError(f"a blob of shape {tuple(shape)} holds {data.size} values")
    return CaffeBlob(data.reshape(shape).copy())


def _read_conv_settings(buf: bytes, start: int, end: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for number, wire, value in _fields(buf, start, end):
        if number in (_CONV_PAD, _CONV_STRIDE):
            first = _repeated_numbers(buf, wire, value, "varint")
            if len(first):
                out.setdefault("pad" if number == _CONV_PAD else "stride", int(first[0]))
    return out


def _read_layer(buf: bytes, start: int, end: int, keys: dict[str, int], v1: bool) -> CaffeLayer:
    parts: dict[str, Any] = {"name": "", "type": "", "bottoms": [], "tops": [], "blobs": [], "conv": {}}
    for number, wire, value in _fields(buf, start, end):
        if wire == _BYTES and number in (keys["name"], keys["type"], keys["bottom"], keys["top"]):
            text = buf[value[0] : value[1]].decode("utf-8", "replace")
            if number == keys["name"]:
                parts["name"] = text
            elif number == keys["type"]:
                parts["type"] = text
            else:
                parts["bottoms" if number == keys["bottom"] else "tops"].append(text)
        elif v1 and number == keys["type"] and wire == _VARINT:
            parts["type"] = _V1_TYPES.get(value, f"V1 type {value}")
        elif number == keys["blobs"] and wire == _BYTES:
            try:
                parts["blobs"].append(_read_blob(buf, *value))
            except CaffeImportError as err:
                raise CaffeImportError(f"layer {parts['name'] or '?'}: blob {len(parts['blobs'])}: {err}") from None
        elif number == keys["conv"] and wire == _BYTES:
            parts["conv"] = _read_conv_settings(buf, *value)
    return CaffeLayer(parts["name"], parts["type"], tuple(parts["bottoms"]), tuple(parts["tops"]),
                      tuple(parts["blobs"]), parts["conv"])  # fmt: skip


def _net_layers(buf: bytes) -> tuple[list[CaffeLayer], set[str]]:
    layers: list[CaffeLayer] = []
    formats = set()
    try:
        for number, wire, value in _fields(buf, 0, len(buf)):
            if wire == _BYTES and number in (_NET_LAYER, _NET_V1_LAYERS):
                v1 = number == _NET_V1_LAYERS
                formats.add("layers (V1)" if v1 else "layer")
                layers.append(_read_layer(buf, *value, _V1_FIELDS if v1 else _LAYER_FIELDS, v1))
    except _Truncated as err:
        name = _partial_name(buf, err.offset)
        where = f" (the one after {layers[-1].name!r})" if layers else " (the first one)"
        raise CaffeImportError(f"truncated or corrupt at byte {err.offset} of {len(buf)}, in layer "
                               f"#{len(layers)}{f' {name!r}' if name else ''}{where}") from None
    except CaffeImportError as err:
        if layers:
            raise
        raise CaffeImportError(f"not a binary Caffe model (a NetParameter): {err}"
                               f"{'; it reads as text (a .prototxt?)' if _looks_like_text(buf) else ''}") from None
    return layers, formats


def _looks_like_text(buf: bytes) -> bool:
    """Whether the file starts like a text file (printable UTF-8), e.g. a .prototxt given for a .caffemodel."""
    head = buf[:512].decode("utf-8", "replace")
    return bool(head) and all(c.isprintable() or c in "\t\r\n" for c in head)


def _partial_name(buf: bytes, offset: int) -> str | None:
    """The name of the layer whose field starts at ``offset``, read from what the file holds of it."""
    try:
        key, pos = _varint(buf, offset, len(buf))
        _, pos = _varint(buf, pos, len(buf))
        name_field = (_V1_FIELDS if key >> 3 == _NET_V1_LAYERS else _LAYER_FIELDS)["name"]
        for number, wire, value in _fields(buf, pos, len(buf)):
            if number == name_field and wire == _BYTES:
                return buf[value[0] : value[1]].decode("utf-8", "replace")
    except (_Truncated, CaffeImportError):
        pass
    return None


def check_import_out(caffemodel: str | Path, out: str | Path, overwrite: bool = False) -> None:
    """Refuse an ``--out`` that would lose data or land somewhere unexpected, before anything is read.

    ``out`` must not be the input (or a link to it), must not be a folder, must be in an existing folder,
    and replaces an existing file only with ``overwrite``.
    """
    out, source = Path(out), Path(caffemodel)
    if out.is_dir():
        raise CaffeImportError(f"--out {out} is a folder; name the checkpoint file to write, e.g. {out / 'model.ckpt'}")
    if not out.parent.is_dir():
        raise CaffeImportError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    if out.exists() and source.exists() and os.path.samefile(out, source):
        raise CaffeImportError(f"--out {out} is the input caffemodel {source}; name another file to write")
    if out.exists() and not overwrite:
        raise CaffeImportError(f"--out {out} exists; add --overwrite to replace it")


def read_caffemodel(path: str | Path) -> tuple[list[CaffeLayer], str]:
    """The layers of a binary ``NetParameter`` file and its format (``layer`` or the legacy V1 ``layers``).

    Raises ``FileNotFoundError`` for a missing file and :class:`CaffeImportError` for a truncated or
    malformed one, naming the byte offset and the layer it happened in.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"caffemodel not found: {path}")
    buf = path.read_bytes()
    try:
        layers, formats = _net_layers(buf)
    except CaffeImportError as err:
        raise CaffeImportError(f"{path}: {err}") from None
    if not layers:
        raise CaffeImportError(f"{path}: no Caffe layers found ({len(buf)} bytes); not a binary .caffemodel?")
    return layers, " and ".join(sorted(formats))


# -- mapping onto a backbone -------------------------------------------------------------------------------
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
    bn_affine = any(kinds.values()) if bn_affine is None else bn_affine

    backbone = build_backbone(name, in_chans=in_chans, bn_affine=bn_affine, input_norm=input_norm)
    body_convs = [j for j, m in enumerate(backbone.body) if isinstance(m, nn.Conv2d)]
    builder = _StateBuilder(backbone.state_dict())
    used: set[int] = set()
    mapping: dict[str, list[str]] = {}
    warnings: list[str] = []
    for label, j in zip(labels, body_convs, strict=True):
        i = convs[label]
        if i is None:
            continue
        conv, module = layers[i], backbone.body[j]
        used.add(i)
        mapping[label] = [conv.name]
        if not conv.blobs:
            problems.append(f"{conv.name} (no weights)")
            continue
        builder.put(f"body.{j}.weight", conv.blobs[0].data, conv.name)
        bias = conv.blobs[1].data if len(conv.blobs) > 1 else np.zeros(module.out_channels, np.float32)
        builder.put(f"body.{j}.bias", bias, conv.name)
        stored = (conv.conv.get("stride", 1), conv.conv.get("pad", 0))
        if conv.conv and stored != (module.stride[0], module.padding[0]):
            warnings.append(f"{conv.name}: stride {stored[0]} pad {stored[1]} in the file, "
                            f"stride {module.stride[0]} pad {module.padding[0]} in the backbone")
        norm, scale = norms[label]
        if norm is None:
            eps = backbone.body[j + 1].eps
            builder.put(f"body.{j + 1}.running_var", np.full(module.out_channels, 1 - eps, np.float32), conv.name)
            continue  # identity_bn: running mean 0, scale 1 and shift 0 as built
        values, problem = _bn_values(layers[norm], layers[scale] if scale is not None else None)
        used |= {norm} | ({scale} if scale is not None else set())
        mapping[label] += [layers[k].name for k in (norm, scale) if k is not None]
        if problem:
            problems.append(problem)
        for key, value in values.items():
            if f"body.{j + 1}.{key}" in builder.state:
                builder.put(f"body.{j + 1}.{key}", value, layers[norm].name)
    problems += builder.problems
    last = max(used, default=-1)
    shared = {i for i, layer in enumerate(layers) if layer.blobs and i not in used
              and any(_same_blobs(layer, layers[k]) for k in used)}  # fmt: skip
    if shared:
        warnings.append(f"layers sharing the weights of mapped ones (siamese towers), loaded once: "
                        f"{_named([layers[i].name for i in sorted(shared)])}")
    used |= shared
    weighted = [(i, f"{layer.name} ({layer.type})") for i, layer in enumerate(layers) if layer.blobs]
    inside = [text for i, text in weighted if i not in used and i < last]
    if problems or inside:
        unmapped = inside if used else [text for _, text in weighted]
        raise CaffeImportError(
            f"the Caffe net does not fit backbone {name!r} (in_chans={in_chans}, bn_affine={bn_affine}): "
            + "; ".join(problems + ([f"weighted layers that map to nothing: {_named(unmapped)}"] if unmapped else []))
        )
    backbone.load_state_dict(builder.state)
    after = [layer for i, layer in enumerate(layers) if layer.blobs and i > last and i not in used]
    extra = {layer.name: _as_convolution(layer, backbone.out_channels[-1] if k == 0 else None)
             for k, layer in enumerate(after)}  # fmt: skip
    if extra:
        shapes = [f"{k} ({_shape(tuple(v[0].shape)) if v else 'no blobs'})" for k, v in extra.items()]
        warnings.append(f"layers after the backbone, kept under '{EXTRA_KEY}' and loaded by no stage: {_named(shapes)}")
    arch = {"name": name, "in_chans": in_chans, "bn_affine": bn_affine, "input_norm": input_norm}
    return ImportResult(backbone, arch, extra, mapping, warnings)

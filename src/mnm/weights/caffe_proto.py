"""A reader of Caffe's binary ``NetParameter`` (``.caffemodel``): the protobuf wire format decoded from Caffe's published
field numbers, without a compiled ``caffe.proto``.

:func:`read_caffemodel` returns the current ``layer`` list (``LayerParameter``: name, type as a string, bottom, top,
blobs, convolution settings) or the legacy V1 ``layers`` list (type as an enum); a blob's shape comes from ``shape``
or from the legacy num/channels/height/width, its values from ``data`` (float) or ``double_data``, packed or not.
Errors name the file, the byte offset and the layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CaffeBlob", "CaffeImportError", "CaffeLayer", "read_caffemodel"]


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

"""Backbone registry: AlexNet (with batch norm; torchvision's widths or the Caffe release's), VGG-16-BN, ResNet-18/50.

Every backbone takes RGB in ``[0, 1]`` (normalisation and the grayscale
conversion are done by :meth:`Backbone.prepare`), returns a list of
multi-scale maps from :meth:`Backbone.features` whose last entry is "pool5",
and an embedding from :meth:`Backbone.embed`. Weights never come from the
network: :func:`load_backbone_weights` reads local files only.

(About 370 lines: the four backbone families behind one `Backbone` interface and their registry; weights from
files are :mod:`mnm.weights.formats`.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torchvision.models as tvm
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "BACKBONE_OPTIONS",
    "EMBEDDINGS",
    "INITS",
    "FEATURE_TAPS",
    "INPUT_NORMS",
    "AlexNetBackbone",
    "AlexNetCaffeBackbone",
    "Backbone",
    "PlainBackbone",
    "ResNetBackbone",
    "VGG16BNBackbone",
    "build_backbone",
    "init_weights",
]

#: input normalisations :meth:`Backbone.prepare` applies: ``imagenet`` (RGB, ImageNet mean and std) and
#: ``caffe_bgr`` (the Caffe release: BGR in 0..255 minus its mean, no std; a grayscale network takes
#: gray - 0.4488 with gray in [0, 1], the release's colorization input). Values: (mean, std) of the
#: RGB [0, 1] input per ``in_chans``, and whether the channels are then reversed to BGR.
INPUT_NORMS: dict[str, tuple[dict[int, tuple[tuple[float, ...], tuple[float, ...]]], bool]] = {
    "imagenet": ({3: ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), 1: ((0.449,), (0.226,))}, False),
    "caffe_bgr": (
        {3: (tuple(v / 255 for v in (122.67892, 116.66877, 104.00699)), (1 / 255,) * 3), 1: ((0.4488,), (1.0,))},
        True,
    ),
}

#: embeddings :meth:`Backbone.embed` can return: flattened pool5 (after its ReLU), flattened pool5
#: without the last ReLU (max-pool and ReLU commute, so this is the pre-activation pool5), and
#: the global average of pool5
EMBEDDINGS = ("pool5", "pool5_prerelu", "pool5_avg")
#: weight initialisations of the plain backbones (:func:`init_weights`)
INITS = ("kaiming", "gaussian", "xavier")
#: which maps :meth:`Backbone.features` returns: ``default`` (listed per backbone) or ``hypercolumn``
#: (plain backbones only: the prepared input, every conv's activation, then pool5; Larsson et al.'s taps)
FEATURE_TAPS = ("default", "hypercolumn")


class Backbone(nn.Module):
    """Base class: input preparation, multi-scale features, embedding.

    Subclasses implement :meth:`_maps` (prepared input -> list of maps) and set
    ``out_channels``/``out_strides`` (one entry per map, last one = pool5).
    """

    name: str
    out_channels: list[int]
    out_strides: list[int]

    def __init__(self, name: str, in_chans: int, input_norm: str = "imagenet") -> None:
        super().__init__()
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 or 3, got {in_chans}")
        if input_norm not in INPUT_NORMS:
            raise ValueError(f"unknown input_norm {input_norm!r}; expected one of {list(INPUT_NORMS)}")
        self.name, self.in_chans, self.input_norm = name, in_chans, input_norm
        stats, self.bgr = INPUT_NORMS[input_norm]
        mean, std = stats[in_chans]
        # ``mean``/``std`` live in the RGB [0, 1] input space (patch fill and jigsaw read them there)
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def prepare(self, x: Tensor) -> Tensor:
        """Map ``B×3×H×W`` (or ``B×in_chans×H×W``) input in [0, 1] to normalised network input.

        A grayscale backbone (``in_chans=1``) takes the mean of the three channels. ``input_norm``
        (one of :data:`INPUT_NORMS`) sets the mean, the std and the channel order.
        """
        if x.ndim != 4 or x.shape[1] not in (3, self.in_chans):
            raise ValueError(f"{self.name}: expected B×3×H×W or B×{self.in_chans}×H×W, got {tuple(x.shape)}")
        if x.shape[1] != self.in_chans:
            x = x.mean(dim=1, keepdim=True)
        x = (x - self.mean) / self.std
        return x.flip(1) if self.bgr and self.in_chans == 3 else x

    def _maps(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def features(self, x: Tensor) -> list[Tensor]:
        """Multi-scale maps (one per ``out_channels`` entry, last = pool5), computed in one pass."""
        return self._maps(self.prepare(x))

    def embed(self, x: Tensor, kind: str = "pool5") -> Tensor:
        """``B×D`` embedding of ``kind`` (one of :data:`EMBEDDINGS`; default: flattened pool5)."""
        _check_embedding(kind)
        if kind == "pool5_prerelu":
            return self._pool5_prerelu(self.prepare(x)).flatten(1)
        pool5 = self.features(x)[-1]
        return pool5.mean(dim=(2, 3)) if kind == "pool5_avg" else pool5.flatten(1)

    def _pool5_prerelu(self, x: Tensor) -> Tensor:
        raise ValueError(f"{self.name}: embedding 'pool5_prerelu' is not available for this backbone")

    def embed_dim(self, input_hw: tuple[int, int], kind: str = "pool5") -> int:
        """Length ``D`` of :meth:`embed` for an input of spatial size ``input_hw``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.features(x)


def _check_embedding(kind: str) -> None:
    if kind not in EMBEDDINGS:
        raise ValueError(f"unknown embedding {kind!r}; expected one of {list(EMBEDDINGS)}")


def init_weights(module: nn.Module, init: str = "kaiming", conv_biases: Sequence[float] = ()) -> None:
    """Initialise the convolutions and batch norms of ``module`` in place.

    ``kaiming``: Kaiming-normal (fan_out, ReLU) weights, zero biases (torchvision's VGG/ResNet).
    ``gaussian``: normal weights with std 0.01 and the biases ``conv_biases`` (one per conv in
    order, 0 where not given): the Caffe release's AlexNet. ``xavier``: Caffe's Xavier filler,
    uniform with variance 1/fan_in, zero biases (the release's VGG-16). Batch norm: identity.
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; expected one of {list(INITS)}")
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    for i, m in enumerate(convs):
        if init == "kaiming":
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif init == "gaussian":
            nn.init.normal_(m.weight, std=0.01)
        else:
            nn.init.kaiming_uniform_(m.weight, mode="fan_in", nonlinearity="linear")  # U(±sqrt(3/fan_in))
        if m.bias is not None:
            nn.init.constant_(m.bias, conv_biases[i] if init == "gaussian" and i < len(conv_biases) else 0.0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


# A plain body spec: ("C", out, kernel, stride, padding[, groups]) = conv + BN + ReLU,
# ("M", kernel, stride[, ceil_mode]) = max-pool, ("N",) = Caffe's local response normalisation.
_Spec = list[tuple]

_ALEXNET_SPEC: _Spec = [
    ("C", 64, 11, 4, 2), ("M", 3, 2),
    ("C", 192, 5, 1, 2), ("M", 3, 2),
    ("C", 384, 3, 1, 1), ("C", 256, 3, 1, 1), ("C", 256, 3, 1, 1), ("M", 3, 2),
]  # fmt: skip
# The Caffe release's AlexNet (Krizhevsky's widths, 2 groups in conv2/4/5, LRN after relu1/relu2,
# ceil-mode pooling) and its Gaussian-init biases per conv.
_ALEXNET_CAFFE_SPEC: _Spec = [
    ("C", 96, 11, 4, 5), ("N",), ("M", 3, 2, True),
    ("C", 256, 5, 1, 2, 2), ("N",), ("M", 3, 2, True),
    ("C", 384, 3, 1, 1), ("C", 384, 3, 1, 1, 2), ("C", 256, 3, 1, 1, 2), ("M", 3, 2, True),
]  # fmt: skip
_ALEXNET_RELEASE_BIASES = (0.0, 0.1, 0.0, 0.1, 0.1)
_VGG16_SPEC: _Spec = [
    spec
    for width, n_convs in ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
    for spec in [("C", width, 3, 1, 1)] * n_convs + [("M", 2, 2)]
]


class PlainBackbone(Backbone):
    """Conv/BN/ReLU/max-pool stack (AlexNet, VGG) with feature taps.

    ``body`` has torchvision's ``features`` layout with a ``BatchNorm2d`` after
    every convolution (for VGG-16-BN that is exactly torchvision's layout).
    Maps are tapped after the modules listed in ``taps``; the last tap is pool5.
    ``bn_affine=False`` gives Caffe's BatchNorm (statistics only, no scale or shift);
    ``init`` is one of :data:`INITS` (:func:`init_weights`); ``feature_taps="hypercolumn"`` taps the
    prepared input (stride 1) and every conv's activation instead, pool5 still last.
    """

    #: biases of the ``gaussian`` init, one per conv (the release's AlexNet prototxt)
    release_biases: tuple[float, ...] = ()

    def __init__(
        self,
        name: str,
        in_chans: int,
        spec: _Spec,
        tap_before_pool: bool,
        bn_affine: bool = True,
        init: str = "kaiming",
        input_norm: str = "imagenet",
        feature_taps: str = "default",
    ) -> None:
        super().__init__(name, in_chans, input_norm)
        if feature_taps not in FEATURE_TAPS:
            raise ValueError(f"unknown feature_taps {feature_taps!r}; expected one of {list(FEATURE_TAPS)}")
        self.tap_input = feature_taps == "hypercolumn"
        tap_before_pool = tap_before_pool and not self.tap_input
        layers: list[nn.Module] = []
        taps: list[int] = []
        channels, stride = in_chans, 1
        self.out_channels, self.out_strides = ([in_chans], [1]) if self.tap_input else ([], [])

        def tap() -> None:
            taps.append(len(layers) - 1)
            self.out_channels.append(channels)
            self.out_strides.append(stride)

        for kind, *args in spec:
            if kind == "C":
                out, k, s, p, *groups = args
                conv = nn.Conv2d(channels, out, k, s, p, groups=groups[0] if groups else 1)
                layers += [conv, nn.BatchNorm2d(out, affine=bn_affine), nn.ReLU(inplace=True)]
                channels, stride = out, stride * s
                if not tap_before_pool:
                    tap()
            elif kind == "N":
                layers.append(nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0))
            else:
                if tap_before_pool:
                    tap()
                k, s, *ceil = args
                layers.append(nn.MaxPool2d(k, s, ceil_mode=bool(ceil and ceil[0])))
                stride *= s
        tap()  # pool5
        self.body = nn.Sequential(*layers)
        self.taps = frozenset(taps)
        self.last_relu = max(i for i, m in enumerate(layers) if isinstance(m, nn.ReLU))
        init_weights(self.body, init, self.release_biases)

    def _maps(self, x: Tensor) -> list[Tensor]:
        maps = [x] if self.tap_input else []
        for i, layer in enumerate(self.body):
            x = layer(x)
            if i in self.taps:
                maps.append(x)
        return maps

    def _pool5_prerelu(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.body):
            if i != self.last_relu:
                x = layer(x)
        return x

    def embed_dim(self, input_hw: tuple[int, int], kind: str = "pool5") -> int:
        _check_embedding(kind)
        size = list(input_hw)
        for m in self.body:
            if isinstance(m, nn.Conv2d | nn.MaxPool2d):
                k, s, p = (_pair(getattr(m, a)) for a in ("kernel_size", "stride", "padding"))
                ceil = isinstance(m, nn.MaxPool2d) and m.ceil_mode
                for d in (0, 1):
                    span = size[d] + 2 * p[d] - k[d]
                    out = (-(-span // s[d]) if ceil else span // s[d]) + 1
                    if ceil and (out - 1) * s[d] >= size[d] + p[d]:
                        out -= 1  # the last window must start inside the input (PyTorch's rule)
                    size[d] = out
        if min(size) < 1:
            raise ValueError(f"{self.name}: input {tuple(input_hw)} is too small for pool5")
        return self.out_channels[-1] * (1 if kind == "pool5_avg" else size[0] * size[1])


class AlexNetBackbone(PlainBackbone):
    """AlexNet (torchvision's layout, 64-192-384-256-256) with batch norm after every conv.

    Maps: conv1..conv5 activations and pool5 (strides 4, 8, 16, 16, 16, 32).
    """

    def __init__(self, in_chans: int = 3, **options: str | bool) -> None:
        super().__init__("alexnet", in_chans, _ALEXNET_SPEC, False, **options)


class AlexNetCaffeBackbone(PlainBackbone):
    """The Caffe release's AlexNet (96-256-384-384-256, 2 groups in conv2/4/5, conv1 pad 5,
    LRN after conv1/conv2, ceil-mode pooling) with batch norm after every conv.

    Maps: conv1..conv5 activations and pool5 (strides 4, 8, 16, 16, 16, 32); pool5 is
    256×4×4 at 128 px. ``init="gaussian"`` uses the release's biases (0.1 in conv2/4/5).
    """

    release_biases = _ALEXNET_RELEASE_BIASES

    def __init__(self, in_chans: int = 3, **options: str | bool) -> None:
        super().__init__("alexnet_caffe", in_chans, _ALEXNET_CAFFE_SPEC, False, **options)


class VGG16BNBackbone(PlainBackbone):
    """VGG-16 with batch norm. Maps: each conv block before pooling, then pool5 (strides 1..32)."""

    def __init__(self, in_chans: int = 3, **options: str | bool) -> None:
        super().__init__("vgg16_bn", in_chans, _VGG16_SPEC, True, **options)


class ResNetBackbone(Backbone):
    """torchvision ResNet without ``fc``. Maps: stem (stride 2), layer1..layer4 (4..32).

    The last map (layer4) plays the role of pool5; :meth:`embed` is its global average
    (``pool5`` and ``pool5_avg`` alike; ``pool5_prerelu`` is not available). Only the
    default ``bn_affine``, ``init`` and ``feature_taps`` are supported.
    """

    def __init__(
        self, name: str, in_chans: int = 3, bn_affine: bool = True, init: str = "kaiming",
        input_norm: str = "imagenet", feature_taps: str = "default", **kw,
    ) -> None:  # fmt: skip
        if not bn_affine or init != "kaiming" or feature_taps != "default":
            raise ValueError(
                f"{name}: only bn_affine=True, init='kaiming' and feature_taps='default' are supported for ResNets"
            )
        super().__init__(name, in_chans, input_norm)
        net = getattr(tvm, name)(weights=None, **kw)
        if in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, kernel_size=7, stride=2, padding=3, bias=False)
            init_weights(net.conv1)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        expansion = type(net.layer1[0]).expansion  # 1 for BasicBlock, 4 for Bottleneck
        self.out_channels = [64] + [w * expansion for w in (64, 128, 256, 512)]
        self.out_strides = [2, 4, 8, 16, 32]

    def _maps(self, x: Tensor) -> list[Tensor]:
        x = self.relu(self.bn1(self.conv1(x)))
        maps = [x]
        x = self.maxpool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def embed(self, x: Tensor, kind: str = "pool5") -> Tensor:
        """``B×D`` embedding: global average pool of layer4."""
        return super().embed(x, "pool5_avg" if kind == "pool5" else kind)

    def embed_dim(self, input_hw: tuple[int, int], kind: str = "pool5") -> int:
        _check_embedding(kind)
        return self.out_channels[-1]


BACKBONES: dict[str, Callable[..., Backbone]] = {
    "alexnet": AlexNetBackbone,
    "alexnet_caffe": AlexNetCaffeBackbone,
    "vgg16_bn": VGG16BNBackbone,
    "resnet18": lambda in_chans=3, **kw: ResNetBackbone("resnet18", in_chans, **kw),
    "resnet50": lambda in_chans=3, **kw: ResNetBackbone("resnet50", in_chans, **kw),
    "resnet101": lambda in_chans=3, **kw: ResNetBackbone("resnet101", in_chans, **kw),
}
#: keyword options every registered backbone takes (``BaseStage(backbone_kwargs=...)``)
BACKBONE_OPTIONS = ("bn_affine", "init", "input_norm", "feature_taps")


def build_backbone(name: str, in_chans: int = 3, **kw) -> Backbone:
    """Build a randomly initialised backbone (seeded by the caller's torch seed; no downloads).

    ``kw``: :data:`BACKBONE_OPTIONS` (``bn_affine``, ``init``, ``input_norm``, ``feature_taps``); other
    keys raise ``ValueError``.
    """
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {sorted(BACKBONES)}")
    unknown = sorted(set(kw) - set(BACKBONE_OPTIONS))
    if unknown:
        raise ValueError(f"unknown backbone options {unknown}; known: {list(BACKBONE_OPTIONS)}")
    return BACKBONES[name](in_chans=in_chans, **kw)

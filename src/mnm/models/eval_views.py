"""How a segmentation model sees an evaluation image: whole, resized and padded to a square, or in sliding windows.

Each function takes ``predict`` (``B×3×h×w`` images in [0, 1] -> ``B×C×h×w`` class probabilities at
the input's size) and an image batch, and returns probabilities at the batch's own size. ``fill`` is
the RGB colour in [0, 1] of the padding: the Caffe release pads with its mean colour, which its input
normalisation maps to zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: evaluation modes of the segment stage: the whole image at its own size (``whole``), the release's
#: VOC evaluation (``pad``: :func:`padded_probs`) and its Cityscapes evaluation (``sliding``:
#: :func:`sliding_window_probs`)
EVAL_MODES = ("whole", "pad", "sliding")

Predict = Callable[[Tensor], Tensor]


def _canvas(image: Tensor, height: int, width: int, fill: Sequence[float]) -> Tensor:
    """A ``B×C×height×width`` batch of the colour ``fill`` on the device and dtype of ``image``."""
    colour = torch.as_tensor(fill, dtype=image.dtype, device=image.device).view(1, -1, 1, 1)
    return colour.expand(image.shape[0], image.shape[1], height, width).clone()


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def padded_probs(predict: Predict, image: Tensor, size: int = 512, fill: Sequence[float] = (0.0, 0.0, 0.0)) -> Tensor:
    """The release's VOC evaluation: fit the image into a ``size``×``size`` square and back.

    The image is resized (bilinear, aspect ratio kept, the shorter side truncated to an int as the
    release does) so that its longer side is ``size``, centred on a canvas of ``fill``, predicted;
    the image's region of the scores is cut out and resized (bilinear) to the image's size.
    """
    h, w = image.shape[-2:]
    nh, nw = (size, int(size * w / h)) if h > w else (int(size * h / w), size)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas = _canvas(image, size, size, fill)
    canvas[..., top : top + nh, left : left + nw] = _resize(image, (nh, nw))
    probs = predict(canvas)[..., top : top + nh, left : left + nw]
    return _resize(probs, (h, w))


def sliding_window_probs(
    predict: Predict, image: Tensor, window: int = 512, stride: int = 256, fill: Sequence[float] = (0.0, 0.0, 0.0)
) -> Tensor:
    """The release's Cityscapes evaluation: ``window``×``window`` crops every ``stride`` pixels.

    Crops start at the top-left corner; there are ``ceil((H - window) / stride) + 1`` rows of them
    (at least one) and likewise columns, and a crop reaching past the border is padded with ``fill``.
    Each crop's probabilities are added into the image's, one crop at a time; the sum is divided
    by the number of crops covering each pixel (the argmax is the release's, which keeps the sum).
    """
    if window < 1 or stride < 1:
        raise ValueError(f"window and stride must be positive, got window={window}, stride={stride}")
    h, w = image.shape[-2:]
    rows, cols = (max(math.ceil((n - window) / stride), 0) + 1 for n in (h, w))
    starts = [(r * stride, c * stride) for r in range(rows) for c in range(cols)]
    total, count = None, image.new_zeros(1, 1, h, w)
    for y, x in starts:
        part = image[..., y : y + window, x : x + window]
        ph, pw = part.shape[-2:]
        crop = _canvas(image, window, window, fill)
        crop[..., :ph, :pw] = part
        probs = predict(crop)[..., :ph, :pw]
        total = probs.new_zeros(*probs.shape[:2], h, w) if total is None else total
        total[..., y : y + ph, x : x + pw] += probs
        count[..., y : y + ph, x : x + pw] += 1
    return total / count

"""The release's evaluation views: padded square (VOC) and sliding windows (Cityscapes)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from mnm.models.eval_views import padded_probs, sliding_window_probs

FILL = (0.2, 0.4, 0.6)


def pixelwise(image: Tensor) -> Tensor:
    """A per-pixel classifier (a fixed 1×1 convolution + softmax): the view cannot change its scores."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 1)
    with torch.no_grad():
        return conv(image).softmax(1)


def contextual() -> nn.Module:
    """A classifier with a 5×5 receptive field: scores depend on the neighbours, and on padding."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.Softmax(1)).eval()


@pytest.mark.parametrize("size", [(40, 40), (37, 53), (64, 100)])
def test_sliding_windows_of_a_pixelwise_model_equal_the_whole_image(size) -> None:
    image = torch.rand(2, 3, *size)
    probs = sliding_window_probs(pixelwise, image, window=32, stride=16, fill=FILL)
    torch.testing.assert_close(probs, pixelwise(image))


def test_one_window_is_a_plain_forward_and_overhanging_windows_see_the_fill() -> None:
    net, image = contextual(), torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sliding_window_probs(net, image, window=32, stride=16, fill=FILL), net(image))
        seen: list[Tensor] = []
        sliding_window_probs(lambda x: seen.append(x) or net(x), torch.rand(1, 3, 40, 40), window=32, stride=16, fill=FILL)
    # 40 px with 32 px windows every 16: 2 × 2 windows; the last ones reach 8 px past the border
    assert len(seen) == 4 and all(s.shape == (1, 3, 32, 32) for s in seen)
    torch.testing.assert_close(seen[-1][0, :, 24:, :], torch.tensor(FILL).view(3, 1, 1).expand(3, 8, 32))


def test_pad_crops_back_exactly_and_pads_with_the_fill() -> None:
    image, seen = torch.rand(1, 3, 20, 32), []
    probs = padded_probs(lambda x: seen.append(x) or pixelwise(x), image, size=32, fill=FILL)
    torch.testing.assert_close(probs, pixelwise(image))  # no resize: the image's region comes back as it was
    (canvas,) = seen
    assert canvas.shape == (1, 3, 32, 32)
    torch.testing.assert_close(canvas[..., 6:26, :], image)  # centred: (32 - 20) // 2 = 6 rows above
    torch.testing.assert_close(canvas[0, :, :6], torch.tensor(FILL).view(3, 1, 1).expand(3, 6, 32))


def test_pad_resizes_into_the_square_and_back() -> None:
    net = contextual()
    with torch.no_grad():
        square = torch.rand(1, 3, 48, 48)
        torch.testing.assert_close(padded_probs(net, square, size=48), net(square))
        tall = torch.rand(1, 3, 60, 25)
        probs = padded_probs(net, tall, size=48)
    assert probs.shape == (1, 4, 60, 25)
    torch.testing.assert_close(probs.sum(1), torch.ones(1, 60, 25))


def test_bad_window_is_refused() -> None:
    with pytest.raises(ValueError, match="window and stride must be positive"):
        sliding_window_probs(pixelwise, torch.rand(1, 3, 8, 8), window=8, stride=0)

import pytest
import torch

from mnm.heads import HEADS, FCNHead, HypercolumnHead, build_head

VGG_LIKE = ([8, 16, 32, 32, 64, 64], [1, 2, 4, 8, 16, 32])
ALEXNET_LIKE = ([12, 24, 32, 32, 24, 24], [4, 8, 16, 16, 16, 32])
CONFIGS = {"vgg": VGG_LIKE, "alexnet": ALEXNET_LIKE}


def _features(channels, strides, size, batch=2, requires_grad=True):
    """Fake backbone maps, with sizes as a ceil-mode pyramid gives them."""
    return [
        torch.randn(batch, c, -(-size[0] // s), -(-size[1] // s), requires_grad=requires_grad)
        for c, s in zip(channels, strides, strict=True)
    ]


@pytest.mark.parametrize("backbone", sorted(CONFIGS))
@pytest.mark.parametrize(
    "kind,kw",
    [
        ("hypercolumn", {"width": 16, "hidden": (32,)}),
        ("hypercolumn", {"width": 8, "hidden": (16,), "fuse": "concat", "fuse_stride": 4}),
        ("fcn", {"hidden": (32, 32)}),
        ("fcn", {"hidden": (), "num_skips": 1}),
        ("fcn", {"hidden": (16, 16), "num_skips": 0, "fc6_kernel": 6}),
    ],
)
def test_output_size_and_gradients(backbone, kind, kw):
    channels, strides = CONFIGS[backbone]
    head = build_head(kind, channels, strides, num_classes=5, **kw)
    for size in [(64, 64), (70, 45)]:
        feats = _features(channels, strides, size)
        out = head(feats, size)
        assert out.shape == (2, 5, *size)
        out.square().mean().backward()
        used = head.used_indices
        for i, f in enumerate(feats):
            has_grad = f.grad is not None and f.grad.abs().sum() > 0
            assert has_grad == (i in used), (i, used)


def test_hypercolumn_uses_every_map():
    channels, strides = VGG_LIKE
    assert HypercolumnHead(channels, strides, 3).used_indices == list(range(len(channels)))


def test_fcn_skip_selection():
    assert FCNHead(*ALEXNET_LIKE, num_classes=3).skip_indices == [4, 1]
    assert FCNHead(*VGG_LIKE, num_classes=3).skip_indices == [4, 3]
    assert FCNHead(*VGG_LIKE, num_classes=3, num_skips=1).used_indices == [4, 5]
    assert FCNHead(*VGG_LIKE, num_classes=3, skip_indices=[2, 4]).skip_indices == [4, 2]
    with pytest.raises(ValueError):
        FCNHead(*VGG_LIKE, num_classes=3, skip_indices=[5])


def test_eval_mode_and_channel_check():
    head = build_head("hypercolumn", *ALEXNET_LIKE, num_classes=4, width=8, hidden=(8,)).eval()
    feats = _features(*ALEXNET_LIKE, (32, 32), batch=1, requires_grad=False)
    assert head(feats, (32, 32)).shape == (1, 4, 32, 32)
    with pytest.raises(ValueError):
        head(feats[:-1], (32, 32))


def test_unknown_head_lists_known():
    with pytest.raises(KeyError) as err:
        build_head("deeplab", [8], [32], 3)
    for name in HEADS:
        assert name in str(err.value)


def test_fcn_without_skips_is_the_release_plain_fcn():
    """``num_skips: 0``: no skip scores, one bilinear upsampling of the top prediction (the release's head)."""
    head = FCNHead(*ALEXNET_LIKE, num_classes=3, num_skips=0, hidden=(16,)).eval()
    assert head.used_indices == [5] and len(head.skip_scores) == 0
    feats = _features(*ALEXNET_LIKE, (64, 96), batch=1, requires_grad=False)
    with torch.no_grad():
        top = head.score(head.top(feats[-1]))
        expected = torch.nn.functional.interpolate(top, size=(64, 96), mode="bilinear", align_corners=False)
        torch.testing.assert_close(head(feats, (64, 96)), expected)


def test_fcn_fc6_kernel_is_the_release_fc6_conv():
    """``fc6_kernel=6``: fc6 is a 6×6 convolution with padding 3 (the release), so its map grows by one."""
    head = FCNHead(*ALEXNET_LIKE, num_classes=3, num_skips=0, hidden=(16, 8), fc6_kernel=6).eval()
    fc6, fc7 = head.top[0][0], head.top[1][0]
    assert fc6.kernel_size == (6, 6) and fc6.padding == (3, 3) and fc7.kernel_size == (1, 1)
    assert FCNHead(*ALEXNET_LIKE, num_classes=3).top[0][0].kernel_size == (3, 3)  # the default
    pool5 = torch.randn(1, 24, 16, 16)
    assert head.top[0](pool5).shape == (1, 16, 17, 17)
    with pytest.raises(ValueError, match="fc6_kernel"):
        FCNHead(*ALEXNET_LIKE, num_classes=3, fc6_kernel=0)

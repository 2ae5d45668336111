import pytest
import torch

from mnm.models.heads import (
    HEADS,
    FCNHead,
    HypercolumnHead,
    SparseHypercolumnHead,
    build_head,
    sample_columns,
)

VGG_LIKE = ([8, 16, 32, 32, 64, 64], [1, 2, 4, 8, 16, 32])
ALEXNET_LIKE = ([12, 24, 32, 32, 24, 24], [4, 8, 16, 16, 16, 32])
CONFIGS = {"vgg": VGG_LIKE, "alexnet": ALEXNET_LIKE}
SPARSE = {"fc_channels": 16, "extra_channels": 8, "hidden": 16, "num_points": 8, "point_margin": 4}


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
        ("sparse_hypercolumn", SPARSE),
    ],
)
def test_output_size_and_gradients(backbone, kind, kw):
    channels, strides = CONFIGS[backbone]
    head = build_head(kind, channels, strides, num_classes=5, **kw)
    if kind == "sparse_hypercolumn":  # its release init (a zero classifier) passes no gradient below it at first
        torch.nn.init.normal_(head.score[2].weight)
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
    caffe = FCNHead(*ALEXNET_LIKE, num_classes=3, num_skips=0, hidden=(16, 8), bn_affine=False, channel_dropout=False)
    assert not caffe.top[0][1].affine and type(caffe.top[0][3]) is torch.nn.Dropout
    assert head.top[0][1].affine and type(head.top[0][3]) is torch.nn.Dropout2d  # the defaults


def test_columns_read_each_map_bilinearly_at_the_point_over_its_stride():
    """A map of stride 2 holding its own x coordinate reads x / 2 at x; outside points clamp to the border."""
    ramp = torch.arange(8.0).expand(1, 1, 8, 8)
    points = torch.tensor([[[4.0, 3.0], [0.0, 0.0], [5.0, 40.0]]])
    columns = sample_columns([ramp, ramp], [1, 2], points)
    assert columns.shape == (1, 2, 3)
    torch.testing.assert_close(columns[0], torch.tensor([[3.0, 0.0, 7.0], [1.5, 0.0, 7.0]]))


@pytest.mark.slow
def test_sparse_hypercolumn_scores_points_in_training_and_a_grid_otherwise():
    """The release's VGG head: columns of every map + fc6, fc7 and two extra blocks; dense scores = point scores."""
    torch.manual_seed(0)
    head = SparseHypercolumnHead(*VGG_LIKE, num_classes=3, **SPARSE).eval()
    assert head.column_strides == [1, 2, 4, 8, 16, 32, 32, 64, 128]
    assert not head.score[2].weight.any() and float(head.score[0].weight.std()) < 2e-4  # the release's fillers
    assert head.score[0].in_channels == sum(VGG_LIKE[0][:-1]) + 2 * 16 + 2 * 8
    points = head.training_points(2, (64, 40), torch.Generator().manual_seed(0))
    assert points.shape == (2, 8, 2)
    assert points[..., 0].min() >= 4 and points[..., 0].max() <= 60 and points[..., 1].max() <= 36
    feats = _features(*VGG_LIKE, (64, 40), requires_grad=False)
    with torch.no_grad():
        at_points = head(feats, (64, 40), points)
        grid = torch.tensor([[[0.0, 0.0], [0.0, 2.0], [2.0, 0.0]]]).expand(2, -1, -1)
        dense = SparseHypercolumnHead(*VGG_LIKE, num_classes=3, dense_stride=1, chunk=7, **SPARSE)
        dense.load_state_dict(head.state_dict())
        dense_logits = dense.eval()(feats, (64, 40))  # a 64×40 grid scored 7 points at a time
        expected = head(feats, (64, 40), grid)
        torch.testing.assert_close(dense_logits[:, :, [0, 0, 2], [0, 2, 0]], expected)
        assert head(feats, (64, 40)).shape == (2, 3, 64, 40)  # stride 2: a 32×20 grid, upsampled
    assert at_points.shape == (2, 3, 8)
    with pytest.raises(ValueError, match="dense_stride must be a positive int"):
        SparseHypercolumnHead(*VGG_LIKE, num_classes=3, dense_stride=0)

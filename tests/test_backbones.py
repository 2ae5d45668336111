"""Tests for mnm.models.backbones: registry, shapes, preparation and weight loading."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision.models as tvm

from mnm.models.backbones import BACKBONES, Backbone, build_backbone
from mnm.weights.formats import load_backbone_weights

NAMES = ["alexnet", "alexnet_caffe", "vgg16_bn", "resnet18", "resnet50", "resnet101"]
HW = (64, 96)
EXPECTED = {  # out_channels, out_strides, embed_dim at HW
    "alexnet": ([64, 192, 384, 256, 256, 256], [4, 8, 16, 16, 16, 32], 256 * 1 * 2),
    "alexnet_caffe": ([96, 256, 384, 384, 256, 256], [4, 8, 16, 16, 16, 32], 256 * 2 * 3),  # ceil-mode pools
    "vgg16_bn": ([64, 128, 256, 512, 512, 512], [1, 2, 4, 8, 16, 32], 512 * 2 * 3),
    "resnet18": ([64, 64, 128, 256, 512], [2, 4, 8, 16, 32], 512),
    "resnet50": ([64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32], 2048),
    "resnet101": ([64, 256, 512, 1024, 2048], [2, 4, 8, 16, 32], 2048),
}


@functools.cache
def cached(name: str, in_chans: int) -> Backbone:
    """Heavy backbones are built once per test session (tests must not modify them)."""
    torch.manual_seed(0)
    return build_backbone(name, in_chans=in_chans).eval()


def test_registry() -> None:
    assert set(NAMES) <= set(BACKBONES)
    with pytest.raises(KeyError, match="resnet18"):
        build_backbone("resnet1000")


@pytest.mark.slow
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("name", NAMES)
def test_shapes(name: str, in_chans: int) -> None:
    net = cached(name, in_chans)
    channels, strides, dim = EXPECTED[name]
    assert (net.name, net.in_chans, net.out_channels, net.out_strides) == (name, in_chans, channels, strides)
    x = torch.rand(2, 3, *HW)
    with torch.no_grad():
        maps = net(x)
        emb = net.embed(x)
        own_chans = net.features(x[:, :in_chans])  # in_chans-channel input is accepted too
    assert [m.shape[1] for m in maps] == channels
    if name != "alexnet":  # AlexNet's unpadded pools give only roughly H / stride
        assert [tuple(m.shape[2:]) for m in maps] == [(HW[0] // s, HW[1] // s) for s in strides]
    assert emb.shape == (2, dim) == (2, net.embed_dim(HW))
    assert [m.shape for m in own_chans] == [m.shape for m in maps]
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == in_chans


def test_embedding_is_flat_pool5_or_average() -> None:
    x = torch.rand(2, 3, *HW)
    with torch.no_grad():
        vgg, res = cached("vgg16_bn", 3), cached("resnet18", 3)
        assert torch.equal(vgg.embed(x), vgg(x)[-1].flatten(1))
        torch.testing.assert_close(res.embed(x), res(x)[-1].mean(dim=(2, 3)))
    assert cached("alexnet", 3).embed_dim((128, 128)) == 256 * 3 * 3


def test_prepare_normalises_and_converts_gray() -> None:
    x = torch.rand(2, 3, 8, 8)
    rgb = cached("resnet18", 3).prepare(x)
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    torch.testing.assert_close(rgb, (x - mean[:, None, None]) / std[:, None, None])
    gray = cached("resnet18", 1).prepare(x)
    torch.testing.assert_close(gray, (x.mean(1, keepdim=True) - 0.449) / 0.226)
    with pytest.raises(ValueError):
        cached("resnet18", 3).prepare(torch.rand(2, 2, 8, 8))


def test_caffe_input_norm_is_bgr_minus_the_release_mean() -> None:
    x = torch.rand(2, 3, 8, 8)
    rgb = build_backbone("alexnet_caffe", input_norm="caffe_bgr").prepare(x)
    bgr_mean = torch.tensor([104.00699, 116.66877, 122.67892])[:, None, None]
    torch.testing.assert_close(rgb, x.flip(1) * 255 - bgr_mean, rtol=1e-5, atol=1e-4)
    gray = build_backbone("alexnet_caffe", in_chans=1, input_norm="caffe_bgr").prepare(x)
    torch.testing.assert_close(gray, x.mean(1, keepdim=True) - 0.4488)
    # the mean colour (the patch fill) maps to zero, in the input's RGB order
    net = build_backbone("vgg16_bn", input_norm="caffe_bgr")
    assert net.prepare(net.mean.expand(1, 3, 4, 4)).abs().max() < 1e-4
    with pytest.raises(ValueError, match="unknown input_norm 'bgr'"):
        build_backbone("alexnet", input_norm="bgr")


def test_alexnet_has_batch_norm_after_every_conv_and_kaiming_init() -> None:
    torch.manual_seed(0)
    net = build_backbone("alexnet")
    layers = list(net.body)
    convs = [i for i, m in enumerate(layers) if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 5 and all(isinstance(layers[i + 1], torch.nn.BatchNorm2d) for i in convs)
    conv = layers[convs[2]]  # fan_out = 384 * 3 * 3
    assert abs(conv.weight.detach().std().item() - (2 / (384 * 9)) ** 0.5) < 0.1 * (2 / (384 * 9)) ** 0.5
    torch.manual_seed(0)
    assert torch.equal(build_backbone("alexnet").body[0].weight, net.body[0].weight)  # seeded by caller


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name,in_chans", [("alexnet", 1), ("resnet18", 3)])
def test_load_from_stage_checkpoint(tmp_path, name: str, in_chans: int) -> None:
    torch.manual_seed(1)
    src = build_backbone(name, in_chans=in_chans)
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    state["head.weight"] = torch.zeros(3)
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "stage.ckpt")
    torch.manual_seed(2)
    dst = build_backbone(name, in_chans=in_chans)
    assert not _same_weights(src, dst)
    report = load_backbone_weights(dst, tmp_path / "stage.ckpt")
    assert _same_weights(src, dst)
    assert report.loaded == len(src.state_dict()) and report.ignored == ("head.weight",)


def test_load_torchvision_resnet18(tmp_path) -> None:
    torch.manual_seed(3)
    tv = tvm.resnet18(weights=None)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    net = build_backbone("resnet18")
    report = load_backbone_weights(net, tmp_path / "tv.pth")
    tv_state = tv.state_dict()
    assert all(torch.equal(v, tv_state[k]) for k, v in net.state_dict().items())
    assert set(report.ignored) == {"fc.weight", "fc.bias"} and report.loaded == len(net.state_dict())


def test_load_torchvision_vgg16_bn(tmp_path) -> None:
    torch.manual_seed(4)
    features = tvm.vgg16_bn(weights=None).features  # classifier left out of the file to keep it small
    state = {f"features.{k}": v for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    torch.save(state, tmp_path / "vgg.pth")
    net = build_backbone("vgg16_bn")
    load_backbone_weights(net, tmp_path / "vgg.pth")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x)[-1], features.eval()(net.prepare(x)))


def test_torchvision_alexnet_lacks_batch_norm(tmp_path) -> None:
    state = {f"features.{k}": v for k, v in tvm.alexnet(weights=None).features.state_dict().items()}
    torch.save(state, tmp_path / "alex.pth")
    with pytest.raises(ValueError, match="alex.pth") as err:
        load_backbone_weights(build_backbone("alexnet"), tmp_path / "alex.pth")
    missing = str(err.value).split("shape mismatches")[0]
    assert "body.1.running_mean" in missing and "body.0.weight" not in missing  # only BN is missing


def test_missing_and_mismatched_keys(tmp_path) -> None:
    state = build_backbone("resnet18").state_dict()
    del state["layer2.0.bn1.weight"]
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth.*layer2\.0\.bn1\.weight"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "partial.pth")
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in state.items()}}, tmp_path / "rgb.ckpt")
    with pytest.raises(
        ValueError, match=r"conv1\.weight \(file \(64, 3, 7, 7\) vs backbone \(64, 1, 7, 7\)\)"
    ):
        load_backbone_weights(build_backbone("resnet18", in_chans=1), tmp_path / "rgb.ckpt")
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, tmp_path / "nobackbone.ckpt")
    with pytest.raises(ValueError, match="backbone"):
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "nobackbone.ckpt")


def _moco_v2_checkpoint(encoder: dict[str, torch.Tensor]) -> dict:
    """A MoCo v2 training checkpoint around a ResNet state dict: query and key encoders with the
    projection MLP in ``fc``, the queue, optimiser state."""
    state = {}
    for name in ("encoder_q", "encoder_k"):
        state |= {f"module.{name}.{k}": v.clone() for k, v in encoder.items() if not k.startswith("fc.")}
        state |= {f"module.{name}.fc.0.weight": torch.zeros(512, 512), f"module.{name}.fc.2.weight": torch.zeros(128, 512)}
    state |= {"module.queue": torch.zeros(128, 16), "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet18", "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}


def test_load_moco_and_simclr_checkpoints(tmp_path) -> None:
    torch.manual_seed(5)
    encoder = tvm.resnet18(weights=None).state_dict()
    torch.save(_moco_v2_checkpoint(encoder), tmp_path / "moco_v2.pth.tar")
    net = build_backbone("resnet18")
    report = load_backbone_weights(net, tmp_path / "moco_v2.pth.tar")
    assert report.source == "module.encoder_q." and report.loaded == len(net.state_dict())
    assert all(torch.equal(v, encoder[k]) for k, v in net.state_dict().items())
    assert "module.encoder_q.fc.0.weight" in report.ignored and "module.queue" in report.ignored
    # SimCLR-style: the encoder under ``encoder.``, a projection head beside it, no ``state_dict`` wrapper
    torch.manual_seed(6)
    encoder = tvm.resnet18(weights=None).state_dict()
    simclr = {f"encoder.{k}": v for k, v in encoder.items()} | {"projector.0.weight": torch.zeros(64, 512)}
    torch.save(simclr, tmp_path / "simclr.pt")
    report = load_backbone_weights(net, tmp_path / "simclr.pt")
    assert report.source == "encoder." and set(report.ignored) == {"encoder.fc.weight", "encoder.fc.bias",
                                                                   "projector.0.weight"}
    assert all(torch.equal(v, encoder[k]) for k, v in net.state_dict().items())


def test_moco_checkpoint_of_another_architecture_names_the_unmatched_keys(tmp_path) -> None:
    encoder = tvm.resnet18(weights=None).state_dict()
    encoder["layer5.0.conv1.weight"] = encoder.pop("layer4.0.conv1.weight")  # renamed: matches nothing
    torch.save(_moco_v2_checkpoint(encoder), tmp_path / "moco.pth.tar")
    with pytest.raises(ValueError, match=r"moco\.pth\.tar") as err:
        load_backbone_weights(build_backbone("resnet18"), tmp_path / "moco.pth.tar")
    message = str(err.value)
    assert "missing keys ['layer4.0.conv1.weight']" in message
    assert "match none ['module.encoder_q.layer5.0.conv1.weight']" in message
    assert "module.encoder_q." in message
    with pytest.raises(ValueError, match=r"missing keys \[.*layer1\.0\.conv3\.weight"):  # ResNet-18 file, ResNet-50 net
        load_backbone_weights(build_backbone("resnet50"), tmp_path / "moco.pth.tar")


class NotAllowed:
    """A custom class: loading an instance needs arbitrary unpickling."""


def test_unreadable_files(tmp_path) -> None:
    net = build_backbone("alexnet")
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        load_backbone_weights(net, tmp_path / "nothere.pth")
    torch.save({"state_dict": {}, "extra": NotAllowed()}, tmp_path / "unsafe.ckpt")
    with pytest.raises(ValueError, match=r"refused.*unsafe\.ckpt|unsafe\.ckpt.*refused") as err:
        load_backbone_weights(net, tmp_path / "unsafe.ckpt")
    assert "safety" in str(err.value)
    torch.save(net.state_dict(), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated\.pth.*(truncated|corrupt)"):
        load_backbone_weights(net, tmp_path / "truncated.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth"):
        load_backbone_weights(net, tmp_path / "list.pth")


# --- release options: embeddings, Caffe AlexNet, batch norm without affine parameters, initialisations ---


def test_embedding_kinds() -> None:
    net, x = cached("alexnet", 3), torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        pool5, prerelu, avg = (net.embed(x, kind) for kind in ("pool5", "pool5_prerelu", "pool5_avg"))
    assert pool5.min() >= 0 and prerelu.min() < 0  # ReLU before pool5 vs the pre-activation
    torch.testing.assert_close(prerelu.clamp_min(0), pool5)  # max-pool and ReLU commute
    torch.testing.assert_close(avg, net(x)[-1].mean(dim=(2, 3)))
    assert avg.shape[1] == net.embed_dim(HW, "pool5_avg") == 256
    assert prerelu.shape[1] == net.embed_dim(HW, "pool5_prerelu") == pool5.shape[1]
    with pytest.raises(ValueError, match="unknown embedding 'fc7'"):
        net.embed(x, "fc7")
    with pytest.raises(ValueError, match="resnet18: embedding 'pool5_prerelu' is not available"):
        cached("resnet18", 3).embed(x, "pool5_prerelu")


def test_caffe_alexnet_matches_the_release() -> None:
    net = build_backbone("alexnet_caffe", bn_affine=False)
    with torch.no_grad():
        pool5 = net(torch.rand(1, 3, 128, 128))[-1]
    assert pool5.shape == (1, 256, 4, 4) and net.embed_dim((128, 128)) == 4096
    # conv weights and biases only: 96*3*11*11 + 256*48*5*5 + 384*256*3*3 + 384*192*3*3 + 256*192*3*3 + biases
    assert sum(p.numel() for p in net.parameters()) == 2_334_080
    assert sum(isinstance(m, torch.nn.LocalResponseNorm) for m in net.modules()) == 2
    assert [m.groups for m in net.modules() if isinstance(m, torch.nn.Conv2d)] == [1, 2, 1, 2, 2]


def test_bn_without_affine_has_fewer_tensors() -> None:
    affine, plain = build_backbone("alexnet"), build_backbone("alexnet", bn_affine=False)
    bn_params = 2 * (64 + 192 + 384 + 256 + 256)
    assert sum(p.numel() for p in affine.parameters()) - sum(p.numel() for p in plain.parameters()) == bn_params
    assert len(affine.state_dict()) - len(plain.state_dict()) == 2 * 5
    assert all(not m.affine for m in plain.modules() if isinstance(m, torch.nn.BatchNorm2d))
    with pytest.raises(ValueError, match="only bn_affine=True"):
        build_backbone("resnet18", bn_affine=False)
    with pytest.raises(ValueError, match=r"unknown backbone options \['width'\]"):
        build_backbone("alexnet", width=2)


def test_initialisations() -> None:
    torch.manual_seed(0)
    gauss = build_backbone("alexnet_caffe", init="gaussian")
    convs = [m for m in gauss.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(abs(float(c.weight.detach().std()) - 0.01) < 0.001 for c in convs)
    assert [float(c.bias.mean()) for c in convs] == pytest.approx([0.0, 0.1, 0.0, 0.1, 0.1])
    xavier = build_backbone("vgg16_bn", init="xavier")
    for conv in (m for m in xavier.modules() if isinstance(m, torch.nn.Conv2d)):
        bound = (3 / conv.weight[0].numel()) ** 0.5  # Caffe's Xavier filler: U(-sqrt(3/fan_in), +)
        assert float(conv.weight.abs().max()) <= bound and float(conv.weight.abs().max()) > 0.9 * bound
        assert float(conv.bias.abs().max()) == 0.0
    with pytest.raises(ValueError, match="unknown init 'orthogonal'"):
        build_backbone("alexnet", init="orthogonal")


def test_hypercolumn_taps_are_the_input_and_every_conv() -> None:
    """``feature_taps="hypercolumn"``: the prepared input, the 13 conv activations of VGG-16, pool5 last."""
    net = build_backbone("vgg16_bn", feature_taps="hypercolumn")
    widths = [64] * 2 + [128] * 2 + [256] * 3 + [512] * 6
    assert net.out_channels == [3, *widths, 512]
    assert net.out_strides == [1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8, 16, 16, 16, 32]
    x = torch.rand(1, 3, 64, 64)
    maps = net.features(x)
    assert [m.shape[1] for m in maps] == net.out_channels
    assert [64 // m.shape[-1] for m in maps] == net.out_strides
    torch.testing.assert_close(maps[0], net.prepare(x))
    default = build_backbone("vgg16_bn")
    default.load_state_dict(net.state_dict())  # the same parameters: only the taps differ
    torch.testing.assert_close(default.features(x)[-1], maps[-1])
    with pytest.raises(ValueError, match="feature_taps='default'"):
        build_backbone("resnet18", feature_taps="hypercolumn")

"""``mnm import-caffe``: synthetic .caffemodel files written field by field import exactly, bad ones are refused
in one line, and the checkpoint starts stages, ``mnm probe`` and a pipeline's M&M stage."""

from __future__ import annotations

import io
import json
import struct
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mnm.cli import main
from mnm.runs.config import load_pipeline
from mnm.runs.runner import PipelineRunner
from mnm.weights.caffe_mapping import EXTRA_KEY, map_onto_backbone
from mnm.weights.caffe_proto import CaffeImportError, read_caffemodel
from mnm.weights.checkpoints import read_checkpoint

REPO = Path(__file__).resolve().parents[1]
ALEXNET = [("conv1", 96, 3, 11, 1), ("conv2", 256, 96, 5, 2), ("conv3", 384, 256, 3, 1), ("conv4", 384, 384, 3, 2),
           ("conv5", 256, 384, 3, 2)]  # name, out, in, kernel, groups: Krizhevsky's grouped AlexNet
VGG16 = [(f"conv{b}_{i}", w) for b, (w, n) in enumerate([(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)], 1)
         for i in range(1, n + 1)]


# -- a protobuf writer, field by field (the wire format the reader decodes) -----------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def tag(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def length_delimited(number: int, payload: bytes) -> bytes:
    return tag(number, 2) + varint(len(payload)) + payload


def blob_message(values: np.ndarray, legacy_dims: bool, packed: bool = True) -> bytes:
    """A BlobProto: shape (7: BlobShape with packed dim 1) or legacy num/channels/height/width (1-4),
    data (5) packed or one fixed32 per value."""
    if legacy_dims:
        dims = (1,) * (4 - values.ndim) + values.shape
        out = b"".join(tag(n, 0) + varint(d) for n, d in zip((1, 2, 3, 4), dims, strict=True))
    else:
        out = length_delimited(7, length_delimited(1, b"".join(varint(d) for d in values.shape)))
    floats = values.astype("<f4").ravel()
    if packed or floats.size > 1000:  # unpacked: small blobs only (one tag per value is slow to write)
        return out + length_delimited(5, floats.tobytes())
    return out + b"".join(tag(5, 5) + struct.pack("<f", v) for v in floats)


@dataclass
class Layer:
    name: str
    type: str
    bottom: str
    top: str
    blobs: list[np.ndarray] = field(default_factory=list)
    conv: tuple[int, int] | None = None  # pad, stride


V1_TYPES = {"Convolution": 4, "InnerProduct": 14, "ReLU": 18, "Pooling": 17, "LRN": 15}


def net_bytes(layers: list[Layer], v1: bool = False, legacy_dims: bool = False, packed: bool = True) -> bytes:
    """A NetParameter: ``layer`` (100, LayerParameter: name 1, type 2, bottom 3, top 4, blobs 7, conv 106) or
    legacy ``layers`` (2, V1LayerParameter: bottom 2, top 3, name 4, type 5 as an enum, blobs 6, conv 10)."""
    out = length_delimited(1, b"synthetic")
    for layer in layers:
        if v1:
            body = (length_delimited(2, layer.bottom.encode()) + length_delimited(3, layer.top.encode())
                    + length_delimited(4, layer.name.encode()) + tag(5, 0) + varint(V1_TYPES[layer.type]))
        else:
            body = (length_delimited(1, layer.name.encode()) + length_delimited(2, layer.type.encode())
                    + length_delimited(3, layer.bottom.encode()) + length_delimited(4, layer.top.encode()))
        body += b"".join(length_delimited(6 if v1 else 7, blob_message(b, legacy_dims, packed)) for b in layer.blobs)
        if layer.conv:
            body += length_delimited(10 if v1 else 106, tag(3, 0) + varint(layer.conv[0]) + tag(6, 0) + varint(layer.conv[1]))
        out += length_delimited(2 if v1 else 100, body)
    return out


def conv_net(convs: list[tuple[str, int, int, int, int]], norm: str | None, seed: int, suffix: str = "",
             head: bool = True) -> list[Layer]:
    """Seeded conv layers, each followed by ``norm`` (None, ``BatchNorm``, ``BatchNorm+Scale`` or ``BN``) and a
    ReLU, then a head (fc6 InnerProduct, fc8 classifier) the backbone does not use."""
    g = np.random.default_rng(seed)
    layers, bottom = [], "data"
    for name, out, cin, k, groups in convs:
        top = name + suffix
        layers.append(Layer(top, "Convolution", bottom, top, [g.standard_normal((out, cin // groups, k, k)),
                                                              g.standard_normal(out)]))
        if norm and norm.startswith("BatchNorm"):
            stats = [g.standard_normal(out) * 4, g.random(out) * 9 + 0.1, np.array([2.5 if out % 3 else 0.0])]
            layers.append(Layer(f"batch_{name}", "BatchNorm", top, top, stats))
            if norm.endswith("Scale"):
                layers.append(Layer(f"scale_{name}", "Scale", top, top, [g.random(out) + 0.5, g.standard_normal(out)]))
        elif norm == "BN":
            blobs = [g.random((1, out, 1, 1)) + 0.5, g.standard_normal((1, out, 1, 1)),
                     g.standard_normal((1, out, 1, 1)), g.random((1, out, 1, 1)) + 0.1]
            layers.append(Layer(f"batch_{name}", "BN", top, f"{top}_bn", blobs))
            top = f"{top}_bn"
        layers.append(Layer(f"relu_{name}", "ReLU", top, top))
        bottom = top
    if head:
        pool5 = convs[-1][1] * 36
        layers += [Layer("fc6", "InnerProduct", bottom, "fc6", [g.standard_normal((8, pool5)), g.standard_normal(8)]),
                   Layer("fc8", "InnerProduct", "fc6", "fc8", [g.standard_normal((3, 8)), g.standard_normal(3)])]
    return layers


def alexnet(norm: str | None = "BatchNorm", seed: int = 0, in_chans: int = 3, suffix: str = "") -> list[Layer]:
    convs = [(ALEXNET[0][0], 96, in_chans, 11, 1), *ALEXNET[1:]]
    return conv_net(convs, norm, seed, suffix)


def write(path: Path, layers: list[Layer], **kw) -> Path:
    path.write_bytes(net_bytes(layers, **kw))
    return path


def expected_bn(layers: list[Layer], name: str) -> dict[str, np.ndarray]:
    """What Caffe's batch norm after conv ``name`` computes, as torch BatchNorm2d tensors."""
    by_name = {layer.name: layer for layer in layers}
    norm = by_name.get(f"batch_{name}")
    if norm is None:  # --identity-bn
        return {}
    if norm.type == "BN":
        return dict(zip(("weight", "bias", "running_mean", "running_var"), (b.ravel() for b in norm.blobs),
                        strict=True))
    factor = np.float32(norm.blobs[2][0])
    inverse = np.float32(0 if factor == 0 else 1 / factor)  # Caffe scales in float32
    out = {"running_mean": norm.blobs[0].astype(np.float32) * inverse, "running_var": norm.blobs[1].astype(np.float32) * inverse}
    if f"scale_{name}" in by_name:
        out |= dict(zip(("weight", "bias"), by_name[f"scale_{name}"].blobs, strict=True))
    return out


def assert_imported(state: dict[str, torch.Tensor], layers: list[Layer], names: list[str], suffix: str = "") -> None:
    """Every conv weight and bias and every batch-norm tensor of the state dict equals the file's (float32)."""
    by_name = {layer.name: layer for layer in layers}
    convs = sorted({int(k.split(".")[1]) for k in state if k.endswith(".weight") and state[k].ndim == 4})
    assert len(convs) == len(names)
    for j, name in zip(convs, names, strict=True):
        weight, bias = by_name[name + suffix].blobs
        assert torch.equal(state[f"body.{j}.weight"], torch.from_numpy(weight.astype(np.float32)))
        assert torch.equal(state[f"body.{j}.bias"], torch.from_numpy(bias.astype(np.float32)))
        for key, value in expected_bn(layers, name).items():
            assert torch.equal(state[f"body.{j + 1}.{key}"], torch.from_numpy(value.astype(np.float32))), (name, key)


# -- exact imports -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("norm", "affine"), [("BatchNorm", False), ("BatchNorm+Scale", True)])
def test_caffe_alexnet_with_grouped_convs_imports_exactly(tmp_path: Path, norm: str, affine: bool) -> None:
    layers = alexnet(norm)
    read, form = read_caffemodel(write(tmp_path / "alexnet.caffemodel", layers))
    assert form == "layer" and [r.name for r in read] == [layer.name for layer in layers]
    result = map_onto_backbone(read, "alexnet_caffe")
    assert result.arch == {"name": "alexnet_caffe", "in_chans": 3, "bn_affine": affine, "input_norm": "caffe_bgr"}
    assert_imported(result.backbone.state_dict(), layers, [c[0] for c in ALEXNET])
    # the zero scale factor (every third width is divisible by 3) gives zero statistics, as in Caffe
    assert torch.count_nonzero(result.backbone.body[1].running_var) == 0
    # fc6 (an InnerProduct over pool5) is kept as the 6×6 convolution the FCN head uses; both head layers warn
    fc6 = result.extra["fc6"][0]
    assert fc6.shape == (8, 256, 6, 6) and torch.equal(fc6.flatten(1), torch.from_numpy(layers[-2].blobs[0]).float())
    assert result.extra["fc8"][0].shape == (3, 8, 1, 1)  # the layers after fc6 read vectors: 1×1
    assert "fc6" in result.warnings[-1] and "fc8" in result.warnings[-1] and EXTRA_KEY in result.warnings[-1]


def test_legacy_v1_layers_with_legacy_blob_dims_and_unpacked_floats(tmp_path: Path) -> None:
    """A V1 ``layers`` net (no batch norm: V1 has none) with num/channels/height/width blob shapes and
    unpacked floats (the biases)."""
    layers = alexnet(norm=None, seed=1)
    path = write(tmp_path / "v1.caffemodel", layers, v1=True, legacy_dims=True, packed=False)
    read, form = read_caffemodel(path)
    assert form == "layers (V1)" and read[0].type == "Convolution" and read[-1].type == "InnerProduct"
    with pytest.raises(CaffeImportError, match=r"no BatchNorm or BN layer after conv1, conv2.*--identity-bn"):
        map_onto_backbone(read, "alexnet_caffe")
    result = map_onto_backbone(read, "alexnet_caffe", identity_bn=True)
    assert_imported(result.backbone.state_dict(), layers, [c[0] for c in ALEXNET])
    # identity batch norm: evaluation passes a conv's output through unchanged
    bn = result.backbone.body[1].eval()
    x = torch.randn(2, 96, 5, 5)
    torch.testing.assert_close(bn(x), x, rtol=0, atol=1e-6)


def test_vgg16_with_the_release_bn_layers_and_a_gray_input(tmp_path: Path) -> None:
    """The M&M release's colorization VGG-16: gray conv1_1, its own ``BN`` layers (slope, bias, mean, variance)
    with shapes 1×C×1×1 and new tops, fc6 as an InnerProduct over the 7×7 pool5."""
    convs = [(name, width, 1 if i == 0 else VGG16[i - 1][1], 3, 1) for i, (name, width) in enumerate(VGG16)]
    layers = conv_net(convs, "BN", seed=2, head=False)
    g = np.random.default_rng(3)
    layers.append(Layer("fc6", "InnerProduct", layers[-1].top, "fc6", [g.standard_normal((4, 512 * 49)), np.zeros(4)]))
    result = map_onto_backbone(read_caffemodel(write(tmp_path / "vgg.caffemodel", layers))[0], "vgg16_bn")
    assert result.arch == {"name": "vgg16_bn", "in_chans": 1, "bn_affine": True, "input_norm": "caffe_bgr"}
    assert_imported(result.backbone.state_dict(), layers, [name for name, _ in VGG16])
    assert result.extra["fc6"][0].shape == (4, 512, 7, 7)
    assert result.mapping["conv5_3"] == ["conv5_3", "batch_conv5_3"]


def test_statistics_only_batch_norm_imports_as_affine_with_unit_scale(tmp_path: Path) -> None:
    layers = alexnet("BatchNorm", seed=4)
    result = map_onto_backbone(read_caffemodel(write(tmp_path / "a.caffemodel", layers))[0], "alexnet_caffe",
                               bn_affine=True)
    bn = result.backbone.body[6]  # after conv2
    assert result.arch["bn_affine"] is True and torch.equal(bn.weight, torch.ones(256))
    assert torch.equal(bn.bias, torch.zeros(256))
    assert_imported(result.backbone.state_dict(), layers, [c[0] for c in ALEXNET])


# -- refusals ----------------------------------------------------------------------------------------------
def test_a_truncated_file_names_the_byte_and_layer(tmp_path: Path) -> None:
    data = net_bytes(alexnet())
    path = tmp_path / "cut.caffemodel"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CaffeImportError) as err:
        read_caffemodel(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    assert "truncated or corrupt at byte" in message and "in layer #6 'conv3' (the one after 'relu_conv2')" in message


def test_a_wrong_backbone_lists_the_missing_and_unmapped_layers(tmp_path: Path) -> None:
    read, _ = read_caffemodel(write(tmp_path / "a.caffemodel", alexnet()))
    with pytest.raises(CaffeImportError) as err:
        map_onto_backbone(read, "vgg16_bn")
    message = str(err.value)
    assert "\n" not in message
    assert "missing layers conv1_1, conv1_2, conv2_1" in message
    assert "weighted layers that map to nothing: conv1 (Convolution), batch_conv1 (BatchNorm)" in message
    with pytest.raises(CaffeImportError, match="cannot take Caffe weights"):
        map_onto_backbone(read, "resnet50")


def test_a_shape_mismatch_and_an_unmapped_layer_are_listed_in_one_error(tmp_path: Path) -> None:
    layers = alexnet()
    conv3 = next(layer for layer in layers if layer.name == "conv3")
    conv3.blobs[0] = conv3.blobs[0][:, :128]  # as if conv3 were grouped
    layers.insert(3, Layer("conv1b", "Convolution", "conv1", "conv1b", [np.zeros((2, 2, 1, 1))]))
    with pytest.raises(CaffeImportError) as err:
        map_onto_backbone(read_caffemodel(write(tmp_path / "a.caffemodel", layers))[0], "alexnet_caffe")
    message = str(err.value)
    assert "conv3 (body.10.weight: file 384×128×3×3 vs backbone 384×256×3×3)" in message
    assert "weighted layers that map to nothing: conv1b (Convolution)" in message
    assert "fc6" not in message  # layers after the backbone are not the error


def test_jigsaw_names_shared_towers_and_a_different_conv_geometry(tmp_path: Path) -> None:
    """Noroozi & Favaro's tower names (``conv1_s1``) map, a second tower sharing the weights (``conv2_s2``)
    is loaded once, and a pad the backbone does not have is a warning."""
    layers = alexnet(suffix="_s1")
    layers[0].conv = (0, 4)  # classic AlexNet's conv1: pad 0; the release's (and the backbone's) is 5
    conv2 = next(layer for layer in layers if layer.name == "conv2_s1")
    layers.insert(layers.index(conv2) + 1, Layer("conv2_s2", "Convolution", "x", "y", conv2.blobs))
    result = map_onto_backbone(read_caffemodel(write(tmp_path / "j.caffemodel", layers))[0], "alexnet_caffe")
    assert_imported(result.backbone.state_dict(), layers, [c[0] for c in ALEXNET], suffix="_s1")
    assert result.warnings[0] == "conv1_s1: stride 4 pad 0 in the file, stride 4 pad 5 in the backbone"
    assert result.warnings[1].endswith("(siamese towers), loaded once: conv2_s2")
    # a tower whose weights differ is not the same network: it maps to nothing
    layers[layers.index(conv2) + 1].blobs = [-b for b in conv2.blobs]
    with pytest.raises(CaffeImportError, match=r"weighted layers that map to nothing: conv2_s2 \(Convolution\)$"):
        map_onto_backbone(read_caffemodel(write(tmp_path / "k.caffemodel", layers))[0], "alexnet_caffe")


# -- the checkpoint in use ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``mnm import-caffe`` of a Caffe AlexNet with statistics-only batch norm (the release's jigsaw net)."""
    folder = tmp_path_factory.mktemp("caffe")
    model = write(folder / "jigsaw.caffemodel", alexnet("BatchNorm", seed=5))
    out = folder / "jigsaw.ckpt"
    with redirect_stdout(io.StringIO()) as stdout, redirect_stderr(io.StringIO()) as stderr:
        main(["import-caffe", str(model), "--backbone", "alexnet_caffe", "--out", str(out)])
    assert "5 convs" in stdout.getvalue() and "bn_affine=False" in stdout.getvalue()
    assert "mnm: warning: layers after the backbone" in stderr.getvalue()
    return out


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data") / "synthetic"
    main(["data", "synth", "--root", str(root), "--num-train", "8", "--num-val", "4", "--size", "64", "64"])
    return root


def test_import_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = write(tmp_path / "a.caffemodel", alexnet())
    with pytest.raises(SystemExit) as exit_code:
        main(["import-caffe", str(model), "--backbone", "vgg16_bn", "--out", str(tmp_path / "x.ckpt")])
    stderr = capsys.readouterr().err
    assert exit_code.value.code == 1 and stderr.startswith("mnm: error: ")
    assert "missing layers conv1_1" in stderr.splitlines()[0] and not (tmp_path / "x.ckpt").exists()


def test_the_checkpoint_records_the_input_convention_and_the_handoff_checks_it(imported: Path) -> None:
    from mnm.weights.record import ARCH_KEY, check_backbone_matches

    contents = read_checkpoint(imported)
    assert contents[ARCH_KEY] == {"name": "alexnet_caffe", "in_chans": 3, "bn_affine": False,
                                  "input_norm": "caffe_bgr"}
    assert set(contents[EXTRA_KEY]) == {"fc6", "fc8"}
    check_backbone_matches(str(imported), contents, "alexnet_caffe", 3, {"bn_affine": False, "input_norm": "caffe_bgr"})
    with pytest.raises(ValueError, match="in_chans=3 .* in_chans=1"):
        check_backbone_matches(str(imported), contents, "alexnet_caffe", 1,
                               {"bn_affine": False, "input_norm": "caffe_bgr"})


def test_the_probe_scores_the_imported_checkpoint(imported: Path, synthetic_root: Path, tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text(yaml.safe_dump({"data": {"class_path": "mnm.datamodules.SyntheticDataModule", "init_args": {
        "root": str(synthetic_root), "num_train": 8, "num_val": 4, "image_size": [64, 64], "crop_size": [64, 64],
        "batch_size": 4}}}))
    out = tmp_path / "probe.json"
    with redirect_stdout(io.StringIO()):
        main(["probe", str(imported), "--data", str(data), "--patch-out-size", "64", "--json", str(out)])
    (result,) = json.loads(out.read_text())["results"]
    assert result["model"] == str(imported) and 0.0 <= result["knn_acc"] <= 1.0


PIPELINE = """
name: imported_proxy
seed: 0
vars: {data_root: data/x, proxy_weights: null, mm_weights: null}
defaults:
  - conf/trainer/cpu.yaml
  - data:
      class_path: mnm.datamodules.SyntheticDataModule
      init_args: {root: "${data_root}", num_train: 8, num_val: 4, image_size: [64, 64], crop_size: [64, 64],
                  batch_size: 4, val_batch_size: 4}
    trainer: {max_steps: 2, enable_progress_bar: false, enable_model_summary: false, limit_val_batches: 1}
    model: {backbone: alexnet_caffe, backbone_kwargs: {bn_affine: false, input_norm: caffe_bgr}}
wandb: {enabled: false}
stages:
  - {name: proxy, stage: jigsaw, final_weights: "${proxy_weights}"}
  - {name: mix_match, stage: mix-match, final_weights: "${mm_weights}",
     model: {patches_per_image: 2, patch_size_range: [24, 48], patch_out_size: 64}}
  - {name: finetune, stage: segment, evaluate: val}
"""


@pytest.mark.slow
def test_a_pipeline_starts_mix_match_from_an_imported_proxy(imported: Path, synthetic_root: Path,
                                                            tmp_path: Path) -> None:
    path = tmp_path / "imported_proxy.yaml"
    path.write_text(PIPELINE)
    sets = [f"data_root={synthetic_root}", f"proxy_weights={imported}"]
    pipeline = load_pipeline(path, sets, out_dir=str(tmp_path / "run"))
    PipelineRunner(pipeline).run()
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert manifest["proxy"]["status"] == "given" and manifest["proxy"]["checkpoint"] == str(imported)
    assert not (tmp_path / "run" / "proxy").exists()  # the proxy stage did not run
    assert manifest["mix_match"]["pretrained_backbone"] == str(imported)
    assert manifest["finetune"]["status"] == "finished" and "score" in manifest["finetune"]
    # an M&M-tuned model: fine-tuned and evaluated at once, the proxy stage (needed by no stage) not run
    PipelineRunner(load_pipeline(path, [sets[0], f"mm_weights={imported}"], out_dir=str(tmp_path / "mm"))).run()
    manifest = json.loads((tmp_path / "mm" / "manifest.json").read_text())["stages"]
    assert set(manifest) == {"mix_match", "finetune"} and manifest["mix_match"]["status"] == "given"
    assert manifest["finetune"]["pretrained_backbone"] == str(imported) and "score" in manifest["finetune"]
    # a stage that cannot take the imported weights is refused before anything runs
    gray = load_pipeline(path, [*sets, "model.in_chans=1"], out_dir=str(tmp_path / "gray"))
    with pytest.raises(ValueError, match="was trained with .*in_chans=3.* configured with .*in_chans=1"):
        PipelineRunner(gray).check()


@pytest.mark.parametrize("name", ["voc_colorize_alexnet_graph", "voc_jigsaw_alexnet_random", "voc_colorize_vgg16_graph",
                                  "cityscapes_colorize_vgg16_random"])
def test_paper_pipelines_take_imported_proxy_and_mm_weights(name: str, imported: Path, tmp_path: Path) -> None:
    path = REPO / "conf" / "pipelines" / f"{name}.yaml"
    plain = load_pipeline(path)
    assert [s.name for s in plain.stages] == ["proxy", "mix_match", "finetune"]
    assert not any(s.final_weights for s in plain.stages)
    for var, given_stage, not_run in (("proxy_weights", "proxy", {"proxy"}), ("mm_weights", "mix_match", {"proxy", "mix_match"})):
        given = load_pipeline(path, [f"{var}={imported}"], out_dir=str(tmp_path / var))
        assert [s.final_weights for s in given.stages if s.name == given_stage] == [str(imported)]
        assert [s.config for s in given.stages] == [s.config for s in plain.stages]
        assert PipelineRunner(given).stages_not_run() == not_run


@pytest.mark.parametrize(("name", "fits"), [("voc_jigsaw_alexnet_graph", True), ("voc_colorize_alexnet_graph", False)])
def test_a_paper_pipeline_checks_the_imported_proxy_before_it_runs(name: str, fits: bool, imported: Path,
                                                                    tmp_path: Path) -> None:
    """The imported RGB jigsaw net fits the jigsaw pipeline's M&M stage; the gray colorization pipeline refuses it
    (the pre-flight check lists it with the problems of the missing VOC data and GPU)."""
    pipeline = load_pipeline(REPO / "conf" / "pipelines" / f"{name}.yaml", [f"proxy_weights={imported}"],
                             out_dir=str(tmp_path / "run"))
    with pytest.raises(ValueError) as err:
        PipelineRunner(pipeline).check()
    refusal = f"stage 'mix_match' (mix-match): pretrained_backbone {imported} was trained with"
    assert (refusal in str(err.value)) is not fits
    assert "stage 'proxy'" not in str(err.value)  # not run: its data is not needed


def test_import_cli_never_replaces_its_input_or_an_existing_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = write(tmp_path / "a.caffemodel", alexnet())
    original = model.read_bytes()
    (tmp_path / "link.ckpt").symlink_to(model)
    (tmp_path / "folder").mkdir()
    refusals = {
        str(model): "is the input caffemodel",
        str(tmp_path / "link.ckpt"): "is the input caffemodel",
        str(tmp_path / "folder"): "is a folder; name the checkpoint file to write",
        str(tmp_path / "missing" / "x.ckpt"): f"the folder {tmp_path / 'missing'} does not exist",
    }
    for out, reason in refusals.items():
        with pytest.raises(SystemExit) as exit_code:
            main(["import-caffe", str(model), "--backbone", "alexnet_caffe", "--out", out, "--overwrite"])
        stderr = capsys.readouterr().err
        assert exit_code.value.code == 1 and stderr.startswith(f"mnm: error: --out {out}") and reason in stderr
    assert model.read_bytes() == original and not (tmp_path / "missing").exists()
    out = tmp_path / "a.ckpt"
    out.write_text("keep me")
    with pytest.raises(SystemExit):
        main(["import-caffe", str(model), "--backbone", "alexnet_caffe", "--out", str(out)])
    assert "exists; add --overwrite to replace it" in capsys.readouterr().err and out.read_text() == "keep me"
    main(["import-caffe", str(model), "--backbone", "alexnet_caffe", "--out", str(out), "--overwrite"])
    assert "body.0.weight" in "".join(read_checkpoint(out)["state_dict"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.caffemodel", "a.ckpt", "folder", "link.ckpt"]  # no temp


def test_a_text_file_or_a_file_cut_in_its_first_layer_says_what_it_is(tmp_path: Path) -> None:
    prototxt = tmp_path / "deploy.prototxt"
    prototxt.write_text('name: "AlexNet"\nlayer {\n  name: "conv1"\n  type: "Convolution"\n}\n')
    with pytest.raises(CaffeImportError, match=r"not a binary Caffe model .*; it reads as text \(a \.prototxt\?\)"):
        read_caffemodel(prototxt)
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(net_bytes(alexnet())[:40])
    with pytest.raises(CaffeImportError, match=r"in layer #0 'conv1' \(the first one\)"):
        read_caffemodel(cut)

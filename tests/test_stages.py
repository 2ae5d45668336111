"""Every stage runs (fast_dev_run) through the same LightningCLI the `mnm <stage>` commands use."""

from __future__ import annotations

import warnings
from argparse import ArgumentError
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import synthetic_data
from PIL import Image

from mnm.cli import main
from mnm.runs.stage_cli import build_stage
from mnm.stages import STAGES
from mnm.stages.pixel_contrast import PixelContrastStage

TRAINER = {"fast_dev_run": 2, "accelerator": "cpu", "logger": False, "enable_checkpointing": False,
           "enable_progress_bar": False, "enable_model_summary": False}
MODELS = {
    "classify": {"backbone": "resnet18", "triplets": "graph"},
    "cluster": {"backbone": "alexnet", "num_clusters": 6, "channels": 16, "kmeans_pixels_per_image": 32},
    "colorize": {"backbone": "alexnet"},
    "jigsaw": {"backbone": "alexnet", "num_permutations": 10, "tile": 64},
    "mix-match": {"backbone": "alexnet", "patches_per_image": 3, "patch_size_range": [16, 40], "patch_out_size": 64},
    "pixel-contrast": {"backbone": "alexnet", "mode": "within", "feature_maps": [3], "projection_channels": 32},
    "segment": {"backbone": "alexnet"},
    "semi": {"backbone": "alexnet", "threshold": 0.0},
}
#: data settings a stage kind needs beyond the shared ones
DATA = {"semi": {"train_on": "semi", "labeled_fraction": 0.5}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    return synthetic_data(tmp_path_factory.mktemp("synthetic") / "data", side=96, crop=80)


#: the data of the stage kinds that do not train on segmentation batches
OTHER_DATA = {"classify": {"class_path": "mnm.datamodules.SyntheticClassificationDataModule",
                           "init_args": {"num_train": 18, "num_val": 9, "image_size": 48, "crop_size": 32,
                                         "resize_size": 36, "batch_size": 6, "val_batch_size": 9}}}


@pytest.mark.slow
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_fast_dev_run(stage: str, data: dict, tmp_path: Path) -> None:
    data = OTHER_DATA.get(stage, data)
    data = {**data, "init_args": {**data["init_args"], **DATA.get(stage, {})}}
    trainer = {**TRAINER, "default_root_dir": str(tmp_path)}  # a label subset writes its lists there
    cli = build_stage(stage, {"model": MODELS[stage], "data": data, "trainer": trainer})
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.callback_metrics
    assert "train/loss" in logged or "train/loss_step" in logged, sorted(logged)
    assert all(np.isfinite(float(v)) for v in logged.values())


def test_segment_links_data_and_evaluates(data: dict) -> None:
    cli = build_stage("segment", {"model": MODELS["segment"], "data": data, "trainer": TRAINER})
    assert cli.model.hparams.num_classes == cli.datamodule.num_classes == 6
    assert cli.model.hparams.class_names == cli.datamodule.class_names
    cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)
    result = cli.model.last_eval
    assert result["split"] == "val" and len(result["per_class_iou"]) == 6
    assert float(cli.trainer.callback_metrics["val/miou"]) == pytest.approx(result["miou"])


def test_segment_tta_averages_views(data: dict) -> None:
    cli = build_stage("segment", {"model": {**MODELS["segment"], "tta_flip": True, "tta_scales": [0.75, 1.0]},
                                  "data": data, "trainer": TRAINER})
    model = cli.model.eval()
    x = torch.rand(1, 3, 96, 96)
    probs = model.predict_probs(x)
    assert probs.shape == (1, 6, 96, 96)
    assert torch.allclose(probs.sum(1), torch.ones(1, 96, 96), atol=1e-5)


def test_segment_eval_modes_agree_where_the_view_is_the_image() -> None:
    """``sliding`` with one window covering the image and ``pad`` into a square of its own size are a plain forward."""
    from mnm.stages.segment import SegmentStage

    torch.manual_seed(0)
    model = SegmentStage(backbone="alexnet", num_classes=3, eval_window=96, eval_stride=48, eval_size=96).eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        whole = model.predict_probs(x)
        for mode in ("sliding", "pad"):
            model.hparams.eval_mode = mode
            torch.testing.assert_close(model.predict_probs(x), whole)
        model.hparams.eval_mode = "sliding"
        assert model.predict_probs(torch.rand(1, 3, 80, 150)).shape == (1, 3, 80, 150)
        seen: list[torch.Tensor] = []  # what the first conv sees: the normalised canvas
        model.backbone.body[0].register_forward_pre_hook(lambda module, args: seen.append(args[0]))
        zero = -torch.tensor([0.485, 0.456, 0.406]) / torch.tensor([0.229, 0.224, 0.225])
        for fill, corner in (("mean", torch.zeros(3)), ("zero", zero)):
            model.hparams.eval_mode, model.hparams.eval_fill = "pad", fill
            model.predict_probs(torch.rand(1, 3, 48, 96))  # centred in rows 24..72 of the 96 square
            torch.testing.assert_close(seen[-1][0, :, 0, 0], corner)
    with pytest.raises(ValueError, match="model.eval_mode must be one of"):
        SegmentStage(backbone="alexnet", eval_mode="tiles")
    with pytest.raises(ValueError, match="model.eval_fill must be"):
        SegmentStage(backbone="alexnet", eval_fill="black")


def test_segment_trains_the_sparse_hypercolumn_head_on_points(data: dict) -> None:
    """The release's VGG head on any backbone's hypercolumn taps: a training step on points, dense validation."""
    head_kwargs = {"fc_channels": 32, "extra_channels": 16, "hidden": 16, "num_points": 16, "point_margin": 8}
    model = {"backbone": "alexnet", "backbone_kwargs": {"feature_taps": "hypercolumn"},
             "head": "sparse_hypercolumn", "head_kwargs": head_kwargs}  # fmt: skip
    cli = build_stage("segment", {"model": model, "data": data, "trainer": TRAINER})
    assert cli.model.head.in_channels[0] == 3  # the image is a tap
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.callback_metrics
    assert np.isfinite(float(logged["train/loss"])) and 0 <= float(logged["val/miou"]) <= 1


def test_frozen_read_out_trains_the_head_alone(data: dict) -> None:
    """``freeze_backbone``: after fitting, every backbone tensor (weights and BN statistics) is as it started."""
    cli = build_stage("segment", {"model": {"backbone": "alexnet", "freeze_backbone": True}, "data": data,
                                  "trainer": TRAINER})
    backbone = {k: v.clone() for k, v in cli.model.backbone.state_dict().items()}
    head = {k: v.clone() for k, v in cli.model.head.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = cli.model.backbone.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in backbone.items())
    assert any(not torch.equal(v, cli.model.head.state_dict()[k]) for k, v in head.items())
    cli.model.train()
    assert cli.model.head.training and not cli.model.backbone.training  # BN statistics stay fixed


@pytest.mark.parametrize(("frozen", "stray"), [(True, False), (False, True), (True, True)])
def test_modules_left_in_eval_mode_are_named_unless_frozen_on_purpose(data: dict, frozen: bool, stray: bool) -> None:
    """A module left in eval mode by mistake is warned of by name at the start of training; a frozen backbone, kept
    in eval mode on purpose, is not (Lightning's own warning names neither and counts both)."""
    cli = build_stage("segment", {"model": {"backbone": "alexnet", "freeze_backbone": frozen}, "data": data,
                                  "trainer": TRAINER})
    if stray:
        cli.model.head.eval()  # Lightning keeps the modes the modules start training in
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ours = [str(w.message) for w in caught if "which may lead to unexpected behaviour" in str(w.message)]
    if not stray:
        assert ours == []
        return
    (message,) = ours
    named = message.split(": ", 1)[1].removesuffix(" ...").split(", ")
    assert named[0] == "head" and all(name.startswith("head") for name in named)



def test_accumulated_batches_of_one_step_draw_differently(data: dict) -> None:
    """Under ``accumulate_grad_batches`` the batches of one optimiser step get their own draws; without, the step's."""
    cli = build_stage("mix-match", {"model": MODELS["mix-match"], "data": data,
                                    "trainer": {**TRAINER, "accumulate_grad_batches": 2}})  # fmt: skip
    model = cli.model

    def draw(batch_idx: int) -> float:
        return float(torch.rand(1, generator=model.training_generator(batch_idx)))

    alone = draw(1)
    assert alone == float(torch.rand(1, generator=model.step_generator(0)))  # no trainer: the step's draw
    model.trainer = cli.trainer
    assert draw(0) != draw(1) and draw(0) == draw(2) == alone


def test_predict_writes_palette_masks(data: dict, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i, size in enumerate([(70, 90), (64, 64)]):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"im{i}.jpg")
    out = tmp_path / "pred"
    data = {**data, "init_args": {**data["init_args"], "predict_dir": str(folder)}}
    cli = build_stage("segment", {"model": MODELS["segment"], "data": data,
                                  "trainer": {**TRAINER, "fast_dev_run": False,
                                              "callbacks": [{"class_path": "mnm.runs.callbacks.PaletteMaskWriter",
                                                             "init_args": {"output_dir": str(out)}}]}})
    cli.trainer.predict(cli.model, datamodule=cli.datamodule)
    masks = sorted(out.glob("*.png"))
    assert [m.name for m in masks] == ["im0.png", "im1.png"]
    first = Image.open(masks[0])
    assert first.mode == "P" and first.size == (90, 70)
    assert first.getpalette()[:6] == [c for rgb in cli.datamodule.palette[:2] for c in rgb]


def test_print_config_and_unknown_stage(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["mix-match", "fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "triplets: graph" in printed and "margin: 2.1" in printed
    with pytest.raises(SystemExit) as exit_info:
        main(["mixmatch", "fit"])
    assert exit_info.value.code == 2
    assert "unknown command 'mixmatch'" in capsys.readouterr().err


@pytest.mark.slow
def test_release_knobs_reach_the_model_and_the_next_stage(data: dict, tmp_path: Path) -> None:
    release = {**MODELS["mix-match"], "backbone": "alexnet_caffe", "embedding": "pool5_prerelu",
               "loss_normalization": "release",
               "backbone_kwargs": {"bn_affine": False, "init": "gaussian", "input_norm": "caffe_bgr"},
               "bias_lr_mult": 2, "bias_weight_decay": 0, "patch_quota": "release", "patch_fill": "mean"}  # fmt: skip
    cli = build_stage("mix-match", {"model": release, "data": data, "trainer": TRAINER})
    model = cli.model
    assert model.loss_fn.reduction == "release"
    assert model.sampler.quota == "release" and model.sampler.fill == pytest.approx((122.67892 / 255, 116.66877 / 255, 104.00699 / 255))
    assert not any(m.affine for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in groups] == [(0.01, 5e-4, 5), (0.02, 0, 5)]
    cli.trainer.fit(model, datamodule=cli.datamodule)
    assert np.isfinite(float(cli.trainer.callback_metrics["train/loss"]))
    ckpt = tmp_path / "mm.ckpt"
    cli.trainer.save_checkpoint(ckpt)
    meta = torch.load(ckpt, weights_only=True)["mnm_backbone"]
    assert meta == {"name": "alexnet_caffe", "in_chans": 3, "bn_affine": False, "init": "gaussian", "input_norm": "caffe_bgr"}

    segment = {"backbone": "alexnet_caffe", "pretrained_backbone": str(ckpt), "head_kwargs": {"num_skips": 0}}
    seg = build_stage("segment", {"model": {**segment, "backbone_kwargs": {"bn_affine": False, "input_norm": "caffe_bgr"}},
                                  "data": data, "trainer": TRAINER}).model  # fmt: skip
    assert torch.equal(seg.backbone.body[0].weight, model.backbone.body[0].weight)
    assert len(seg.head.skip_scores) == 0
    with pytest.raises(ValueError, match=r"mm\.ckpt was trained with .*bn_affine=False .*configured with .*bn_affine=True"):
        build_stage("segment", {"model": segment, "data": data, "trainer": TRAINER})
    with pytest.raises(ValueError, match=r"input_norm=caffe_bgr, but .* input_norm=imagenet"):
        build_stage("segment", {"model": {**segment, "backbone_kwargs": {"bn_affine": False}}, "data": data, "trainer": TRAINER})


def test_mid_epoch_resume_is_known_to_be_resumable(data: dict, tmp_path: Path, caplog) -> None:
    """The loaders declare their (step-keyed) state to Lightning: no "dataloader is not resumable" warning."""
    import warnings

    trainer = {**TRAINER, "fast_dev_run": False, "max_steps": 1, "limit_val_batches": 0, "num_sanity_val_steps": 0}
    first = build_stage("segment", {"model": MODELS["segment"], "data": data, "trainer": trainer})
    first.trainer.fit(first.model, datamodule=first.datamodule)  # 1 of 2 batches of the first epoch
    ckpt = tmp_path / "mid.ckpt"
    first.trainer.save_checkpoint(ckpt)
    for batch_size, moved in ((4, False), (2, True)):
        again = build_stage("segment", {"model": MODELS["segment"], "trainer": {**trainer, "max_steps": 2},
                                        "data": {**data, "init_args": {**data["init_args"], "batch_size": batch_size}}})
        caplog.clear()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again.trainer.fit(again.model, datamodule=again.datamodule, ckpt_path=ckpt)
        assert not [w for w in caught if "not resumable" in str(w.message)]
        assert ("other data settings" in caplog.text) == moved


@pytest.mark.parametrize("sampler", ["pairs", "graph_cross", "semihard"])
def test_mix_match_trains_with_each_triplet_sampler_and_logs_its_triplets(sampler: str, data: dict) -> None:
    model = {**MODELS["mix-match"], "triplets": sampler, "margin": 0.5, "background_class": None, "knn_probe": False}
    cli = build_stage("mix-match", {"model": model, "data": data, "trainer": TRAINER})
    before = {k: v.clone() for k, v in cli.model.backbone.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.callback_metrics
    nodes = float(logged["train/nodes"])
    expected = nodes // 2 + 1 if sampler == "pairs" else nodes  # pairs: about N/2 (one per complete pair)
    assert 0 < float(logged["train/triplets"]) <= expected
    assert 0 <= float(logged["train/active_fraction"]) <= 1
    if sampler != "pairs":  # the synthetic classes recur across the batch's images: some positives cross over
        assert float(logged["train/cross_image_fraction"]) > 0
    assert any(not torch.equal(v, before[k]) for k, v in cli.model.backbone.state_dict().items())


def test_mix_match_refuses_an_unknown_sampler(data: dict) -> None:
    with pytest.raises((ValueError, ArgumentError), match="model.triplets"):
        build_stage("mix-match", {"model": {**MODELS["mix-match"], "triplets": "hard"}, "data": data,
                                  "trainer": TRAINER})


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["within", "cross"])
def test_pixel_contrast_fast_dev_run_each_mode(mode: str, data: dict) -> None:
    model = {"backbone": "alexnet", "mode": mode, "feature_maps": [3, -1], "projection_channels": 32}
    cli = build_stage("pixel-contrast", {"model": model, "data": data, "trainer": TRAINER})
    before = {k: v.clone() for k, v in cli.model.backbone.state_dict().items()}
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logged = cli.trainer.callback_metrics
    assert torch.isfinite(logged["train/loss"]) and float(logged["train/loss"]) > 0
    assert 0 < float(logged["train/valid_fraction"]) <= 1
    assert float(logged["train/positives_per_anchor"]) >= 1
    assert any(not torch.equal(v, before[k]) for k, v in cli.model.backbone.state_dict().items())


def test_pixel_contrast_bad_settings_name_the_key(data: dict) -> None:
    """Through the CLI (types checked by the parser) and building the stage directly."""
    for model, key in (({"mode": "batch"}, "model.mode"), ({"formula": "both"}, "model.formula"),
                       ({"feature_maps": [9]}, "model.feature_maps")):
        with pytest.raises((ValueError, ArgumentError), match=key):
            build_stage("pixel-contrast", {"model": model, "data": data, "trainer": TRAINER})
        with pytest.raises(ValueError, match=key):
            PixelContrastStage(**model)


def test_pixel_contrast_print_config(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["pixel-contrast", "fit", "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "mode: cross" in printed and "temperature: 0.07" in printed and "formula: code" in printed

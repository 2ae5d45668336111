"""Every config file parses and instantiates; config mistakes give one clear line naming the key or file."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mnm.cli import main
from mnm.methods.match import TRIPLET_SAMPLERS
from mnm.runs.config import load_pipeline, read_pipeline_file
from mnm.runs.runner import PipelineRunner
from mnm.runs.stage_cli import build_stage
from mnm.runs.yaml_layers import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PIPELINES = sorted((CONF / "pipelines").glob("*.yaml"))
BENCHMARKS = sorted((CONF / "benchmarks").glob("*.yaml"))
NO_RUN = {"logger": False, "enable_checkpointing": False, "accelerator": "cpu", "devices": 1,
          "strategy": "auto", "precision": "32-true"}


def test_there_are_paper_pipelines() -> None:
    names = {p.stem for p in PIPELINES}
    for base in ("voc_colorize_vgg16", "voc_random_vgg16", "voc_colorize_alexnet", "voc_jigsaw_alexnet",
                 "voc_random_alexnet", "cityscapes_colorize_vgg16", "cityscapes_random_vgg16"):
        assert {f"{base}_graph", f"{base}_random"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", PIPELINES + BENCHMARKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_pipeline_stages_instantiate(path: Path) -> None:
    """Each stage's merged config builds its model and data module (GPU trainer settings swapped for CPU)."""
    pipeline = load_pipeline(path)
    for spec in pipeline.stages:
        cfg = copy.deepcopy(spec.config)
        cfg["trainer"] = {**cfg.get("trainer", {}), **NO_RUN}
        cli = build_stage(spec.kind, cfg, label=spec.name)
        assert isinstance(cli.model, torch.nn.Module)
        assert cli.model.hparams.seed == pipeline.seed
        if spec.kind == "mix-match":
            assert cli.model.hparams.triplets in TRIPLET_SAMPLERS


@pytest.mark.parametrize("path", sorted((CONF / "pipelines").glob("*_graph.yaml")), ids=lambda p: p.stem)
def test_paper_pipelines_use_the_release_settings(path: Path) -> None:
    """fp32, Caffe input, no scale augmentation, the release's heads, batches, schedule and evaluation."""
    stages = {s.name: s.config for s in load_pipeline(path).stages}
    for config in stages.values():
        assert config["trainer"]["precision"] == "32-true"
        assert config["model"]["backbone_kwargs"]["input_norm"] == "caffe_bgr"
    colorization = "colorize" in path.stem  # gray networks: the release pads them black
    for name in ("mix_match", "finetune"):
        data = stages[name]["data"]["init_args"]
        assert data["scale_range"] == [1.0, 1.0] and data["crop_size"] == [512, 512] and data["pad_position"] == "random"
        assert data.get("pad_fill", [0, 0, 0]) == ([0, 0, 0] if colorization else [123, 117, 104])
    assert stages["mix_match"]["model"]["patch_fill"] == ("zero" if colorization else "mean")
    assert stages["finetune"]["model"].get("eval_fill", "mean") == ("zero" if colorization else "mean")
    finetune = stages["finetune"]
    model, trainer = finetune["model"], finetune["trainer"]
    assert trainer["max_steps"] == 42_000 and model["milestones"] == [24_000, 36_000, 40_000]
    images = finetune["data"]["init_args"]["batch_size"] * trainer["accumulate_grad_batches"]
    assert model["eval_mode"] == ("sliding" if path.stem.startswith("cityscapes") else "pad")
    if "alexnet" in path.stem:
        head = model["head_kwargs"]
        assert images == 64 and head["fc6_kernel"] == 6 and head["num_skips"] == 0 and head["hidden"] == [4096, 4096]
        assert head["bn_affine"] is False and head["channel_dropout"] is False
    else:
        assert images == 48 and model["head"] == "sparse_hypercolumn"
        assert model["backbone_kwargs"]["feature_taps"] == "hypercolumn"
        mix_match = stages["mix_match"]
        assert mix_match["data"]["init_args"]["batch_size"] * mix_match["trainer"]["accumulate_grad_batches"] == 64


def test_random_variant_differs_only_in_triplets() -> None:
    for graph in (CONF / "pipelines").glob("*_graph.yaml"):
        a = load_pipeline(graph)
        b = load_pipeline(graph.with_name(graph.name.replace("_graph", "_random")))
        assert [s.name for s in a.stages] == [s.name for s in b.stages]
        for sa, sb in zip(a.stages, b.stages, strict=True):
            if sa.kind == "mix-match":
                assert (sa.config["model"]["triplets"], sb.config["model"]["triplets"]) == ("graph", "random")
                sb.config["model"]["triplets"] = "graph"
            assert sa.config == sb.config


@pytest.mark.parametrize("path", sorted(CONF.glob("[dlrst]*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_files_are_lightningcli_configs(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert set(data) <= {"model", "data", "trainer"}, path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    return path


TINY = (REPO / "conf" / "pipelines" / "tiny.yaml").read_text()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("seed: 0", "seeed: 0"), r"unknown key\(s\) \['seeed'\]"),
        (lambda t: t.replace("stage: mix-match", "stage: mixmatch"), "unknown stage 'mixmatch'.*known stages"),
        (lambda t: t.replace("evaluate: val", "evaluat: val"), r"stages\[1\] \(finetune\): unknown key"),
        (lambda t: t.replace("    stage: segment", "    stage: segment\n    init_from: nothere"),
         "init_from 'nothere' is not an earlier stage"),
        (lambda t: t.replace('"${data_root}"', '"${data_rot}"'), r"\$\{data_rot\} is not defined"),
        (lambda t: t.replace("vars: {", "vars: {pc_steps: 9, "), r"vars.pc_steps is declared but no setting uses"),
    ],
)
def test_pipeline_file_errors(tmp_path: Path, edit, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_pipeline(write(tmp_path, edit(TINY)))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stages.finetune.model.lrr=0.1", r"stage 'finetune' \(segment\).*lrr"),
        ("trainer.max_steps=abc", r"stage 'mix_match' \(mix-match\).*max_steps"),
        ("stages.mix_match.model.triplets=graf", r"triplets"),
    ],
)
def test_stage_config_errors_name_the_key(tmp_path: Path, override: str, message: str) -> None:
    pipeline = load_pipeline(REPO / "conf/pipelines/tiny.yaml", [f"data_root={tmp_path}/d", override],
                             out_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=message):
        PipelineRunner(pipeline).run()


def test_missing_data_root_is_named(tmp_path: Path) -> None:
    pipeline = load_pipeline(REPO / "conf/pipelines/tiny.yaml", [f"data_root={tmp_path}/d"],
                             out_dir=str(tmp_path / "out"))
    pipeline.stages[0].config["data"] = {"class_path": "mnm.datamodules.CamVidDataModule",
                                         "init_args": {"root": str(tmp_path / "no-camvid")}}
    with pytest.raises(Exception, match="no-camvid"):
        PipelineRunner(pipeline).run()


def test_cli_prints_one_line_without_traceback(tmp_path: Path, capsys) -> None:
    bad = write(tmp_path, TINY.replace("stage: mix-match", "stage: mixmatch"))
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "run", str(bad), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("mnm: error: ") and "unknown stage 'mixmatch'" in err
    assert "Traceback" not in err and err.count("\n") <= 2
    with pytest.raises(ConfigError):
        main(["pipeline", "run", str(bad), "--out", str(tmp_path / "o"), "--debug"])


def make_checkpoint(path: Path, backbone: str) -> Path:
    from mnm.models.backbones import build_backbone

    net = build_backbone(backbone)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in net.state_dict().items()},
                "mnm_backbone": {"name": backbone, "in_chans": 3}}, path)
    return path


def test_pretrained_backbone_of_another_architecture(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "r18.ckpt", "resnet18")
    with pytest.raises(ValueError, match=r"r18\.ckpt was trained with backbone=resnet18.*configured with backbone=alexnet"):
        build_stage("segment", {"model": {"backbone": "alexnet", "pretrained_backbone": str(ckpt)},
                                "data": {"class_path": "mnm.datamodules.SyntheticDataModule",
                                         "init_args": {"root": str(tmp_path / "d")}},
                                "trainer": NO_RUN})


class Unsafe:
    """Loading an instance of this needs arbitrary unpickling."""


def test_weights_only_refusal(tmp_path: Path) -> None:
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": Unsafe()}, path)
    with pytest.raises(ValueError, match=r"refused to load .*evil\.ckpt.*safety"):
        build_stage("segment", {"model": {"backbone": "alexnet", "pretrained_backbone": str(path)},
                                "data": {"class_path": "mnm.datamodules.SyntheticDataModule",
                                         "init_args": {"root": str(tmp_path / "d")}},
                                "trainer": NO_RUN})


# -- --set: every key changes the run or stops it ------------------------------------------------------
def tiny_with(tmp_path: Path, *sets: str):
    return load_pipeline(REPO / "conf/pipelines/tiny.yaml", [f"data_root={tmp_path}/d", *sets])


def test_set_changes_pipeline_settings(tmp_path: Path) -> None:
    pipeline = tiny_with(tmp_path, "seed=5", "name=foo", "wandb.enabled=true", "checkpoint.keep_last=7")
    assert pipeline.seed == 5 and all(s.config["seed_everything"] == s.config["model"]["seed"] == 5
                                      for s in pipeline.stages)
    assert pipeline.name == "foo" and pipeline.out_dir == Path("runs/foo")
    assert pipeline.wandb["enabled"] is True and pipeline.checkpoint["keep_last"] == 7


def test_set_sections_apply_on_top_of_every_stage_of_the_same_class(tmp_path: Path) -> None:
    pipeline = tiny_with(tmp_path, "trainer.max_steps=3", "model.lr=0.5")
    assert [s.config["trainer"]["max_steps"] for s in pipeline.stages] == [3, 3]  # the stages set ${steps}
    assert [s.config["model"]["lr"] for s in pipeline.stages] == [0.5, 0.5]  # each stage sets its own lr
    voc = load_pipeline(CONF / "pipelines/voc_colorize_vgg16_graph.yaml", ["data.root=/voc"])
    roots = {s.name: s.config["data"]["init_args"]["root"] for s in voc.stages}
    assert roots == {"proxy": "data/unlabeled", "mix_match": "/voc", "finetune": "/voc"}  # proxy: image folder


def test_set_trainer_profile_replaces_the_hardware_settings_only() -> None:
    pipeline = load_pipeline(CONF / "pipelines/voc_random_alexnet_graph.yaml", ["trainer=cpu"])
    for spec in pipeline.stages:
        trainer = spec.config["trainer"]
        assert trainer["accelerator"] == "cpu" and trainer["precision"] == "32-true"
        assert not trainer["sync_batchnorm"] and "benchmark" not in trainer and trainer["max_steps"] > 0


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("stepz=3", r"--set stepz: unknown key.*did you mean 'steps'\?"),
        ("dta.root=/x", r"--set dta.root: unknown key.*did you mean 'data.root'\?"),
        ("stages.fintune.model.lr=0.1", r"no stage 'fintune'.*did you mean 'finetune'\?"),
        ("stages.finetune.evaluate=test", r"stages.<name>.model\|data\|trainer"),
        ("trainer=tpu", r"no trainer profile conf/trainer/tpu.yaml \(profiles: cpu, ddp, ddp_cpu, gpu\)"),
        ("vars.unused=1", r"never uses \$\{unused\}"),
    ],
)
def test_set_keys_that_would_change_nothing_are_errors(tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        tiny_with(tmp_path, override)


def test_set_section_key_no_stage_takes_is_an_error(tmp_path: Path) -> None:
    text = TINY.replace("    model: {backbone: alexnet, lr: 0.01}",
                        "    model: {backbone: alexnet, lr: 0.01}\n    data: {class_path: mnm.datamodules.VOCDataModule, "
                        "init_args: {root: /voc}}")
    text = text.replace("    stage: mix-match", "    stage: mix-match\n    data: {class_path: mnm.datamodules.VOCDataModule,"
                        " init_args: {root: /voc}}")
    with pytest.raises(ConfigError, match=r"--set data.num_train: changes no stage"):
        load_pipeline(write(tmp_path, text), ["data.num_train=4"])


# -- every stage is checked before the first one starts ---------------------------------------------------
@pytest.mark.slow
def test_pipeline_cli_finds_later_stage_and_hardware_mistakes_before_training(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "mnm", "pipeline", "run", str(REPO / "conf/pipelines/tiny.yaml"), "--out", str(out),
         "--set", f"data_root={tmp_path}/d", "--set", "stages.finetune.model.lrr=0.1", "--set", "trainer=gpu",
         "--set", f"stages.mix_match.model.pretrained_backbone={tmp_path}/none.ckpt"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1
    err = proc.stderr
    assert err.startswith("mnm: error: ") and "found before any stage started" in err
    assert "stage 'finetune' (segment): " in err and "lrr" in err
    assert f"stage 'mix_match' (mix-match): model.pretrained_backbone: file not found: {tmp_path}/none.ckpt" in err
    if not torch.cuda.is_available():
        assert "trainer.accelerator is 'gpu' but this machine has no CUDA GPU; add --set trainer=cpu" in err
    assert not out.exists() and not (tmp_path / "d").exists()  # nothing trained, no data generated
    proc = subprocess.run(
        [sys.executable, "-m", "mnm", "pipeline", "run", str(REPO / "conf/pipelines/tiny.yaml"), "--set", "stepz=3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1 and "mnm: error: --set stepz: unknown key" in proc.stderr
    assert "did you mean 'steps'?" in proc.stderr


def test_a_foreign_data_root_is_refused_before_training(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    pipeline = load_pipeline(REPO / "conf/pipelines/tiny.yaml", [f"data_root={tmp_path}/mine"],
                             out_dir=str(tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"2 problems.*\n.*mix_match.*not an mnm synthetic dataset"):
        PipelineRunner(pipeline).run()
    assert not (tmp_path / "out").exists()


# -- hardware profiles on GPUs ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", PIPELINES + BENCHMARKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_gpu_profiles_never_enable_strict_determinism(path: Path) -> None:
    """CUDA has no deterministic cross-entropy, pooling or resize backward: ``deterministic: true`` warns there."""
    for profile in ("gpu", "ddp"):
        for spec in load_pipeline(path, [f"trainer={profile}", "trainer.devices=1"]).stages:
            assert spec.config["trainer"].get("deterministic") in (None, False, "warn"), (profile, spec.name)
    strict = [s.config["trainer"].get("deterministic") for s in load_pipeline(path, ["trainer=cpu"]).stages]
    assert set(strict) == ({True} if read_pipeline_file(path).get("deterministic") else {None})


RELEASE = [p for p in PIPELINES if p.stem.endswith(("_graph", "_random"))]


@pytest.mark.parametrize("path", RELEASE, ids=lambda p: p.stem)
def test_ddp_profile_keeps_release_precision_batch_norm_and_images_per_update(path: Path) -> None:
    alone = {s.name: s.config for s in load_pipeline(path).stages}
    devices = 2 if "alexnet" in path.stem else 4  # the AlexNet fine-tuning accumulates 4, the VGG ones 4 and 8
    sets = ["trainer=ddp", f"trainer.devices={devices}"]
    if "alexnet" in path.stem:  # one 40-image graph per update: the release's batch on one GPU
        with pytest.raises(ConfigError, match=r"--set trainer=ddp: stage 'mix_match' accumulates 1 batch\(es\).*"
                                              r"2 processes cannot share them.*stages\.mix_match\.trainer\.devices=1"):
            load_pipeline(path, sets)
        sets.append("stages.mix_match.trainer.devices=1")
    for spec in load_pipeline(path, sets).stages:
        trainer, before = spec.config["trainer"], alone[spec.name]["trainer"]
        assert trainer["strategy"] == "ddp" and trainer["precision"] == "32-true" and trainer["sync_batchnorm"] is False
        batch = spec.config["data"]["init_args"]["batch_size"]
        assert batch == alone[spec.name]["data"]["init_args"]["batch_size"]
        if spec.name in ("mix_match", "finetune"):  # the release's batches; a proxy stage takes a batch per process
            assert batch * trainer["accumulate_grad_batches"] * trainer["devices"] == batch * before["accumulate_grad_batches"]
        else:
            assert "accumulate_grad_batches" not in trainer


def test_ddp_profile_refuses_an_uneven_or_unknown_device_count() -> None:
    path = CONF / "pipelines/voc_random_vgg16_graph.yaml"
    with pytest.raises(ConfigError, match=r"stage 'mix_match' accumulates 4 batch\(es\).*3 processes cannot share"):
        load_pipeline(path, ["trainer=ddp", "trainer.devices=3"])
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"devices: -1 cannot be counted on this machine; set trainer.devices=N"):
            load_pipeline(path, ["trainer=ddp"])
    tiny = {s.name: s.config["trainer"] for s in load_pipeline(CONF / "pipelines/tiny.yaml", ["trainer=ddp"]).stages}
    assert all(t["precision"] == "bf16-mixed" and t["sync_batchnorm"] and "accumulate_grad_batches" not in t
               for t in tiny.values())  # not a release pipeline: the profile's numerics, a batch per process


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_gpu_stage_pins_its_batches(path: Path) -> None:
    """A stage whose data section is another class (the proxy's image folder) sets pin_memory itself."""
    for spec in load_pipeline(path).stages:
        if spec.config["trainer"].get("accelerator") == "gpu":
            assert spec.config["data"]["init_args"].get("pin_memory") is True, spec.name

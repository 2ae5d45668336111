"""The orchestrator end to end on the tiny synthetic pipeline: hand-off, manifest, skip, rerun, resume."""

from __future__ import annotations

import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mnm.runs.config import load_pipeline
from mnm.runs.runner import PipelineRunner
from mnm.runs.stage_cli import build_stage
from mnm.runs.yaml_layers import ConfigError
from mnm.weights.checkpoints import CheckpointError, read_checkpoint

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "conf" / "pipelines" / "tiny.yaml"
STEPS = 12


def tiny(data_root: Path, out: Path, *sets: str):
    return load_pipeline(TINY, [f"data_root={data_root}", f"steps={STEPS}", *sets], out_dir=str(out))


def mnm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "mnm", *args]


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    return env


def start_and_signal(cmd: list[str], wait_for: Path, sig: int, log: Path) -> subprocess.Popen:
    """Start ``cmd``, send ``sig`` once ``wait_for`` exists, and wait for the process to end."""
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=fh, stderr=fh)
        deadline = time.time() + 300
        while not wait_for.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(sig)
        proc.wait(timeout=120)
    return proc


def eval_metrics(out: Path) -> dict:
    return json.loads((out / "finetune" / "metrics.json").read_text())["eval"]


def manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data") / "synthetic-tiny"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    PipelineRunner(tiny(data_root, out)).run()
    return out


def test_outputs_and_manifest(finished: Path) -> None:
    m = manifest(finished)
    assert m["pipeline"] == "tiny"
    for name in ("mix_match", "finetune"):
        entry = m["stages"][name]
        assert entry["status"] == "finished"
        assert entry["steps"] == STEPS
        assert Path(entry["checkpoint"]).is_file()
        assert len(entry["config_hash"]) == 16
        assert (finished / name / "config.yaml").is_file()
        assert (finished / name / "csv" / "metrics.csv").is_file()
    assert m["stages"]["finetune"]["pretrained_backbone"] == m["stages"]["mix_match"]["checkpoint"]
    ev = eval_metrics(finished)
    assert ev["split"] == "val" and 0.0 <= ev["miou"] <= 1.0
    assert len(ev["per_class_iou"]) == len(ev["class_names"]) == 6
    # periodic checkpoints: every 2 steps, the last 2 kept
    kept = sorted(p.name for p in (finished / "finetune" / "checkpoints").glob("step=*.ckpt"))
    assert kept == [f"step={STEPS - 2:07d}.ckpt", f"step={STEPS:07d}.ckpt"]


def test_backbone_arrives_unchanged(finished: Path) -> None:
    """The fine-tuning model built from the manifest's hand-off holds exactly the M&M stage's final backbone."""
    m = manifest(finished)
    handed = read_checkpoint(m["stages"]["mix_match"]["checkpoint"])["state_dict"]
    config = tiny(finished.parent / "unused", finished).stages[1].config
    config["model"]["pretrained_backbone"] = m["stages"]["finetune"]["pretrained_backbone"]
    config["trainer"] = {"logger": False, "enable_checkpointing": False}
    model = build_stage("segment", config).model
    own = model.backbone.state_dict()
    assert own, "backbone has no tensors"
    for key, value in own.items():
        assert torch.equal(value, handed[f"backbone.{key}"]), key
    # and the M&M stage really changed the backbone (so the check above is not trivially true)
    fresh = build_stage("segment", {**config, "model": {**config["model"], "pretrained_backbone": None}}).model
    assert any(not torch.equal(v, fresh.backbone.state_dict()[k]) for k, v in own.items() if v.is_floating_point())


def test_rerun_skips_finished_stages(finished: Path, data_root: Path, capsys) -> None:
    before = manifest(finished)
    mtime = (finished / "finetune" / "checkpoints" / "final.ckpt").stat().st_mtime_ns
    PipelineRunner(tiny(data_root, finished)).run()
    assert capsys.readouterr().out.count("skipped") == 2
    assert manifest(finished)["stages"] == before["stages"]
    assert (finished / "finetune" / "checkpoints" / "final.ckpt").stat().st_mtime_ns == mtime


@pytest.mark.slow
def test_changed_config_reruns_that_stage_and_later(finished: Path, data_root: Path, tmp_path: Path,
                                                     capsys) -> None:
    out = tmp_path / "tiny"
    shutil.copytree(finished, out)
    before = manifest(out)["stages"]
    PipelineRunner(tiny(data_root, out, "stages.finetune.model.lr=0.02")).run()
    after = manifest(out)["stages"]
    printed = capsys.readouterr().out  # the user is told what changed and where the earlier run went
    assert "stage finetune: not the config of its earlier run (model.lr: 0.01 -> 0.02)" in printed
    assert ".superseded-tiny" in printed and "mix_match: not the config" not in printed
    assert after["mix_match"] == before["mix_match"]
    assert after["finetune"]["config_hash"] != before["finetune"]["config_hash"]
    assert after["finetune"]["started"] >= before["finetune"]["finished"]
    superseded = list((tmp_path / ".superseded-tiny").iterdir())
    assert [p.name.split("-")[0] for p in superseded] == ["finetune"]


def test_run_dir_guard(finished: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    shutil.copytree(finished, out)
    other = tiny(data_root, out)
    other.name = "something-else"
    with pytest.raises(ConfigError, match="belongs to another pipeline"):
        PipelineRunner(other)
    PipelineRunner(other, overwrite=True)
    assert not out.exists() and (tmp_path / ".superseded-tiny").is_dir()


def test_run_dir_accepts_the_same_pipeline_with_stages_added(finished: Path, data_root: Path, tmp_path: Path) -> None:
    """A benchmark that gains an arm keeps its run folder; one that loses or retypes a stage does not."""
    out = tmp_path / "tiny"
    shutil.copytree(finished, out)
    grown = tiny(data_root, out)
    extra = copy.deepcopy(grown.stages[-1])
    extra.name = "finetune_again"
    grown.stages.append(extra)
    PipelineRunner(grown)
    shrunk = tiny(data_root, out)
    shrunk.stages.pop()
    with pytest.raises(ConfigError, match="belongs to another pipeline"):
        PipelineRunner(shrunk)
    retyped = tiny(data_root, out)
    retyped.stages[-1].kind = "colorize"
    with pytest.raises(ConfigError, match="belongs to another pipeline"):
        PipelineRunner(retyped)


@pytest.mark.slow
def test_kill_then_resume_gives_same_metrics(finished: Path, data_root: Path, tmp_path: Path) -> None:
    """SIGKILL mid fine-tuning, rerun: M&M is kept, fine-tuning resumes from last.ckpt, metrics equal."""
    out = tmp_path / "tiny"
    cmd = mnm_cmd("pipeline", "run", str(TINY), "--out", str(out), "--set", f"data_root={data_root}",
                  "--set", f"steps={STEPS}")
    target = out / "finetune" / "checkpoints" / "step=0000004.ckpt"
    proc = start_and_signal(cmd, target, signal.SIGKILL, tmp_path / "log.txt")
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-2000:]
    killed = manifest(out)["stages"]
    assert killed["mix_match"]["status"] == "finished"
    assert killed["finetune"]["status"] == "running"
    mm_ckpt_mtime = Path(killed["mix_match"]["checkpoint"]).stat().st_mtime_ns

    subprocess.run(cmd, cwd=REPO, env=subprocess_env(), check=True, capture_output=True)
    resumed = manifest(out)["stages"]
    assert resumed["finetune"]["status"] == "finished"
    assert resumed["finetune"]["resumed_from"].endswith("last.ckpt")
    assert Path(resumed["mix_match"]["checkpoint"]).stat().st_mtime_ns == mm_ckpt_mtime
    assert eval_metrics(out) == eval_metrics(finished)


@pytest.mark.slow
def test_sigterm_saves_checkpoint_and_exits(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    cmd = mnm_cmd("pipeline", "run", str(TINY), "--out", str(out), "--set", f"data_root={data_root}",
                  "--set", "steps=40")
    first = out / "mix_match" / "checkpoints" / "step=0000002.ckpt"
    proc = start_and_signal(cmd, first, signal.SIGTERM, tmp_path / "log.txt")
    output = (tmp_path / "log.txt").read_text()
    assert proc.returncode == 143, output[-2000:]
    assert "interrupted by SIGTERM" in output
    entry = manifest(out)["stages"]["mix_match"]
    assert entry["status"] == "interrupted"
    last = read_checkpoint(out / "mix_match" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == entry["step"] >= 2
    assert "optimizer_states" in last  # a full training state, resumable


@pytest.mark.slow
def test_non_finite_loss_stops_with_message(data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    poison = '[{"class_path": "faults.PoisonWeightsAt", "init_args": {"step": 5}}]'
    pipeline = tiny(data_root, out, f"stages.mix_match.trainer.callbacks={poison}")
    with pytest.raises(RuntimeError, match=r"stage 'mix_match': loss is nan at step 5.*Last good checkpoint: .*last\.ckpt"):
        PipelineRunner(pipeline).run()
    entry = manifest(out)["stages"]["mix_match"]
    assert entry["status"] == "failed" and "NonFiniteLossError" in entry["error"]
    good = read_checkpoint(out / "mix_match" / "checkpoints" / "last.ckpt")
    assert good["global_step"] == 4
    assert all(torch.isfinite(v).all() for v in good["state_dict"].values() if v.is_floating_point())


def test_truncated_checkpoint_is_named_and_fallback_resumes(finished: Path, data_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    shutil.copytree(finished, out)
    m = manifest(out)
    m["stages"]["finetune"]["status"] = "interrupted"
    (out / "manifest.json").write_text(json.dumps(m))
    last = out / "finetune" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"last\.ckpt.*truncated or corrupt.*--fallback-checkpoint"):
        PipelineRunner(tiny(data_root, out)).run()
    PipelineRunner(tiny(data_root, out), fallback_checkpoint=True).run()
    entry = manifest(out)["stages"]["finetune"]
    assert entry["status"] == "finished"
    assert entry["resumed_from"].endswith(f"step={STEPS:07d}.ckpt")


@pytest.mark.slow
@pytest.mark.distributed
def test_two_process_ddp_cpu(data_root: Path, tmp_path: Path) -> None:
    """The tiny pipeline on 2 CPU processes (gloo) finishes with the same outputs and metric format."""
    out = tmp_path / "ddp"
    cmd = mnm_cmd("pipeline", "run", str(TINY), "--out", str(out), "--set", f"data_root={data_root}",
                  "--set", "steps=4", "--set", "trainer.devices=2", "--set", "trainer.strategy=ddp_spawn")
    done = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    m = manifest(out)["stages"]
    assert [m[s]["status"] for s in ("mix_match", "finetune")] == ["finished", "finished"]
    ev = eval_metrics(out)
    assert set(ev) == {"split", "class_names", "miou", "pixel_acc", "per_class_iou"}
    assert 0.0 <= ev["miou"] <= 1.0 and len(ev["per_class_iou"]) == 6
    config = (out / "finetune" / "config.yaml").read_text()
    assert "devices: 2" in config and "strategy: ddp_spawn" in config


def test_ensemble_of_checkpoints(finished: Path) -> None:
    from mnm.commands.ensemble import main as ensemble

    final = str(finished / "finetune" / "checkpoints" / "final.ckpt")
    config = str(finished / "finetune" / "config.yaml")
    alone = ensemble(["-c", config, "--ckpts", final, final])
    assert alone["miou"] == pytest.approx(eval_metrics(finished)["miou"], abs=1e-6)
    earlier = str(finished / "finetune" / "checkpoints" / f"step={STEPS - 2:07d}.ckpt")
    pair = ensemble(["-c", config, "--ckpts", final, earlier])
    assert 0.0 <= pair["miou"] <= 1.0 and len(pair["per_class_iou"]) == 6


@pytest.mark.slow
def test_wandb_offline_run_per_stage(data_root: Path, tmp_path: Path) -> None:
    """W&B logs offline (no network): one run per stage, grouped by pipeline, typed by stage kind."""
    out = tmp_path / "wb"
    pipeline = tiny(data_root, out, "steps=2")
    pipeline.wandb = {"enabled": True, "project": "mnm-test"}
    PipelineRunner(pipeline).run()
    for stage, kind in (("mix_match", "mix-match"), ("finetune", "segment")):
        runs = list((out / stage / "wandb").glob("offline-run-*"))
        assert len(runs) == 1, list((out / stage).iterdir())
        entry = manifest(out)["stages"][stage]
        assert runs[0].name.endswith(entry["wandb_id"])
        config = (out / stage / "config.yaml").read_text()
        assert f"group: {pipeline.name}" in config and f"job_type: {kind}" in config


def test_status_table_and_the_final_table_of_a_run(finished: Path, data_root: Path, capsys) -> None:
    from mnm.cli import main

    main(["pipeline", "status", str(finished)])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"tiny ({finished})" and lines[1].split() == ["stage", "kind", "status", "steps", "time", "result"]
    rows = {line.split()[0]: line.split() for line in lines[3:]}
    assert rows["mix_match"][1:4] == ["mix-match", "finished", str(STEPS)] and rows["mix_match"][5] == "loss"
    miou = json.loads((finished / "finetune" / "metrics.json").read_text())["eval"]["miou"]
    assert rows["finetune"][1:4] == ["segment", "finished", str(STEPS)]
    assert rows["finetune"][5:] == ["mIoU", f"{100 * miou:.2f}%"]
    main(["pipeline", "run", str(TINY), "--set", f"data_root={data_root}", "--set", f"steps={STEPS}",
          "--out", str(finished)])  # everything finished: skipped, then the table
    out = capsys.readouterr().out
    assert "skipped" in out and out.rstrip().endswith(lines[-1])
    with pytest.raises(SystemExit) as exit_info:
        main(["pipeline", "status", str(finished.parent / "nope")])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith(f"mnm: error: {finished.parent / 'nope'}: not a run folder")


def test_runners_of_one_run_folder_keep_each_others_manifest_entries(tmp_path: Path) -> None:
    """Two runners opened on the same run folder (parallel lanes) each write only their own stage's entry."""
    pipeline = tiny(tmp_path / "data", tmp_path / "run", "steps=2")
    finetune_only = PipelineRunner(pipeline)  # opened before the other lane writes anything
    PipelineRunner(pipeline).run(["mix_match"])
    finetune_only.p.stages[1].init_from = None  # an independent chain: random init -> fine-tune
    finetune_only.run(["finetune"])
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert {name: entry["status"] for name, entry in stages.items()} == {"mix_match": "finished",
                                                                         "finetune": "finished"}


def test_config_changes_names_the_setting_and_a_path_spelled_differently(tmp_path: Path, monkeypatch) -> None:
    from mnm.runs.hashing import config_changes

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    saved = tmp_path / "config.yaml"
    saved.write_text("data:\n  init_args: {root: data, batch_size: 8}\nmodel: {lr: 0.01, milestones: [3]}\n")
    assert config_changes(saved, {"data": {"init_args": {"root": "data", "batch_size": 8}},
                                  "model": {"lr": 0.01, "milestones": [3]}}) == []
    changes = config_changes(saved, {"data": {"init_args": {"root": str(tmp_path / "data")}}, "model": {"lr": 0.1}})
    assert changes[0].startswith(f"data.init_args.root: 'data' -> '{tmp_path / 'data'}' (the same path")
    assert changes[1] == "model.lr: 0.01 -> 0.1"
    assert config_changes(tmp_path / "missing.yaml", {"model": {"lr": 0.1}}) == []

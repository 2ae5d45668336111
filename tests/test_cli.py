"""The ``mnm`` command as a new user meets it: a fast ``--help``, seeded runnable defaults, no library noise."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline import TINY, mnm_cmd, subprocess_env

from mnm.cli import main, usage
from mnm.runs.config import load_pipeline
from mnm.runs.rundir import read_csv_rows
from mnm.runs.runner import PipelineRunner
from mnm.runs.stage_cli import main_stage, parse_stage
from mnm.stages import STAGES

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "WANDB_MODE": "disabled"}


def mnm(*args: str, timeout: float = 300, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnm", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


def test_help_is_fast_and_loads_neither_torch_nor_lightning() -> None:
    probe = "import sys; from mnm.cli import main; main(['--help']); print([m for m in ('torch', 'lightning') if m in sys.modules])"
    proc = subprocess.run([sys.executable, "-c", probe], env=ENV, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("[]"), proc.stdout + proc.stderr
    start = time.perf_counter()
    proc = mnm("--help")
    assert proc.returncode == 0 and "mnm predict STAGE_DIR" in proc.stdout
    assert time.perf_counter() - start < 2.0


def test_data_help_lists_its_commands_and_an_unknown_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    from mnm.cli import main

    main(["--help"])
    assert "mnm data voc-aug ROOT" in capsys.readouterr().out
    main(["data", "--help"])
    listed = [line.split()[2] for line in capsys.readouterr().out.splitlines() if line.startswith("  mnm data ")]
    assert listed == ["synth", "voc-aug", "check"]
    with pytest.raises(SystemExit) as exit_:
        main(["data", "vocaug"])
    assert str(exit_.value.code).startswith("mnm: error: mnm data: unknown command 'vocaug'\n\nusage: mnm data")


@pytest.mark.slow
def test_print_config_is_seeded_and_runs_a_finite_schedule() -> None:
    proc = mnm("mix-match", "fit", "--print_config")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "seed_everything: 0" in lines and "  max_steps: 8000" in lines
    assert "seed_everything: true" not in lines


@pytest.mark.slow
def test_a_stage_command_prints_no_library_noise(tmp_path: Path) -> None:
    proc = mnm("segment", "fit", "--data", "mnm.datamodules.SyntheticDataModule", f"--data.root={tmp_path / 'data'}",
               "--data.num_train=4", "--data.num_val=2", "--data.image_size=[96, 96]", "--data.crop_size=[80, 80]",
               "--data.batch_size=2", "--trainer.fast_dev_run=1", "--trainer.accelerator=cpu",
               f"--trainer.default_root_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    for noise in ("args parameter is intended", "LeafSpec", "litlogger", "litmodels", "tensorboardX"):
        assert noise not in output, output


SYNTHETIC_FIT = ("--data", "mnm.datamodules.SyntheticDataModule", "--data.num_train=4", "--data.num_val=2",
                 "--data.image_size=[96, 96]", "--data.crop_size=[80, 80]", "--data.batch_size=2",
                 "--trainer.accelerator=cpu", "--trainer.limit_val_batches=0",
                 "--model.backbone=alexnet")


@pytest.mark.slow
def test_stage_fit_keeps_last_ckpt_under_runs_and_says_where(tmp_path: Path) -> None:
    """``mnm segment fit`` from any folder: last.ckpt at the final step (3 steps: not a multiple of the periodic
    saves) under runs/segment/, announced; nothing else in the current folder; the checkpoint resumes."""
    data = f"--data.root={tmp_path / 'data'}"
    proc = mnm("segment", "fit", *SYNTHETIC_FIT, data, "--trainer.max_steps=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = Path("runs/segment/lightning_logs/version_0/checkpoints/last.ckpt")
    assert f"[mnm] segment fit: logs and checkpoints in {last.parent.parent}" in proc.stdout
    assert f"[mnm] segment fit: step 3, checkpoint {last}" in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "runs"]
    from mnm.weights.checkpoints import read_checkpoint

    assert read_checkpoint(tmp_path / last)["global_step"] == 3
    proc = mnm("segment", "fit", *SYNTHETIC_FIT, data, "--trainer.max_steps=5", "--ckpt_path", str(last), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[mnm] segment fit: step 5, checkpoint runs/segment/lightning_logs/version_1/checkpoints/last.ckpt" in (
        proc.stdout)
    proc = mnm("segment", "fit", *SYNTHETIC_FIT, data, "--trainer.max_steps=1", "--trainer.enable_checkpointing=false",
               cwd=tmp_path)
    assert proc.returncode == 0 and "checkpoint runs" not in proc.stdout, proc.stderr[-2000:]
    assert not (tmp_path / "runs/segment/lightning_logs/version_2/checkpoints").exists()


#: what Lightning and W&B printed on every stage run, telling an mnm user nothing (mnm.utils.quiet says why each is harmless)
STAGE_NOISE = ("smaller than the logging interval", "in eval mode", "anonymous setting", "Previous log files",
               "exists and is not empty", "Received SIGTERM", "Tip:")


@pytest.mark.slow
def test_a_stopped_and_resumed_stage_prints_no_library_noise(tmp_path: Path) -> None:
    """W&B on (offline, not silenced), a logging interval longer than an epoch (4 batches), a frozen backbone, a
    SIGTERM at fine-tuning step 3 and the rerun that resumes; logging still comes every 5 steps."""
    out, sigterm = tmp_path / "run", '[{"class_path": "faults.SigtermAt", "init_args": {"step": 3}}]'
    cmd = mnm_cmd("pipeline", "run", str(TINY), "--out", str(out), "--set", f"data_root={tmp_path / 'data'}",
                  "--set", "steps=6", "--set", "wandb.enabled=true", "--set", "trainer.log_every_n_steps=5",
                  "--set", "stages.finetune.model.freeze_backbone=true",
                  "--set", f"stages.finetune.trainer.callbacks={sigterm}")
    env = {key: value for key, value in subprocess_env().items() if key != "WANDB_SILENT"} | {"WANDB_MODE": "offline"}
    runs = [subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300) for _ in range(2)]
    assert [run.returncode for run in runs] == [143, 0], runs[-1].stderr[-3000:]
    for run in runs:
        output = run.stdout + run.stderr
        assert not [noise for noise in STAGE_NOISE if noise in output], output
    assert "stage finetune (segment): resuming at step 4 from" in runs[1].stdout
    logged = [int(row["step"]) for row in read_csv_rows(out / "mix_match" / "csv" / "metrics.csv") if row["train/loss"]]
    assert logged == [4]  # the fifth step, in the second epoch


def test_the_commands_of_the_usage_line_up() -> None:
    lines = [line for line in usage().splitlines() if line.startswith("  mnm ")]
    columns = {len(line) - len(re.split(r"\S  +", line, maxsplit=1)[1]) for line in lines}
    assert len(lines) > 10 and len(columns) == 1, usage()


@pytest.mark.parametrize("command", [["pipeline", "run"], ["benchmark"], ["protocol"], ["unsupervised"], ["demo"]])
def test_every_command_that_resumes_stages_takes_the_fallback(command: list[str], capsys) -> None:
    """The runner's error about a corrupt last.ckpt names --fallback-checkpoint: each command must take it."""
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0 and "--fallback-checkpoint" in capsys.readouterr().out


def test_import_caffe_help_lists_debug(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["import-caffe", "--help"])
    assert "--debug" in capsys.readouterr().out


def test_every_stage_help_names_its_stage(capsys: pytest.CaptureFixture[str]) -> None:
    for stage in STAGES:
        with pytest.raises(SystemExit) as exit_:
            main_stage(stage, ["--help"])
        assert exit_.value.code == 0
        usage = capsys.readouterr().out
        assert usage.startswith(f"usage: mnm {stage} ") and f"\nmnm {stage}: " in usage, usage[:300]


SYNTHETIC = {"class_path": "mnm.datamodules.SyntheticDataModule", "init_args": {"root": "unused"}}


@pytest.mark.parametrize(("section", "message"), [
    ({"data": {**SYNTHETIC, "init_args": {"root": "x", "batchsize": 3}}},
     "data.batchsize: not a setting of SyntheticDataModule; did you mean data.batch_size?"),
    ({"data": SYNTHETIC, "trainer": {"max_step": 3}},
     "trainer.max_step: not a setting of Trainer; did you mean trainer.max_steps?"),
    ({"data": SYNTHETIC, "model": {"lrr": 0.1}}, "model.lrr: not a setting of SegmentStage; did you mean model.lr?"),
    ({"data": {**SYNTHETIC, "init_args": {"root": "x", "labeled_fraction": "abc"}}},
     "data.labeled_fraction: expected a float, got abc"),
    ({"data": {**SYNTHETIC, "init_args": {"root": "x", "batch_size": "abc"}}},
     "data.batch_size: expected an int, got abc"),
])
def test_a_refused_stage_setting_is_one_line_naming_the_key(section: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_stage("segment", section)
    assert str(err.value) == message


@pytest.mark.slow
def test_an_integer_batch_limit_counts_batches_and_a_float_is_a_fraction() -> None:
    proc = mnm("segment", "fit", "--trainer.limit_val_batches", "1", "--trainer.limit_train_batches", "0.5",
               "--trainer.val_check_interval", "3", "--print_config")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert {"  limit_val_batches: 1", "  limit_train_batches: 0.5", "  val_check_interval: 3"} <= set(lines)


def test_a_missing_listed_data_root_is_named_as_such(tmp_path: Path) -> None:
    from mnm.datamodules.errors import DataError
    from mnm.datamodules.listed import ListedSegmentationDataModule

    with pytest.raises(DataError, match=rf"^{tmp_path / 'nowhere'}: dataset root \(data.root\) does not exist"):
        ListedSegmentationDataModule(root=str(tmp_path / "nowhere"))


def test_labeled_fraction_null_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    pipeline = load_pipeline("conf/benchmarks/tiny.yaml", [f"data_root={tmp_path}", "data.labeled_fraction=null"],
                             str(tmp_path / "run"))
    with pytest.raises(ValueError, match=r"^stage 'ft_random' \(segment\): labeled_fraction must be in \(0, 1\], "
                                         r"got None \(a number; 1 keeps every label\)$"):
        PipelineRunner(pipeline).check(["ft_random"])


def test_repository_paths_resolve_from_another_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """conf/ files and ../shared defaults are found from the repository; at its root nothing changes (same hashes)."""
    root_of = lambda p: {s.name: s for s in p.stages}["ft_random"].config["data"]["init_args"]["root"]  # noqa: E731
    monkeypatch.chdir(REPO)
    assert root_of(load_pipeline("conf/benchmarks/camvid_cpu.yaml")) == "../shared/data/camvid"
    monkeypatch.chdir(tmp_path)
    elsewhere = load_pipeline("conf/benchmarks/camvid_cpu.yaml")
    assert elsewhere.path == REPO / "conf/benchmarks/camvid_cpu.yaml"
    assert root_of(elsewhere) == str(REPO / "../shared/data/camvid")


@pytest.mark.slow
def test_a_command_run_elsewhere_finds_its_configs_or_says_where_to_run(tmp_path: Path) -> None:
    proc = mnm("pipeline", "run", "conf/benchmarks/camvid_cpu.yaml", "--out", str(tmp_path / "run"), "--only",
               "ft_random", "--set", "data.root=nowhere/camvid", cwd=tmp_path)
    first = proc.stderr.splitlines()[0]
    assert proc.returncode == 1 and first.startswith("mnm: error: stage 'ft_random' (segment): nowhere/camvid: "
                                                     "dataset root (data.root) does not exist"), proc.stderr
    assert f"run from {REPO} or give absolute paths" in first

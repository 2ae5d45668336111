"""Long runs that are safe to stop: step checkpoints written when due, Ctrl-C, SIGKILL, one run per folder."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_pipeline import REPO, TINY, manifest, mnm_cmd, subprocess_env

from mnm.runs.config import load_pipeline
from mnm.runs.file_lock import exclusive_lock
from mnm.runs.rundir import stage_lock_file
from mnm.runs.runlock import RunFolderInUse, lock_stages
from mnm.runs.runner import PipelineRunner
from mnm.weights.checkpoints import read_checkpoint

PROTOCOL = REPO / "conf" / "benchmarks" / "tiny_protocol.yaml"
# 20 training images at batch 4: 5 batches per epoch; validation far away (as in the CamVid protocol at 1/8)
FIVE_BATCHES_PER_EPOCH = ("data.init_args.num_train=20", "trainer.val_check_interval=100",
                          "trainer.check_val_every_n_epoch=null")


EARLIER_TIME = 1000.0  # the wall time an earlier attempt recorded, in seconds


def pause(stage: str, step: int, marker: Path) -> str:
    """A ``--set`` that holds ``stage`` at the start of ``step`` (once: while ``marker`` does not exist)."""
    callback = {"class_path": "faults.PauseOnceAt", "init_args": {"step": step, "marker": str(marker)}}
    return f"stages.{stage}.trainer.callbacks={json.dumps([callback])}"


def wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    """Wait until ``path`` exists (or ``proc`` ends)."""
    deadline = time.monotonic() + seconds
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def step_files(stage_dir: Path) -> list[str]:
    return sorted(p.name for p in (stage_dir / "checkpoints").glob("step=*.ckpt"))


@pytest.fixture(scope="module")
def five_per_epoch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny pipeline's M&M stage, 10 steps at 5 batches per epoch, a step checkpoint every 5 steps."""
    base = tmp_path_factory.mktemp("five")
    pipeline = load_pipeline(TINY, [f"data_root={base / 'data'}", "steps=10", *FIVE_BATCHES_PER_EPOCH,
                                    "checkpoint.every_n_train_steps=5", "checkpoint.keep_last=3"],
                             out_dir=str(base / "run"))
    PipelineRunner(pipeline).run(["mix_match"])
    return base


def test_step_checkpoints_are_written_when_due_at_an_epochs_last_batch(five_per_epoch: Path) -> None:
    """Steps 5 and 10 end an epoch; their checkpoints must not wait for a validation that never comes."""
    stage = five_per_epoch / "run" / "mix_match"
    assert step_files(stage) == ["step=0000005.ckpt", "step=0000010.ckpt"]
    assert read_checkpoint(stage / "checkpoints" / "step=0000005.ckpt")["global_step"] == 5


def _rerun_interrupted(base: Path, step: int, capsys: pytest.CaptureFixture) -> tuple[dict, str]:
    out = base / "run"
    m = manifest(out)
    m["stages"]["mix_match"].update(status="interrupted", step=step, wall_time_s=EARLIER_TIME)
    (out / "manifest.json").write_text(json.dumps(m))
    pipeline = load_pipeline(TINY, [f"data_root={base / 'data'}", "steps=10", *FIVE_BATCHES_PER_EPOCH,
                                    "checkpoint.every_n_train_steps=5", "checkpoint.keep_last=3"], out_dir=str(out))
    PipelineRunner(pipeline).run(["mix_match"])
    return manifest(out)["stages"]["mix_match"], capsys.readouterr().out


@pytest.mark.slow
def test_a_stage_resumes_from_a_step_checkpoint_and_says_when_it_must_start_over(five_per_epoch: Path,
                                                                                 capsys) -> None:
    checkpoints = five_per_epoch / "run" / "mix_match" / "checkpoints"
    (checkpoints / "last.ckpt").unlink()
    (checkpoints / "step=0000010.ckpt").unlink()
    entry, printed = _rerun_interrupted(five_per_epoch, 7, capsys)  # no last.ckpt: the newest step checkpoint
    assert entry["resumed_from"] == str(checkpoints / "step=0000005.ckpt"), printed
    assert (f"stage mix_match (mix-match): resuming at step 5 from {checkpoints / 'step=0000005.ckpt'} (2 steps "
            "since the last checkpoint are redone)") in printed
    assert entry["status"] == "finished" and entry["steps"] == 10
    assert EARLIER_TIME < entry["wall_time_s"] < EARLIER_TIME + 300  # the time of both attempts
    for ckpt in checkpoints.glob("*.ckpt"):
        ckpt.unlink()
    entry, printed = _rerun_interrupted(five_per_epoch, 7, capsys)
    assert "stage mix_match: no checkpoint: starting from step 0 (7 steps of earlier progress lost)" in printed
    assert entry["resumed_from"] is None and entry["status"] == "finished"
    assert entry["wall_time_s"] < EARLIER_TIME  # started over: the lost attempt does not count


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_records_an_interruption(tmp_path: Path) -> None:
    """Ctrl-C as a terminal sends it: SIGINT to the whole process group, DataLoader workers included."""
    out, marker = tmp_path / "run", tmp_path / "paused"
    cmd = mnm_cmd("pipeline", "run", str(TINY), "--out", str(out), "--set", f"data_root={tmp_path / 'data'}",
                  "--set", "steps=20", "--set", "data.init_args.num_workers=2", "--set", pause("mix_match", 3, marker))
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    wait_for(marker, proc)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 130, output[-2000:]
    entry = manifest(out)["stages"]["mix_match"]
    assert entry["status"] == "interrupted" and "error" not in entry
    last = out / "mix_match" / "checkpoints" / "last.ckpt"
    state = read_checkpoint(last)
    assert state["global_step"] == entry["step"] == 4  # the step under way when Ctrl-C came was finished
    assert "optimizer_states" in state
    assert f"stage mix_match: stopped at step 4; a rerun resumes from {last}" in output
    assert "mnm: interrupted; rerun the same command to resume" in output
    assert output.count("[mnm] Ctrl-C: stopping after this step") == 1  # said by the main process, not by workers


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_a_checkpoint_and_resumes(tmp_path: Path) -> None:
    """What ``kill -TERM -PGID``, SLURM and Kubernetes send: SIGTERM to every process, DataLoader workers included.
    The stage checkpoints, exits 143 and is resumable; the rerun finishes from that step."""
    out, marker = tmp_path / "run", tmp_path / "paused"
    cmd = mnm_cmd("pipeline", "run", str(TINY), "--out", str(out), "--set", f"data_root={tmp_path / 'data'}",
                  "--set", "steps=8", "--set", "data.init_args.num_workers=2", "--set", pause("mix_match", 3, marker),
                  "--only", "mix_match")
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    wait_for(marker, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 143, output[-2000:]
    assert "killed by signal" not in output
    entry = manifest(out)["stages"]["mix_match"]
    assert entry["status"] == "interrupted" and "error" not in entry, entry
    last = out / "mix_match" / "checkpoints" / "last.ckpt"
    assert read_checkpoint(last)["global_step"] == entry["step"] == 4
    assert "mnm: interrupted by SIGTERM; a checkpoint was saved" in output
    rerun = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    entry = manifest(out)["stages"]["mix_match"]
    assert entry["status"] == "finished" and entry["resumed_from"] == str(last) and entry["steps"] == 8


@pytest.mark.slow
def test_a_killed_protocol_cell_resumes_from_its_last_step_checkpoint_and_refuses_a_second_command(
        tmp_path: Path) -> None:
    """The cell at fraction 1 (5 batches per epoch, a checkpoint every 5 steps) is killed (SIGKILL) at step 12
    of fine-tuning. Meanwhile a second command on the folder is refused; the rerun takes the dead command's
    lock over and resumes from step 10."""
    out, marker = tmp_path / "protocol", tmp_path / "paused"
    cmd = mnm_cmd("protocol", str(PROTOCOL), "--out", str(out), "--fractions", "1.0", "--seeds", "0",
                  "--arms", "ft_random", "--set", f"data_root={tmp_path / 'data'}", "--set", "ft_steps=15",
                  *(f"--set={s}" for s in FIVE_BATCHES_PER_EPOCH),
                  "--set", "checkpoint.every_n_train_steps=5", "--set", "checkpoint.keep_last=3",
                  "--set", pause("ft_random", 12, marker))
    cell = out / "f1-s0"
    with (tmp_path / "first.txt").open("w") as log:
        first = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=log, stderr=log)
        try:
            wait_for(marker, first)
            second = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True,
                                    timeout=300)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait(timeout=60)
    assert marker.exists(), (tmp_path / "first.txt").read_text()[-2000:]
    assert second.returncode == 1, second.stderr[-2000:]
    assert second.stderr.startswith(f"mnm: error: {cell} is in use by PID {first.pid} on {socket.gethostname()} "
                                     "since "), second.stderr
    assert step_files(cell / "ft_random") == ["step=0000005.ckpt", "step=0000010.ckpt"]
    killed = manifest(cell)["stages"]["ft_random"]
    assert killed["status"] == "running"  # what a SIGKILL leaves
    started = time.mktime(time.strptime(killed["started"], "%Y-%m-%dT%H:%M:%S"))
    killed_time = (cell / "ft_random" / "checkpoints" / "last.ckpt").stat().st_mtime - started

    rerun = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"taking over the lock of stage 'ft_random' left by PID {first.pid}" in rerun.stderr
    entry = manifest(cell)["stages"]["ft_random"]
    assert entry["status"] == "finished" and entry["steps"] == 15
    assert entry["wall_time_s"] > killed_time > 0  # the killed attempt's time up to step 10 counts
    assert entry["resumed_from"] == str(cell / "ft_random" / "checkpoints" / "last.ckpt")
    assert (f"stage ft_random (segment): resuming at step 10 from {entry['resumed_from']} (any steps the earlier "
            "attempt ran after that checkpoint are redone)") in rerun.stdout  # a SIGKILL leaves no record of them


def test_a_stage_lock_names_its_holder_and_a_dead_holders_lock_is_taken_over(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    with lock_stages(run, ["a", "b"]):
        with pytest.raises(RunFolderInUse, match=rf"^{run} is in use by PID {os.getpid()} on "
                                                 rf"{socket.gethostname()} since .* \(stage 'b'\)"):
            with lock_stages(run, ["c", "b"]):
                pass
        with lock_stages(run, ["c"]):  # another stage of the folder: a parallel lane
            pass
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(gone.stdout)
    lock_file = stage_lock_file(run, "a")
    lock_file.write_text(json.dumps({"pid": dead, "host": socket.gethostname(), "since": "2026-01-01T00:00:00"}))
    with lock_stages(run, ["a"]):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert f"taking over the lock of stage 'a' left by PID {dead}" in capsys.readouterr().err
    lock_file.write_text(json.dumps({"pid": 1, "host": "elsewhere", "since": "2026-01-01T00:00:00"}))
    with pytest.raises(RunFolderInUse, match=rf"may be in use by PID 1 on elsewhere .* delete {lock_file}"):
        with lock_stages(run, ["a"]):
            pass


def test_a_finished_run_leaves_no_lock_files(five_per_epoch: Path) -> None:
    assert sorted(p.name for p in (five_per_epoch / "run").iterdir()) == ["manifest.json", "mix_match"]


def _count_under_the_lock(folder: Path, times: int) -> None:
    """Add 1 to ``folder/count``, ``times`` times, each under :func:`exclusive_lock` (which removes its file)."""
    for _ in range(times):
        with exclusive_lock(folder / "count.lock"):
            count = folder / "count"
            count.write_text(str(int(count.read_text()) + 1))


def test_lock_files_removed_on_release_still_exclude_each_other(tmp_path: Path) -> None:
    """Four processes take turns on one lock file that each removes when it lets go: a process that waited on the
    removed file must not count as holding the lock (else two increments overlap and one is lost)."""
    (tmp_path / "count").write_text("0")
    fork = multiprocessing.get_context("fork")
    workers = [fork.Process(target=_count_under_the_lock, args=(tmp_path, 150)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 4
    assert (tmp_path / "count").read_text() == "600" and not (tmp_path / "count.lock").exists()


@pytest.mark.slow
def test_wandb_online_without_a_reachable_server_logs_offline_with_a_warning(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**subprocess_env(), "WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_SILENT": "true"}
    done = subprocess.run(mnm_cmd("pipeline", "run", str(TINY), "--out", str(out), "--only", "mix_match",
                                  "--set", f"data_root={tmp_path / 'data'}", "--set", "steps=1",
                                  "--set", "wandb.enabled=true"),
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert ("[mnm] warning: W&B is set up to log online but its server takes no connection (127.0.0.1:9: "
            "Connection refused); logging offline instead") in done.stderr
    assert len(list((out / "mix_match" / "wandb").glob("offline-run-*"))) == 1


def test_status_of_a_protocol_folder_points_to_its_cells(tmp_path: Path, capsys) -> None:
    from mnm.cli import main
    from mnm.runs.rundir import update_manifest

    root = tmp_path / "protocol"
    identity = {"name": "p", "stages": [["mm", "mix-match"], ["ft", "segment"]]}
    update_manifest(root / "f0.5-s0", {"identity": identity}, "mm", {"status": "finished"})
    update_manifest(root / "f1-s0", {"identity": identity}, "mm", {"status": "running"})
    main(["pipeline", "status", str(root)])
    assert capsys.readouterr().out.splitlines() == [
        f"{root} holds 2 run folders (a protocol's cells); `mnm pipeline status FOLDER` shows one:",
        f"  {root / 'f0.5-s0'}  1/2 stages finished",
        f"  {root / 'f1-s0'}  0/2 stages finished",
    ]


def test_status_shows_where_a_failed_stage_stopped_and_counts_one_cell_in_the_singular(tmp_path: Path,
                                                                                       capsys) -> None:
    from mnm.cli import main
    from mnm.runs.rundir import update_manifest

    identity = {"name": "p", "stages": [["mm", "mix-match"], ["ft", "segment"]]}
    update_manifest(tmp_path / "p" / "f1-s0", {"identity": identity}, "mm",
                    {"stage": "mix-match", "status": "failed", "step": 89, "error": "RuntimeError: boom"})
    main(["pipeline", "status", str(tmp_path / "p" / "f1-s0")])
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("mm "))
    assert row.split()[:4] == ["mm", "mix-match", "failed", "89"]
    main(["pipeline", "status", str(tmp_path / "p")])
    assert capsys.readouterr().out.startswith(f"{tmp_path / 'p'} holds 1 run folder (a protocol's cells)")


def test_overwrite_does_not_move_a_run_folder_that_is_in_use(tmp_path: Path) -> None:
    from mnm.runs.rundir import update_manifest

    out = tmp_path / "run"
    update_manifest(out, {"identity": {"name": "other", "stages": [["finetune", "segment"]]}}, "finetune",
                    {"status": "running"})
    pipeline = load_pipeline(TINY, [f"data_root={tmp_path / 'data'}"], out_dir=str(out))
    with lock_stages(out, ["finetune"]):
        with pytest.raises(RunFolderInUse, match=rf"^{out} is in use by PID {os.getpid()}"):
            PipelineRunner(pipeline, overwrite=True)
    assert (out / "manifest.json").is_file()
    PipelineRunner(pipeline, overwrite=True)
    assert not out.exists() and (tmp_path / ".superseded-run").is_dir()

"""Makefile targets that need no training: ``make wandb-sync`` finds the offline runs the pipelines write; the
experiment targets pass OUT=, SET= and FALLBACK_CHECKPOINT= on (dry runs); ``make help`` lists every target."""

from __future__ import annotations

import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OFFLINE_RUN = "import sys, wandb; wandb.init(mode='offline', dir=sys.argv[1], project='mnm', id=sys.argv[2]); wandb.finish()"


def make(*args: str, wandb: str = "echo", env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``make -s`` in the repository, never reinstalling (``-o`` the install stamp); ``wandb`` replaced by echo."""
    return subprocess.run(["make", "-s", "-o", ".venv/.mnm-installed", *args, f"WANDB={wandb}"], cwd=REPO,
                          capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.fixture
def server() -> Iterator[dict[str, str]]:
    """The environment of a W&B server that takes connections (a local listening socket)."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        yield {"WANDB_BASE_URL": f"http://127.0.0.1:{listening.getsockname()[1]}"}


@pytest.mark.slow
def test_wandb_sync_finds_the_offline_runs_of_every_stage(tmp_path: Path, server: dict[str, str]) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for stage_dir, run_id in ((runs / "a" / "mix_match", "amm"), (runs / "a" / "finetune", "aft"),
                              (runs / "b" / "finetune", "bft"), (runs / ".superseded-a" / "finetune-old", "old")):
        stage_dir.mkdir(parents=True)
        subprocess.run([sys.executable, "-c", OFFLINE_RUN, str(stage_dir), run_id], env=env, check=True, timeout=60)
    every = make("wandb-sync", f"RUN={runs}", env=server)
    assert every.returncode == 0, every.stderr
    synced = every.stdout.splitlines()[-1].split()
    assert synced[0] == "sync" and sorted(Path(p).name.rsplit("-", 1)[1] for p in synced[1:]) == ["aft", "amm", "bft"]
    assert all(Path(p).is_dir() and Path(p).parent.name == "wandb" for p in synced[1:])
    one = make("wandb-sync", f"RUN={runs / 'b'}", env=server)
    assert [Path(p).parent.parent for p in one.stdout.splitlines()[-1].split()[1:]] == [runs / "b" / "finetune"]
    none = make("wandb-sync", f"RUN={tmp_path / 'empty'}", env=server)
    assert none.returncode == 2 and "no offline W&B runs under" in none.stdout


def test_make_help_describes_the_label_efficient_protocol_of_its_file() -> None:
    from mnm.runs.config import load_pipeline

    line = next(row for row in make("help").stdout.splitlines() if "camvid-label-efficient" in row)
    pipeline = load_pipeline(REPO / "conf/benchmarks/camvid_label_efficient.yaml")
    fractions = [f"1/{round(1 / f)}" if f < 1 else "all" for f in pipeline.protocol["fractions"]]
    assert f"{', '.join(fractions[:-1])} and {fractions[-1]} labels x {len(pipeline.protocol['seeds'])} seeds" in line
    assert f"{len(pipeline.report['arms'])} arms" in line


def fake_wandb(tmp_path: Path, body: str) -> str:
    """A ``wandb`` script that writes a log where wandb does (under ``$WANDB_DIR``, which must be set), then ``body``."""
    script = tmp_path / "wandb"
    script.write_text(f'#!/bin/sh\nmkdir -p "${{WANDB_DIR:?}}/wandb/logs" && touch "$WANDB_DIR/wandb/logs/sync.log"\n{body}\n')
    script.chmod(0o755)
    return str(script)


def test_wandb_sync_gives_up_after_its_timeout_with_a_message(tmp_path: Path, server: dict[str, str]) -> None:
    """A ``wandb sync`` that hangs (the server takes a connection but never answers) is stopped after
    ``WANDB_SYNC_TIMEOUT`` seconds; its logs are kept in a temporary folder that the message names."""
    (tmp_path / "runs" / "a" / "finetune" / "wandb" / "offline-run-20260101_000000-aft").mkdir(parents=True)
    done = make("wandb-sync", f"RUN={tmp_path / 'runs'}", "WANDB_SYNC_TIMEOUT=1",
                wandb=fake_wandb(tmp_path, "sleep 60"), env=server)
    assert done.returncode != 0
    assert "error: wandb sync did not end within WANDB_SYNC_TIMEOUT=1 s" in done.stdout
    logs = Path(re.search(r"wandb's own logs of this sync: (\S+)", done.stdout).group(1))
    assert (logs / "logs" / "sync.log").is_file()


def test_wandb_sync_stops_at_once_when_the_server_is_out_of_reach(tmp_path: Path) -> None:
    (tmp_path / "runs" / "a" / "finetune" / "wandb" / "offline-run-20260101_000000-aft").mkdir(parents=True)
    marker = tmp_path / "synced"
    done = make("wandb-sync", f"RUN={tmp_path / 'runs'}", wandb=fake_wandb(tmp_path, f"touch {marker}"),
                env={"WANDB_BASE_URL": "http://127.0.0.1:9"})
    assert done.returncode == 2 and not marker.exists()
    assert done.stdout.startswith("error: the W&B server takes no connection (127.0.0.1:9: Connection refused); "
                                  "the offline runs are kept"), done.stdout + done.stderr


def test_wandb_sync_leaves_no_logs_behind_after_a_good_sync(tmp_path: Path, server: dict[str, str]) -> None:
    """wandb writes its own logs to $WANDB_DIR/wandb/ (else ./wandb/ in the working directory): a temporary folder."""
    (tmp_path / "runs" / "a" / "finetune" / "wandb" / "offline-run-20260101_000000-aft").mkdir(parents=True)
    script = fake_wandb(tmp_path, f'echo "$WANDB_DIR" > {tmp_path / "dir.txt"}')
    done = make("wandb-sync", f"RUN={tmp_path / 'runs'}", wandb=script, env=server)
    assert done.returncode == 0, done.stdout + done.stderr
    used = Path((tmp_path / "dir.txt").read_text().strip())
    assert used.is_absolute() and not used.exists()


# -- the experiment targets: what they run (make -n) ----------------------------------------------------------
def dry_run(target: str, *variables: str) -> list[list[str]]:
    """The ``mnm`` command lines ``make -n TARGET`` would run, split as the shell splits them."""
    done = make("-n", target, *variables)
    assert done.returncode == 0, done.stderr
    text = done.stdout.replace("\\\n", " ")
    return [shlex.split(line) for line in text.splitlines() if ".venv/bin/mnm " in line]


def command_targets() -> list[str]:
    """The targets of the Makefile whose recipe runs ``mnm protocol``, ``benchmark``, ``unsupervised`` or ``demo``."""
    targets, current = [], None
    for line in (REPO / "Makefile").read_text().splitlines():
        if match := re.match(r"^([a-z0-9-]+):", line):
            current = match.group(1)
        elif re.search(r"\$\(MNM\) (protocol|benchmark|unsupervised|demo)\b", line) and current not in targets:
            targets.append(current)
    return targets


def test_every_experiment_target_is_found() -> None:
    assert {"camvid-cpu", "camvid-cpu-margin", "camvid-label-efficient", "msrc-label-efficient", "camvid-semi",
            "camvid-semi-600", "classify-cpu", "classify-camvid", "camvid-unsupervised"} <= set(command_targets())


@pytest.mark.parametrize("target", [t for t in command_targets() if t != "demo"])
def test_experiment_targets_pass_out_and_every_set_on(target: str, tmp_path: Path) -> None:
    """SET is a space-separated list of KEY=VALUE, each one a --set (after the target's own, so it wins)."""
    out = tmp_path / "my run"
    (command,) = dry_run(target, f"OUT={out}", "SET=ft_steps=5 model.milestones=[3,4]", "FALLBACK_CHECKPOINT=1")
    assert command[command.index("--out") + 1] == str(out)
    sets = [command[i + 1] for i, arg in enumerate(command) if arg == "--set"]
    assert sets[-2:] == ["ft_steps=5", "model.milestones=[3,4]"]
    assert "--fallback-checkpoint" in command
    (default,) = dry_run(target)
    assert "--fallback-checkpoint" not in default and "ft_steps=5" not in default


def test_demo_takes_out_and_the_fallback() -> None:
    (command,) = dry_run("demo", "OUT=elsewhere", "FALLBACK_CHECKPOINT=1")
    assert command[1:] == ["demo", "--out", "elsewhere", "--fallback-checkpoint"]
    (default,) = dry_run("demo")
    assert default[1:] == ["demo", "--out", "runs/demo"]


def test_make_help_lists_every_described_target() -> None:
    """Every target with a ``## description`` (names with digits too: camvid-semi-600)."""
    described = re.findall(r"^([a-zA-Z0-9_ -]+):[^#\n]*## ", (REPO / "Makefile").read_text(), flags=re.MULTILINE)
    listed = [name.strip() for name in re.findall(r"\x1b\[1m(.*?)\x1b\[0m", make("help").stdout)]  # bold names
    assert "camvid-semi-600" in described and listed == described

"""What a report records about the code and the machine, and the strict JSON every report is written as."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from mnm.utils.files import strict_json
from mnm.utils.provenance import code_version, describe_code, machine


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args], check=True,
                   capture_output=True)


def test_code_version_names_the_commit_and_whether_it_has_changes(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "commit", "-qm", "a")
    clean = code_version(tmp_path)
    assert len(clean["commit"]) == 40 and clean["dirty"] is False
    (tmp_path / "a.py").write_text("x = 2\n")
    dirty = code_version(tmp_path)
    assert dirty["commit"] == clean["commit"] and dirty["dirty"] is True
    assert describe_code(dirty) == f"commit {clean['commit'][:10]} (uncommitted changes)"


def test_code_version_outside_a_git_checkout(tmp_path: Path) -> None:
    outside = code_version(tmp_path)
    assert outside["commit"] is None and outside["dirty"] is None and outside["note"] == "not a git checkout"
    assert describe_code(outside).endswith("(not a git checkout)")


def test_machine_names_host_cpus_torch_and_device() -> None:
    info = machine()
    assert set(info) >= {"host", "cpus", "torch", "device"} and info["cpus"] >= 1


def test_strict_json_writes_null_for_missing_numbers() -> None:
    text = strict_json({"std": math.nan, "values": [1.0, math.inf], "n": 1})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(c)) == {"std": None, "values": [1.0, None], "n": 1}

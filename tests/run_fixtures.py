"""One run of ``conf/benchmarks/tiny.yaml``, shared by ``test_benchmark.py`` and ``test_notebook.py``.

Import the fixture into a test module (``from run_fixtures import tiny_run_fixture``); the run
happens once per session however many modules use it. It runs in a subprocess
(``python -m mnm demo --quick``, from an empty working folder), so global torch settings of the run
(deterministic algorithms, seeds) do not leak into other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "conf" / "benchmarks" / "tiny.yaml"


@dataclass(frozen=True)
class TinyRun:
    """A finished tiny benchmark: its run directory, data root, results, the CLI's stdout and the (empty) folder
    it ran in."""

    run_dir: Path
    data_root: Path
    results: dict[str, Any]
    stdout: str
    cwd: Path


def mnm_cli(*args: str, timeout: float = 600, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """``python -m mnm ARGS`` (from the repository root), W&B off; raises with the output on failure."""
    env = {**os.environ, "WANDB_MODE": "disabled", "NO_ALBUMENTATIONS_UPDATE": "1"}
    proc = subprocess.run([sys.executable, "-m", "mnm", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"mnm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_tiny_benchmark(run_dir: Path, data_root: Path) -> subprocess.CompletedProcess:
    return mnm_cli("benchmark", str(TINY), "--out", str(run_dir), "--set", f"data_root={data_root}")


_RUNS: dict[str, TinyRun] = {}


@pytest.fixture(scope="session", name="tiny_run")
def tiny_run_fixture(tmp_path_factory: pytest.TempPathFactory) -> TinyRun:
    """The tiny benchmark, run once per test session."""
    if "tiny" not in _RUNS:
        base = tmp_path_factory.mktemp("bench-tiny")
        (base / "cwd").mkdir()
        proc = mnm_cli("demo", "--quick", "--out", str(base / "run"), cwd=base / "cwd")  # the data: run/data/
        results = json.loads((base / "run" / "results.json").read_text())
        _RUNS["tiny"] = TinyRun(base / "run", base / "run" / "data" / "synthetic-tiny", results, proc.stdout,
                                base / "cwd")
    return _RUNS["tiny"]

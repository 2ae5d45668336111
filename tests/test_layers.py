"""The import contract (setup.cfg [importlinter]): the layers of docs/ARCHITECTURE.md import downwards only, and the
core packages stay free of Lightning; checked by import-linter on the package as it installs (.ci/lint-imports)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "setup.cfg", "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(tree)}, timeout=300)


@pytest.fixture(scope="module")
def package_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """src/mnm with stages/ and datamodules/ inside it, as the wheel installs them."""
    tree = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO / "src" / "mnm", tree / "mnm", ignore=ignore)
    shutil.copytree(REPO / "stages", tree / "mnm" / "stages", ignore=ignore)
    shutil.copytree(REPO / "datamodules", tree / "mnm" / "datamodules", ignore=ignore)
    return tree


def test_the_ci_script_keeps_every_contract() -> None:
    proc = subprocess.run([str(REPO / ".ci" / "lint-imports")], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "BIN": str(LINT.parent)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in proc.stdout


@pytest.mark.parametrize(("module", "line", "contract"), [
    ("models/heads.py", "import mnm.runs.runner", "the layers of docs/ARCHITECTURE.md import downwards only BROKEN"),
    ("methods/match.py", "import lightning", "the core packages are plain torch: no Lightning BROKEN"),
    ("utils/paths.py", "import mnm.models.backbones", "the layers of docs/ARCHITECTURE.md import downwards only BROKEN"),
])
def test_an_upward_or_lightning_import_breaks_a_contract(package_tree: Path, tmp_path: Path, module: str, line: str,
                                                         contract: str) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(package_tree, tree)
    path = tree / "mnm" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    proc = lint(tree)
    assert proc.returncode == 1 and contract in proc.stdout, proc.stdout[-3000:]


def test_setup_cfg_installs_every_subpackage() -> None:
    """A subpackage missing from setup.cfg's ``packages`` would be left out of the wheel (and work only editable)."""
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    listed = set(config["options"]["packages"].split())
    found = {"mnm." + ".".join(p.parent.relative_to(REPO / "src" / "mnm").parts) if p.parent != REPO / "src" / "mnm"
             else "mnm" for p in (REPO / "src" / "mnm").rglob("__init__.py")}
    assert found | {"mnm.stages", "mnm.datamodules"} == listed

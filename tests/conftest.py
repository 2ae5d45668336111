"""Test-wide settings: no network, offline W&B, paths to the shared data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("PYTHONHASHSEED", "0")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def camvid_root() -> Path:
    """The real CamVid copy beside the repo; tests that need it fail (not skip) when it is missing."""
    root = SHARED / "data" / "camvid"
    assert root.is_dir(), f"the shared CamVid copy is missing: {root} (CI runs with ../shared beside the repo)"
    return root


@pytest.fixture(scope="session")
def msrc_root() -> Path:
    """The real MSRC-21 copy beside the repo; tests that need it fail (not skip) when it is missing."""
    root = SHARED / "data" / "msrc"
    assert root.is_dir(), f"the shared MSRC-21 copy is missing: {root} (CI runs with ../shared beside the repo)"
    return root


#: fixtures that train a run before their tests can look at it: every test that uses one is slow
RUN_FIXTURES = {"tiny_run", "protocol", "finished", "bench_run", "five_per_epoch", "imported", "camvid"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that needs a trained run (``make test-fast`` leaves them out)."""
    for item in items:
        if RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

"""The core (plain torch) imports no Lightning: checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

CORE = (
    "mnm.backbones", "mnm.heads", "mnm.losses", "mnm.mix", "mnm.match", "mnm.metrics", "mnm.rng",
    "mnm.colorization", "mnm.jigsaw", "mnm.checkpoints", "mnm.phases", "mnm.probe", "mnm.param_groups",
    "mnm.eval_views", "mnm.semi", "mnm.mim",
    "mnm.clustering", "mnm.hungarian", "mnm.linear_probe", "mnm.caffe_import",
)  # fmt: skip


def test_core_modules_import_no_lightning() -> None:
    code = (
        "import sys\n"
        f"for name in {CORE!r}: __import__(name)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_check_sees_lightning_when_it_is_imported() -> None:
    """The same probe reports Lightning once a stage (a LightningModule) is imported."""
    code = "import sys, mnm.stages.segment\nprint('lightning' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"

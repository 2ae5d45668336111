"""The core (plain torch) imports no Lightning: checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

CORE = (
    "mnm.models.backbones", "mnm.models.heads", "mnm.methods.losses", "mnm.methods.mix", "mnm.methods.match", "mnm.evaluation.metrics", "mnm.utils.rng",
    "mnm.methods.colorization", "mnm.methods.jigsaw", "mnm.weights.checkpoints", "mnm.utils.phases", "mnm.evaluation.knn_probe", "mnm.models.param_groups",
    "mnm.models.eval_views", "mnm.methods.semi_supervised", "mnm.methods.mim",
    "mnm.methods.clustering", "mnm.evaluation.hungarian", "mnm.evaluation.linear_probe", "mnm.weights.caffe_import", "mnm.utils.paths", "mnm.utils.provenance",
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

"""``mnm speed``: speed and cost of the training steps."""

from __future__ import annotations

from typing import Any

from mnm.experiments.speed import run_speed
from mnm.experiments.speed.output import RESULTS_FILE, render_table
from mnm.experiments.speed.settings import parse_args

DESCRIPTION = "``mnm speed``: speed and cost of M&M tuning, graph scaling, fine-tuning and data loading.\n\nSections (``--only`` picks some; the rest of an earlier results file of the same device is kept):\n\n- ``mnm``: one M&M tuning step (:class:`~mnm.stages.mix_match.MixMatchStage`'s own ``training_step``)\n  split into mix, match, backbone forward, triplet loss, backward and the optimiser step, and\n  ``overhead_ratio = (mix + match + loss) / (forward + backward)`` (AlexNet, fp32).\n- ``graph``: graph build time and whole-step time against the number of nodes (paper, Fig. 5).\n- ``finetune``: a :class:`~mnm.stages.segment.SegmentStage` training step (AlexNet + FCN head) in images/s.\n- ``data``: :func:`mnm.datamodules.loader_throughput` on CamVid, next to the fine-tuning rate.\n\nEvery timing goes through :func:`~mnm.experiments.speed.timing.time_laps` (``time.perf_counter``, warm-up runs,\nmedian of the repeats, device synchronised at every lap boundary). Results are a dict, written\natomically as ``<out>/speed.json`` and printed as a table. Settings: :mod:`mnm.experiments.speed.settings`;\nsections: :mod:`mnm.experiments.speed.sections`; output: :mod:`mnm.experiments.speed.output`. (``mnm bench`` is the old\nname of this command; ``mnm benchmark`` is another tool: it runs experiment pipelines.)"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``mnm speed``: run, write ``<out>/speed.json`` and print the table."""
    settings = parse_args(argv, description=DESCRIPTION.split("\n\n")[0])
    results = run_speed(settings)
    print(render_table(results))
    print(f"\n[mnm] speed: wrote {settings.out / RESULTS_FILE} in {results['env']['wall_s']} s")
    return results

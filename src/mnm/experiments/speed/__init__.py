"""``mnm speed``: speed and cost of M&M tuning, graph scaling, fine-tuning and data loading.

Sections (``--only`` picks some; the rest of an earlier results file of the same device is kept):

- ``mnm``: one M&M tuning step (:class:`~mnm.stages.mix_match.MixMatchStage`'s own ``training_step``)
  split into mix, match, backbone forward, triplet loss, backward and the optimiser step, and
  ``overhead_ratio = (mix + match + loss) / (forward + backward)`` (AlexNet, fp32).
- ``graph``: graph build time and whole-step time against the number of nodes (paper, Fig. 5).
- ``finetune``: a :class:`~mnm.stages.segment.SegmentStage` training step (AlexNet + FCN head) in images/s.
- ``data``: :func:`mnm.datamodules.loader_throughput` on CamVid, next to the fine-tuning rate.

Every timing goes through :func:`~mnm.experiments.speed.timing.time_laps` (``time.perf_counter``, warm-up runs,
median of the repeats, device synchronised at every lap boundary). Results are a dict, written
atomically as ``<out>/speed.json`` and printed as a table. Settings: :mod:`mnm.experiments.speed.settings`;
sections: :mod:`mnm.experiments.speed.sections`; output: :mod:`mnm.experiments.speed.output`. (``mnm bench`` is the old
name of this command; ``mnm benchmark`` is another tool: it runs experiment pipelines.)
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from mnm.experiments.speed.output import RESULTS_FILE, previous_sections, render_table, write_results
from mnm.experiments.speed.sections import (
    bench_data,
    bench_finetune,
    bench_graph,
    bench_mnm,
    environment,
    loadavg,
    summarise,
)
from mnm.experiments.speed.settings import SECTIONS, Settings
from mnm.experiments.speed.timing import Laps, Timing, time_call, time_laps

__all__ = [
    "RESULTS_FILE", "SECTIONS", "Laps", "Settings", "Timing", "main", "render_table", "run_speed", "time_call",
    "time_laps",
]


def _images_needed(settings: Settings) -> int:
    """How many M&M input images the selected sections use (0: none)."""
    counts = [settings.images] if "mnm" in settings.only else []
    if "graph" in settings.only:
        counts += [math.ceil(n / settings.scale_patches_per_image) for n in settings.nodes]
    return max(counts, default=0)


def run_speed(settings: Settings) -> dict[str, Any]:
    """Run the selected sections and return the results dict (also written to ``out/speed.json``)."""
    from mnm.experiments.speed.inputs import InputPool

    start = time.perf_counter()
    torch.set_num_threads(settings.threads)
    results: dict[str, Any] = {"env": environment(settings), "settings": settings.to_json()}
    path = settings.out / RESULTS_FILE
    if set(settings.only) != set(SECTIONS):
        results.update(previous_sections(path, results["env"]["device"]))
    needed = _images_needed(settings)
    pool = InputPool(settings, needed) if needed else None
    stamp = {"measured_at": results["env"]["started"]}
    if "mnm" in settings.only:
        results["mnm"] = {**bench_mnm(settings, pool), **stamp}
    if "graph" in settings.only:
        results["graph"] = {**bench_graph(settings, pool), **stamp}
    del pool
    if "finetune" in settings.only:
        results["finetune"] = {**bench_finetune(settings), **stamp}
    if "data" in settings.only:
        results["data"] = {**bench_data(settings), **stamp}
    results["summary"] = summarise(results)
    results["env"]["loadavg_1m_end"] = loadavg()
    results["env"]["wall_s"] = round(time.perf_counter() - start, 1)
    write_results(path, results)
    return results

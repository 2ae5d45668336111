"""``mnm benchmark FILE --out DIR``: run a benchmark file (a branching pipeline + ``report:``) and report it.

The stages run through :class:`~mnm.runs.runner.PipelineRunner`, so a rerun skips
finished stages and resumes an interrupted one; the report
(:func:`mnm.experiments.report.build_report`) is rebuilt from the run directory every time.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnm.experiments.collect import check_report_spec
from mnm.experiments.report import build_report, metric_table
from mnm.runs.config import Pipeline, load_pipeline
from mnm.runs.runner import PipelineRunner
from mnm.stages import stage_class


def load_benchmark(
    file: str | Path, out: str | Path | None = None, sets: Sequence[str] = (), eval_split: str | None = None
) -> Pipeline:
    """Parse a benchmark file; ``eval_split`` (``val``/``test``) replaces every evaluated stage's ``evaluate``.

    For ``test``, a segment stage whose data module has no ``test_split`` gets ``test_split: test``.
    """
    pipeline = load_pipeline(file, list(sets), None if out is None else str(out))
    check_report_spec(pipeline)
    if eval_split is not None:
        for spec in pipeline.stages:
            if stage_class(spec.kind).evaluation_split is None:
                continue
            spec.evaluate = eval_split
            init_args = spec.config.get("data", {}).setdefault("init_args", {})
            if eval_split == "test" and not init_args.get("test_split"):
                init_args["test_split"] = "test"
    return pipeline


def run_benchmark(pipeline: Pipeline, overwrite: bool = False, fallback_checkpoint: bool = False,
                  ran_with: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume, or skip) every stage, then write the report; returns ``results.json``'s content.

    ``fallback_checkpoint``: a stage whose ``last.ckpt`` is corrupt resumes from its newest readable checkpoint.
    ``ran_with`` (what runs it: overrides, code, machine) is recorded in each stage that runs now.
    """
    PipelineRunner(pipeline, overwrite=overwrite, fallback_checkpoint=fallback_checkpoint, ran_with=ran_with).run()
    results = build_report(pipeline.out_dir, pipeline)
    print(f"\n[mnm] benchmark {pipeline.name} ({results['eval_split']}):\n")
    print(metric_table(results))
    print(f"[mnm] report: {pipeline.out_dir / 'report.md'}")
    return results

"""Benchmark reports: ``results.json``, ``report.md`` and figures from a finished run directory.

A benchmark file is a pipeline whose ``report:`` section names the arms (segment
stages), the M&M stages whose curves are compared, and the t-SNE pair::

    report:
      arms: {"random → fine-tune": ft_random, "random → M&M graph → fine-tune": ft_mm_graph}
      curves: {graph: mm_graph, random: mm_random}
      tsne: {before: null, after: mm_graph, num_patches: 600}   # before: a stage, or null = seeded random init
      samples: 4

Every number in ``report.md`` is read from ``results.json``, which is read from
the run folder (:mod:`mnm.runs.rundir`: the manifest, each stage's metrics and CSV log).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mnm.evaluation.metrics import per_class_table, write_per_class_csv
from mnm.experiments.collect import check_report_spec, collect_results
from mnm.experiments.figures import CURVE_TITLES, plot_mm_curves
from mnm.experiments.model_figures import plot_samples, plot_tsne, tsne_embeddings
from mnm.runs.config import Pipeline
from mnm.runs.rundir import RESULTS, StageDir
from mnm.stages import stage_class
from mnm.utils.files import atomic_write_json, atomic_write_text, finite_or_null


def _num(v: float | None, fmt: str = ".4f", scale: float = 1.0) -> str:
    return "–" if v is None or math.isnan(v) else f"{scale * v:{fmt}}"


def _pct(v: float | None) -> str:
    return _num(v, ".2f", 100.0)


def main_metric(results: Mapping[str, Any]) -> tuple[str, str]:
    """``(key, label)`` of the main evaluation metric of a report's or a protocol's arms (mIoU, top-1, ...; mIoU for
    reports written before they recorded ``metrics``)."""
    return next(iter((results.get("metrics") or {"miou": "mIoU"}).items()))


def metric_table(results: Mapping[str, Any]) -> str:
    """Markdown table: one row per arm with its evaluation metrics (%) and the arm's total stage time."""
    metrics = results["metrics"]
    lines = ["| arm | " + " | ".join(f"{label} (%)" for label in metrics.values()) + " | time (s) | stages |",
             "|---|" + "---:|" * len(metrics) + "---:|---|"]
    for label, arm in results["arms"].items():
        values = " | ".join(_pct(arm.get(key)) for key in metrics)
        lines.append(f"| {label} | {values} | {arm['total_time_s']:.1f} | {' → '.join(arm['chain'])} |")
    return "\n".join(lines) + "\n"


def _iou_rows(results: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per-class IoU per arm (of the arms that have it), with None (absent class) back to NaN."""
    return {k: [math.nan if v is None else v for v in a["per_class_iou"]]
            for k, a in results["arms"].items() if "per_class_iou" in a}


def per_class_markdown(results: Mapping[str, Any]) -> str:
    """The per-class IoU table (%) of every arm, from ``results.json``'s content."""
    mious = {k: a["miou"] for k, a in results["arms"].items() if "per_class_iou" in a}
    return per_class_table(_iou_rows(results), results["class_names"], mious)


def _markdown(results: Mapping[str, Any]) -> str:
    parts = [
        f"# Benchmark `{results['benchmark']}`\n",
        f"File `{results['file']}`, seed {results['seed']}, evaluated on **{results['eval_split']}** of "
        f"`{results['dataset']['class_path']}`. Benchmark hash `{results['benchmark_hash']}` (config hashes "
        "leave out the data root and output paths).\n",
        f"## {main_metric(results)[1]} per arm\n", metric_table(results),
    ]
    if _iou_rows(results):
        parts += ["## Per-class IoU (%)\n", per_class_markdown(results),
                  "(also in `per_class_iou.csv`; – = class absent from the split)\n"]
    parts += [
        "## Stage wall times (s)\n", "| stage | kind | init from | steps | time (s) | config hash |",
        "|---|---|---|---:|---:|---|",
    ]
    for name, s in results["stages"].items():
        parts.append(f"| {name} | {s['kind']} | {s['init_from'] or 'random'} | {s['steps']} "
                     f"| {s['wall_time_s']:.1f} | `{s['config_hash']}` |")
    parts.append("")
    if results["curves"]:
        keys = list(dict.fromkeys(k.removeprefix("final_") for c in results["curves"].values() for k in c
                                  if k.startswith("final_")))
        titles = [CURVE_TITLES.get(k, k) + (" (%)" if k.endswith("fraction") else "") for k in keys]
        parts += ["## Training curves\n", "![training curves](curves.png)\n",
                  "Mean over the last 10% of logged steps (– = not logged by that stage):\n",
                  f"| curve | stage | steps | {' | '.join(titles)} |", "|---|---|---:|" + "---:|" * len(keys)]
        for label, c in results["curves"].items():
            values = [(_pct if k.endswith("fraction") else _num)(c.get(f"final_{k}")) for k in keys]
            parts.append(f"| {label} | {c['stage']} | {c['steps']} | {' | '.join(values)} |")
        parts.append("")
    if "tsne" in results:
        t = results["tsne"]
        parts += ["## Patch embeddings before / after M&M\n", "![t-SNE](tsne.png)\n",
                  f"{t['num_patches']} val patches, pool5, L2-normalised; silhouette by class "
                  f"{_num(t['silhouette_before'], '.3f')} before ({t['before'] or 'seeded random init'}) → "
                  f"{_num(t['silhouette_after'], '.3f')} after ({t['after']}).\n"]
    if "samples" in results.get("figures", {}):
        parts += ["## Predictions\n", "![samples](samples.png)\n"]
    parts += ["## Versions\n", ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + "\n"]
    return "\n".join(parts)


def build_report(run_dir: str | Path, pipeline: Pipeline) -> dict[str, Any]:
    """Write ``results.json``, ``report.md``, ``per_class_iou.csv`` and the PNG figures; returns the results."""
    run_dir = Path(run_dir)
    check_report_spec(pipeline)
    results = collect_results(run_dir, pipeline)
    spec, figures = pipeline.report, {}
    kinds = {name: stage["kind"] for name, stage in results["stages"].items()}
    if results["curves"]:
        series = {label: StageDir.of(run_dir, c["stage"]).csv_log for label, c in results["curves"].items()}
        columns: dict[str, str] = {}  # the curves of every kind drawn, merged (a kind lacks some: NaN, not drawn)
        for c in results["curves"].values():
            columns |= stage_class(results["stages"][c["stage"]]["kind"]).curve_metrics
        figures["curves"] = plot_mm_curves(series, columns, run_dir / "curves.png").name
    if int(spec.get("samples", 0)) > 0:
        figures["samples"] = plot_samples(run_dir, spec["arms"], int(spec["samples"]), run_dir / "samples.png",
                                          kinds).name
    if spec.get("tsne"):
        t = spec["tsne"]
        emb = tsne_embeddings(run_dir, t.get("before"), t["after"], int(t.get("num_patches", 600)), pipeline.seed,
                              kinds[t["after"]])
        titles = (f"before M&M ({t.get('before') or 'seeded random init'})", f"after M&M ({t['after']})")
        figures["tsne"] = plot_tsne(emb, titles, run_dir / "tsne.png").name
        results["tsne"] = {"before": t.get("before"), "after": t["after"], "num_patches": len(emb["labels"]),
                           "silhouette_before": emb["silhouette_before"], "silhouette_after": emb["silhouette_after"]}
    results["figures"] = figures
    results = finite_or_null(results)
    if _iou_rows(results):
        write_per_class_csv(run_dir / "per_class_iou.csv", _iou_rows(results), results["class_names"])
    atomic_write_json(run_dir / RESULTS, results)
    atomic_write_text(run_dir / "report.md", _markdown(results))
    return results

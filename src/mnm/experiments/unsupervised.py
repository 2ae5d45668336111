"""``mnm unsupervised FILE``: the unsupervised-segmentation benchmark — clustering arms × seeds, matched mIoU,
linear probe, cluster maps.

The benchmark file is a protocol file (:mod:`mnm.experiments.protocol`) whose arms are ``cluster`` stages. The
protocol runs the cells (resumable) and aggregates each arm's Hungarian-matched mIoU and pixel
accuracy over seeds; this module adds, per arm and seed, the linear probe of the arm's frozen
pixel embedding (:func:`mnm.evaluation.linear_probe.linear_probe`, cached in the cell's ``linear_probe.json``),
and a figure of val images, ground truth and each arm's cluster map (first seed), the clusters
coloured by the class they are matched to (unmatched clusters grey). Writes ``unsupervised.json``
and ``unsupervised.md`` beside ``protocol.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from mnm.datamodules.datasets import pad_collate
from mnm.evaluation.hungarian import HungarianJaccardIndex
from mnm.evaluation.linear_probe import linear_probe
from mnm.experiments.benchmark import load_benchmark
from mnm.experiments.protocol import run_protocol
from mnm.experiments.protocol_cells import cell_name, load_cell, protocol_spec
from mnm.experiments.protocol_markdown import format_mean_std
from mnm.experiments.protocol_plan import grid_plan
from mnm.experiments.protocol_results import finished_stages, mean_std
from mnm.runs.rundir import LINEAR_PROBE_CACHE
from mnm.runs.stage_cli import load_stage
from mnm.utils.files import atomic_write_json, atomic_write_text

#: colour of clusters matched to no class in the figure
UNMATCHED_RGB = (128, 128, 128)


def probe_arm(run_dir: Path, stage: str, seed: int) -> dict[str, float]:
    """Linear probe of a finished cluster stage's pixel embedding: train images -> val mIoU."""
    model, dm = load_stage(run_dir, stage)
    dm.setup("validate")
    train = DataLoader(dm.eval_dataset("train"), batch_size=8, collate_fn=pad_collate)
    result = linear_probe(model, train, dm.val_dataloader(), model.hparams.num_classes, model.hparams.ignore_index,
                          pixels_per_image=512, seed=seed)  # fmt: skip
    return {"miou": result["miou"], "pixel_acc": result["pixel_acc"]}


def probe_cell(run_dir: Path, arms: dict[str, str], seed: int) -> dict[str, dict[str, float]]:
    """Linear-probe scores of each finished arm of a cell, keyed by stage (cached in ``linear_probe.json``)."""
    cache = run_dir / LINEAR_PROBE_CACHE
    scores = json.loads(cache.read_text()) if cache.is_file() else {}
    for stage in arms.values():
        if stage not in scores:
            print(f"[mnm] linear probe of {run_dir.name}/{stage}")
            scores[stage] = probe_arm(run_dir, stage, seed)
            atomic_write_json(cache, scores, sort_keys=True)
    return scores


@torch.no_grad()
def matched_cluster_maps(run_dir: Path, stage: str, num: int) -> dict[str, Any]:
    """Val images, masks, cluster maps and the Hungarian assignment of a finished cluster stage (whole val split)."""
    model, dm = load_stage(run_dir, stage)
    dm.setup("validate")
    metric = HungarianJaccardIndex(model.hparams.num_classes, model.num_clusters, model.hparams.ignore_index)
    for batch in dm.val_dataloader():
        metric.update(model.cluster_map(batch["image"], tuple(batch["mask"].shape[-2:]), dm), batch["mask"])
    val = dm.datasets["val"]
    picked = pad_collate([val[int(i)] for i in np.linspace(0, len(val) - 1, min(num, len(val))).round()])
    maps = model.cluster_map(picked["image"], tuple(picked["mask"].shape[-2:]), dm)
    return {"image": picked["image"], "mask": picked["mask"], "clusters": maps, "palette": dm.palette,
            "class_names": dm.class_names, **metric.compute()}  # fmt: skip


def plot_cluster_maps(run_dir: Path, arms: dict[str, str], num: int, out: Path) -> Path:
    """Rows of val image, ground truth and each arm's cluster map, clusters in the colour of their matched class."""
    from mnm.experiments.figures import pyplot
    from mnm.experiments.model_figures import colourise

    plt = pyplot()
    maps = {label: matched_cluster_maps(run_dir, stage, num) for label, stage in arms.items()}
    first = next(iter(maps.values()))
    palette = np.array(first["palette"], dtype=np.uint8)
    cols = ["image", "ground truth", *(f"{label}\nmIoU {100 * m['miou']:.1f}" for label, m in maps.items())]
    fig, axes = plt.subplots(len(first["image"]), len(cols), figsize=(2.4 * len(cols), 2.0 * len(first["image"])),
                             squeeze=False)  # fmt: skip
    for r in range(len(first["image"])):
        panels = [first["image"][r].permute(1, 2, 0).numpy(), colourise(first["mask"][r], palette)]
        for m in maps.values():
            colours = np.full((int(m["clusters"].max()) + 1, 3), UNMATCHED_RGB, dtype=np.uint8)
            for cls, cluster in enumerate(m["assignment"]):
                if 0 <= cluster < len(colours):
                    colours[cluster] = palette[cls]
            panels.append(colours[m["clusters"][r].numpy()])
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(cols[c], fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def unsupervised_markdown(report: dict[str, Any]) -> str:
    """``unsupervised.md``: per arm, matched mIoU, pixel accuracy, linear probe (mean ± std over seeds) and time."""
    lines = [f"# Unsupervised segmentation `{report['benchmark']}`\n",
             f"Evaluated on **{report['eval_split']}**; seeds {report['seeds']}; mean ± sample std over seeds (n = seeds "
             "finished). Clusters matched one-to-one to classes (Hungarian) for mIoU and pixel accuracy; linear "
             "probe: a 1×1 conv trained on the frozen embedding of the train images, scored without matching. "
             f"Wall time of the finished stages: {report['wall_time_s'] / 60:.1f} min.\n",
             "| arm | mIoU (%) | pixel acc. (%) | linear probe mIoU (%) | probe pixel acc. (%) | time per seed (s) |",
             "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for label, s in report["arms"].items():
        time_s = s["total_time_s"]["mean"]
        lines.append(f"| {label} | {format_mean_std(s['miou'])} | {format_mean_std(s['pixel_acc'])} | {format_mean_std(s.get('probe_miou'))} | "
                     f"{format_mean_std(s.get('probe_pixel_acc'))} | {time_s:.0f} |")
    if report.get("figure"):
        lines.append(f"\n![val images, ground truth and cluster maps]({report['figure']})\n")
    return "\n".join(lines) + "\n"


def run_unsupervised(file: str | Path, out: str | Path | None = None, sets: Sequence[str] = (),
                     eval_split: str | None = None, seeds: Sequence[int] | None = None, samples: int = 4,
                     report_only: bool = False, fallback_checkpoint: bool = False) -> dict[str, Any]:
    """Run the protocol cells seed by seed, each followed by its linear probes, then the figure; returns the report.

    A cell's probes run as soon as the cell has finished, so an interrupted benchmark keeps them;
    the report covers every finished arm of every cell.
    """
    first = load_benchmark(file, out, [*sets, "fraction=1.0"], eval_split)
    spec = protocol_spec(first)
    root = Path(out) if out is not None else first.out_dir
    cells = {(f, s): load_cell(file, root, sets, f, s, eval_split) for f in spec["fractions"] for s in spec["seeds"]}
    selected = {} if report_only else {cell: p for cell, p in cells.items() if not seeds or cell[1] in seeds}
    if selected:
        print(grid_plan(first, spec, selected, None), end="", flush=True)
    for (fraction, seed), pipeline in cells.items():
        if (fraction, seed) in selected:
            run_protocol(file, out, sets, eval_split, fractions=[fraction], seeds=[seed],
                         fallback_checkpoint=fallback_checkpoint, plan=False)
        if arms := finished_arms(pipeline):
            probe_cell(pipeline.out_dir, arms, seed)
    protocol = run_protocol(file, out, sets, eval_split, report_only=True)
    rows: dict[str, list[dict[str, float]]] = {}
    figure = None
    for (fraction, seed), pipeline in cells.items():
        if not (arms := finished_arms(pipeline)):
            continue
        probes = probe_cell(pipeline.out_dir, arms, seed)
        cell = protocol["cells"][cell_name(fraction, seed)]["arms"]
        for label, stage in arms.items():
            rows.setdefault(label, []).append(dict(cell[label]) | {f"probe_{k}": v for k, v in probes[stage].items()})
        if figure is None and samples > 0:
            figure = plot_cluster_maps(pipeline.out_dir, arms, samples, root / "cluster_maps.png").name
    report = {k: protocol[k] for k in ("benchmark", "file", "seeds", "eval_split", "wall_time_s")}
    report["arms"] = {label: {key: mean_std([r[key] for r in rs]) for key in rs[0]} for label, rs in rows.items()}
    report["figure"] = figure
    atomic_write_json(root / "unsupervised.json", report)
    atomic_write_text(root / "unsupervised.md", unsupervised_markdown(report))
    print(unsupervised_markdown(report))
    print(f"[mnm] unsupervised report: {root / 'unsupervised.md'}")
    return report


def finished_arms(pipeline: Any) -> dict[str, str]:
    """The arms (label -> stage) of a cell whose stage has finished."""
    done = finished_stages(pipeline)
    return {label: stage for label, stage in pipeline.report["arms"].items() if stage in done}

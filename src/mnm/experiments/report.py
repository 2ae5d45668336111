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

import copy
import importlib.metadata
import math
import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnm.datamodules.datasets import pad_collate
from mnm.evaluation.metrics import per_class_table, write_per_class_csv
from mnm.runs.config import Pipeline, StageSpec
from mnm.runs.hashing import config_hash, stage_hashes
from mnm.runs.rundir import RESULTS, StageDir, read_csv_rows, read_manifest, read_stage_metrics
from mnm.runs.stage_cli import load_stage
from mnm.runs.yaml_layers import ConfigError
from mnm.stages import stage_class
from mnm.utils.files import atomic_write_json, atomic_write_text, finite_or_null

__all__ = [
    "build_report", "check_report_spec", "load_stage", "main_metric", "metric_table", "per_class_markdown", "plot_mm_curves",
    "read_curve_band", "read_curves", "tail_mean",
]

#: figure titles of the curves stages log (:attr:`BaseStage.curve_metrics`); other curves show their key
CURVE_TITLES = {"loss": "training loss", "active_fraction": "active-triplet fraction", "triplet": "triplet term",
                "cross_image_fraction": "cross-image positive fraction"}
MAX_VAL_PASSES = 10  # t-SNE: at most this many passes over the val split to collect the patches
VERSIONED = ("torch", "torchvision", "lightning", "numpy", "scikit-learn", "matplotlib", "mnm")


# -- reading the run -----------------------------------------------------------------------------------
def check_report_spec(pipeline: Pipeline) -> None:
    """Raise :class:`ConfigError` unless ``report:`` names stages of the right kinds."""
    classes = {s.name: stage_class(s.kind) for s in pipeline.stages}
    spec = pipeline.report

    def need(stage: Any, has: Callable[[type], bool], what: str, where: str) -> None:
        if stage not in classes or not has(classes[stage]):
            raise ConfigError(f"{pipeline.path}: report.{where} = {stage!r} is not {what} of this file")

    evaluated, segment = (lambda c: c.evaluation_split is not None), "a segment stage (one that is evaluated)"
    if not spec.get("arms"):
        raise ConfigError(f"{pipeline.path}: report.arms must map arm names to segment stages")
    for label, stage in spec["arms"].items():
        need(stage, evaluated, segment, f"arms[{label!r}]")
    for label, stage in (spec.get("curves") or {}).items():
        need(stage, lambda c: bool(c.curve_metrics), "an M&M stage (one with training curves)", f"curves[{label!r}]")
    tsne = spec.get("tsne")
    if tsne:
        need(tsne.get("after"), lambda c: callable(getattr(c, "mix", None)), "an M&M stage (one that mixes patches)",
             "tsne.after")
        if tsne.get("before") is not None and tsne["before"] not in classes:
            raise ConfigError(f"{pipeline.path}: report.tsne.before = {tsne['before']!r} is not a stage")


def init_chain(pipeline: Pipeline, stage: str) -> list[str]:
    """The stage and every stage it was initialised from, earliest first."""
    parents = {s.name: s.init_from for s in pipeline.stages}
    chain = [stage]
    while parents.get(chain[-1]):
        chain.append(parents[chain[-1]])
    return chain[::-1]


def portable_hashes(pipeline: Pipeline) -> dict[str, str]:
    """Per stage, a hash of its configuration and its init chain's, without the data root or output paths.

    Equal hashes mean the same experiment, wherever the data and the run directory live.
    """

    def without_paths(spec: StageSpec) -> dict[str, Any]:
        cfg = copy.deepcopy(spec.config)
        cfg.get("data", {}).get("init_args", {}).pop("root", None)
        return cfg

    return stage_hashes(pipeline.stages, without_paths)


def read_curves(csv_path: Path, columns: Mapping[str, str]) -> dict[str, np.ndarray]:
    """``step`` and the curves ``key -> CSV column`` (NaN where a row lacks them) of a stage's CSV log.

    A column logged per step and per epoch is read from its ``_step`` variant.
    """
    rows = read_csv_rows(csv_path)
    by_step: dict[int, dict[str, float]] = {}
    for row in rows:
        values = {}
        for key, column in columns.items():
            text = row.get(f"{column}_step") or row.get(column) or ""
            if text:
                values[key] = float(text)
        if values:  # a resumed run may log a step twice: keep the last
            by_step.setdefault(int(row["step"]), {}).update(values)
    steps = sorted(by_step)
    out = {"step": np.array(steps, dtype=float)}
    for key in columns:
        out[key] = np.array([by_step[s].get(key, math.nan) for s in steps], dtype=float)
    return out


def read_curve_band(csv_paths: Sequence[Path], columns: Mapping[str, str]) -> dict[str, Any]:
    """The curves of several runs of one stage (seeds): ``step`` (the steps every run logged), each key's mean
    and ``<key>_std`` (sample std; 0 for one run) over the runs, and ``n``, the number of runs."""
    runs = [read_curves(Path(path), columns) for path in csv_paths]
    steps = sorted(set.intersection(*(set(r["step"].tolist()) for r in runs))) if runs else []
    out: dict[str, Any] = {"step": np.array(steps, dtype=float), "n": len(runs)}
    for key in columns:
        stacked = np.stack([r[key][np.searchsorted(r["step"], steps)] for r in runs]) if steps else np.empty((0, 0))
        out[key] = stacked.mean(axis=0) if steps else np.array([])
        out[f"{key}_std"] = stacked.std(axis=0, ddof=1) if len(runs) > 1 and steps else np.zeros(len(steps))
    return out


def tail_mean(values: np.ndarray, share: float = 0.1) -> float:
    """The mean of the last ``share`` of a curve's values (NaNs dropped; NaN when none is left)."""
    values = values[~np.isnan(values)]
    return float(values[-max(1, int(len(values) * share)) :].mean()) if len(values) else math.nan


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in VERSIONED:
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _iou_rows(results: Mapping[str, Any]) -> dict[str, list[float]]:
    """Per-class IoU per arm (of the arms that have it), with None (absent class) back to NaN."""
    return {k: [math.nan if v is None else v for v in a["per_class_iou"]]
            for k, a in results["arms"].items() if "per_class_iou" in a}


def per_class_markdown(results: Mapping[str, Any]) -> str:
    """The per-class IoU table (%) of every arm, from ``results.json``'s content."""
    mious = {k: a["miou"] for k, a in results["arms"].items() if "per_class_iou" in a}
    return per_class_table(_iou_rows(results), results["class_names"], mious)


def collect_results(run_dir: Path, pipeline: Pipeline) -> dict[str, Any]:
    """Everything the report shows, read from the run directory (no figures)."""
    entries = read_manifest(run_dir).get("stages", {})
    portable = portable_hashes(pipeline)
    stages = {}
    for spec in pipeline.stages:
        metrics = read_stage_metrics(run_dir, spec.name)
        stages[spec.name] = {
            "kind": spec.kind,
            "init_from": spec.init_from,
            "config_hash": portable[spec.name],
            "run_hash": entries.get(spec.name, {}).get("config_hash"),
            "wall_time_s": float(metrics["wall_time_s"]),
            "steps": int(metrics.get("steps", 0)),
        }
    arms, metrics = {}, {}
    for label, stage in pipeline.report["arms"].items():
        ev = read_stage_metrics(run_dir, stage)["eval"]
        shown = stage_class(stages[stage]["kind"]).evaluation_metrics
        metrics |= shown
        chain = init_chain(pipeline, stage)
        times = {s: stages[s]["wall_time_s"] for s in chain}
        arms[label] = {"stage": stage, "chain": chain, "split": ev["split"], **{k: float(ev[k]) for k in shown}}
        if "per_class_iou" in ev:
            arms[label] |= {"per_class_iou": [float(v) for v in ev["per_class_iou"]],
                            "class_names": list(ev["class_names"])}
        arms[label] |= {"stage_times": times, "total_time_s": sum(times.values())}
    curves = {}
    for label, stage in (pipeline.report.get("curves") or {}).items():
        columns = stage_class(stages[stage]["kind"]).curve_metrics
        c = read_curves(StageDir.of(run_dir, stage).csv_log, columns)
        curves[label] = {"stage": stage, "steps": stages[stage]["steps"]}
        curves[label] |= {f"final_{key}": tail_mean(c[key]) for key in columns}
    first = next(iter(arms.values()))
    data_cfg = StageDir.of(run_dir, first["stage"]).read_config().get("data", {})
    splits = sorted({a["split"] for a in arms.values()})
    return {
        "benchmark": pipeline.name,
        "file": str(pipeline.path),
        "seed": pipeline.seed,
        "eval_split": splits[0] if len(splits) == 1 else splits,
        "dataset": {"class_path": data_cfg.get("class_path"), "init_args": data_cfg.get("init_args", {})},
        "class_names": first.get("class_names", []),
        "metrics": metrics,
        "versions": _versions(),
        "config_hashes": portable,
        "benchmark_hash": config_hash({"stages": portable, "report": pipeline.report}),
        "stages": stages,
        "arms": arms,
        "curves": curves,
    }


# -- models from a run directory -----------------------------------------------------------------------
def _val_batches(datamodule: Any) -> Any:
    datamodule.setup("validate")
    return iter(datamodule.val_dataloader())


# -- figures -------------------------------------------------------------------------------------------
def pyplot() -> Any:
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _smooth(values: np.ndarray) -> np.ndarray:
    window = max(1, len(values) // 25)
    if window == 1:
        return values
    padded = np.pad(values, (window // 2, window - 1 - window // 2), mode="edge")
    return np.convolve(padded, np.ones(window) / window, mode="valid")


#: line styles and markers cycled with the colours, so that identical curves stay distinguishable
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")


def plot_mm_curves(
    series: Mapping[str, Path | Sequence[Path]], columns: Mapping[str, str], out: Path,
    miou: Mapping[str, float | None] | None = None, bar_colours: Sequence[str] | None = None,
) -> Path:
    """Save :func:`mm_figure` to ``out``."""
    fig = mm_figure(series, columns, miou, bar_colours)
    fig.savefig(out, dpi=110)
    pyplot().close(fig)
    return out


def mm_figure(
    series: Mapping[str, Path | Sequence[Path]], columns: Mapping[str, str],
    miou: Mapping[str, float | None] | None = None, bar_colours: Sequence[str] | None = None,
) -> Any:
    """One panel per curve ``key -> CSV column`` vs step, one line per ``label -> CSV log`` (raw faint, smoothed)
    or ``label -> CSV logs`` of several seeds (their smoothed mean, a ± std band, n in the legend),
    and, given ``miou`` (``label -> mIoU`` in [0, 1]), a bar panel of the final mIoU per arm, coloured by
    ``bar_colours`` (default: one colour per bar; the lines are ``C0``, ``C1``, ... in the order of ``series``).

    Each line gets its own colour, line style and marker (placed at staggered steps), so
    curves that coincide, as the active fraction of every α = 2.1 run does, remain visible.
    """
    plt = pyplot()
    curves = len(columns) if series else 0
    panels = max(curves + (1 if miou else 0), 1)
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4), squeeze=False)
    axes = list(axes[0])
    for i, (label, paths) in enumerate(series.items()):
        band = not isinstance(paths, str | Path)
        c = read_curve_band(paths, columns) if band else read_curves(Path(paths), columns)
        style = {"color": f"C{i}", "linestyle": LINE_STYLES[i % len(LINE_STYLES)]}
        for ax, key in zip(axes[:curves], columns, strict=True):
            ok = ~np.isnan(c[key])
            every = max(1, int(ok.sum()) // 6)
            mean = _smooth(c[key][ok])
            if band:
                spread = _smooth(c[f"{key}_std"][ok])
                ax.fill_between(c["step"][ok], mean - spread, mean + spread, color=style["color"], alpha=0.15)
            else:
                ax.plot(c["step"][ok], c[key][ok], color=style["color"], alpha=0.25, linewidth=0.8)
            ax.plot(c["step"][ok], mean, **style, marker=MARKERS[i % len(MARKERS)],
                    markevery=(i % every, every), markersize=4, label=f"{label} (n={c['n']})" if band else label)
    for ax, key in zip(axes[:curves], columns, strict=True):
        ax.set(title=CURVE_TITLES.get(key, key), xlabel="step")
        ax.grid(alpha=0.3)
    if curves:
        axes[0].legend(fontsize=8)
    if miou:
        ax = axes[-1]
        values = [100 * (v or 0.0) for v in miou.values()]
        ax.barh(range(len(miou)), values, color=list(bar_colours or (f"C{i}" for i in range(len(miou)))))
        for y, (v, raw) in enumerate(zip(values, miou.values(), strict=True)):
            ax.text(v, y, f" {v:.2f}" if raw is not None else " –", va="center", fontsize=8)
        ax.set_yticks(range(len(miou)), list(miou), fontsize=8)
        ax.invert_yaxis()
        ax.set(title="final mIoU (%)", xlim=(0, max([*values, 1.0]) * 1.2))
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def colourise(labels: torch.Tensor, palette: np.ndarray) -> np.ndarray:
    """H×W class ids -> H×W×3 uint8; ignore (and anything out of range) is white."""
    lab = labels.numpy()
    out = np.full((*lab.shape, 3), 255, dtype=np.uint8)
    ok = lab < len(palette)
    out[ok] = palette[lab[ok]]
    return out


@torch.no_grad()
def plot_samples(run_dir: Path, arms: Mapping[str, str], num: int, out: Path) -> Path:
    """Rows of val image, ground truth and each arm's prediction (data module's palette; ignore is white)."""
    plt = pyplot()
    models = {label: load_stage(run_dir, stage) for label, stage in arms.items()}
    _, dm = next(iter(models.values()))
    dm.setup("validate")
    val = dm.datasets["val"]  # images spread over the split (video frames in a row look alike)
    batch = pad_collate([val[int(i)] for i in np.linspace(0, len(val) - 1, min(num, len(val))).round()])
    image, mask = batch["image"], batch["mask"]
    palette = np.array(dm.palette, dtype=np.uint8)
    preds = {label: m.predict_probs(image).argmax(1) for label, (m, _) in models.items()}
    cols = ["image", "ground truth", *arms]
    fig, axes = plt.subplots(len(image), len(cols), figsize=(2.2 * len(cols), 2.2 * len(image)), squeeze=False)
    for r in range(len(image)):
        panels = [image[r].permute(1, 2, 0).numpy(), colourise(mask[r], palette)]
        panels += [colourise(p[r], palette) for p in preds.values()]
        for c, panel in enumerate(panels):
            axes[r, c].imshow(panel)
            axes[r, c].axis("off")
            if r == 0:
                axes[r, c].set_title(cols[c], fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[i] / 255) for i in range(len(palette))]
    fig.legend(handles, dm.class_names, loc="lower center", ncol=min(len(palette), 11), fontsize=7)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _val_patches(model: Any, datamodule: Any, num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``num`` labelled patches mixed (``model.mix``) from val images; a small split is passed over again."""
    patches, labels, count = [], [], 0
    for _ in range(MAX_VAL_PASSES):
        for batch in _val_batches(datamodule):
            mixed = model.mix(batch, generator)
            patches.append(mixed.patches)
            labels.append(mixed.labels)
            count += len(mixed.labels)
            if count >= num:
                return torch.cat(patches)[:num], torch.cat(labels)[:num]
    return torch.cat(patches), torch.cat(labels)


@torch.no_grad()
def tsne_embeddings(run_dir: Path, before: str | None, after: str, num_patches: int, seed: int) -> dict[str, Any]:
    """The same val patches embedded (L2-normalised pool5) before and after M&M, and their t-SNE maps.

    ``before`` is a stage whose final weights the M&M stage started from, or
    ``None`` for the M&M stage's own seeded random initialisation.
    """
    from sklearn.manifold import TSNE
    from sklearn.metrics import silhouette_score
    from threadpoolctl import threadpool_limits

    from mnm.weights.formats import load_backbone_weights

    tuned, dm = load_stage(run_dir, after)
    initial, _ = load_stage(run_dir, after, weights=False)
    if before is not None:
        load_backbone_weights(initial.backbone, str(StageDir.of(run_dir, before).final_checkpoint))
    x, y = _val_patches(tuned, dm, num_patches, torch.Generator().manual_seed(seed))
    y = y.numpy()
    result: dict[str, Any] = {"labels": y, "class_names": dm.class_names, "palette": dm.palette}
    for key, model in (("before", initial), ("after", tuned)):
        emb = torch.cat([model.backbone.embed(chunk) for chunk in x.split(128)])
        emb = torch.nn.functional.normalize(emb, dim=1).numpy()
        perplexity = min(30.0, (len(emb) - 1) / 3)
        with threadpool_limits(1):  # Barnes-Hut with OpenMP threads crawls on a busy CPU; one thread is fast
            result[key] = TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(emb)
        multi = len(set(y.tolist())) > 1
        result[f"silhouette_{key}"] = float(silhouette_score(emb, y, metric="euclidean")) if multi else math.nan
    return result


def plot_tsne(tsne: Mapping[str, Any], titles: tuple[str, str], out: Path) -> Path:
    """Two t-SNE panels (before / after M&M) coloured by the patches' classes."""
    plt = pyplot()
    palette = np.array(tsne["palette"], dtype=float) / 255
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.8))
    for ax, key, title in zip(axes, ("before", "after"), titles, strict=True):
        for cls in sorted(set(tsne["labels"].tolist())):
            pts = tsne[key][tsne["labels"] == cls]
            ax.scatter(pts[:, 0], pts[:, 1], s=6, color=palette[cls], label=tsne["class_names"][cls])
        ax.set_title(f"{title}\n(silhouette {tsne[f'silhouette_{key}']:.3f})", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[1].legend(fontsize=7, markerscale=2, loc="best")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


# -- the report ----------------------------------------------------------------------------------------
def _num(v: float | None, fmt: str = ".4f", scale: float = 1.0) -> str:
    return "–" if v is None or math.isnan(v) else f"{scale * v:{fmt}}"


def _pct(v: float | None) -> str:
    return _num(v, ".2f", 100.0)


def main_metric(results: Mapping[str, Any]) -> tuple[str, str]:
    """``(key, label)`` of the main evaluation metric of a report's arms (mIoU, top-1, ...)."""
    return next(iter(results["metrics"].items()))


def metric_table(results: Mapping[str, Any]) -> str:
    """Markdown table: one row per arm with its evaluation metrics (%) and the arm's total stage time."""
    metrics = results["metrics"]
    lines = ["| arm | " + " | ".join(f"{label} (%)" for label in metrics.values()) + " | time (s) | stages |",
             "|---|" + "---:|" * len(metrics) + "---:|---|"]
    for label, arm in results["arms"].items():
        values = " | ".join(_pct(arm.get(key)) for key in metrics)
        lines.append(f"| {label} | {values} | {arm['total_time_s']:.1f} | {' → '.join(arm['chain'])} |")
    return "\n".join(lines) + "\n"


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
    if results["curves"]:
        series = {label: StageDir.of(run_dir, c["stage"]).csv_log for label, c in results["curves"].items()}
        columns: dict[str, str] = {}  # the curves of every kind drawn, merged (a kind lacks some: NaN, not drawn)
        for c in results["curves"].values():
            columns |= stage_class(results["stages"][c["stage"]]["kind"]).curve_metrics
        figures["curves"] = plot_mm_curves(series, columns, run_dir / "curves.png").name
    if int(spec.get("samples", 0)) > 0:
        figures["samples"] = plot_samples(run_dir, spec["arms"], int(spec["samples"]), run_dir / "samples.png").name
    if spec.get("tsne"):
        t = spec["tsne"]
        emb = tsne_embeddings(run_dir, t.get("before"), t["after"], int(t.get("num_patches", 600)), pipeline.seed)
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

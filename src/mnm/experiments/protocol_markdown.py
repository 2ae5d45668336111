"""``protocol.md`` and ``miou_vs_fraction.png`` from a protocol's results (:mod:`mnm.experiments.protocol_results`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mnm.experiments.figures import CURVE_TITLES, pyplot
from mnm.experiments.report import main_metric
from mnm.utils.provenance import describe_code, describe_machine


def format_mean_std(stats: dict[str, Any] | None, scale: float = 100.0) -> str:
    """``mean ± std (n=N)`` of :func:`mean_std` output, scaled (× 100 for percentages); "–" when empty."""
    if not stats or stats["mean"] is None or math.isnan(stats["mean"]):
        return "–"
    std = "" if stats["std"] is None or math.isnan(stats["std"]) else f" ± {scale * stats['std']:.2f}"
    return f"{scale * stats['mean']:.2f}{std} (n={stats['n']})"


def _by_cell(records: dict[str, dict[str, Any]], describe: Callable[[dict[str, Any]], str]) -> str:
    """``describe(record)`` of the cells' records, once when all agree, else each text with its cells."""
    groups: dict[str, list[str]] = {}
    for cell, record in records.items():
        groups.setdefault(describe(record), []).append(cell)
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{text} (cells {', '.join(cells)})" for text, cells in groups.items())


def provenance_markdown(prov: dict[str, Any]) -> str:
    """The lines under the title: the cells' ``--set`` overrides (first, so a smoke run shows as one), code and
    machine."""
    records = prov.get("cells") or {}
    if not records:
        return "What ran the cells (overrides, code, machine) is not recorded: they ran before mnm recorded it.\n"
    sets = _by_cell(records, lambda r: ", ".join(f"`{s}`" for s in r.get("sets", [])) or "none")
    changed = any(r.get("sets") for r in records.values())
    head = (f"**Overrides (`--set`): {sets}.** These numbers come from the file changed by them, not from its "
            "own settings and budget.\n" if changed else "Overrides (`--set`): none; the file's own settings.\n")
    differ = [cell for cell, stages in (prov.get("stages") or {}).items()
              if len({tuple(r.get("sets", [])) for r in stages.values()}) > 1]
    if differ:
        head += (f"**The stages of cells {', '.join(differ)} ran with different overrides**: each arm's are in the "
                 "tables' overrides column, and no seed is paired across arms that differ in them.\n")
    return (head + f"\nCode: {_by_cell(records, lambda r: describe_code(r.get('code') or {}))}. "
            f"Machine: {_by_cell(records, lambda r: describe_machine(r.get('machine') or {}))}.\n")


def arm_overrides_by_label(per_cell: dict[str, Any], fraction: str) -> dict[str, list[str] | None]:
    """Each arm's overrides at ``fraction``: the union over its seeds (``None`` when a seed did not record them)."""
    found: dict[str, list[str] | None] = {}
    for cell in per_cell.values():
        if f"{cell['fraction']:g}" != fraction:
            continue
        for label, sets in (cell.get("overrides") or {}).items():
            if sets is None or found.get(label, []) is None:
                found[label] = None
            else:
                found[label] = sorted({*found.get(label, []), *sets})
    return found


def protocol_markdown(report: dict[str, Any]) -> str:
    """``protocol.md``: per fraction, each arm's metrics and probe accuracy (mean ± std over seeds)."""
    key, name = main_metric(report)
    parts = [f"# Protocol `{report['benchmark']}`\n", provenance_markdown(report.get("provenance") or {}),
             f"File `{report['file']}`; fractions {report['fractions']}, seeds {report['seeds']}, evaluated on "
             f"**{report['eval_split']}**. Budget: {report.get('budget') or 'not stated'}. Wall time of the "
             f"finished cells: {report['wall_time_s'] / 3600:.2f} h (sum of stage times).\n",
             "mean ± sample std over seeds (n = seeds finished)."
             + (" Probe: kNN accuracy of the backbone each arm starts from, on patches of the cell's labelled train "
                "images vs val patches (`mnm.evaluation.knn_probe`)." if report.get("probe", True) else "") + "\n"]
    probe_head, probe_rule = (" probe kNN acc. (%) | probe eff. rank |", "---:|---:|") if report.get("probe", True) else ("", "")
    others = {k: label for k, label in (report.get("metrics") or {}).items() if k != key}
    for fraction in (f"{f:g}" for f in report["fractions"]):
        rows = {label: by_fraction[fraction] for label, by_fraction in report["summary"].items()
                if fraction in by_fraction}
        if not rows:
            parts.append(f"## Label fraction {fraction}\n\nNo arm has finished yet.\n")
            continue
        extra = "".join(f" {label} (%) |" for label in others.values())
        overrides = arm_overrides_by_label(report.get("cells", {}), fraction)
        shown = len({tuple(v) if v is not None else None for v in overrides.values()}) > 1
        parts += [f"## Label fraction {fraction}\n",
                  f"| arm | {name} (%) |{extra}{probe_head}" + (" overrides |" if shown else ""),
                  "|---|---:|" + "---:|" * len(others) + probe_rule + ("---|" if shown else "")]
        for label, s in rows.items():
            values = "".join(f" {format_mean_std(s.get(k))} |" for k in others)
            probe = (f" {format_mean_std(s.get('probe_knn_acc'))} | "
                     f"{format_mean_std(s.get('probe_effective_rank'), scale=1.0)} |") if probe_head else ""
            column = f" {_overrides_text(overrides.get(label))} |" if shown else ""
            parts.append(f"| {label} | {format_mean_std(s[key])} |{values}{probe}{column}")
        parts.append("")
        parts += paired_markdown(report.get("paired", {}).get(fraction, []), name)
        parts += paired_probe_markdown(report.get("paired_probe", {}).get(fraction, []))
        per_class = report.get("per_class") or {}
        parts += per_class_differences_markdown(per_class.get("by_fraction", {}).get(fraction, []), per_class.get("arm"),
                                    per_class.get("against"))
        parts += curves_markdown(report.get("curves") or {}, fraction)
    if report["summary"]:
        parts.append(f"![{name} against label fraction](miou_vs_fraction.png)\n")
    return "\n".join(parts)


def paired_markdown(rows: Sequence[dict[str, Any]], name: str) -> list[str]:
    """Lines of the paired-difference table of one fraction (empty without rows)."""
    if not rows:
        return []
    lines = [f"Paired by seed, {name} of the arm minus {name} of the arm it is compared against (points): "
             "mean ± std, the 95 % confidence interval of the mean (Student's t over seeds); the verdict follows "
             "the interval (above 0: higher, below: lower, else no difference). *Detectable*: the true difference "
             "a paired t-test finds with 80 % power at this spread (`mnm.evaluation.paired`); smaller gains could go unseen.\n",
             "| arm | against | difference | 95 % CI | detectable | per seed | verdict |",
             "|---|---|---:|---:|---:|---|---|"]
    notes = []
    for r in rows:
        per_seed = ", ".join(f"s{s}: {100 * v:+.2f}" for s, v in zip(r["seeds"], r["values"], strict=True))
        std = "" if r.get("std") is None or math.isnan(r["std"]) else f" ± {100 * r['std']:.2f}"
        ci = "–" if r.get("ci_low") is None else f"[{100 * r['ci_low']:+.2f}, {100 * r['ci_high']:+.2f}]"
        detectable = "–" if r.get("detectable") is None else f"±{100 * r['detectable']:.2f}"
        mean = f"{100 * r['mean']:+.2f}{std}" if r["n"] else "–"
        lines.append(f"| {r['arm']} | {r['against']} | {mean} (n={r['n']}) | {ci} | "
                     f"{detectable} | {per_seed} | {r['verdict']} |")
        for gap in r.get("left_out", []):
            notes.append(f"- Not paired: {r['arm']} − {r['against']}, seed {gap['seed']}: the arms ran with different "
                         f"overrides ({_overrides_text(gap['arm'])} against {_overrides_text(gap['against'])}).")
    return [*lines, "", *([*notes, ""] if notes else [])]


def paired_probe_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Lines of the paired probe table of one fraction: the starting backbones of the pairs, no head trained."""
    if not rows:
        return []
    return ["The representations alone, paired by seed: the probe's kNN accuracy (points) of the backbones the arms "
            "of a pair start from, by stage; no head is trained, so the only noise is the stages' own. Columns as "
            "above.\n",
            *paired_markdown(rows, "probe kNN accuracy")[1:]]


def _overrides_text(sets: Sequence[str] | None) -> str:
    """Markdown of one arm's ``--set`` overrides."""
    if sets is None:
        return "not recorded"
    return ", ".join(f"`{item}`" for item in sets) or "none"


def per_class_differences_markdown(rows: Sequence[dict[str, Any]], arm: str, against: str) -> list[str]:
    """Lines of the per-class IoU table of the first pair at one fraction (empty without rows)."""
    if not rows:
        return []
    lines = [f"Per class, IoU (%) of *{arm}* and of *{against}* (means over seeds), and their paired difference "
             "with its 95 % confidence interval:\n",
             "| class | arm | against | difference | 95 % CI |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        ci = "–" if r["ci_low"] is None else f"[{100 * r['ci_low']:+.1f}, {100 * r['ci_high']:+.1f}]"
        lines.append(f"| {r['class']} | {100 * r['arm_mean']:.1f} | {100 * r['against_mean']:.1f} | "
                     f"{100 * r['mean']:+.1f} (n={r['n']}) | {ci} |")
    return [*lines, ""]


def curves_markdown(summary: dict[str, Any], fraction: str) -> list[str]:
    """The final values of the M&M curves at ``fraction`` and their figure (nothing when none finished)."""
    rows = summary.get(fraction) or {}
    if not rows:
        return []
    keys = [k for k in next(iter(rows.values())) if k != "n"]
    lines = [f"Training curves of the M&M stages (mean ± std over seeds of the last tenth of the steps; figure: mean "
             f"and ± std band): `mm_curves_f{fraction}.png`.\n",
             "| M&M stage | " + " | ".join(CURVE_TITLES.get(k, k) for k in keys) + " |",
             "|---|" + "---:|" * len(keys)]
    for label, row in rows.items():
        lines.append(f"| {label} | " + " | ".join(format_mean_std(row[k], scale=100.0 if k.endswith("fraction") else 1.0)
                                                  for k in keys) + " |")
    return [*lines, "", f"![M&M training curves at {fraction}](mm_curves_f{fraction}.png)\n"]


def plot_miou_vs_fraction(report: dict[str, Any], out: Path) -> Path:
    """Save :func:`miou_figure` to ``out``."""
    fig = miou_figure(report)
    fig.savefig(out, dpi=120)
    pyplot().close(fig)
    return out


def miou_figure(report: dict[str, Any]) -> Any:
    """Each arm's mean main metric (mIoU, top-1, ...) against the label fraction (log scale), with ± sample std bars
    over seeds and each point's number of seeds (``n``)."""
    key, name = main_metric(report)
    fig, ax = pyplot().subplots(figsize=(6.5, 4.2))
    for label, by_fraction in report["summary"].items():
        fractions = sorted(by_fraction, key=float)
        means = [100 * by_fraction[f][key]["mean"] for f in fractions]
        stds = [100 * np.nan_to_num(by_fraction[f][key]["std"]) for f in fractions]
        line = ax.errorbar([float(f) for f in fractions], means, yerr=stds, marker="o", capsize=3, label=label)
        for f, mean in zip(fractions, means, strict=True):
            ax.annotate(f"n={by_fraction[f][key]['n']}", (float(f), mean), textcoords="offset points",
                        xytext=(4, 4), fontsize=6, color=line.lines[0].get_color())
    ax.set_xscale("log", base=2)
    ax.set_title("mean ± sample std over seeds (n = seeds)", fontsize=8)
    ax.set_xlabel("labelled fraction of the train split")
    ax.set_ylabel(f"{name} (%) on {report['eval_split']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig

"""The output of ``mnm speed``: the printed table, and the JSON file (sections of an earlier run kept)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from mnm.experiments.speed.sections import FINETUNE_PHASES, MNM_PHASES
from mnm.experiments.speed.settings import SECTIONS
from mnm.utils.files import atomic_write_json

__all__ = ["RESULTS_FILE", "previous_sections", "render_table", "write_results"]

RESULTS_FILE = "speed.json"


def _fmt(x: Any) -> str:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return str(x)
    if isinstance(x, int):
        return str(x)
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}"


def _grid(headers: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [headers] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return [
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in cells
    ]


def _mnm_lines(sec: dict[str, Any]) -> list[str]:
    h, w = sec["image_size"]
    lines = [
        f"M&M tuning step: {sec['images']} images x {sec['patches_per_image']} patches -> "
        f"{sec['patch_out_size']}x{sec['patch_out_size']} (sides {sec['patch_size_range'][0]}-"
        f"{sec['patch_size_range'][1]}) "
        f"from {sec['input']} {h}x{w}; median ms"
    ]
    rows = []
    for model, variants in sec["models"].items():
        for name, r in variants.items():
            if name != "paper":
                rows.append(
                    [
                        model,
                        name,
                        f"{r['repeats']}/{r['warmup']}",
                        r["nodes"],
                        *(r["ms"][p] for p in MNM_PHASES),
                        r["patches_per_s"],
                        r["overhead_ratio"],
                    ]
                )
    lines += _grid(["model", "variant", "reps/warm", "nodes", *MNM_PHASES, "patches/s", "overhead"], rows)
    prof = sec["mix_profile"]
    lines.append(
        f"mix profile: crop {_fmt(prof['crop_ms'])} ms of {_fmt(prof['mix_ms'])} ms "
        f"({prof['crop_share']:.0%}); the rest is centre sampling and the overlap filter"
    )
    verdict = "meets" if sec["overhead_ratio"] <= sec["overhead_target"] else "ABOVE"
    lines.append(
        f"overhead_ratio (alexnet fp32) = (mix + match + loss) / (forward + backward) = "
        f"{sec['overhead_ratio']:.3f}  [{verdict} target <= {sec['overhead_target']}]"
    )
    paper = sec["models"].get("vgg16_bn", {}).get("paper")
    if paper:
        lines.append(
            f"VGG-16 M&M step: {paper['best_s_per_iter']:.2f} s/iter -> {paper['hours_for_8000_iters']:.2f} h "
            f"for 8000 iters (paper: {paper['s_per_iter']:.2f} s/iter, 5.8 h on one TITAN-X; "
            f"x{paper['speedup_vs_paper']:.2f})"
        )
    return lines


def _graph_lines(sec: dict[str, Any]) -> list[str]:
    lines = [
        f"Graph size ({sec['model']} {sec['variant']}, {sec['patches_per_image']} patches/image; Fig. 5 trade-off)"
    ]
    rows = [
        [
            r["target_nodes"],
            r["images"],
            r["nodes"],
            r["graph_ms"],
            r["mix_ms"],
            r["step_ms"],
            r["patches_per_s"],
            r["repeats"],
        ]
        for r in sec["rows"]
    ]
    return lines + _grid(
        ["nodes", "images", "got", "graph ms", "mix ms", "step ms", "patches/s", "reps"], rows
    )


def _finetune_lines(sec: dict[str, Any]) -> list[str]:
    lines = [
        f"Fine-tune step ({sec['model']}, {sec['batch']} x {sec['size'][0]}x{sec['size'][1]}); median ms"
    ]
    rows = [[name, *(r["ms"][p] for p in FINETUNE_PHASES), r["images_per_s"]] for name, r in sec["variants"].items()]
    return lines + _grid(["variant", *FINETUNE_PHASES, "images/s"], rows)


def _throughput_lines(results: dict[str, Any]) -> list[str]:
    s = results.get("summary", {})
    rows = []
    if "mnm_patches_per_s" in s:
        rows.append(
            [
                "M&M tuning step (alexnet fp32)",
                f"{_fmt(s['mnm_patches_per_s'])} patches/s",
                f"{_fmt(s['mnm_images_per_s'])} images/s",
            ]
        )
    if "finetune_images_per_s" in s:
        rows.append(["fine-tune step (alexnet+fcn)", "", f"{_fmt(s['finetune_images_per_s'])} images/s"])
    data = results.get("data", {})
    for n, ips in s.get("loader_images_per_s", {}).items():
        rows.append([f"CamVid loader, {n} workers", "", f"{_fmt(ips)} images/s"])
    if "skipped" in data:
        rows.append(["CamVid loader", "", f"skipped: {data['skipped']}"])
    lines = ["Throughput"] + _grid(["", "", ""], rows)[1:]
    if "loader_is_bottleneck" in s:
        lines.append(
            "-> the loader is the bottleneck"
            if s["loader_is_bottleneck"]
            else "-> the loader keeps up (the training step is the bottleneck)"
        )
    return lines


def render_table(results: dict[str, Any]) -> str:
    """The printed report of a results dict."""
    env = results["env"]
    lines = [
        f"mnm speed on {env['device']}"
        + (f" ({env['cuda_device']})" if env.get("cuda_device") else "")
        + f": {env['cpu']}, {env['threads']} threads; torch {env['torch']}, torchvision {env['torchvision']}, "
        f"lightning {env['lightning']}; load avg {env['loadavg_1m_start']} -> {env.get('loadavg_1m_end')}"
    ]
    load, cores = env.get("loadavg_1m_start"), env.get("cpu_count") or 1
    if load is not None and load > 0.75 * cores:
        lines.append(f"note: the machine is busy (load avg {load} on {cores} CPUs); timings are noisy")
    for name, render in (("mnm", _mnm_lines), ("graph", _graph_lines), ("finetune", _finetune_lines)):
        if name in results:
            lines += ["", *render(results[name])]
    lines += ["", *_throughput_lines(results)]
    return "\n".join(lines)


def previous_sections(path: Path, device: str) -> dict[str, Any]:
    """Sections of an earlier results file of the same device (kept when ``--only`` skips them)."""
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(old, dict) or old.get("env", {}).get("device") != device:
        return {}
    return {k: old[k] for k in SECTIONS if k in old}


def write_results(path: Path, results: dict[str, Any]) -> None:
    """The results dict as indented JSON, written atomically."""
    atomic_write_json(path, results)

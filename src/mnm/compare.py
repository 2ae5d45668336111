"""``mnm compare RUN_DIR [RUN_DIR ...] --out FILE.png``: M&M curves and final mIoU of several runs, offline.

The local stand-in for the W&B "graph vs random triplets" dashboard: one PNG with
the loss and active-triplet curves of every M&M stage found in the run
directories, and a Markdown table of each segment stage's mIoU (printed and
written next to the PNG as ``FILE.md``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import yaml

from mnm.pipeline import read_manifest
from mnm.report import plot_mm_curves


def _manifest(run_dir: Path) -> dict:
    if not (run_dir / "manifest.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no manifest.json)")
    return read_manifest(run_dir)


def _labels(run_dirs: Sequence[Path]) -> list[str]:
    """Short run names: the folder names, or the full paths where folder names clash."""
    names = [d.name for d in run_dirs]
    return [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs, strict=True)]


def mm_curves(run_dirs: Sequence[Path]) -> dict[str, Path]:
    """``run/stage (triplets) -> csv/metrics.csv`` for every M&M stage with a CSV log."""
    series = {}
    for run_dir, run in zip(run_dirs, _labels(run_dirs), strict=True):
        for stage, entry in _manifest(run_dir).get("stages", {}).items():
            path = run_dir / stage / "csv" / "metrics.csv"
            if entry.get("stage") == "mix-match" and path.is_file():
                triplets = _triplets(run_dir / stage)
                series[f"{run}/{stage}" + (f" ({triplets})" if triplets else "")] = path
    return series


def _triplets(stage_dir: Path) -> str | None:
    cfg = stage_dir / "config.yaml"
    return (yaml.safe_load(cfg.read_text()).get("model") or {}).get("triplets") if cfg.is_file() else None


def miou_markdown(run_dirs: Sequence[Path]) -> str:
    """``| run | segment stage | initialised from | status | mIoU (%) |`` for every segment stage."""
    lines = ["| run | segment stage | initialised from | status | mIoU (%) |", "|---|---|---|---|---:|"]
    for run_dir, run in zip(run_dirs, _labels(run_dirs), strict=True):
        for stage, entry in _manifest(run_dir).get("stages", {}).items():
            if entry.get("stage") != "segment":
                continue
            init = entry.get("pretrained_backbone")
            init = Path(init).parent.parent.name if init else "random"
            metrics = run_dir / stage / "metrics.json"
            miou = json.loads(metrics.read_text()).get("eval", {}).get("miou") if metrics.is_file() else None
            shown = "–" if miou is None else f"{100 * miou:.2f}"
            lines.append(f"| {run} | {stage} | {init} | {entry.get('status', '?')} | {shown} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mnm compare``."""
    parser = argparse.ArgumentParser(prog="mnm compare", description=__doc__.split("\n", 1)[0])
    parser.add_argument("run_dirs", nargs="+", type=Path, help="pipeline/benchmark output folders (with manifest.json)")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write (the table goes to FILE.md)")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {args.out}")
    series = mm_curves(args.run_dirs)
    table = miou_markdown(args.run_dirs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if series:
        plot_mm_curves(series, args.out)
    else:
        print("[mnm] no M&M stage with a CSV log in these runs; no curves drawn")
    md = args.out.with_suffix(".md")
    figure = f"![M&M curves]({args.out.name})\n\n" if series else ""
    md.write_text(f"# M&M runs compared\n\n{figure}## Final mIoU\n\n{table}")
    print(table)
    print(f"[mnm] wrote {md}" + (f" and {args.out}" if series else ""))

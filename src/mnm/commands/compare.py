"""``mnm compare RUN_DIR [RUN_DIR ...] --out FILE.png``: M&M curves and final mIoU of several runs."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mnm.experiments import compare as compare_module
from mnm.experiments.compare import bar_colours, curve_columns, miou_markdown, mm_curves, segment_results
from mnm.experiments.figures import plot_mm_curves

DESCRIPTION = compare_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mnm compare``."""
    parser = argparse.ArgumentParser(prog="mnm compare", description=DESCRIPTION.split("\n", 1)[0])
    parser.add_argument("run_dirs", nargs="+", type=Path,
                        help="pipeline/benchmark output folders (with manifest.json) or protocol folders (cells)")
    parser.add_argument("--out", required=True, type=Path, help="the PNG to write (the table goes to FILE.md)")
    args = parser.parse_args(argv)
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out must name a .png file, got {args.out}")
    series = mm_curves(args.run_dirs)
    rows = segment_results(args.run_dirs)
    table = miou_markdown(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not series:
        print("[mnm] no M&M stage with a CSV log in these runs; no curves drawn")
    drawn = bool(series or rows)
    if drawn:
        miou = {f"{r['run']}/{r['stage']}": r["miou"] for r in rows}
        plot_mm_curves(series, curve_columns(args.run_dirs), args.out, miou=miou,
                       bar_colours=bar_colours(series, rows))
    md = args.out.with_suffix(".md")
    figure = f"![M&M curves and mIoU]({args.out.name})\n\n" if drawn else ""
    md.write_text(f"# M&M runs compared\n\n{figure}## Final mIoU\n\n{table}")
    print(table)
    print(f"[mnm] wrote {md}" + (f" and {args.out}" if drawn else ""))

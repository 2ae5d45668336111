"""``mnm benchmark FILE --out DIR``: run a benchmark file's arms and report them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnm.commands.arguments import add_benchmark_arguments
from mnm.experiments.benchmark import load_benchmark, run_benchmark

DESCRIPTION = '``mnm benchmark FILE --out DIR``: run a benchmark file (a branching pipeline + ``report:``) and report it.\n\nThe stages run through :class:`~mnm.runs.runner.PipelineRunner`, so a rerun skips\nfinished stages and resumes an interrupted one; the report\n(:func:`mnm.experiments.report.build_report`) is rebuilt from the run directory every time.'


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mnm benchmark``."""
    parser = argparse.ArgumentParser(prog="mnm benchmark", description=DESCRIPTION.split("\n", 1)[0])
    add_benchmark_arguments(parser, "benchmark YAML (e.g. conf/benchmarks/camvid_cpu.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run directory of another pipeline")
    args = parser.parse_args(argv)
    run_benchmark(load_benchmark(args.file, args.out, args.set, args.eval_split), overwrite=args.overwrite,
                  fallback_checkpoint=args.fallback_checkpoint)

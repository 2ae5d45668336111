"""``mnm benchmark FILE --out DIR``: run a benchmark file's arms and report them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnm.commands.arguments import add_benchmark_arguments
from mnm.experiments import benchmark as benchmark_module
from mnm.experiments.benchmark import load_benchmark, run_benchmark

DESCRIPTION = benchmark_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mnm benchmark``."""
    parser = argparse.ArgumentParser(prog="mnm benchmark", description=DESCRIPTION.split("\n", 1)[0])
    add_benchmark_arguments(parser, "benchmark YAML (e.g. conf/benchmarks/camvid_cpu.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run directory of another pipeline")
    args = parser.parse_args(argv)
    run_benchmark(load_benchmark(args.file, args.out, args.set, args.eval_split), overwrite=args.overwrite,
                  fallback_checkpoint=args.fallback_checkpoint)

"""``mnm demo``: the synthetic benchmark behind ``make demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnm.commands.arguments import DEBUG_HELP, add_fallback_argument
from mnm.experiments import demo as demo_module
from mnm.experiments.benchmark import load_benchmark, run_benchmark
from mnm.experiments.demo import benchmark_file, data_folder, prepare_data

DESCRIPTION = demo_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mnm demo``."""
    parser = argparse.ArgumentParser(prog="mnm demo", description=DESCRIPTION.split("\n", 1)[0])
    parser.add_argument("--out", help="run directory (default runs/demo, with --quick runs/demo-quick); the synthetic "
                        "data is written to OUT/data/")
    parser.add_argument("--quick", action="store_true", help="toy-sized smoke run (seconds; numbers are meaningless)")
    add_fallback_argument(parser)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    name = "tiny" if args.quick else "demo"
    out = args.out or ("runs/demo-quick" if args.quick else "runs/demo")
    pipeline = load_benchmark(benchmark_file(name), out, [f"data_root={data_folder(out, name)}"])
    prepare_data(pipeline)
    run_benchmark(pipeline, fallback_checkpoint=args.fallback_checkpoint)

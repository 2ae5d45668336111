"""``mnm demo``: the synthetic benchmark behind ``make demo``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnm.commands.arguments import DEBUG_HELP, add_fallback_argument
from mnm.experiments.benchmark import load_benchmark, run_benchmark
from mnm.experiments.demo import benchmark_file, data_folder, prepare_data

DESCRIPTION = "``mnm demo [--out runs/demo] [--quick]``: the synthetic benchmark behind ``make demo``, on the CPU.\n\nWrites the synthetic dataset (through the data module's ``prepare_data``; :func:`data_folder` says where), then\nruns ``conf/benchmarks/demo.yaml`` (``--quick``: ``conf/benchmarks/tiny.yaml``,\na seconds-long smoke run whose numbers mean nothing) with\n:func:`mnm.experiments.benchmark.run_benchmark`, which writes ``report.md`` and the figures."


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

"""``mnm protocol FILE``: a benchmark over label fractions x seeds."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnm.commands.arguments import add_benchmark_arguments
from mnm.experiments import protocol as protocol_module
from mnm.experiments.protocol import run_protocol

DESCRIPTION = protocol_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mnm protocol``."""
    parser = argparse.ArgumentParser(prog="mnm protocol", description=DESCRIPTION.split("\n", 1)[0])
    add_benchmark_arguments(parser, "benchmark YAML with a protocol: section")
    parser.add_argument("--fractions", type=float, nargs="+", help="run only these fractions now")
    parser.add_argument("--seeds", type=int, nargs="+", help="run only these seeds now")
    parser.add_argument("--arms", nargs="+", help="run only these arms now (stage names or labels)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild the report")
    args = parser.parse_args(argv)
    run_protocol(args.file, args.out, args.set, args.eval_split, args.fractions, args.seeds, args.arms,
                 args.report_only, args.fallback_checkpoint)

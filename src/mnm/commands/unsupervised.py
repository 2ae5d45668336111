"""``mnm unsupervised FILE``: the clustering arms."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnm.commands.arguments import add_benchmark_arguments
from mnm.experiments import unsupervised as unsupervised_module
from mnm.experiments.unsupervised import run_unsupervised

DESCRIPTION = unsupervised_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mnm unsupervised``."""
    parser = argparse.ArgumentParser(prog="mnm unsupervised", description=DESCRIPTION.split("\n", 1)[0])
    add_benchmark_arguments(parser, "benchmark YAML with a protocol: section and cluster-stage arms")
    parser.add_argument("--seeds", type=int, nargs="+", help="run only these seeds now")
    parser.add_argument("--samples", type=int, default=4, help="val images in the cluster-map figure (0: none)")
    parser.add_argument("--report-only", action="store_true", help="run nothing; rebuild the report")
    args = parser.parse_args(argv)
    run_unsupervised(args.file, args.out, args.set, args.eval_split, args.seeds, args.samples, args.report_only,
                     args.fallback_checkpoint)

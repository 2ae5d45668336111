"""``mnm unsupervised FILE``: the clustering arms."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnm.commands.arguments import add_benchmark_arguments
from mnm.experiments.unsupervised import run_unsupervised

DESCRIPTION = "``mnm unsupervised FILE``: the unsupervised-segmentation benchmark — clustering arms × seeds, matched mIoU,\nlinear probe, cluster maps.\n\nThe benchmark file is a protocol file (:mod:`mnm.experiments.protocol`) whose arms are ``cluster`` stages. The\nprotocol runs the cells (resumable) and aggregates each arm's Hungarian-matched mIoU and pixel\naccuracy over seeds; this module adds, per arm and seed, the linear probe of the arm's frozen\npixel embedding (:func:`mnm.evaluation.linear_probe.linear_probe`, cached in the cell's ``linear_probe.json``),\nand a figure of val images, ground truth and each arm's cluster map (first seed), the clusters\ncoloured by the class they are matched to (unmatched clusters grey). Writes ``unsupervised.json``\nand ``unsupervised.md`` beside ``protocol.md``."


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

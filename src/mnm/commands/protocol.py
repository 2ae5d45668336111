"""``mnm protocol FILE``: a benchmark over label fractions x seeds."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mnm.commands.arguments import add_benchmark_arguments
from mnm.experiments.protocol import run_protocol

DESCRIPTION = '``mnm protocol FILE``: a benchmark file run over label fractions × seeds, reported as mean ± std.\n\nThe benchmark file (see :mod:`mnm.experiments.benchmark`) gains a ``protocol:`` section::\n\n    vars: {fraction: 1.0}             # the file uses ${fraction}, e.g. data.init_args.labeled_fraction\n    protocol:\n      fractions: [0.125, 1.0]\n      seeds: [0, 1, 2]\n      probe: true                     # kNN probe of every arm\'s pre-trained backbone\n      budget: "about 6.5 h on 2 CPU cores"   # free text, copied into the report\n      stage_minutes: {"frozen_*": 3, segment: 4, mix-match: 4.5}   # optional: minutes per stage run\n\nEach cell (fraction ``f``, seed ``s``) is an ordinary benchmark run in ``<out>/f<f>-s<s>/``\n(resumable; its own ``report.md``), with ``${fraction}`` = ``f`` and every seed of the run =\n``s``: the stages\' ``seed_everything`` and ``model.seed``, the data module\'s ``seed`` and the\nlabelled subset\'s ``split_seed``. The protocol report (``protocol.json``, ``protocol.md``,\n``miou_vs_fraction.png``) aggregates the finished cells; the standard deviation is the sample\nstandard deviation over seeds (``ddof=1``).\n\nBefore the first cell starts, the command says how many cells and stage runs it has to do and how long\nthey take by ``stage_minutes`` (each stage takes the minutes of the first key, in file order, that its name or\nkind matches as a shell-style pattern), and prints the ``budget``.\n\nArms are also compared seed by seed: ``report.pairs`` lists ``[arm, against]`` stage pairs (default:\nevery arm against the first), and the report gives the mean ± std of the paired differences of the\nmain metric, the 95 % confidence interval of the mean difference and the verdict it gives\n(:func:`mnm.evaluation.paired.paired_interval`).'


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

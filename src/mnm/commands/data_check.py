"""``mnm data check ROOT --kind K``: what a data set root lacks or holds malformed."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from mnm.datamodules.check import KINDS, check_root


def main(argv: Sequence[str] | None = None) -> int:
    """``mnm data check ROOT --kind K``: print the report; exit status 0 when usable, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="mnm data check",
                                     description="List what a data set root lacks or holds malformed.")
    parser.add_argument("root", type=Path, help="the data set folder (what data.root names)")
    parser.add_argument("--kind", required=True, choices=list(KINDS), help="the data set's layout")
    parser.add_argument("--sample", type=int, default=25, metavar="N",
                        help="image/mask pairs decoded per split (%(default)s; every file's existence is checked)")
    parser.add_argument("--seed", type=int, default=0, help="which pairs are sampled (%(default)s)")
    args = parser.parse_args(argv)
    if args.sample < 0:
        parser.error(f"--sample must be >= 0, got {args.sample}")
    report = check_root(args.root.expanduser(), args.kind, args.sample, args.seed)
    print(f"[mnm] data check of {report.root} as --kind {args.kind}")
    for line in report.found:
        print(f"  {line}")
    for line in report.problems:
        print(f"  problem: {line}")
    if report.usable:
        print(f"[mnm] {report.root}: usable as --kind {args.kind}")
        return 0
    print(f"mnm: error: {report.root}: not usable as --kind {args.kind}: {len(report.problems)} problem(s) above; "
          f"to get it: {KINDS[args.kind].obtain}", file=sys.stderr)
    raise SystemExit(1)

"""``mnm probe CKPT ...``: the kNN probe of backbones in checkpoint files."""

from __future__ import annotations

import argparse

from mnm.evaluation.knn_probe import ProbeSettings
from mnm.experiments import probe_files as probe_files_module
from mnm.experiments.probe_files import DEFAULT_DATA, probe_checkpoints

DESCRIPTION = probe_files_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: list[str]) -> None:
    """Parse ``argv`` and print one line of probe scores per checkpoint or random init."""
    parser = argparse.ArgumentParser(prog="mnm probe", description=DESCRIPTION.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="mnm checkpoints or backbone state dicts")
    parser.add_argument("--random", action="append", default=[], metavar="BACKBONE",
                        help="also score a random init of this backbone (repeatable)")
    parser.add_argument("--init-seed", type=int, default=0, help="torch seed of the --random inits")
    parser.add_argument("--backbone", help="architecture of checkpoints that do not record one")
    parser.add_argument("--in-chans", type=int, help="1 for a grayscale network (with --backbone/--random)")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"data config file (default {DEFAULT_DATA})")
    parser.add_argument("--root", help="dataset root (overrides the data config's root)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's patch sets")
    defaults = ProbeSettings()
    parser.add_argument("--patch-out-size", type=int, default=defaults.out_size,
                        help=f"side the probe's patches are resized to (default {defaults.out_size})")
    parser.add_argument("--patch-size-range", type=int, nargs=2, default=list(defaults.size_range),
                        metavar=("LOW", "HIGH"), help=f"patch sides before resizing (default {defaults.size_range})")
    parser.add_argument("--json", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    if not args.checkpoints and not args.random:
        parser.error("name at least one checkpoint or --random BACKBONE")
    return probe_checkpoints(args.checkpoints, args.seed, args.patch_out_size, args.patch_size_range, args.data, args.root, args.backbone, args.in_chans, args.random, args.init_seed, args.json)

"""``mnm data synth``: write the synthetic VOC-layout dataset."""

import argparse
from collections.abc import Sequence

from mnm.datamodules import synthetic as synthetic_module
from mnm.datamodules.synthetic import generate

DESCRIPTION = synthetic_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: Sequence[str] | None = None) -> int:
    """``mnm data synth``: write a synthetic dataset in the VOC layout; returns 0, raises :class:`DataError`."""
    parser = argparse.ArgumentParser(prog="mnm data synth", description=DESCRIPTION.split("\n", 1)[0])
    parser.add_argument(
        "--root", default="data/synthetic", help="output folder, a VOC2012-style root (%(default)s)"
    )
    parser.add_argument("--num-train", type=int, default=200)
    parser.add_argument("--num-val", type=int, default=50)
    parser.add_argument("--size", type=int, nargs=2, default=(160, 160), metavar=("H", "W"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=4)
    args = parser.parse_args(argv)
    root = generate(args.root, args.num_train, args.num_val, args.size, args.seed, args.max_objects)
    print(
        f"synthetic dataset ({args.num_train} train, {args.num_val} val, {args.size[0]}x{args.size[1]}) at {root}"
    )
    return 0

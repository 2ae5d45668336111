"""``mnm data voc-aug ROOT``: VOC 2012 + SBD -> SegmentationClassAug/ and train_aug.txt."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mnm.datamodules.voc_aug import (
    prepare_voc_aug,
)


def main(argv: Sequence[str] | None = None) -> int:
    """``mnm data voc-aug ROOT``: build (or confirm) the SBD-augmented VOC 2012 set; raises :class:`DataError`."""
    parser = argparse.ArgumentParser(
        prog="mnm data voc-aug",
        description="Build VOC 2012's SBD-augmented training set (SegmentationClassAug/ and the 10,582-image "
        "train_aug list) from the VOC 2012 trainval and SBD archives.",
    )
    parser.add_argument("root", type=Path, help="folder for VOCdevkit/VOC2012 (or a VOC2012 folder itself); "
                        "archives are looked for and downloaded here")  # fmt: skip
    parser.add_argument("--voc-archive", type=Path, metavar="FILE", help="VOCtrainval_11-May-2012.tar (default ROOT/<that name>; "
                        "not needed when ROOT already holds VOCdevkit/VOC2012)")  # fmt: skip
    parser.add_argument("--sbd", type=Path, metavar="PATH", help="benchmark.tgz, or its extracted benchmark_RELEASE folder "
                        "(default ROOT/benchmark_RELEASE, else ROOT/benchmark.tgz)")  # fmt: skip
    parser.add_argument("--download", action="store_true",
                        help="fetch an archive that is not there (checking its MD5)")
    parser.add_argument("--mirror", metavar="URL", help="download from this URL prefix instead (the files under their official names)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS", help="network timeout in seconds (%(default)s)")
    parser.add_argument("--force", action="store_true", help="rebuild the masks and the list even if they are there")
    args = parser.parse_args(argv)
    return prepare_voc_aug(args.root, args.force, args.sbd, args.voc_archive, args.download, args.mirror, args.timeout)

"""Arguments several commands share."""

from __future__ import annotations

import argparse

DEBUG_HELP = "show the full traceback of an error"


def add_fallback_argument(parser: argparse.ArgumentParser) -> None:
    """``--fallback-checkpoint``: every command that resumes stages takes it (the runner's error names it)."""
    parser.add_argument("--fallback-checkpoint", action="store_true",
                        help="resume a stage whose last.ckpt is corrupt from its newest readable checkpoint")


def add_benchmark_arguments(parser: argparse.ArgumentParser, file_help: str) -> None:
    """The arguments ``mnm benchmark``, ``mnm protocol`` and ``mnm unsupervised`` share: the file, ``--out``,
    ``--set``, ``--eval-split``, ``--fallback-checkpoint`` and ``--debug``."""
    parser.add_argument("file", help=file_help)
    parser.add_argument("--out", help="run directory (default runs/<name>)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override, as for `mnm pipeline run` (a var, data.root=..., stages.<name>.model.lr=...)")
    parser.add_argument("--eval-split", choices=("val", "test"), help="split every segment stage is evaluated on")
    add_fallback_argument(parser)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)

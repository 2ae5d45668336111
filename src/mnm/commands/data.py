"""``mnm data <command>``: the data set tools (synth, voc-aug, check), each in its own command module."""

from __future__ import annotations

import importlib

DATA_COMMANDS = {  # subcommand -> (command module, arguments, what it does)
    "synth": ("mnm.commands.data_synth", "[--root DIR]", "write the synthetic VOC-layout dataset"),
    "voc-aug": ("mnm.commands.data_voc_aug", "ROOT [--download]", "VOC 2012 + SBD archives -> SegmentationClassAug/, train_aug.txt"),
    "check": ("mnm.commands.data_check", "ROOT --kind K", "what a data set root lacks or holds malformed (voc, voc-aug, "
              "cityscapes, camvid, msrc)"),
}


def data_usage() -> str:
    """The usage text of ``mnm data``."""
    lines = [f"  mnm data {f'{name} {arguments}':<28} {what}" for name, (_, arguments, what) in DATA_COMMANDS.items()]
    return "usage: mnm data <command> [...]\n\n" + "\n".join(lines) + "\n\nAdd --help to a command for its options."


def main(argv: list[str]) -> None:
    """Dispatch ``mnm data <command>`` to its module."""
    if argv and argv[0] in ("-h", "--help"):
        print(data_usage())
        return
    if not argv or argv[0] not in DATA_COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "a command is needed"
        raise SystemExit(f"mnm: error: mnm data: {given}\n\n{data_usage()}")
    importlib.import_module(DATA_COMMANDS[argv[0]][0]).main(argv[1:])

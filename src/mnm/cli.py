"""The ``mnm`` console script.

``mnm <stage> fit|validate|test|predict`` runs one stage through LightningCLI
(stages: colorize, jigsaw, mix-match, segment); ``mnm pipeline run FILE``
runs a whole pipeline; ``mnm data synth`` writes the synthetic dataset, ``mnm data voc-aug``
builds VOC's SBD-augmented set and ``mnm data check`` checks a data set root;
``mnm compare`` plots runs side by side; ``mnm speed`` times the training
steps (``mnm bench`` is its old name); ``mnm benchmark``/``demo`` run experiment
arms and report them; ``mnm import-caffe`` writes Caffe weights as a checkpoint.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import Callable

from mnm.stages import STAGES
from mnm.utils.quiet import quiet_library_messages

#: ``mnm <command>`` -> the module of :mod:`mnm.commands` whose ``main(argv)`` runs it (imported when used, so that
#: ``mnm --help`` loads neither torch nor Lightning)
COMMANDS: dict[str, str] = {
    "pipeline": "pipeline",
    "data": "data",
    "import-caffe": "import_caffe",
    "compare": "compare",
    "demo": "demo",
    "speed": "speed",
    "bench": "speed",  # the old name of `mnm speed`, kept for one release
    "benchmark": "benchmark",
    "ensemble": "ensemble",
    "probe": "probe",
    "protocol": "protocol",
    "unsupervised": "unsupervised",
    "predict": "predict",
    "gpu-check": "gpu_check",
}


def command_main(command: str) -> Callable[[list[str]], None]:
    """The ``main(argv)`` of a command (a stage kind runs through :mod:`mnm.commands.stage`)."""
    if command in STAGES:
        from mnm.commands.stage import main as stage_main

        return lambda argv: stage_main(command, argv)
    return importlib.import_module(f"mnm.commands.{COMMANDS[command]}").main


def usage() -> str:
    stages = ", ".join(STAGES)
    return (
        "usage: mnm <command> [...]\n\n"
        f"  mnm <stage> fit|validate|test|predict -c CONFIG   one stage via LightningCLI ({stages})\n"
        "  mnm pipeline run FILE [--set k=v]                 a pipeline of stages (resumable)\n"
        "  mnm pipeline status RUN_DIR                       the manifest of a run\n"
        "  mnm data synth --root DIR                         write the synthetic VOC-layout dataset\n"
        "  mnm data voc-aug ROOT [--download]                VOC 2012 + SBD -> SegmentationClassAug/, train_aug.txt\n"
        "  mnm data check ROOT --kind K                      what a data set root lacks or holds malformed\n"
        "  mnm predict STAGE_DIR IMAGES --out DIR            masks (input size) from a trained segment stage\n"
        "  mnm compare RUN_DIR [RUN_DIR ...] --out FILE.png  M&M curves and final mIoU side by side\n"
        "  mnm ensemble -c CONFIG --ckpts A B                evaluate the average of several models\n"
        "  mnm import-caffe MODEL --backbone B --out CKPT    a Caffe .caffemodel as an mnm checkpoint\n"
        "  mnm probe CKPT [CKPT ...] [--random alexnet]      kNN probe of backbones on fixed patch sets\n"
        "  mnm protocol FILE [--fractions F] [--seeds S]     a benchmark over label fractions x seeds\n"
        "  mnm unsupervised FILE [--seeds S]                 clustering arms: matched mIoU, linear probe, cluster maps\n"
        "  mnm speed [--only mnm graph finetune data]        speed and cost of the training steps (make speed)\n"
        "  mnm gpu-check [--out DIR]                         a first GPU session's checks, ~10 min (make gpu-check)\n"
        "  mnm benchmark FILE --out DIR                      run experiment arms and report them (make camvid-cpu)\n"
        "  mnm demo                                          the synthetic benchmark behind make demo\n"
        "\nAdd --help to any command; --debug shows tracebacks."
    )


def _is_sigterm(err: SystemExit) -> bool:
    """Whether ``err`` is Lightning's SIGTERMException (looked up only if Lightning was loaded: ``--help`` stays fast)."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(err, exceptions.SIGTERMException)


def _on_rank_zero() -> bool:
    """Whether this process is the first of a distributed run, or not in one (every rank reports the same error)."""
    rank_zero = sys.modules.get("lightning.fabric.utilities.rank_zero")
    return rank_zero is None or getattr(rank_zero.rank_zero_only, "rank", 0) == 0


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``mnm`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    debug = "--debug" in argv
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("lightning.pytorch", "lightning.fabric"):  # Lightning's own plain status lines, as it sets them up
        lightning_log = logging.getLogger(name)  # when it is imported first (it is imported lazily here)
        lightning_log.addHandler(logging.StreamHandler())
        lightning_log.propagate = False
    command, rest = argv[0], argv[1:]
    quiet_library_messages()
    if command not in STAGES and command not in COMMANDS:
        print(f"mnm: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    runner = command_main(command)
    try:
        runner([a for a in rest if a != "--debug"] if command not in STAGES else rest)
    except SystemExit as err:
        if not _is_sigterm(err):
            raise
        if _on_rank_zero():
            print("mnm: interrupted by SIGTERM; a checkpoint was saved — rerun the same command to resume",
                  file=sys.stderr)
        raise SystemExit(143) from None
    except KeyboardInterrupt:
        print("mnm: interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as err:
        if debug:
            raise
        from mnm.utils.errors import error_message

        if _on_rank_zero():
            print(f"mnm: error: {error_message(err)}\n(rerun with --debug for the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()

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

import argparse
import logging
import sys
from collections.abc import Callable

from mnm.stages import STAGES
from mnm.utils.quiet import quiet_library_messages

DEBUG_HELP = "show the full traceback of an error"


def add_fallback_argument(parser: argparse.ArgumentParser) -> None:
    """``--fallback-checkpoint``: every command that resumes stages takes it (the runner's error names it)."""
    parser.add_argument("--fallback-checkpoint", action="store_true",
                        help="resume a stage whose last.ckpt is corrupt from its newest readable checkpoint")


def _pipeline(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="mnm pipeline", description="Run a pipeline of stages from a YAML file.")
    sub = parser.add_subparsers(dest="action", required=True)
    run = sub.add_parser("run", help="run, resume or skip the stages of a pipeline")
    run.add_argument("file", help="pipeline YAML (e.g. conf/pipelines/voc_random_alexnet_graph.yaml)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="override: a var name, data.root=..., trainer.max_steps=..., stages.<name>.model.lr=...")
    run.add_argument("--out", help="run directory (default runs/<pipeline name>)")
    run.add_argument("--only", action="append", help="run only these stages (earlier ones must be finished)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace a run directory that belongs to another pipeline")
    add_fallback_argument(run)
    run.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    status = sub.add_parser("status", help="a table of a run's stages: status, steps, time, mIoU or loss")
    status.add_argument("run_dir")
    args = parser.parse_args(argv)
    from mnm.runs.config import load_pipeline
    from mnm.runs.rundir import status_table
    from mnm.runs.runner import PipelineRunner

    if args.action == "status":
        from pathlib import Path

        print(status_table(Path(args.run_dir)), end="")
        return
    pipeline = load_pipeline(args.file, args.set, args.out)
    PipelineRunner(pipeline, overwrite=args.overwrite, fallback_checkpoint=args.fallback_checkpoint).run(args.only)
    print(f"\n[mnm] pipeline {pipeline.name}: done\n{status_table(pipeline.out_dir)}", end="")


DATA_COMMANDS = {  # subcommand -> (module with main(argv), arguments, what it does)
    "synth": ("mnm.datamodules.synthetic", "[--root DIR]", "write the synthetic VOC-layout dataset"),
    "voc-aug": ("mnm.datamodules.voc_aug", "ROOT [--download]", "VOC 2012 + SBD archives -> SegmentationClassAug/, train_aug.txt"),
    "check": ("mnm.datamodules.check", "ROOT --kind K", "what a data set root lacks or holds malformed (voc, voc-aug, "
              "cityscapes, camvid, msrc)"),
}


def data_usage() -> str:
    lines = [f"  mnm data {f'{name} {arguments}':<28} {what}" for name, (_, arguments, what) in DATA_COMMANDS.items()]
    return "usage: mnm data <command> [...]\n\n" + "\n".join(lines) + "\n\nAdd --help to a command for its options."


def _data(argv: list[str]) -> None:
    if argv and argv[0] in ("-h", "--help"):
        print(data_usage())
        return
    if not argv or argv[0] not in DATA_COMMANDS:
        given = f"unknown command {argv[0]!r}" if argv else "a command is needed"
        raise SystemExit(f"mnm: error: mnm data: {given}\n\n{data_usage()}")
    _lazy(DATA_COMMANDS[argv[0]][0])(argv[1:])


def _import_caffe(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="mnm import-caffe",
        description="Write a Caffe .caffemodel's weights as an mnm checkpoint (for model.pretrained_backbone, "
        "mnm probe and the pipelines' proxy_weights).",
    )
    parser.add_argument("caffemodel", help="binary Caffe weights (NetParameter; current or legacy V1 layers)")
    parser.add_argument("--backbone", required=True, help="alexnet_caffe, vgg16_bn or alexnet")
    parser.add_argument("--out", required=True, help="checkpoint to write (FILE.ckpt, in an existing folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--input-norm", default="caffe_bgr",
                        help="input normalisation the weights expect (default caffe_bgr: BGR 0..255 minus the mean)")
    parser.add_argument("--bn-affine", choices=("true", "false"),
                        help="batch norm with scale and shift (default: as the file's batch norms)")
    parser.add_argument("--identity-bn", action="store_true",
                        help="give convs without a batch norm in the file an identity one")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    args = parser.parse_args(argv)
    from mnm.stages.base import ARCH_KEY
    from mnm.utils.files import atomic_torch_save
    from mnm.weights.caffe_import import EXTRA_KEY, check_import_out, map_onto_backbone, read_caffemodel

    check_import_out(args.caffemodel, args.out, args.overwrite)
    layers, form = read_caffemodel(args.caffemodel)
    affine = None if args.bn_affine is None else args.bn_affine == "true"
    result = map_onto_backbone(layers, args.backbone, args.input_norm, affine, args.identity_bn)
    for warning in result.warnings:
        print(f"mnm: warning: {warning}", file=sys.stderr)
    state = {f"backbone.{k}": v for k, v in result.backbone.state_dict().items()}
    atomic_torch_save({"state_dict": state, ARCH_KEY: result.arch, EXTRA_KEY: result.extra,
                       "caffe_source": {"file": args.caffemodel, "format": form, "mapping": result.mapping}}, args.out)
    settings = " ".join(f"{k}={v}" for k, v in result.arch.items())
    print(f"[mnm] {args.out}: {len(result.mapping)} convs of {args.caffemodel} ({form} format) as {settings}")


def _lazy(module: str, func: str = "main") -> Callable[[list[str]], None]:
    def call(argv: list[str]) -> None:
        import importlib

        getattr(importlib.import_module(module), func)(argv)

    return call


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "pipeline": _pipeline,
    "data": _data,
    "import-caffe": _import_caffe,
    "compare": _lazy("mnm.experiments.compare"),
    "demo": _lazy("mnm.experiments.demo"),
    "speed": _lazy("mnm.experiments.speed"),
    "bench": _lazy("mnm.experiments.speed"),  # the old name of `mnm speed`, kept for one release
    "benchmark": _lazy("mnm.experiments.benchmark"),
    "ensemble": _lazy("mnm.experiments.ensemble"),
    "probe": _lazy("mnm.experiments.probe_files"),
    "protocol": _lazy("mnm.experiments.protocol"),
    "unsupervised": _lazy("mnm.experiments.unsupervised"),
    "predict": _lazy("mnm.experiments.predict"),
    "gpu-check": _lazy("mnm.experiments.gpu_check"),
}


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
    if command in STAGES:
        from mnm.runs.stage_cli import main_stage

        runner: Callable[[list[str]], None] = lambda a: main_stage(command, a)  # noqa: E731
    elif command in COMMANDS:
        runner = COMMANDS[command]
    else:
        print(f"mnm: error: unknown command {command!r}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
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

"""``mnm pipeline run FILE`` runs (or resumes, or skips) a pipeline's stages; ``mnm pipeline status RUN_DIR`` shows them."""

from __future__ import annotations

import argparse
from pathlib import Path

from mnm.commands.arguments import DEBUG_HELP, add_fallback_argument
from mnm.runs.config import load_pipeline
from mnm.runs.runner import PipelineRunner
from mnm.runs.status import status_table


def main(argv: list[str]) -> None:
    """Parse ``mnm pipeline run|status`` and run the pipeline or print its status table."""
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
    if args.action == "status":
        print(status_table(Path(args.run_dir)), end="")
        return
    pipeline = load_pipeline(args.file, args.set, args.out)
    PipelineRunner(pipeline, overwrite=args.overwrite, fallback_checkpoint=args.fallback_checkpoint).run(args.only)
    print(f"\n[mnm] pipeline {pipeline.name}: done\n{status_table(pipeline.out_dir)}", end="")

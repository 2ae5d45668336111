"""``mnm ensemble``: evaluate the average of several models."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import lightning as L

from mnm.evaluation.metrics import per_class_table
from mnm.experiments import ensemble as ensemble_module
from mnm.experiments.ensemble import SegmentEnsemble, build_datamodule, load_member
from mnm.utils.files import atomic_write_json

DESCRIPTION = ensemble_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: list[str]) -> dict[str, Any]:
    """Command line: ``mnm ensemble -c DATA.yaml --ckpts A B [--split val|test] [--set data.root=...]``."""
    parser = argparse.ArgumentParser(prog="mnm ensemble", description=DESCRIPTION)
    parser.add_argument("-c", "--config", required=True, help="a config file with the data section")
    parser.add_argument("--ckpts", nargs="+", required=True, help="segmentation checkpoints to average")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="write the metrics here as JSON")
    args = parser.parse_args(argv)
    model = SegmentEnsemble([load_member(p) for p in args.ckpts])
    datamodule = build_datamodule(args.config, args.set)
    trainer = L.Trainer(accelerator="auto", devices=1, logger=False, enable_checkpointing=False)
    (trainer.validate if args.split == "val" else trainer.test)(model, datamodule=datamodule, verbose=False)
    result = {"checkpoints": args.ckpts, **model.last_eval}
    print(per_class_table(result["per_class_iou"], result["class_names"], result["miou"]))
    if args.out:
        atomic_write_json(Path(args.out), result, sort_keys=True, default=str)
        print(json.dumps({"miou": result["miou"]}, allow_nan=False))
    return result

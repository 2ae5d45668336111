"""``mnm predict STAGE_DIR IMAGES --out DIR``: masks from a trained segment stage."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from mnm.experiments import predict as predict_module
from mnm.experiments.predict import predict

DESCRIPTION = predict_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``mnm predict``."""
    parser = argparse.ArgumentParser(prog="mnm predict", description=DESCRIPTION.split("\n", 1)[0])
    parser.add_argument("stage_dir", type=Path, help="a finished segment stage, e.g. runs/tiny/finetune")
    parser.add_argument("images", type=Path, help="an image folder (searched recursively) or one image file")
    parser.add_argument("--out", type=Path, required=True, help="output folder for <name>.png masks")
    parser.add_argument("--ckpt", type=Path, help="checkpoint to use (default STAGE_DIR/checkpoints/final.ckpt)")
    parser.add_argument("--overlays", action="store_true", help="also write overlays/<name>.jpg")
    parser.add_argument("--probs", action="store_true", help="also write probs/<name>.npy (float16 C×H×W)")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--accelerator", default="auto", help="cpu, gpu or auto (default)")
    args = parser.parse_args(argv)
    count = predict(
        args.stage_dir, args.images, args.out, ckpt=args.ckpt, overlays=args.overlays, probs=args.probs,
        batch_size=args.batch_size, num_workers=args.num_workers, accelerator=args.accelerator,
    )
    print(f"[mnm] wrote {count} mask(s) to {args.out}")

"""``mnm import-caffe MODEL --backbone B --out CKPT``: a Caffe ``.caffemodel``'s weights as an mnm checkpoint."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mnm.commands.arguments import DEBUG_HELP
from mnm.utils.files import atomic_torch_save
from mnm.weights.caffe_mapping import EXTRA_KEY, map_onto_backbone
from mnm.weights.caffe_proto import CaffeImportError, read_caffemodel
from mnm.weights.record import ARCH_KEY


def check_import_out(caffemodel: str | Path, out: str | Path, overwrite: bool = False) -> None:
    """Refuse an ``--out`` that would lose data or land somewhere unexpected, before anything is read.

    ``out`` must not be the input (or a link to it), must not be a folder, must be in an existing folder,
    and replaces an existing file only with ``overwrite``.
    """
    out, source = Path(out), Path(caffemodel)
    if out.is_dir():
        raise CaffeImportError(f"--out {out} is a folder; name the checkpoint file to write, e.g. {out / 'model.ckpt'}")
    if not out.parent.is_dir():
        raise CaffeImportError(f"--out {out}: the folder {out.parent} does not exist; create it first")
    if out.exists() and source.exists() and os.path.samefile(out, source):
        raise CaffeImportError(f"--out {out} is the input caffemodel {source}; name another file to write")
    if out.exists() and not overwrite:
        raise CaffeImportError(f"--out {out} exists; add --overwrite to replace it")


def main(argv: list[str]) -> None:
    """Parse ``mnm import-caffe``, check ``--out`` before reading anything, map the layers and write the checkpoint."""
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

"""``mnm probe``: the kNN representation probe (:mod:`mnm.evaluation.knn_probe`) for checkpoints and random inits.

    mnm probe runs/camvid-cpu/mm_graph/checkpoints/final.ckpt --random alexnet --json probe.json

Each checkpoint's backbone (architecture read from the checkpoint, or from ``--backbone``/
``--in-chans`` for a plain state dict) and each ``--random NAME`` init (seeded by ``--init-seed``)
is scored on the same fixed patch sets, cut from the data module of ``--data`` (a LightningCLI
data config; ``--root`` overrides its ``root``). Every checkpoint path is checked before the patches
are cut; a checkpoint that cannot be read is reported (and the exit status is 1) without losing the
other scores.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mnm.evaluation.knn_probe import ProbeSettings, RepresentationProbe, score_backbone
from mnm.experiments.ensemble import build_datamodule
from mnm.models.backbones import BACKBONE_OPTIONS, Backbone, build_backbone, load_backbone_weights
from mnm.utils.errors import error_message
from mnm.utils.files import atomic_write_json
from mnm.weights.checkpoints import read_checkpoint

DEFAULT_DATA = "conf/data/camvid_cpu.yaml"


def backbone_from_checkpoint(path: str, name: str | None, in_chans: int | None) -> Backbone:
    """The backbone stored in ``path``; its architecture comes from the file when it records one."""
    from mnm.stages.base import ARCH_KEY

    contents = read_checkpoint(path)
    arch = contents.get(ARCH_KEY) or {}
    name = name or arch.get("name")
    if name is None:
        raise ValueError(f"{path} does not record its backbone; pass --backbone NAME (and --in-chans)")
    options = {k: arch[k] for k in BACKBONE_OPTIONS if k in arch}  # bn_affine, input_norm, ...
    backbone = build_backbone(name, in_chans=in_chans or int(arch.get("in_chans", 3)), **options)
    load_backbone_weights(backbone, path, contents)
    return backbone


def main(argv: list[str]) -> None:
    """Parse ``argv`` and print one line of probe scores per checkpoint or random init."""
    parser = argparse.ArgumentParser(prog="mnm probe", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="*", help="mnm checkpoints or backbone state dicts")
    parser.add_argument("--random", action="append", default=[], metavar="BACKBONE",
                        help="also score a random init of this backbone (repeatable)")
    parser.add_argument("--init-seed", type=int, default=0, help="torch seed of the --random inits")
    parser.add_argument("--backbone", help="architecture of checkpoints that do not record one")
    parser.add_argument("--in-chans", type=int, help="1 for a grayscale network (with --backbone/--random)")
    parser.add_argument("--data", default=DEFAULT_DATA, help=f"data config file (default {DEFAULT_DATA})")
    parser.add_argument("--root", help="dataset root (overrides the data config's root)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the probe's patch sets")
    defaults = ProbeSettings()
    parser.add_argument("--patch-out-size", type=int, default=defaults.out_size,
                        help=f"side the probe's patches are resized to (default {defaults.out_size})")
    parser.add_argument("--patch-size-range", type=int, nargs=2, default=list(defaults.size_range),
                        metavar=("LOW", "HIGH"), help=f"patch sides before resizing (default {defaults.size_range})")
    parser.add_argument("--json", help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    if not args.checkpoints and not args.random:
        parser.error("name at least one checkpoint or --random BACKBONE")
    missing = [p for p in args.checkpoints if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint(s) not found: {', '.join(missing)}; nothing was scored")

    settings = ProbeSettings(seed=args.seed, out_size=args.patch_out_size, size_range=tuple(args.patch_size_range))
    start = time.perf_counter()
    datamodule = build_datamodule(args.data, [f"data.root={args.root}"] if args.root else [])
    datamodule.prepare_data()  # a generated dataset (synthetic) is written on demand
    probe = RepresentationProbe.from_datamodule(datamodule, settings)
    print(f"probe: {len(probe.bank.labels)} train patches, {len(probe.queries.labels)} val patches "
          f"(cut in {time.perf_counter() - start:.1f} s)")
    targets: list[tuple[str, Any]] = [(p, lambda p=p: backbone_from_checkpoint(p, args.backbone, args.in_chans))
                                      for p in args.checkpoints]
    for name in args.random:
        def random_init(name: str = name) -> Backbone:
            torch.manual_seed(args.init_seed)
            return build_backbone(name, in_chans=args.in_chans or 3)

        targets.append((f"random:{name}", random_init))
    results, failed = [], []
    print(f"{'knn_acc':>8} {'balanced':>8} {'eff_rank':>8}  model")
    for label, make in targets:
        try:
            backbone = make()
        except (ValueError, KeyError, RuntimeError) as err:  # an unreadable or mismatched checkpoint
            failed.append(f"{label}: {error_message(err)}")
            print(f"{'–':>8} {'–':>8} {'–':>8}  {label} (not scored: {error_message(err)})")
            continue
        scores = score_backbone(probe, backbone)
        results.append({"model": label, **scores})
        print(f"{scores['knn_acc']:8.4f} {scores['knn_acc_balanced']:8.4f} {scores['effective_rank']:8.2f}  {label}")
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.json:
        atomic_write_json(args.json, {"settings": asdict(probe.settings), "results": results, "failed": failed})
    if failed:
        raise ValueError(f"{len(failed)} of {len(targets)} not scored (the others' scores are above"
                         f"{' and in ' + args.json if args.json else ''}): " + "; ".join(failed))

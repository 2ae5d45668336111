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

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from mnm.evaluation.knn_probe import ProbeSettings, RepresentationProbe, score_backbone
from mnm.experiments.ensemble import build_datamodule
from mnm.models.backbones import Backbone, build_backbone
from mnm.utils.errors import error_message
from mnm.utils.files import atomic_write_json
from mnm.weights.record import backbone_from_checkpoint

DEFAULT_DATA = "conf/data/camvid_cpu.yaml"


def probe_checkpoints(checkpoints: list[str], seed: int, patch_out_size: int, patch_size_range: list[int], data: str,
                      root: str | None, backbone: str | None, in_chans: int | None, random: list[str], init_seed: int,
                      json: str | None) -> None:
    """Score each checkpoint's backbone and each random init of ``random`` on the same patch sets of ``data``
    (printed, and written to ``json``); every path is checked first, and a file that cannot be scored is reported
    without losing the other scores (one :class:`ValueError` at the end)."""
    missing = [p for p in checkpoints if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(f"checkpoint(s) not found: {', '.join(missing)}; nothing was scored")

    settings = ProbeSettings(seed=seed, out_size=patch_out_size, size_range=tuple(patch_size_range))
    start = time.perf_counter()
    datamodule = build_datamodule(data, [f"data.root={root}"] if root else [])
    datamodule.prepare_data()  # a generated dataset (synthetic) is written on demand
    probe = RepresentationProbe.from_datamodule(datamodule, settings)
    print(f"probe: {len(probe.bank.labels)} train patches, {len(probe.queries.labels)} val patches "
          f"(cut in {time.perf_counter() - start:.1f} s)")
    targets: list[tuple[str, Any]] = [(p, lambda p=p: backbone_from_checkpoint(p, backbone, in_chans))
                                      for p in checkpoints]
    for name in random:
        def random_init(name: str = name) -> Backbone:
            torch.manual_seed(init_seed)
            return build_backbone(name, in_chans=in_chans or 3)

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
    if json:
        atomic_write_json(json, {"settings": asdict(probe.settings), "results": results, "failed": failed})
    if failed:
        raise ValueError(f"{len(failed)} of {len(targets)} not scored (the others' scores are above"
                         f"{' and in ' + json if json else ''}): " + "; ".join(failed))

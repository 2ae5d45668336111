"""Resuming a stage: which training state it resumes from, what it says, and the wall time of earlier attempts."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from mnm.runs.rundir import TIME_FORMAT, StageDir
from mnm.utils.text import plural
from mnm.weights.checkpoints import CheckpointError, checkpoint_step, newest_loadable, read_checkpoint

__all__ = ["earlier_wall_time", "resume_checkpoint", "resume_point", "resuming_message"]

log = logging.getLogger("mnm.runs.runner")


def resume_checkpoint(stage: StageDir, entry: dict[str, Any], fallback_checkpoint: bool = False) -> str | None:
    """The training state an unfinished stage resumes from: ``last.ckpt``, else the newest readable step
    checkpoint (with ``fallback_checkpoint``: also when ``last.ckpt`` is corrupt); ``None`` (said aloud, with the
    progress lost) when there is none."""
    last = stage.last_checkpoint
    if last.exists():
        try:
            read_checkpoint(last)
            return str(last)
        except CheckpointError as err:
            if not fallback_checkpoint:
                raise CheckpointError(
                    f"{err}. Rerun with --fallback-checkpoint (make targets: FALLBACK_CHECKPOINT=1) to resume "
                    f"from the newest readable checkpoint in {stage.checkpoints}, or delete {last} to restart "
                    "the stage"
                ) from None
            log.warning("%s is unreadable; falling back to a step checkpoint", last)
    good, _ = newest_loadable(stage.step_checkpoints())
    if good:
        return str(good)
    lost = f"{entry['step']} steps of earlier progress lost" if entry.get("step") else "its earlier attempt saved none"
    print(f"[mnm] stage {stage.name}: no checkpoint: starting from step 0 ({lost})")
    return None


def earlier_wall_time(entry: dict[str, Any], resume: str | None) -> float:
    """Wall time of the earlier attempts a resumed stage builds on (0 when it starts anew): their recorded sum, and for
    an attempt killed without a word (still ``running``), its time up to the checkpoint it is resumed from."""
    if not resume:
        return 0.0
    recorded = float(entry.get("wall_time_s") or 0.0)
    if entry.get("status") != "running" or "started" not in entry:
        return recorded
    started = time.mktime(time.strptime(entry["started"], TIME_FORMAT))
    return recorded + max(0.0, Path(resume).stat().st_mtime - started)


def resuming_message(resume: str, entry: dict[str, Any]) -> str:
    """What a resumed stage says: the step it resumes at, the file, and the steps after that checkpoint it redoes
    (the manifest records where an earlier attempt stopped or failed, not where a killed one was)."""
    step, reached = checkpoint_step(resume), entry.get("step")
    if step is None:
        return f"resuming from {resume}"
    if reached is None:
        redone = "any steps the earlier attempt ran after that checkpoint are redone"
    elif reached > step:
        redone = f"{plural(reached - step, 'step')} since the last checkpoint are redone"
    else:
        redone = "where the earlier attempt stopped"
    return f"resuming at step {step} from {resume} ({redone})"


def resume_point(stage: StageDir) -> str:
    """What a rerun of a stopped stage resumes from, as a sentence."""
    last = stage.last_checkpoint
    steps = sorted(stage.step_checkpoints())
    point = last if last.exists() else (steps[-1] if steps else None)
    return f"a rerun resumes from {point}" if point else "no checkpoint yet: a rerun starts the stage from step 0"

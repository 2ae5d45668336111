"""What a protocol command is about to run: cells × stages, how many are finished, and the estimated time (from the file's ``protocol.stage_minutes``)."""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Any

from mnm.experiments.protocol_cells import stages_of_arms
from mnm.experiments.protocol_results import finished_stages
from mnm.runs.config import Pipeline, StageSpec
from mnm.runs.runner import PipelineRunner
from mnm.utils.paths import shown_path
from mnm.utils.text import plural


def stage_minutes(spec: dict[str, Any], stage: StageSpec) -> float | None:
    """Minutes of one run of ``stage`` by ``protocol.stage_minutes``: the first key (in file order) that its name or
    kind matches as a shell-style pattern; ``None`` when none does."""
    keys = (spec.get("stage_minutes") or {}).items()
    return next((float(m) for key, m in keys if fnmatchcase(stage.name, key) or fnmatchcase(stage.kind, key)), None)


def stages_to_run(pipeline: Pipeline, arms: Sequence[str] | None) -> tuple[list[StageSpec], list[StageSpec]]:
    """``(finished, to_run)``: the stages of a cell the command runs (those of ``arms``, else all, less those a
    weights file stands for), split into those finished with their current config and the others."""
    scope = set(stages_of_arms(pipeline, arms)) if arms else {s.name for s in pipeline.stages}
    scope -= PipelineRunner(pipeline).stages_not_run()
    done = finished_stages(pipeline)
    runs = [s for s in pipeline.stages if s.name in scope]
    return [s for s in runs if s.name in done], [s for s in runs if s.name not in done]


def _duration_text(minutes: float) -> str:
    """``"40 min"``, ``"41.5 h"``."""
    return f"{minutes:.0f} min" if minutes < 90 else f"{minutes / 60:.1f} h"


def _time_lines(first: Pipeline, spec: dict[str, Any], todo: list[StageSpec]) -> list[str]:
    """How long the stage runs ``todo`` take by ``protocol.stage_minutes`` (naming the stages it has no time for),
    and the file's ``budget``."""
    timed = [(stage, stage_minutes(spec, stage)) for stage in todo]
    known = [minutes for _, minutes in timed if minutes is not None]
    unknown = sorted({stage.name for stage, minutes in timed if minutes is None})
    file = shown_path(first.path)
    if not known:
        lines = [f"estimated time: not known ({file} gives no protocol.stage_minutes for these stages)"]
    else:
        part = f" for {len(known)} of the {len(todo)} runs (no time there for {', '.join(unknown)})" if unknown else ""
        lines = [f"estimated time: about {_duration_text(sum(known))} by protocol.stage_minutes of {file}{part}"]
    return lines + ([f"the file's budget: {spec['budget']}"] if spec.get("budget") else [])


def grid_plan(first: Pipeline, spec: dict[str, Any], cells: dict[tuple[float, int], Pipeline],
              arms: Sequence[str] | None) -> str:
    """Lines that say what running ``cells`` means: cells x stages, how many stage runs are left, and how long they
    take by ``protocol.stage_minutes`` (and the file's ``budget``)."""
    fractions = sorted({f for f, _ in cells})
    seeds = sorted({s for _, s in cells})
    split = [stages_to_run(pipeline, arms) for pipeline in cells.values()]
    per_cell = len(split[0][0]) + len(split[0][1]) if split else 0
    done = sum(len(finished) for finished, _ in split)
    todo = [stage for _, to_run in split for stage in to_run]
    lines = [f"protocol {first.name}: {plural(len(cells), 'cell')} ({plural(len(fractions), 'fraction')} "
             f"{' '.join(f'{f:g}' for f in fractions)} x {plural(len(seeds), 'seed')} {' '.join(map(str, seeds))}) "
             f"x {plural(per_cell, 'stage')} = {plural(len(cells) * per_cell, 'stage run')}: {done} finished "
             f"earlier, {len(todo)} to run"]
    if todo:
        lines += [*_time_lines(first, spec, todo),
                  "--fractions, --seeds and --arms run a part (make: FRACTIONS=, SEEDS=, ARMS=); a rerun resumes"]
    return "".join(f"[mnm] {line}\n" for line in lines)

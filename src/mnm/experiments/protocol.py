"""``mnm protocol FILE``: a benchmark file run over label fractions × seeds, reported as mean ± std.

The benchmark file (see :mod:`mnm.experiments.benchmark`) gains a ``protocol:`` section::

    vars: {fraction: 1.0}             # the file uses ${fraction}, e.g. data.init_args.labeled_fraction
    protocol:
      fractions: [0.125, 1.0]
      seeds: [0, 1, 2]
      probe: true                     # kNN probe of every arm's pre-trained backbone
      budget: "about 6.5 h on 2 CPU cores"   # free text, copied into the report
      stage_minutes: {"frozen_*": 3, segment: 4, mix-match: 4.5}   # optional: minutes per stage run

Each cell (fraction ``f``, seed ``s``) is an ordinary benchmark run in ``<out>/f<f>-s<s>/``
(resumable; its own ``report.md``), with ``${fraction}`` = ``f`` and every seed of the run =
``s``: the stages' ``seed_everything`` and ``model.seed``, the data module's ``seed`` and the
labelled subset's ``split_seed``. The protocol report (``protocol.json``, ``protocol.md``,
``miou_vs_fraction.png``) aggregates the finished cells; the standard deviation is the sample
standard deviation over seeds (``ddof=1``).

Before the first cell starts, the command says how many cells and stage runs it has to do and how long
they take by ``stage_minutes`` (each stage takes the minutes of the first key, in file order, that its name or
kind matches as a shell-style pattern), and prints the ``budget``.

Arms are also compared seed by seed: ``report.pairs`` lists ``[arm, against]`` stage pairs (default:
every arm against the first), and the report gives the mean ± std of the paired differences of the
main metric, the 95 % confidence interval of the mean difference and the verdict it gives
(:func:`mnm.evaluation.paired.paired_interval`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mnm.experiments.benchmark import load_benchmark, run_benchmark
from mnm.experiments.figures import plot_mm_curves
from mnm.experiments.protocol_cells import (
    cell_name,
    check_selection,
    load_cell,
    protocol_spec,
    refuse_cell_sets,
    report_pairs,
    stages_of_arms,
)
from mnm.experiments.protocol_markdown import plot_miou_vs_fraction, protocol_markdown
from mnm.experiments.protocol_plan import grid_plan
from mnm.experiments.protocol_results import (
    aggregate,
    cell_record,
    curve_logs,
    curve_summary,
    finished_stages,
    provenance,
)
from mnm.runs.runner import PipelineRunner
from mnm.runs.yaml_layers import ConfigError
from mnm.utils.files import atomic_write_json, atomic_write_text
from mnm.utils.paths import shown_path

# -- what a command is about to run ------------------------------------------------------------------------


# -- probe ------------------------------------------------------------------------------------------------


# -- aggregation --------------------------------------------------------------------------------------------


def run_protocol(file: str | Path, out: str | Path | None = None, sets: Sequence[str] = (),
                 eval_split: str | None = None, fractions: Sequence[float] | None = None,
                 seeds: Sequence[int] | None = None, arms: Sequence[str] | None = None,
                 report_only: bool = False, fallback_checkpoint: bool = False, plan: bool = True) -> dict[str, Any]:
    """Run (or resume, or skip) the cells in order, fraction by fraction, then write the protocol report.

    ``fractions``/``seeds`` (of the file's) and ``arms`` (arm labels or their stage names) restrict what is run
    now; the report covers every finished arm of every cell on disk, whatever the command line (each cell's
    each stage's manifest entry says what ran it). A cell's own ``report.md`` is written once all its arms have finished.
    ``report_only`` runs nothing and refuses to replace a report when no arm has finished.
    ``fallback_checkpoint``: a stage whose ``last.ckpt`` is corrupt resumes from its newest readable checkpoint.
    ``plan``: say what is to run and how long it takes (:func:`grid_plan`) before the first cell starts.
    """
    refuse_cell_sets(sets)
    first = load_benchmark(file, out, [*sets, "fraction=1.0"], eval_split)
    spec = protocol_spec(first)
    check_selection(first, spec, fractions, seeds)
    report_pairs(first)
    root = Path(out) if out is not None else first.out_dir
    if report_only and not root.is_dir():
        raise ConfigError(f"--report-only: {root} does not exist; nothing to report (--out names the run folder)")
    cells = {(f, s): load_cell(file, root, sets, f, s, eval_split) for f in spec["fractions"] for s in spec["seeds"]}
    selected = {} if report_only else {(f, s): pipeline for (f, s), pipeline in cells.items()
                                       if (not fractions or f in fractions) and (not seeds or s in seeds)}
    for pipeline in selected.values():  # every cell checked before the first one writes anything
        PipelineRunner(pipeline).check(stages_of_arms(pipeline, arms) if arms else None)
    if plan and selected:
        print(grid_plan(first, spec, selected, arms), end="", flush=True)
    record = cell_record(first.path, sets, eval_split)
    for (fraction, seed), pipeline in selected.items():
        print(f"[mnm] protocol cell {cell_name(fraction, seed)}")
        if arms:  # a runner made now reads the manifest as other commands have left it
            PipelineRunner(pipeline, fallback_checkpoint=fallback_checkpoint, ran_with=record).run(
                stages_of_arms(pipeline, arms))
        if not arms or set(pipeline.report["arms"].values()) <= set(finished_stages(pipeline)):
            run_benchmark(pipeline, fallback_checkpoint=fallback_checkpoint, ran_with=record)
    report = {"benchmark": first.name, "file": shown_path(first.path), "fractions": spec["fractions"],
              "seeds": spec["seeds"], "budget": spec.get("budget"), "eval_split": eval_split or "val",
              "probe": spec.get("probe", True)}
    report |= aggregate(cells, spec)
    logs, columns = curve_logs(cells)
    report["curves"] = curve_summary(logs, columns)
    report["provenance"] = provenance(cells)
    ran_with = {tuple(record.get("sets", [])) for record in report["provenance"]["cells"].values()}
    if len(ran_with) > 1:
        print("[mnm] warning: the cells ran with different --set overrides (protocol.md lists them by cell)")
    if report_only and not report["summary"]:
        raise ConfigError(f"--report-only: no arm has finished in the cells of {root}; the report there is left as it "
                          "is")
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(root / "protocol.json", report)
    if report["summary"]:
        plot_miou_vs_fraction(report, root / "miou_vs_fraction.png")
    for fraction, series in logs.items():
        plot_mm_curves(series, columns, root / f"mm_curves_f{fraction}.png")
    atomic_write_text(root / "protocol.md", protocol_markdown(report))
    print(f"[mnm] protocol report: {root / 'protocol.md'} ({time.strftime('%H:%M:%S')})")
    return report

"""``mnm speed``: speed and cost of the training steps."""

from __future__ import annotations

from typing import Any

from mnm.experiments import speed as speed_module
from mnm.experiments.speed import run_speed
from mnm.experiments.speed.output import RESULTS_FILE, render_table
from mnm.experiments.speed.settings import parse_args

DESCRIPTION = speed_module.__doc__ or ""  # the help text is the module's docstring


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """``mnm speed``: run, write ``<out>/speed.json`` and print the table."""
    settings = parse_args(argv, description=DESCRIPTION.split("\n\n")[0])
    results = run_speed(settings)
    print(render_table(results))
    print(f"\n[mnm] speed: wrote {settings.out / RESULTS_FILE} in {results['env']['wall_s']} s")
    return results

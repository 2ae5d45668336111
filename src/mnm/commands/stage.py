"""``mnm <stage> fit|validate|test|predict``: one stage through LightningCLI (:mod:`mnm.runs.stage_cli`)."""

from __future__ import annotations

from mnm.runs.stage_cli import main_stage


def main(stage: str, argv: list[str]) -> None:
    """Run the LightningCLI subcommand in ``argv`` for stage kind ``stage``."""
    main_stage(stage, argv)

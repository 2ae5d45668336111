"""``mnm demo [--out runs/demo] [--quick]``: the synthetic benchmark behind ``make demo``, on the CPU.

Writes the synthetic dataset (through the data module's ``prepare_data``; :func:`data_folder` says where), then
runs ``conf/benchmarks/demo.yaml`` (``--quick``: ``conf/benchmarks/tiny.yaml``,
a seconds-long smoke run whose numbers mean nothing) with
:func:`mnm.experiments.benchmark.run_benchmark`, which writes ``report.md`` and the figures.
"""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch.cli import instantiate_class

from mnm.runs.config import Pipeline
from mnm.utils.paths import repo_root


def benchmark_file(name: str) -> Path:
    """``conf/benchmarks/<name>.yaml`` of the checkout; a clear error when it is not there."""
    root = repo_root()
    path = (root or Path.cwd()) / "conf" / "benchmarks" / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: `mnm demo` needs the repository's conf/ folder (install mnm editable from a "
            "checkout: pip install -e .)"
        )
    return path


def data_folder(out: str, name: str) -> str:
    """Where the demo's synthetic data goes: ``<out>/data/synthetic-<name>``, inside the run folder, so that the demo
    writes nothing outside it (and ``make demo`` from the repository root has the same hashes in every clone)."""
    return str(Path(out) / "data" / f"synthetic-{name}")


def prepare_data(pipeline: Pipeline) -> None:
    """Run ``prepare_data`` of every distinct data module of the pipeline (generates synthetic data once)."""
    seen = []
    for spec in pipeline.stages:
        data = spec.config.get("data")
        if data and data not in seen:
            seen.append(data)
            instantiate_class((), data).prepare_data()

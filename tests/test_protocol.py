"""``mnm protocol`` on conf/benchmarks/tiny_protocol.yaml: cells per fraction and seed, mean ± std, probe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from mnm.config import ConfigError
from mnm.protocol import cell_name, load_cell, paired_differences, run_protocol

FILE = "conf/benchmarks/tiny_protocol.yaml"


@pytest.fixture(scope="module")
def protocol(tmp_path_factory: pytest.TempPathFactory, repo_root: Path) -> tuple[Path, dict]:
    import os

    out = tmp_path_factory.mktemp("protocol")
    cwd = os.getcwd()
    os.chdir(repo_root)
    try:
        report = run_protocol(FILE, out, [f"data_root={out / 'data'}"], fractions=[0.5], seeds=[0, 1])
    finally:
        os.chdir(cwd)
    return out, report


def test_cells_run_with_their_fraction_and_seed(protocol: tuple[Path, dict]) -> None:
    out, _ = protocol
    assert sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "data") == ["f0.5-s0", "f0.5-s1"]
    for seed in (0, 1):
        cfg = yaml.safe_load((out / cell_name(0.5, seed) / "ft_mm_graph" / "config.yaml").read_text())
        assert cfg["seed_everything"] == seed and cfg["model"]["seed"] == seed
        assert cfg["data"]["init_args"]["labeled_fraction"] == 0.5
        assert cfg["data"]["init_args"]["split_seed"] == seed
    # one labelled subset per cell, shared by M&M and fine-tuning; another seed draws another subset
    subsets = {seed: (out / cell_name(0.5, seed) / "mm_graph" / "labeled.txt").read_text() for seed in (0, 1)}
    assert subsets[0] == (out / cell_name(0.5, 0) / "ft_random" / "labeled.txt").read_text()
    assert subsets[0] != subsets[1]
    assert len(subsets[0].split()) == 8  # half of the 16 synthetic train images


def test_summary_is_mean_and_sample_std_of_the_cells(protocol: tuple[Path, dict]) -> None:
    out, report = protocol
    assert json.loads((out / "protocol.json").read_text())["summary"] == report["summary"]
    for label, by_fraction in report["summary"].items():
        assert set(by_fraction) == {"0.5"}  # fraction 1 was not run
        values = [json.loads((out / cell_name(0.5, s) / "results.json").read_text())["arms"][label]["miou"]
                  for s in (0, 1)]
        stats = by_fraction["0.5"]["miou"]
        assert stats["values"] == values and stats["n"] == 2
        assert stats["mean"] == pytest.approx(np.mean(values))
        assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    md = (out / "protocol.md").read_text()
    assert "## Label fraction 0.5" in md and "(n=2)" in md
    assert (out / "miou_vs_fraction.png").read_bytes()[:4] == b"\x89PNG"


def test_probe_scores_each_arms_starting_point(protocol: tuple[Path, dict]) -> None:
    out, report = protocol
    probes = json.loads((out / cell_name(0.5, 0) / "probe.json").read_text())
    assert set(probes) == {"random", "mm_graph"}
    assert all(0.0 <= p["knn_acc"] <= 1.0 for p in probes.values())
    graph = report["cells"][cell_name(0.5, 0)]["arms"]["random → M&M graph → fine-tune"]
    assert graph["probe_knn_acc"] == probes["mm_graph"]["knn_acc"]


def test_arms_are_paired_by_seed_against_the_first_arm(protocol: tuple[Path, dict]) -> None:
    out, report = protocol
    (row,) = report["paired"]["0.5"]
    assert (row["arm"], row["against"]) == ("random → M&M graph → fine-tune", "random → fine-tune")
    cells = [report["cells"][cell_name(0.5, s)]["arms"] for s in (0, 1)]
    expected = [c[row["arm"]]["miou"] - c[row["against"]]["miou"] for c in cells]
    assert row["seeds"] == [0, 1] and row["values"] == pytest.approx(expected)
    assert row["mean"] == pytest.approx(np.mean(expected))
    assert "| random → M&M graph → fine-tune | random → fine-tune |" in (out / "protocol.md").read_text()


def test_the_first_pair_is_compared_class_by_class(protocol: tuple[Path, dict]) -> None:
    out, report = protocol
    per_class = report["per_class"]
    assert (per_class["arm"], per_class["against"]) == ("random → M&M graph → fine-tune", "random → fine-tune")
    rows = {r["class"]: r for r in per_class["by_fraction"]["0.5"]}
    cells = [report["cells"][cell_name(0.5, s)]["per_class"] for s in (0, 1)]
    name = next(n for n in rows if all(np.isfinite(c[per_class["arm"]][n]) for c in cells))
    expected = [c[per_class["arm"]][name] - c[per_class["against"]][name] for c in cells]
    assert rows[name]["values"] == pytest.approx(expected)
    assert rows[name]["arm_mean"] == pytest.approx(np.mean([c[per_class["arm"]][name] for c in cells]))
    assert f"| {name} |" in (out / "protocol.md").read_text()


def test_paired_differences_use_only_seeds_where_both_arms_finished() -> None:
    cells = {
        "f0.5-s0": {"fraction": 0.5, "seed": 0, "arms": {"a": {"miou": 0.50}, "b": {"miou": 0.40}}},
        "f0.5-s1": {"fraction": 0.5, "seed": 1, "arms": {"a": {"miou": 0.55}, "b": {"miou": 0.50}}},
        "f0.5-s2": {"fraction": 0.5, "seed": 2, "arms": {"a": {"miou": 0.90}}},
        "f1-s0": {"fraction": 1.0, "seed": 0, "arms": {"b": {"miou": 0.6}}},
    }
    paired = paired_differences(cells, [("a", "b")], "miou")
    assert list(paired) == ["0.5"]
    (row,) = paired["0.5"]
    assert row["seeds"] == [0, 1] and row["values"] == pytest.approx([0.10, 0.05]) and row["n"] == 2
    assert row["ci_low"] < row["mean"] < row["ci_high"] and row["verdict"] in ("higher", "no difference")


def test_report_pairs_must_name_arms(tmp_path: Path, repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    bad = tmp_path / "bad.yaml"
    text = (repo_root / FILE).read_text().replace("extends: tiny.yaml", f"extends: {repo_root / 'conf/benchmarks/tiny.yaml'}")
    bad.write_text(text + "  pairs: [[ft_mm_graph, mm_graph]]\n")
    with pytest.raises(ConfigError, match="report.pairs"):
        run_protocol(bad, tmp_path / "out", [f"data_root={tmp_path / 'data'}"], report_only=True)


def test_report_only_rebuilds_the_same_summary(protocol: tuple[Path, dict], repo_root: Path, monkeypatch) -> None:
    out, report = protocol
    monkeypatch.chdir(repo_root)
    again = run_protocol(FILE, out, [f"data_root={out / 'data'}"], report_only=True)
    assert again["summary"] == report["summary"]


def test_protocol_section_is_checked(tmp_path: Path, repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {repo_root / FILE}\nprotocol: {{fractions: [0, 1.5], seeds: [0]}}\n")
    with pytest.raises(ConfigError, match="protocol.fractions"):
        run_protocol(bad, tmp_path / "out")
    cell = load_cell(FILE, tmp_path, [], 0.25, 3)
    assert cell.out_dir == tmp_path / "f0.25-s3" and cell.seed == 3


def test_arms_restrict_what_runs(tmp_path: Path, repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    report = run_protocol(FILE, tmp_path, [f"data_root={tmp_path / 'data'}"], fractions=[1.0], seeds=[0],
                          arms=["random → fine-tune"])
    cell = tmp_path / cell_name(1.0, 0)
    assert sorted(p.name for p in cell.iterdir() if p.is_dir()) == ["ft_random"]
    assert not (cell / "results.json").exists()  # the cell's own report waits for all its arms
    assert list(report["summary"]) == ["random → fine-tune"]
    assert report["summary"]["random → fine-tune"]["1"]["miou"]["n"] == 1
    with pytest.raises(ConfigError, match="unknown arm"):
        run_protocol(FILE, tmp_path, [f"data_root={tmp_path / 'data'}"], arms=["ft_nope"])

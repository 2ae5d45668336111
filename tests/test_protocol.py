"""``mnm protocol`` on conf/benchmarks/tiny_protocol.yaml: cells per fraction and seed, mean ± std, probe."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from test_makefile import dry_run

from mnm.cli import main as cli_main
from mnm.experiments.protocol import run_protocol
from mnm.experiments.protocol_cells import cell_name, load_cell, protocol_spec
from mnm.experiments.protocol_markdown import miou_figure, protocol_markdown, provenance_markdown
from mnm.experiments.protocol_plan import grid_plan
from mnm.experiments.protocol_results import paired_differences
from mnm.runs.yaml_layers import ConfigError
from mnm.utils.paths import shown_path

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
    row = next(line for line in (out / "protocol.md").read_text().splitlines() if line.startswith("| random → M&M"))
    assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d \(n=2\)", row.strip("| ").split(" | ")[-1])  # eff. rank, seeds


def test_arms_are_paired_by_seed_against_the_first_arm(protocol: tuple[Path, dict]) -> None:
    out, report = protocol
    (row,) = report["paired"]["0.5"]
    assert (row["arm"], row["against"]) == ("random → M&M graph → fine-tune", "random → fine-tune")
    cells = [report["cells"][cell_name(0.5, s)]["arms"] for s in (0, 1)]
    expected = [c[row["arm"]]["miou"] - c[row["against"]]["miou"] for c in cells]
    assert row["seeds"] == [0, 1] and row["values"] == pytest.approx(expected)
    assert row["mean"] == pytest.approx(np.mean(expected))
    assert "| random → M&M graph → fine-tune | random → fine-tune |" in (out / "protocol.md").read_text()


def test_the_backbones_of_a_pair_are_paired_on_the_probe(protocol: tuple[Path, dict]) -> None:
    """The pair's arms start from mm_graph and from a seeded init: their probe accuracies are paired by seed."""
    out, report = protocol
    (row,) = report["paired_probe"]["0.5"]
    assert (row["arm"], row["against"]) == ("mm_graph", "random")
    probes = [json.loads((out / cell_name(0.5, s) / "probe.json").read_text()) for s in (0, 1)]
    assert row["values"] == pytest.approx([p["mm_graph"]["knn_acc"] - p["random"]["knn_acc"] for p in probes])
    md = (out / "protocol.md").read_text()
    assert "The representations alone" in md and "| mm_graph | random |" in md


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


def test_seeds_whose_arms_ran_with_other_overrides_are_not_paired_and_the_report_says_so() -> None:
    """frozen_random at ft_steps=30 and frozen_mm_graph at ft_steps=45 in seed 0: not paired; seed 1 is."""
    short, long_ = ["ft_steps=30"], ["ft_steps=45"]
    cells = {
        "f0.5-s0": {"fraction": 0.5, "seed": 0, "arms": {"a": {"miou": 0.50}, "b": {"miou": 0.40}},
                    "overrides": {"a": long_, "b": short}},
        "f0.5-s1": {"fraction": 0.5, "seed": 1, "arms": {"a": {"miou": 0.55}, "b": {"miou": 0.50}},
                    "overrides": {"a": short, "b": short}},
        "f0.5-s2": {"fraction": 0.5, "seed": 2, "arms": {"a": {"miou": 0.45}, "b": {"miou": 0.40}},
                    "overrides": {"a": None, "b": short}},  # an older cell without a record: paired as before
    }
    (row,) = paired_differences(cells, [("a", "b")], "miou")["0.5"]
    assert row["seeds"] == [1, 2] and row["n"] == 2
    assert row["left_out"] == [{"seed": 0, "arm": long_, "against": short}]
    only_mismatched = {"f0.5-s0": cells["f0.5-s0"]}
    (row,) = paired_differences(only_mismatched, [("a", "b")], "miou")["0.5"]
    assert row["n"] == 0 and row["verdict"] == "not paired"
    summary = {arm: {"0.5": {"miou": {"mean": 0.5, "std": 0.05, "n": 3}}} for arm in ("a", "b")}
    report = {"benchmark": "t", "file": "t.yaml", "fractions": [0.5], "seeds": [0, 1, 2], "eval_split": "val",
              "wall_time_s": 1.0, "probe": False, "summary": summary, "cells": cells,
              "paired": paired_differences(cells, [("a", "b")], "miou"),
              "provenance": {"cells": {"f0.5-s0": {"sets": sorted(short + long_)}},
                             "stages": {"f0.5-s0": {"x": {"sets": short}, "y": {"sets": long_}}}}}
    md = protocol_markdown(report)
    assert "| arm | mIoU (%) | overrides |" in md  # the arms differ: each one's overrides are shown
    assert "| a | 50.00 ± 5.00 (n=3) | not recorded |" in md and "| b | 50.00 ± 5.00 (n=3) | `ft_steps=30` |" in md
    assert ("- Not paired: a − b, seed 0: the arms ran with different overrides (`ft_steps=45` against "
            "`ft_steps=30`).") in md
    assert "**The stages of cells f0.5-s0 ran with different overrides**" in md


def test_a_refused_command_writes_nothing(protocol: tuple[Path, dict], repo_root: Path, monkeypatch) -> None:
    """A --set that fails the stages' check: no cell record or manifest rewritten, no new folder anywhere."""
    out, _ = protocol
    monkeypatch.chdir(repo_root)
    snapshot = {p: p.read_bytes() for p in out.rglob("*.json")}
    bad = [f"data_root={out / 'data'}", "stages.ft_random.model.lr=fast", "ft_steps=99999"]
    with pytest.raises(ConfigError, match="model.lr"):
        run_protocol(FILE, out, bad, fractions=[1.0, 0.5], seeds=[0, 1], arms=["ft_random"])
    assert {p: p.read_bytes() for p in out.rglob("*.json")} == snapshot
    assert not (out / cell_name(1.0, 0)).exists()
    with pytest.raises(ConfigError, match="model.lr"):
        run_protocol(FILE, out / "fresh", bad)
    assert not (out / "fresh").exists()


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


@pytest.mark.slow
def test_arms_restrict_what_runs(tmp_path: Path, repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    report = run_protocol(FILE, tmp_path, [f"data_root={tmp_path / 'data'}"], fractions=[1.0], seeds=[0],
                          arms=["random → fine-tune"])
    cell = tmp_path / cell_name(1.0, 0)
    assert sorted(p.name for p in cell.iterdir() if p.is_dir()) == ["ft_random"]
    assert not (cell / "results.json").exists()  # the cell's own report waits for all its arms
    assert list(report["summary"]) == ["random → fine-tune"]
    assert report["summary"]["random → fine-tune"]["1"]["miou"]["n"] == 1
    saved = json.loads((tmp_path / "protocol.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert saved["summary"]["random → fine-tune"]["1"]["miou"]["std"] is None  # one seed: no std, null not NaN
    with pytest.raises(ConfigError, match="unknown arm"):
        run_protocol(FILE, tmp_path, [f"data_root={tmp_path / 'data'}"], arms=["ft_nope"])
    with pytest.raises(ConfigError, match=r"unknown arm\(s\) \['ft_randon'\] \(did you mean ft_random for ft_randon\?\)"):
        run_protocol(FILE, tmp_path, [f"data_root={tmp_path / 'data'}"], arms=["ft_randon"])


# -- the report rebuilt from disk, what ran it, bad selections (CLI as a new user meets it) ------------------------
def mnm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mnm", *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "WANDB_MODE": "disabled"})


@pytest.mark.slow
def test_report_only_rebuilds_from_disk_without_the_runs_sets_and_from_another_folder(
    protocol: tuple[Path, dict], tmp_path: Path
) -> None:
    """The fixture ran with --set data_root=...; --report-only without it (and run elsewhere) keeps every arm."""
    out, report = protocol
    before = (out / "protocol.md").read_text()
    proc = mnm("protocol", FILE, "--out", str(out), "--report-only", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    again = json.loads((out / "protocol.json").read_text())
    assert again["summary"] == report["summary"] and again["wall_time_s"] == report["wall_time_s"] > 0
    assert (out / "protocol.md").read_text() == before


@pytest.mark.slow
def test_the_m_and_m_curves_of_every_seed_are_in_the_report_and_compare_takes_the_protocol_folder(
        protocol: tuple[Path, dict], tmp_path: Path) -> None:
    out, report = protocol
    curves = report["curves"]["0.5"]
    assert set(curves) == {"graph"} and curves["graph"]["n"] == 2
    assert curves["graph"]["loss"]["n"] == 2 and 0 <= curves["graph"]["active_fraction"]["mean"] <= 1
    md = (out / "protocol.md").read_text()
    assert "| M&M stage | training loss | active-triplet fraction | cross-image positive fraction |" in md
    assert "![M&M training curves at 0.5](mm_curves_f0.5.png)" in md and (out / "mm_curves_f0.5.png").is_file()
    proc = mnm("compare", str(out), "--out", str(tmp_path / "cmp.png"), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "cmp.md").read_text()
    mious = [report["cells"][cell_name(0.5, s)]["arms"]["random → fine-tune"]["miou"] for s in (0, 1)]
    mean, std = float(np.mean(mious)), float(np.std(mious, ddof=1))
    assert f"| f0.5 | ft_random | random | 2/2 seeds finished | {100 * mean:.2f} ± {100 * std:.2f} (n=2) |" in table


def test_report_records_the_sets_the_code_and_the_machine(protocol: tuple[Path, dict]) -> None:
    out, _ = protocol
    md = (out / "protocol.md").read_text()
    assert md.splitlines()[2].startswith(f"**Overrides (`--set`): `data_root={out / 'data'}`.**")
    record = json.loads((out / "protocol.json").read_text())["provenance"]["cells"][cell_name(0.5, 1)]
    assert record["sets"] == [f"data_root={out / 'data'}"] and record["file"].endswith(FILE)
    assert len(record["code"]["commit"]) == 40 and isinstance(record["code"]["dirty"], bool)
    assert record["machine"]["cpus"] == os.cpu_count() and record["machine"]["torch"] == torch.__version__
    assert f"Code: commit {record['code']['commit'][:10]}" in md and record["machine"]["host"] in md


def test_cells_run_with_other_sets_show_each_cells_sets() -> None:
    prov = {"cells": {"f0.5-s0": {"sets": ["mm_steps=20"]}, "f0.5-s1": {"sets": []}}}
    line = provenance_markdown(prov).splitlines()[0]
    assert "`mm_steps=20` (cells f0.5-s0); none (cells f0.5-s1)" in line


@pytest.mark.parametrize(("args", "named"), [
    (["--fractions", "0"], "--fractions 0: a label fraction must be in (0, 1]"),
    (["--fractions", "1.5"], "--fractions 1.5: a label fraction must be in (0, 1]"),
    (["--fractions", "-1"], "--fractions -1: a label fraction must be in (0, 1]"),
    (["--fractions", "0.25"], "--fractions 0.25: not in protocol.fractions of conf/benchmarks/tiny_protocol.yaml "
                              "(allowed: 0.5 1)"),
    (["--seeds", "7"], "--seeds 7: not in protocol.seeds of conf/benchmarks/tiny_protocol.yaml (allowed: 0 1)"),
    (["--set", "fraction=0.5"], "--set fraction=0.5: mnm protocol sets the fraction of each cell itself; "
                                "use --fractions"),
    (["--set", "seed=3"], "--set seed=3: mnm protocol sets the seed of each cell itself; use --seeds"),
    (["--report-only"], "--report-only: "),
])
def test_selections_that_would_run_nothing_are_refused(args: list[str], named: str, repo_root: Path,
                                                       tmp_path: Path, monkeypatch, capsys) -> None:
    """Through the command's entry point in this process (one subprocess below shows the same at the shell)."""
    monkeypatch.chdir(repo_root)
    with pytest.raises(SystemExit) as exit_:
        cli_main(["protocol", FILE, "--out", str(tmp_path / "out"), *args])
    assert exit_.value.code == 1
    assert capsys.readouterr().err.startswith(f"mnm: error: {named}")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_seed_outside_the_file_fails_at_the_shell(repo_root: Path, tmp_path: Path) -> None:
    proc = mnm("protocol", FILE, "--out", str(tmp_path / "out"), "--seeds", "0", "7", cwd=repo_root)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stderr.splitlines()[0] == ("mnm: error: --seeds 7: not in protocol.seeds of "
                                           "conf/benchmarks/tiny_protocol.yaml (allowed: 0 1)")


def test_report_only_never_replaces_a_report_with_an_empty_one(tmp_path: Path, repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    (tmp_path / "protocol.md").write_text("the finished report\n")
    with pytest.raises(ConfigError, match="no arm has finished"):
        run_protocol(FILE, tmp_path, report_only=True)
    assert (tmp_path / "protocol.md").read_text() == "the finished report\n"
    assert not (tmp_path / "protocol.json").exists()


def test_figure_shows_std_bars_and_the_number_of_seeds() -> None:
    stats = {"0.5": {"miou": {"mean": 0.4, "std": 0.02, "n": 3}}, "1": {"miou": {"mean": 0.5, "std": math.nan, "n": 1}}}
    fig = miou_figure({"summary": {"arm": stats}, "eval_split": "val", "metrics": {"miou": "mIoU"}})
    (ax,) = fig.axes
    (bars,) = ax.containers
    assert bars.has_yerr
    assert sorted(t.get_text() for t in ax.texts) == ["n=1", "n=3"] and "sample std" in ax.get_title()


# -- resuming a cell whose last.ckpt is corrupt; what a command is about to run ------------------------------------
@pytest.mark.slow
def test_a_cell_with_a_corrupt_last_checkpoint_names_the_option_that_resumes_it(tmp_path: Path, repo_root: Path,
                                                                               monkeypatch, capsys) -> None:
    monkeypatch.chdir(repo_root)
    args = ["protocol", FILE, "--out", str(tmp_path), "--fractions", "1", "--seeds", "0", "--arms", "ft_random",
            "--set", f"data_root={tmp_path / 'data'}", "--set", "checkpoint.every_n_train_steps=2"]
    cli_main(args)  # ft_random: 4 steps, a step checkpoint at step 4 besides last.ckpt
    cell = tmp_path / cell_name(1.0, 0)
    manifest = json.loads((cell / "manifest.json").read_text())
    manifest["stages"]["ft_random"]["status"] = "interrupted"
    (cell / "manifest.json").write_text(json.dumps(manifest))
    last = cell / "ft_random" / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[:1000])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli_main(args)
    error = capsys.readouterr().err
    assert error.startswith(f"mnm: error: cannot read checkpoint {last}: truncated or corrupt"), error
    option, variable = re.search(r"Rerun with (--[\w-]+) \(make targets: (\w+)=1\)", error).groups()
    (command,) = dry_run("msrc-label-efficient", f"{variable}=1")
    assert option in command
    cli_main([*args, option])
    entry = json.loads((cell / "manifest.json").read_text())["stages"]["ft_random"]
    assert entry["status"] == "finished" and entry["resumed_from"] == str(last.with_name("step=0000004.ckpt"))


def timed_protocol(tmp_path: Path, repo_root: Path, minutes: str) -> Path:
    """tiny_protocol.yaml with ``protocol.stage_minutes: MINUTES``."""
    file = tmp_path / "timed.yaml"
    file.write_text(f"extends: {repo_root / FILE}\nprotocol: {{fractions: [0.5, 1.0], seeds: [0, 1], "
                    f"budget: two minutes, stage_minutes: {minutes}}}\n")
    return file


def test_the_plan_counts_the_stage_runs_and_adds_up_their_minutes(tmp_path: Path, repo_root: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    file = timed_protocol(tmp_path, repo_root, '{"ft_mm_*": 1.5, segment: 2}')
    first = load_cell(file, tmp_path, [], 1.0, 0)
    cells = {(f, s): load_cell(file, tmp_path, [], f, s) for f in (0.5, 1.0) for s in (0, 1)}
    lines = grid_plan(first, protocol_spec(first), cells, None).splitlines()
    assert lines[0] == ("[mnm] protocol protocol-tiny: 4 cells (2 fractions 0.5 1 x 2 seeds 0 1) x 3 stages = "
                        "12 stage runs: 0 finished earlier, 12 to run")
    assert lines[1] == (f"[mnm] estimated time: about 14 min by protocol.stage_minutes of {shown_path(file)} for 8 of "
                        "the 12 runs (no time there for mm_graph)")  # 4 x (1.5 for ft_mm_graph + 2 for ft_random)
    assert lines[2] == "[mnm] the file's budget: two minutes"
    one = grid_plan(first, protocol_spec(first), {(1.0, 0): first}, ["ft_random"]).splitlines()
    assert one[0].endswith("1 cell (1 fraction 1 x 1 seed 0) x 1 stage = 1 stage run: 0 finished earlier, 1 to run")
    plain = load_cell(FILE, tmp_path, [], 1.0, 0)  # no stage_minutes: the budget's words only
    assert grid_plan(plain, protocol_spec(plain), {(1.0, 0): plain}, None).splitlines()[1:3] == [
        f"[mnm] estimated time: not known ({FILE} gives no protocol.stage_minutes for these stages)",
        "[mnm] the file's budget: about 2 minutes on 2 CPU cores"]


@pytest.mark.slow
def test_the_plan_is_printed_before_the_first_cell_and_says_when_all_is_done(tmp_path: Path, repo_root: Path,
                                                                             monkeypatch, capsys) -> None:
    monkeypatch.chdir(repo_root)
    file = timed_protocol(tmp_path, repo_root, "{segment: 2}")
    run = lambda: run_protocol(file, tmp_path, [f"data_root={tmp_path / 'data'}"], fractions=[1.0],  # noqa: E731
                               seeds=[0], arms=["ft_random"])
    run()
    lines = capsys.readouterr().out.splitlines()
    plan = [line for line in lines if line.startswith("[mnm] ") and "protocol cell" not in line][:4]
    assert lines.index(plan[-1]) < lines.index("[mnm] protocol cell f1-s0")
    assert "1 stage run: 0 finished earlier, 1 to run" in plan[0] and "about 2 min" in plan[1]
    run()
    again = capsys.readouterr().out
    assert "1 stage run: 1 finished earlier, 0 to run" in again and "estimated time" not in again


def test_stage_minutes_must_be_positive_numbers(tmp_path: Path, repo_root: Path, monkeypatch) -> None:
    monkeypatch.chdir(repo_root)
    with pytest.raises(ConfigError, match=r"timed\.yaml: protocol\.stage_minutes must map stage names or kinds"):
        run_protocol(timed_protocol(tmp_path, repo_root, "{segment: -2}"), tmp_path / "out")

"""``mnm benchmark`` on conf/benchmarks/tiny.yaml: results.json, report.md, figures, resuming, ``mnm compare``."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import pytest
import yaml
from run_fixtures import REPO, TINY, TinyRun, run_tiny_benchmark, tiny_run_fixture  # noqa: F401

from mnm.commands.compare import main as compare_main
from mnm.experiments.benchmark import load_benchmark
from mnm.experiments.compare import bar_colours, curve_columns, mm_curves, run_labels, segment_results
from mnm.experiments.demo import benchmark_file
from mnm.experiments.figures import mm_figure
from mnm.runs.config import load_pipeline
from mnm.runs.yaml_layers import ConfigError

FIGURES = ("curves.png", "samples.png", "tsne.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table_rows(markdown: str, header: str) -> list[list[str]]:
    """Cells of the data rows of the Markdown table whose header row starts with ``header``."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_results_json(tiny_run: TinyRun) -> None:
    r = tiny_run.results
    pipeline = load_pipeline(TINY)
    assert list(r["arms"]) == list(pipeline.report["arms"])
    assert r["eval_split"] == "val" and r["dataset"]["class_path"].endswith("SyntheticDataModule")
    assert {"python", "torch", "lightning", "mnm"} <= set(r["versions"])
    assert set(r["config_hashes"]) == {s.name for s in pipeline.stages}
    for arm in r["arms"].values():
        assert 0.0 <= arm["miou"] <= 1.0
        assert len(arm["per_class_iou"]) == len(arm["class_names"]) == len(r["class_names"])
        assert list(arm["stage_times"]) == arm["chain"] and arm["chain"][-1] == arm["stage"]
        assert arm["total_time_s"] == pytest.approx(sum(arm["stage_times"].values()))
    chain = r["arms"]["colorization → M&M graph → fine-tune"]["chain"]
    assert chain == ["colorize", "mm_color_graph", "ft_color_mm_graph"]
    assert set(r["curves"]) == {"graph", "random"} and r["tsne"]["after"] == "mm_graph"
    for name in FIGURES:
        data = (tiny_run.run_dir / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5_000, name
    assert sorted(r["figures"].values()) == sorted(FIGURES)


def test_report_numbers_come_from_results(tiny_run: TinyRun) -> None:
    r, md = tiny_run.results, (tiny_run.run_dir / "report.md").read_text()
    rows = _table_rows(md, "| arm |")
    assert [row[0] for row in rows] == list(r["arms"])
    for label, miou, pix, seconds, _ in rows:
        arm = r["arms"][label]
        assert miou == f"{100 * arm['miou']:.2f}" and pix == f"{100 * arm['pixel_acc']:.2f}"
        assert seconds == f"{arm['total_time_s']:.1f}"
    for row in _table_rows(md, "| model |"):
        arm = r["arms"][row[0]]
        shown = [None if c == "–" else float(c) for c in row[1:-1]]
        want = [None if v is None else round(100 * v, 1) for v in arm["per_class_iou"]]
        assert shown == pytest.approx(want) and float(row[-1]) == pytest.approx(round(100 * arm["miou"], 1))
    for row in _table_rows(md, "| stage |"):
        stage = r["stages"][row[0]]
        assert row[4] == f"{stage['wall_time_s']:.1f}" and row[5] == f"`{stage['config_hash']}`"
    curve_rows = _table_rows(md, "| curve |")
    assert [row[0] for row in curve_rows] == list(r["curves"])
    for row in curve_rows:
        assert row[4] == f"{100 * r['curves'][row[0]]['final_active_fraction']:.2f}"
    assert re.search(r"\b[0-9a-f]{16}\b", md) and r["benchmark_hash"] in md
    with open(tiny_run.run_dir / "per_class_iou.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            values = [float(row[c]) for c in r["class_names"]]
            want = r["arms"][row["model"]]["per_class_iou"]
            assert [None if math.isnan(v) else v for v in values] == pytest.approx(want)


def test_arms_share_the_fine_tuning_config(tiny_run: TinyRun) -> None:
    """Every arm's resolved segment config is the same but for the init (and in_chans of gray networks)."""

    def comparable(stage: str) -> dict:
        cfg = yaml.safe_load((tiny_run.run_dir / stage / "config.yaml").read_text())
        for key in ("pretrained_backbone", "in_chans"):
            cfg["model"].pop(key)
        for key in ("default_root_dir", "logger", "callbacks"):  # the stage's own output paths
            cfg["trainer"].pop(key)
        return cfg

    stages = [a["stage"] for a in tiny_run.results["arms"].values()]
    reference = comparable(stages[0])
    assert reference["trainer"]["max_steps"] > 0
    for stage in stages[1:]:
        assert comparable(stage) == reference, stage


def test_the_quick_demo_writes_only_into_its_run_folder(tiny_run: TinyRun) -> None:
    """The fixture ran ``mnm demo --quick --out RUN`` from an empty folder: its data is in RUN/data/."""
    assert list(tiny_run.cwd.iterdir()) == []
    assert (tiny_run.data_root / "mnm_synthetic.json").is_file()


@pytest.mark.slow
def test_rerun_skips_finished_stages(tiny_run: TinyRun) -> None:
    proc = run_tiny_benchmark(tiny_run.run_dir, tiny_run.data_root)
    assert proc.stdout.count("skipped") == len(load_pipeline(TINY).stages)
    assert "| random → fine-tune |" in proc.stdout


def test_compare_writes_png_and_table(
    tiny_run: TinyRun, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cmp" / "compare.png"
    compare_main([str(tiny_run.run_dir), "--out", str(out)])
    assert out.read_bytes().startswith(PNG_MAGIC)
    table, printed = out.with_suffix(".md").read_text(), capsys.readouterr().out
    for arm in tiny_run.results["arms"].values():
        assert f"| {arm['stage']} |" in printed and f"{100 * arm['miou']:.2f} |" in table
    assert all(f"/{stage} " in "".join(mm_curves([tiny_run.run_dir])) for stage in ("mm_graph", "mm_random"))


def test_eval_split_and_report_checks(tmp_path: Path) -> None:
    pipeline = load_benchmark(TINY, tmp_path / "run", eval_split="test")
    segments = [s for s in pipeline.stages if s.kind == "segment"]
    assert segments and all(s.evaluate == "test" for s in segments)
    assert all(s.config["data"]["init_args"]["test_split"] == "test" for s in segments)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"extends": str(TINY), "report": {"arms": {"oops": "mm_graph"}}}))
    with pytest.raises(ConfigError, match="not a segment stage"):
        load_benchmark(bad)


def test_demo_finds_its_benchmark_files() -> None:
    assert benchmark_file("demo") == REPO / "conf" / "benchmarks" / "demo.yaml"
    demo = load_benchmark(benchmark_file("demo"))
    assert [s.kind for s in demo.stages].count("segment") == len(demo.report["arms"]) == 5
    assert any(s.kind == "colorize" for s in demo.stages)
    with pytest.raises(FileNotFoundError, match="conf/ folder"):
        benchmark_file("no-such-benchmark")


def test_extending_benchmark_replaces_stages_and_report() -> None:
    """The margin ablation extends camvid_cpu.yaml: its own stages and arms only, the var in the arm name."""
    base = load_benchmark(benchmark_file("camvid_cpu"))
    ablation = load_benchmark(benchmark_file("camvid_cpu_margin"), sets=["margin=0.3"])
    assert [s.name for s in ablation.stages] == ["mm_graph", "ft_mm_graph"]
    assert list(ablation.report["arms"]) == ["random → M&M graph, margin 0.3 → fine-tune"]
    mm = {s.name: s for s in ablation.stages}["mm_graph"].config["model"]
    assert mm["margin"] == 0.3
    base_mm = {s.name: s for s in base.stages}["mm_graph"].config["model"]
    assert base_mm["margin"] == 0.5  # camvid_cpu.yaml's margin (not the paper's 2.1, see that file)
    assert {**mm, "margin": 0.5} == base_mm  # everything else as in the base
    ft = {s.name: s for s in ablation.stages}["ft_mm_graph"]
    assert ft.config == {s.name: s for s in base.stages}["ft_mm_graph"].config and ft.init_from == "mm_graph"


def test_compare_figure_shows_miou_per_arm_and_keeps_identical_curves_apart(tiny_run: TinyRun) -> None:
    curve = mm_curves([tiny_run.run_dir])
    series = {"a": next(iter(curve.values())), "b": next(iter(curve.values()))}  # the same CSV twice
    rows = segment_results([tiny_run.run_dir])
    fig = mm_figure(series, curve_columns([tiny_run.run_dir]), {r["stage"]: r["miou"] for r in rows})
    loss, active, cross_image, bars = fig.axes
    smoothed = [line for line in loss.lines if line.get_label() in series]
    assert len(smoothed) == 2
    assert len({(line.get_linestyle(), line.get_marker()) for line in smoothed}) == 2
    assert cross_image.get_title() == "cross-image positive fraction"
    shown = {t.get_text() for t in bars.get_yticklabels()}
    assert shown == {r["stage"] for r in rows} and bars.get_title() == "final mIoU (%)"
    assert {t.get_text().strip() for t in bars.texts} == {f"{100 * r['miou']:.2f}" for r in rows}


def test_compare_labels_are_short_and_bars_take_the_colour_of_their_m_m_line(tiny_run: TinyRun, tmp_path: Path) -> None:
    assert run_labels([tmp_path / "a" / "run", tmp_path / "b" / "run", tmp_path / "c"]) == ["a/run", "b/run", "c"]
    curve = mm_curves([tiny_run.run_dir])
    rows = segment_results([tiny_run.run_dir])
    assert all(label.startswith(f"{tiny_run.run_dir.name}/") for label in curve)
    assert {r["run"] for r in rows} == {tiny_run.run_dir.name}
    fig = mm_figure(curve, curve_columns([tiny_run.run_dir]), {r["stage"]: r["miou"] for r in rows},
                    bar_colours(curve, rows))
    loss, *_, bars = fig.axes
    line_colour = {line.get_label().split("/")[1].split(" ")[0]: line.get_color() for line in loss.lines
                   if not line.get_label().startswith("_")}
    bar_colour = {r["stage"]: patch.get_facecolor() for r, patch in zip(rows, bars.patches, strict=True)}
    from matplotlib.colors import to_rgba

    assert bar_colour["ft_mm_graph"] == to_rgba(line_colour["mm_graph"])
    assert bar_colour["ft_mm_random"] == to_rgba(line_colour["mm_random"]) != bar_colour["ft_mm_graph"]
    assert bar_colour["ft_random"] == to_rgba("0.6")  # no M&M line: grey

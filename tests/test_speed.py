"""``mnm speed`` at tiny sizes: JSON structure, positive finite timings, the printed table.

Timings are only checked to be measured (positive, finite), never against thresholds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from data_fixtures import random_image, save_gray_png, save_image

from mnm.commands.speed import main
from mnm.experiments.speed import SECTIONS, Laps, time_laps

PHASES = {"mix", "match", "forward", "loss", "backward", "optimizer", "total"}
FINETUNE_PHASES = {"forward", "loss", "backward", "optimizer", "total"}


def write_camvid(root: Path, shape: tuple[int, int] = (48, 64)) -> Path:
    """A tiny CamVid tree (train/val, bare-name lists) with bands of classes and a void (11) stripe."""
    for split, count in (("train", 4), ("val", 2)):
        names = [f"{split}_{i:03d}" for i in range(count)]
        for i, name in enumerate(names):
            label = np.zeros(shape, dtype=np.uint8)
            label[:, shape[1] // 3 :] = 3 + i % 2
            label[shape[0] // 2 :, : shape[1] // 2] = 8
            label[:3] = 11
            save_image(root / split / f"{name}.png", random_image(shape, seed=i))
            save_gray_png(root / f"{split}annot" / f"{name}.png", label)
        (root / f"{split}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


TINY = [
    "--quick", "--device", "cpu", "--images", "2", "--patches-per-image", "3", "--image-size", "48", "64",
    "--patch-size", "64", "--size-range", "16", "40", "--nodes", "6", "12", "--scale-patches-per-image", "3",
    "--finetune-batch", "2", "--finetune-size", "64", "80", "--loader-workers", "0", "2",
    "--loader-batches", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """One tiny ``mnm speed`` run: (out dir, returned results, printed text)."""
    import contextlib
    import io

    base = tmp_path_factory.mktemp("bench")
    camvid = write_camvid(base / "camvid")
    out = base / "out"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        results = main([*TINY, "--out", str(out), "--camvid-root", str(camvid)])
    return out, results, buf.getvalue()


def _timings(obj: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every timing/throughput leaf: values of ``ms`` dicts, ``*_ms``, ``*_per_s``, ratios."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == "ms":
                yield from ((f"{key}.ms.{p}", t) for p, t in v.items())
            elif k.endswith(("_ms", "_per_s", "ratio")) and not isinstance(v, dict | list):
                yield f"{key}.{k}", v
            else:
                yield from _timings(v, f"{key}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _timings(v, f"{key}[{i}]")


def test_json_structure(bench_run: tuple[Path, dict[str, Any], str]) -> None:
    out, results, _ = bench_run
    saved = json.loads((out / "speed.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(SECTIONS) | {"env", "settings", "summary"} == set(saved)
    env = saved["env"]
    for key in ("device", "torch", "torchvision", "lightning", "cpu", "threads", "cuda_device"):
        assert key in env
    assert env["device"] == "cpu" and env["threads"] >= 1

    mnm = saved["mnm"]
    alexnet = mnm["models"]["alexnet"]["fp32"]
    assert set(alexnet["ms"]) == PHASES
    assert alexnet["nodes"] >= 2 and 1 <= alexnet["repeats"] <= 2
    assert "vgg16_bn" not in mnm["models"]  # --quick on CPU
    assert mnm["overhead_ratio"] == alexnet["overhead_ratio"]
    ms = alexnet["ms"]
    expected = (ms["mix"] + ms["match"] + ms["loss"]) / (ms["forward"] + ms["backward"])
    assert math.isclose(alexnet["overhead_ratio"], expected)
    assert set(mnm["mix_profile"]) == {"mix_ms", "crop_ms", "crop_share"}

    rows = saved["graph"]["rows"]
    assert [r["target_nodes"] for r in rows] == [6, 12]
    assert [r["images"] for r in rows] == [2, 4]

    assert set(saved["finetune"]["variants"]["fp32"]["ms"]) == FINETUNE_PHASES
    assert set(saved["data"]["images_per_s"]) == {"0", "2"}
    summary = saved["summary"]
    assert {"mnm_patches_per_s", "finetune_images_per_s", "loader_images_per_s"} <= set(summary)
    assert isinstance(summary["loader_is_bottleneck"], bool)


def test_timings_positive_and_finite(bench_run: tuple[Path, dict[str, Any], str]) -> None:
    _, results, _ = bench_run
    found = dict(_timings({k: results[k] for k in (*SECTIONS, "summary")}))
    assert len(found) >= 25
    bad = {k: v for k, v in found.items() if not (isinstance(v, float | int) and math.isfinite(v) and v > 0)}
    assert not bad, bad


def test_table_printed(bench_run: tuple[Path, dict[str, Any], str]) -> None:
    out, _, text = bench_run
    for needle in (
        "mnm speed on cpu",
        "M&M tuning step",
        "overhead_ratio",
        "mix profile: crop",
        "Graph size",
        "Fine-tune step",
        "Throughput",
        "CamVid loader, 2 workers",
        str(out / "speed.json"),
    ):
        assert needle in text, needle


@pytest.mark.slow
def test_only_keeps_other_sections(bench_run: tuple[Path, dict[str, Any], str], tmp_path: Path) -> None:
    out, first, _ = bench_run
    (tmp_path / "speed.json").write_text((out / "speed.json").read_text())
    second = main([*TINY, "--out", str(tmp_path), "--only", "graph"])
    assert second["mnm"] == json.loads(json.dumps(first["mnm"]))  # carried over from the earlier run
    assert second["graph"]["measured_at"] == second["env"]["started"]
    assert second["data"] == json.loads(json.dumps(first["data"]))
    assert second["settings"]["only"] == ["graph"]


def test_time_laps_counts_runs_and_respects_budget() -> None:
    calls: list[int] = []

    def run(laps: Laps) -> None:
        with laps("a"):
            calls.append(1)
        with laps("b"):
            pass

    timing = time_laps(run, torch.device("cpu"), warmup=2, repeats=3)
    assert len(calls) == 5 and timing.repeats == 3
    assert set(timing.ms) == {"a", "b", "total"} and timing.ms["total"] >= timing.ms["a"]
    calls.clear()
    timing = time_laps(run, torch.device("cpu"), warmup=1, repeats=50, budget_s=0.0)
    assert len(calls) == 2 and timing.repeats == 1  # the budget stops after the first timed run
    with pytest.raises(ValueError):
        time_laps(run, torch.device("cpu"), warmup=0, repeats=0)


def test_data_section_without_camvid(tmp_path: Path) -> None:
    results = main([*TINY, "--out", str(tmp_path), "--only", "data"])
    assert "skipped" in results["data"]
    assert set(results) == {"env", "settings", "data", "summary"}


def _tiny_settings(**kw: Any) -> Any:
    from mnm.experiments.speed.settings import Settings

    return Settings(patch_size_range=(16, 40), patch_out_size=64, patches_per_image=3, warmup=0, repeats=1, **kw)


def _labelled_batch(ignore_all_but_one: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.randint(0, 3, (2, 64, 80), generator=g)
    if ignore_all_but_one:
        mask.fill_(255)
        mask[0, 20, 20] = 1  # one valid pixel in the whole batch: at most one node
    return {"image": torch.rand(2, 3, 64, 80, generator=g), "mask": mask}


def test_timed_step_is_the_stages_training_step() -> None:
    """One timed step moves the weights exactly as training_step + backward + SGD step does."""
    from mnm.experiments.speed.inputs import Variant
    from mnm.experiments.speed.sections import build_mnm_stage, stage_step

    settings, batch = _tiny_settings(), _labelled_batch()
    timed, plain = (build_mnm_stage("alexnet", settings, 3) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(timed.parameters(), plain.parameters(), strict=True))
    laps = Laps(torch.device("cpu"))
    stage_step(timed, timed.configure_optimizers()["optimizer"], batch, Variant("fp32"))(laps)
    assert list(laps.ms) == ["mix", "forward", "match", "loss", "backward", "optimizer"]

    optimizer = plain.configure_optimizers()["optimizer"]
    with pytest.warns(UserWarning, match="self.log"):  # no Trainer: the stage's logging is a no-op
        plain.training_step(batch, 0).backward()
    optimizer.step()
    changed = [not torch.equal(p0, p1) for p0, p1 in zip(build_mnm_stage("alexnet", settings, 3).parameters(),
                                                          plain.parameters(), strict=True)]
    assert any(changed)
    assert all(torch.equal(a, b) for a, b in zip(timed.parameters(), plain.parameters(), strict=True))


def test_speed_path_takes_the_fewer_than_two_nodes_guard() -> None:
    """A batch with one labelled pixel gives one node: the stage's guard returns a zero loss, no match."""
    from mnm.experiments.speed.inputs import Variant
    from mnm.experiments.speed.sections import build_mnm_stage, measure_mnm

    settings = _tiny_settings()
    result = measure_mnm(build_mnm_stage("alexnet", settings, 3), Variant("fp32"),
                         _labelled_batch(ignore_all_but_one=True), settings, 0, 1)
    assert result["nodes"] == 1
    assert result["ms"]["match"] == result["ms"]["loss"] == 0.0
    assert result["ms"]["mix"] > 0 and result["ms"]["forward"] > 0 and result["ms"]["backward"] > 0


def test_segment_step_phases() -> None:
    """The fine-tune timing runs SegmentStage.training_step: its forward and loss phases are laps."""
    from mnm.experiments.speed.inputs import Variant
    from mnm.experiments.speed.sections import stage_step
    from mnm.stages.segment import SegmentStage

    stage = SegmentStage(backbone="alexnet", num_classes=3)
    laps = Laps(torch.device("cpu"))
    stage_step(stage, stage.configure_optimizers()["optimizer"], _labelled_batch(), Variant("fp32"))(laps)
    assert list(laps.ms) == ["forward", "loss", "backward", "optimizer"]

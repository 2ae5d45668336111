"""``mnm data voc-aug``: tiny archives in the real VOC 2012 and SBD layouts -> SegmentationClassAug/ and train_aug."""

from __future__ import annotations

import http.server
import socket
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import blocks_label, sbd_cls_mat, write_sbd_archive, write_voc_archive
from PIL import Image

from mnm.cli import main
from mnm.datamodules import VOCDataModule
from mnm.datamodules.readers import check_pair, read_label

SHAPE = (24, 32)
# VOC train A B C, val D E; SBD train C E F G, val D H; UNLISTED is an image no list names
A, B, C, D, E, F, G, H, UNLISTED = ("2007_000032", "2007_000033", "2008_000002", "2008_000003", "2008_000007",
                             "2008_000008", "2009_000001", "2010_000002", "2011_000003")  # fmt: skip
VOC_SPLITS = {"train": [A, B, C], "val": [D, E]}
SBD_SPLITS = {"train": [C, E, F, G], "val": [D, H]}
SBD_MAPS = {name: blocks_label(SHAPE, [0, 3 + i, 20], border=False) for i, name in enumerate([C, D, E, F, G, H])}
TRAIN_AUG = sorted([A, B, C, F, G, H])  # (SBD train ∪ SBD val ∪ VOC train) − VOC val
VOC_NAME, SBD_NAME = "VOCtrainval_11-May-2012.tar", "benchmark.tgz"


def voc_aug(*args: str) -> None:
    main(["data", "voc-aug", *map(str, args)])


def error_line(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The error of a refused ``mnm data voc-aug``: one line, then the --debug hint (after a download's progress)."""
    with pytest.raises(SystemExit) as exit_:
        voc_aug(*args)
    err = capsys.readouterr().err.splitlines()
    assert exit_.value.code == 1 and err[-2].startswith("mnm: error: ") and err[-1].startswith("(rerun with --debug")
    assert sum("error" in line for line in err) == 1, err
    return err[-2]


@pytest.fixture
def archives(tmp_path: Path) -> Path:
    """A ROOT holding the two archives under their official names."""
    root = tmp_path / "data"
    root.mkdir()
    write_voc_archive(root / VOC_NAME, VOC_SPLITS, unlisted=(F, G, H, UNLISTED), shape=SHAPE)
    write_sbd_archive(root / SBD_NAME, SBD_SPLITS, SBD_MAPS)
    return root


def palette_array(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "P", f"{path}: mode {im.mode}"
        return np.asarray(im)


def test_the_two_archives_give_train_aug_without_val_and_voc_masks_first(
        archives: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc_aug(archives)
    out = capsys.readouterr().out
    voc = archives / "VOCdevkit" / "VOC2012"
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == TRAIN_AUG
    aug = voc / "SegmentationClassAug"
    assert sorted(p.name for p in aug.iterdir()) == [f"{n}.png" for n in sorted([A, B, C, D, E, F, G, H])]
    for name in (A, C, D, E):  # VOC's mask (with its 255 border) wins over SBD's
        assert np.array_equal(palette_array(aug / f"{name}.png"), palette_array(voc / "SegmentationClass" / f"{name}.png"))
    assert 255 in palette_array(aug / f"{C}.png")
    for name in (F, G, H):  # SBD's class map, as a palette PNG
        assert np.array_equal(palette_array(aug / f"{name}.png"), SBD_MAPS[name])
    assert "lists 6 images (the official archives give 10,582), none of val's 2" in out, out
    assert f"mnm data check {voc} --kind voc-aug" in out
    assert sorted(p.name for p in archives.iterdir()) == sorted(["VOCdevkit", SBD_NAME, VOC_NAME])
    assert not list(voc.rglob(".*.tmp"))
    # the data module of conf/data/voc_aug.yaml reads it
    dm = VOCDataModule(root=str(voc), train_split="train_aug", val_split="val")
    records = dm.list_samples("train_aug")
    assert [r.name for r in records] == TRAIN_AUG
    for record in records:
        check_pair(record.image, record.label)
        read_label(record.label, record.mapping)  # raises on a value that is not 0..20 or 255
    main(["data", "check", str(archives), "--kind", "voc-aug"])  # exits non-zero on any problem
    assert capsys.readouterr().out.rstrip().endswith("usable as --kind voc-aug")


def test_a_rerun_is_quick_and_needs_no_archive_and_force_rebuilds_from_extracted_sbd(
        archives: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    voc_aug(archives)
    capsys.readouterr()
    with tarfile.open(archives / SBD_NAME) as tar:
        tar.extractall(tmp_path / "sbd")
    (archives / SBD_NAME).unlink()
    (archives / VOC_NAME).unlink()
    start = time.perf_counter()
    voc_aug(archives)
    assert "already there — ImageSets/Segmentation/train_aug.txt lists 6 images" in capsys.readouterr().out
    assert time.perf_counter() - start < 2.0
    voc = archives / "VOCdevkit" / "VOC2012"
    (voc / "SegmentationClassAug" / f"{F}.png").unlink()  # an incomplete set is rebuilt (VOC already extracted)
    line = error_line(capsys, archives)
    assert line.startswith(f"mnm: error: {archives / SBD_NAME}: SBD archive not found;") and "--download" in line
    voc_aug(voc, "--sbd", tmp_path / "sbd" / "benchmark_RELEASE", "--force")  # ROOT may be the VOC2012 folder
    assert (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split() == TRAIN_AUG
    assert np.array_equal(palette_array(voc / "SegmentationClassAug" / f"{F}.png"), SBD_MAPS[F])


def test_an_sbd_list_naming_a_missing_mat_writes_no_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    root.mkdir()
    write_voc_archive(root / VOC_NAME, VOC_SPLITS, unlisted=(F, G, H), shape=SHAPE)
    maps = {name: SBD_MAPS[name] for name in (C, D, E, F)}  # G and H listed, without cls/*.mat
    write_sbd_archive(root / SBD_NAME, SBD_SPLITS, maps)
    line = error_line(capsys, root)
    assert line == f"mnm: error: {root / SBD_NAME}: 2 images of SBD's lists have no cls/NAME.mat, e.g. {G}, {H}"
    assert not (root / "VOCdevkit/VOC2012/ImageSets/Segmentation/train_aug.txt").exists()


@pytest.mark.parametrize(("mat", "message"), [
    ({"GTinst": {"Segmentation": np.zeros(SHAPE, np.uint8)}}, "holds no GTcls.Segmentation class map"),
    (None, "class values [21, 40] outside 0..20"),
    (b"not a mat file", "unreadable .mat file"),
])
def test_a_malformed_sbd_mat_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str], mat: object,
                                      message: str) -> None:
    import io

    import scipy.io

    root = tmp_path / "data"
    root.mkdir()
    write_voc_archive(root / VOC_NAME, VOC_SPLITS, unlisted=(F, G, H), shape=SHAPE)
    if isinstance(mat, dict):
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, mat)
        mat = buffer.getvalue()
    elif mat is None:
        mat = sbd_cls_mat(blocks_label(SHAPE, [0, 21, 40], border=False))
    write_sbd_archive(root / SBD_NAME, SBD_SPLITS, SBD_MAPS, mats={G: mat})
    line = error_line(capsys, root)
    assert line.startswith(f"mnm: error: {root / SBD_NAME}:benchmark_RELEASE/dataset/cls/{G}.mat: {message}"), line


def test_a_truncated_voc_archive_is_named_and_leaves_nothing(archives: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = (archives / VOC_NAME).read_bytes()
    (archives / VOC_NAME).write_bytes(data[: len(data) // 2])
    line = error_line(capsys, archives)
    assert line.startswith(f"mnm: error: {archives / VOC_NAME}: not a complete VOC archive ("), line
    assert line.endswith("download it again or rerun with --download")
    assert sorted(p.name for p in archives.iterdir()) == sorted([SBD_NAME, VOC_NAME])  # no staging left


def test_missing_archives_offline_say_where_to_get_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = error_line(capsys, tmp_path / "data")
    assert line.startswith(f"mnm: error: {tmp_path / 'data' / VOC_NAME}: VOC 2012 trainval archive not found; "
                           "download https://"), line
    assert "pass it with --voc-archive FILE (or put it there), or rerun with --download; and " in line
    assert line.endswith(f"{SBD_NAME} (MD5 82b4d87ceb2ed10f6038a1cba92111cb) and pass it with --sbd FILE (or put "
                         "it there), or rerun with --download")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_download_without_network_is_one_line_naming_the_url(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "data"
    root.mkdir()
    (root / SBD_NAME).write_bytes(b"a partial download")  # not the official MD5, and not ours to delete
    mirror = f"http://127.0.0.1:{closed_port()}/voc"
    start = time.perf_counter()
    line = error_line(capsys, root, "--download", "--mirror", mirror, "--timeout", "2")
    assert time.perf_counter() - start < 8.0
    assert line.startswith(f"mnm: error: {root / VOC_NAME}: could not download the VOC 2012 trainval archive from "
                           f"{mirror}/{VOC_NAME} ("), line
    assert f"pass it with --voc-archive FILE, or put it in {root}; and {root / SBD_NAME}: could not download" in line
    assert "; the file there has another MD5); download benchmark.tgz" in line
    assert line.endswith(f"pass it with --sbd FILE, or put it in {root}")
    assert not (root / VOC_NAME).exists() and (root / SBD_NAME).read_bytes() == b"a partial download"


@pytest.fixture
def loopback_server(tmp_path: Path) -> Iterator[str]:
    """An HTTP server on 127.0.0.1 serving ``tmp_path/served`` (no network beyond this machine)."""
    served = tmp_path / "served"
    served.mkdir()

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(served), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_a_download_whose_md5_differs_is_refused_and_removed(
        tmp_path: Path, loopback_server: str, capsys: pytest.CaptureFixture[str]) -> None:
    write_voc_archive(tmp_path / "served" / VOC_NAME, VOC_SPLITS, shape=SHAPE)  # the layout, not the official bytes
    root = tmp_path / "data"
    line = error_line(capsys, root, "--download", "--mirror", loopback_server, "--timeout", "5")
    assert line.startswith(f"mnm: error: {root / VOC_NAME}: could not download the VOC 2012 trainval archive from "
                           f"{loopback_server}/{VOC_NAME} (its MD5 is not the official one); download "
                           f"{VOC_NAME} (MD5 6cd6e144f989b92b3379bac3b3de84fd) yourself"), line
    assert not (root / VOC_NAME).exists()

"""``mnm data voc-aug``: the SBD-augmented PASCAL VOC 2012 training set (``SegmentationClassAug/``, ``train_aug``).

From the VOC 2012 trainval archive (``VOCtrainval_11-May-2012.tar``: ``VOCdevkit/VOC2012/``) and the SBD archive
(``benchmark.tgz``: ``benchmark_RELEASE/dataset/{cls/*.mat,train.txt,val.txt}``) this writes, under ``VOC2012/``:

- ``SegmentationClassAug/NAME.png``: VOC's own mask (palette PNG, 255 = void border) for every VOC trainval
  image, and SBD's class map (``GTcls.Segmentation``, 0..20, no border) as a palette PNG for every other SBD
  image — VOC's mask wins where both exist;
- ``ImageSets/Segmentation/train_aug.txt``: (SBD train ∪ SBD val ∪ VOC train) minus VOC val, sorted — 10,582
  images from the official archives — written last and atomically, so its presence means the set is complete.

The VOC archive is extracted (``torchvision.datasets.utils.extract_archive``); the SBD archive is read as a
stream (only ``cls/*.mat`` and the two lists are needed, not its 1.4 GB of images and instances). ``--download``
fetches a missing archive from the URL torchvision lists, checking its MD5.

(About 380 lines: the archives found or downloaded and checked, SBD's masks converted, VOC's merged and the
list written atomically: one command's steps, each a short function.)
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from mnm.datamodules.errors import DataError
from mnm.datamodules.readers import read_list
from mnm.datamodules.voc import (
    AUG_LABEL_DIR,
    AUG_SUFFIX,
    IMAGE_DIR,
    LABEL_DIR,
    LIST_DIR,
    VOC_CLASSES,
    voc_colormap,
)

VOC_BASE = PurePosixPath("VOCdevkit/VOC2012")  # where the VOC archive puts the data set
TRAIN_AUG = f"train{AUG_SUFFIX}"
TRAIN_AUG_SIZE = 10_582  # what the official archives give
SBD_FOLDER = "benchmark_RELEASE"  # the top folder of the SBD archive
SBD_LISTS = ("train.txt", "val.txt")
NUM_CLASSES = len(VOC_CLASSES)
PALETTE = [c for rgb in voc_colormap(256) for c in rgb]
PROGRESS_EVERY = 2000


@dataclass(frozen=True)
class Archive:
    """One downloadable archive: what it is, its official file name, URL and MD5, and the option naming a local copy."""

    what: str
    filename: str
    url: str
    md5: str
    option: str


def archives() -> dict[str, Archive]:
    """The VOC 2012 trainval and SBD archives, with the URLs and MD5s torchvision's data sets use."""
    from torchvision.datasets.sbd import SBDataset
    from torchvision.datasets.voc import DATASET_YEAR_DICT

    voc = DATASET_YEAR_DICT["2012"]
    return {"voc": Archive("VOC 2012 trainval archive", voc["filename"], voc["url"], voc["md5"], "--voc-archive"),
            "sbd": Archive("SBD archive", SBDataset.filename, SBDataset.url, SBDataset.md5, "--sbd")}  # fmt: skip


def voc_folder(root: Path) -> Path:
    """The ``VOC2012`` folder of ``root``: ``root`` itself when it holds the split lists, else ``root/VOCdevkit/VOC2012``."""
    return root if (root / LIST_DIR).is_dir() else root / VOC_BASE


def train_aug_file(voc: Path) -> Path:
    """Where the ``train_aug`` list goes (the first place :class:`VOCDataModule` looks)."""
    return voc / LIST_DIR / f"{TRAIN_AUG}.txt"


def list_names(path: Path) -> list[str]:
    """The image names of a split list (one name a line, or ``image label`` path pairs: the image's stem)."""
    return [PurePosixPath(tokens[0]).stem for _, tokens in read_list(path)]


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through a temporary file beside it, so an interrupted run leaves no partial file."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def _examples(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (", ..." if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------- sources


def _stamp(path: Path) -> tuple[int, int] | None:
    return (path.stat().st_size, path.stat().st_mtime_ns) if path.is_file() else None


def download(archive: Archive, root: Path, mirror: str | None, timeout: float) -> Path:
    """Fetch ``archive`` into ``root`` (kept if it is already there with the right MD5); raises a one-line DataError.

    A file this call wrote and could not verify is removed; a file that was there before is left as it was.
    """
    from torchvision.datasets.utils import download_url

    url = f"{mirror.rstrip('/')}/{archive.filename}" if mirror else archive.url
    path = root / archive.filename
    before = _stamp(path)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout)
    try:
        download_url(url, str(root), archive.filename, archive.md5)
    except Exception as err:  # urllib's, the socket's and torchvision's own errors all end here
        written = _stamp(path) not in (None, before)
        if written:  # partial, or whole with the wrong checksum (torchvision's RuntimeError)
            path.unlink()
        if written and isinstance(err, RuntimeError):
            reason = "its MD5 is not the official one"
        else:
            reason = " ".join(str(getattr(err, "reason", err)).split())
            reason += "; the file there has another MD5" if before is not None else ""
        raise DataError(
            f"{path}: could not download the {archive.what} from {url} ({reason}); download {archive.filename} "
            f"(MD5 {archive.md5}) yourself and pass it with {archive.option} FILE, or put it in {root}"
        ) from None
    finally:
        socket.setdefaulttimeout(previous)
    return path


def locate(archive: Archive, given: Path | None, root: Path, fetch: bool, mirror: str | None, timeout: float) -> Path:
    """The local archive to use: ``given``, else ``root/<official name>``, downloaded there when ``fetch``."""
    if given is not None:
        if not given.exists():
            raise DataError(f"{given}: {archive.what} ({archive.option}) does not exist")
        return given
    if fetch:
        return download(archive, root, mirror, timeout)
    path = root / archive.filename
    if not path.is_file():
        raise DataError(
            f"{path}: {archive.what} not found; download {archive.url} (MD5 {archive.md5}) and pass it with "
            f"{archive.option} FILE (or put it there), or rerun with --download"
        )
    return path


def extract_voc(archive: Path, root: Path) -> Path:
    """Extract the VOC archive and move its ``VOCdevkit/VOC2012`` into ``root`` (only once complete)."""
    from torchvision.datasets.utils import extract_archive

    staging = root / ".voc-aug-extracting"
    shutil.rmtree(staging, ignore_errors=True)
    print(f"[mnm] extracting {archive} (the full archive is 2 GB: a few minutes) ...", flush=True)
    try:
        extract_archive(str(archive), str(staging))
    except (tarfile.TarError, EOFError, OSError, RuntimeError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise _incomplete(archive, "VOC archive", err) from None
    extracted, target = staging / VOC_BASE, root / VOC_BASE
    if not (extracted / LIST_DIR).is_dir():
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{archive}: holds no {VOC_BASE}/{LIST_DIR}; is it the VOC 2012 trainval archive?")
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(extracted, target)
    shutil.rmtree(staging, ignore_errors=True)
    return target


def _sbd_relative(path: str) -> str | None:
    """``cls/NAME.mat``, ``train.txt`` or ``val.txt`` for such a file of SBD's ``dataset/`` folder, else None."""
    parts = PurePosixPath(path).parts
    if len(parts) >= 2 and parts[-2] == "dataset" and parts[-1] in SBD_LISTS:
        return parts[-1]
    if len(parts) >= 3 and parts[-3:-1] == ("dataset", "cls") and parts[-1].endswith(".mat"):
        return f"cls/{parts[-1]}"
    return None


def _incomplete(source: Path, what: str, err: BaseException) -> DataError:
    return DataError(f"{source}: not a complete {what} ({' '.join(str(err).split())}); "
                     "download it again or rerun with --download")


def sbd_files(source: Path) -> Iterator[tuple[str, str, Callable[[], bytes]]]:
    """``(relative path, where, read)`` of each ``cls/*.mat`` and list of SBD, from its archive or a folder.

    An archive is read as a stream, in its own order; ``read`` is only valid until the next item.
    """
    if source.is_dir():
        dataset = next((d for d in (source, source / "dataset", source / SBD_FOLDER / "dataset")
                        if (d / "cls").is_dir()), None)  # fmt: skip
        if dataset is None:
            raise DataError(f"{source}: no SBD cls/ folder here, nor in dataset/ or {SBD_FOLDER}/dataset/")
        for name in SBD_LISTS:
            if (dataset / name).is_file():
                yield name, str(dataset / name), (dataset / name).read_bytes
        for path in sorted((dataset / "cls").glob("*.mat")):
            yield f"cls/{path.name}", str(path), path.read_bytes
        return

    def reader(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Callable[[], bytes]:
        def read() -> bytes:
            try:
                return tar.extractfile(member).read()
            except (tarfile.TarError, EOFError, OSError) as err:
                raise _incomplete(source, "SBD archive", err) from None

        return read

    try:
        with tarfile.open(source, "r:*") as tar:
            for member in tar:
                relative = _sbd_relative(member.name)
                if relative is not None and member.isfile():
                    yield relative, f"{source}:{member.name}", reader(tar, member)
    except (tarfile.TarError, EOFError, OSError) as err:
        raise _incomplete(source, "SBD archive", err) from None


def sbd_class_map(data: bytes, where: str) -> np.ndarray:
    """The ``GTcls.Segmentation`` class map (HxW uint8, 0..20) of an SBD ``cls/*.mat`` file."""
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        mat = loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
    except (MatReadError, ValueError, TypeError, OSError) as err:
        raise DataError(f"{where}: unreadable .mat file ({err})") from None
    segmentation = getattr(mat.get("GTcls"), "Segmentation", None)
    if segmentation is None:
        raise DataError(f"{where}: holds no GTcls.Segmentation class map; is it an SBD cls/ file?")
    labels = np.asarray(segmentation)
    if labels.ndim != 2 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{where}: GTcls.Segmentation is {labels.dtype} of shape {labels.shape}, not an HxW class map")
    bad = np.unique(labels[(labels < 0) | (labels >= NUM_CLASSES)])
    if bad.size:
        raise DataError(f"{where}: class values [{_examples([str(v) for v in bad])}] outside 0..{NUM_CLASSES - 1}")
    return labels.astype(np.uint8)


# ---------------------------------------------------------------------------------------------- building


def verify(voc: Path) -> str | None:
    """Why the ``train_aug`` set under ``voc`` is not complete, or None when it is."""
    listed = train_aug_file(voc)
    if not listed.is_file():
        return f"{listed} does not exist"
    names = list_names(listed)
    if not names:
        return f"{listed} is empty"
    val_list = voc / LIST_DIR / "val.txt"
    val = set(list_names(val_list)) if val_list.is_file() else set()
    for wrong, what in (
        ([n for n in names if not (voc / IMAGE_DIR / f"{n}.jpg").is_file()], f"have no {IMAGE_DIR}/NAME.jpg"),
        ([n for n in names if not (voc / AUG_LABEL_DIR / f"{n}.png").is_file()], f"have no {AUG_LABEL_DIR}/NAME.png"),
        ([n for n in names if n in val], "are val images"),
    ):
        if wrong:
            return f"{listed}: {len(wrong)} listed images {what}, e.g. {_examples(wrong)}"
    return None


def _save_mask(labels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(labels)  # mode L; the palette makes it a P image, as VOC's masks
    image.putpalette(PALETTE)
    _write_atomic(path, lambda tmp: image.save(tmp, format="PNG"))


def build(voc: Path, sbd: Path, force: bool = False) -> dict[str, int]:
    """Write ``SegmentationClassAug/`` and ``train_aug.txt`` under ``voc`` from VOC's masks and SBD; returns counts.

    Masks already there are kept unless ``force`` (a rerun after an interruption goes on where it stopped).
    """
    lists = {split: voc / LIST_DIR / f"{split}.txt" for split in ("train", "val")}
    for path in lists.values():
        if not path.is_file():
            raise DataError(f"{path}: VOC split list does not exist; is {voc} the VOC 2012 trainval folder?")
    voc_train, voc_val = (set(list_names(path)) for path in lists.values())
    voc_names = sorted(voc_train | voc_val)
    missing = [n for n in voc_names if not (voc / LABEL_DIR / f"{n}.png").is_file()]
    if missing:
        raise DataError(f"{voc / LABEL_DIR}: {len(missing)} masks of the train and val lists are missing, "
                        f"e.g. {_examples(missing)}; extract the VOC archive again")
    out = voc / AUG_LABEL_DIR
    out.mkdir(exist_ok=True)
    for name in voc_names:
        target = out / f"{name}.png"
        if force or not target.is_file():
            _write_atomic(target, lambda tmp, n=name: shutil.copyfile(voc / LABEL_DIR / f"{n}.png", tmp))

    print(f"[mnm] converting SBD's cls/*.mat from {sbd} ...", flush=True)
    sbd_lists: dict[str, list[str]] = {}
    with_mat: set[str] = set()
    converted = 0
    for relative, where, read in sbd_files(sbd):
        if relative in SBD_LISTS:
            sbd_lists[relative] = [PurePosixPath(t[0]).stem for t in (line.split() for line in
                                                                       read().decode().splitlines()) if t]
            continue
        name = PurePosixPath(relative).stem
        with_mat.add(name)
        target = out / f"{name}.png"
        if name in voc_train or name in voc_val or (target.is_file() and not force):
            continue
        _save_mask(sbd_class_map(read(), where), target)
        converted += 1
        if converted % PROGRESS_EVERY == 0:
            print(f"[mnm]   {converted:,} SBD masks written", flush=True)
    for name in SBD_LISTS:
        if name not in sbd_lists:
            raise DataError(f"{sbd}: has no {SBD_FOLDER}/dataset/{name}; is it the SBD archive (benchmark.tgz)?")
    sbd_names = set(sbd_lists["train.txt"]) | set(sbd_lists["val.txt"])
    unconverted = sorted(sbd_names - with_mat)
    if unconverted:
        raise DataError(f"{sbd}: {len(unconverted)} images of SBD's lists have no cls/NAME.mat, "
                        f"e.g. {_examples(unconverted)}")
    train_aug = sorted((sbd_names | voc_train) - voc_val)
    no_image = [n for n in train_aug if not (voc / IMAGE_DIR / f"{n}.jpg").is_file()]
    if no_image:
        raise DataError(f"{voc / IMAGE_DIR}: {len(no_image)} images of train_aug are missing, e.g. "
                        f"{_examples(no_image)}; is {voc} from the VOC 2012 trainval archive?")
    from mnm.utils.files import atomic_write_text

    atomic_write_text(train_aug_file(voc), "".join(f"{n}\n" for n in train_aug))
    return {"train_aug": len(train_aug), "val": len(voc_val), "voc_masks": len(voc_names),
            "sbd_masks": len(sbd_names - voc_train - voc_val)}  # fmt: skip


def prepare_voc_aug(root: Path, force: bool = False, sbd: Path | None = None, voc_archive: Path | None = None,
                    download: bool = False, mirror: str | None = None, timeout: float = 60.0) -> int:
    """Build (or confirm) the SBD-augmented VOC 2012 set under ``root`` (:func:`build`) from the archives found there,
    named, or downloaded; returns 0 (the exit status), raises :class:`DataError` naming what is missing."""
    root = root.expanduser()
    voc = voc_folder(root)
    problem = verify(voc)
    if problem is None and not force:
        count = len(list_names(train_aug_file(voc)))
        print(f"[mnm] {voc}: already there — {train_aug_file(voc).relative_to(voc)} lists {count:,} images, "
              f"each with its {AUG_LABEL_DIR}/ mask (--force rebuilds it)")
        return 0
    root.mkdir(parents=True, exist_ok=True)
    sources = archives()
    extracted_sbd = root / SBD_FOLDER
    wanted = {"sbd": sbd or (extracted_sbd if extracted_sbd.is_dir() else None)}
    if not (voc / LIST_DIR).is_dir():
        wanted["voc"] = voc_archive
    found, errors = {}, []
    for key in sorted(wanted, reverse=True):  # VOC first; both are looked for (or fetched) before either is used
        try:
            found[key] = locate(sources[key], wanted[key], root, download, mirror, timeout)
        except DataError as err:
            errors.append(str(err))
    if errors:
        raise DataError("; and ".join(errors))
    voc_archive, sbd = found.get("voc"), found["sbd"]
    if voc_archive is not None:
        voc = extract_voc(voc_archive, root)
    counts = build(voc, sbd, force)
    note = "" if counts["train_aug"] == TRAIN_AUG_SIZE else f" (the official archives give {TRAIN_AUG_SIZE:,})"
    print(f"[mnm] {voc}: {AUG_LABEL_DIR}/ holds {counts['voc_masks'] + counts['sbd_masks']:,} masks "
          f"({counts['voc_masks']:,} of VOC, {counts['sbd_masks']:,} of SBD); {train_aug_file(voc).relative_to(voc)} "
          f"lists {counts['train_aug']:,} images{note}, none of val's {counts['val']:,}")
    print(f"[mnm] it is data.root for conf/data/voc_aug.yaml: make voc-random VOC_ROOT={voc} (or --set "
          f"data.root={voc}); check it with: mnm data check {voc} --kind voc-aug")
    return 0

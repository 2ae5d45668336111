"""``SegmentationDataModule``: the base every dataset's LightningDataModule shares.

A subclass names its classes and palette and lists the samples of a split
(:meth:`SegmentationDataModule.list_samples`); the base validates the list at
``setup()`` (files exist, headers readable, label mode and size), builds the
joint transforms, and makes seeded, DDP-ready DataLoaders that produce the
batches of ``docs/CONTRACTS.md``.

(About 410 lines: the segmentation data module every data set shares — splits, label subsets, transforms,
resumable loaders, bad-sample handling — so that each data set's module is a few lines.)
"""

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import lightning as L
from torch.utils.data import DataLoader

from mnm.datamodules.datasets import SampleRecord, SegmentationDataset, SemiDataset, pad_collate, semi_collate
from mnm.datamodules.errors import DataError
from mnm.datamodules.label_subset import LabelSplit, split_labeled, write_id_list
from mnm.datamodules.readers import (
    IGNORE_INDEX,
    LabelMapping,
    check_pair,
    list_images,
    read_list,
    resolve_listed,
)
from mnm.datamodules.sampling import resumable_loader, seed_worker
from mnm.datamodules.transforms import JointTransform, build_eval_transform, build_train_transform
from mnm.utils.paths import where_to_run_hint

__all__ = ["DataError", "SegmentationDataModule", "loader_throughput", "seed_worker"]

logger = logging.getLogger("mnm.datamodules")

RGB = tuple[int, int, int]

# Lightning stage -> dataset roles it needs.
_STAGE_ROLES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("predict",)}
_ROLE_STAGE = {"train": "fit", "unlabeled": "fit", "val": "validate", "test": "test", "predict": "predict"}
#: files (in the trainer's ``default_root_dir``) that record a label fraction's subset
LABELED_FILE, UNLABELED_FILE = "labeled.txt", "unlabeled.txt"


class SegmentationDataModule(L.LightningDataModule):
    """Shared base: splits, validation, transforms and loaders for labelled segmentation data.

    ``num_classes``, ``ignore_index`` (255), ``class_names`` and ``palette``
    (list of RGB tuples) are set in ``__init__`` so a CLI can link them to the
    model before ``setup()``.

    Label fractions: ``labeled_fraction`` (0 < f <= 1) or ``labeled_list`` (a file of
    sample ids, one per line) keeps the masks of a subset of the train split only
    (:mod:`mnm.datamodules.label_subset`: seeded by ``split_seed``, default ``seed``;
    every class of the full split present). ``labeled_count`` asks for a number of labelled samples
    instead of a fraction, and ``labeled_from`` (a split name) draws them from that split's samples
    only (VOC's semi-supervised splits: 92 ... 1,464 of ``train`` within ``train_aug``). The remainder is the ``unlabeled`` role
    (images without masks: :meth:`unlabeled_dataloader`, or the train loader itself
    with ``train_on: unlabeled``). ``train_on: semi`` makes the train loader yield both at once for
    semi-supervised training: ``{"labeled": batch, "unlabeled": batch}`` per step, the unlabelled batch
    with two strong views and CutMix boxes (probability ``cutmix_p``; :class:`SemiDataset`,
    :class:`PairedSampler`). On ``setup("fit")`` under a trainer, the two id
    lists are written to ``labeled.txt`` and ``unlabeled.txt`` in the trainer's
    ``default_root_dir`` (the stage folder of a pipeline run).

    A training crop larger than its (scaled) image pads the image with ``pad_fill`` (RGB 0–255;
    default black, the Caffe release: its mean colour) placed at ``pad_position`` (``center``, or
    ``random`` as the release), and the mask with 255.
    """

    CLASS_NAMES: tuple[str, ...] = ()
    PALETTE: tuple[RGB, ...] = ()

    def __init__(
        self,
        root: str,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str | None = None,
        batch_size: int = 8,
        val_batch_size: int = 1,
        num_workers: int = 0,
        pin_memory: bool = False,
        crop_size: tuple[int, int] | None = (320, 320),
        scale_range: tuple[float, float] = (0.5, 2.0),
        hflip: bool = True,
        color_jitter: bool = False,
        val_size: tuple[int, int] | None = None,
        skip_bad: bool = False,
        seed: int = 0,
        predict_dir: str | None = None,
        max_samples: int | None = None,
        labeled_fraction: float = 1.0,
        labeled_list: str | None = None,
        split_seed: int | None = None,
        train_on: Literal["labeled", "unlabeled", "semi"] = "labeled",
        cutmix_p: float = 0.5,
        labeled_count: int | None = None,
        labeled_from: str | None = None,
        pad_fill: tuple[int, int, int] = (0, 0, 0),
        pad_position: Literal["center", "random"] = "center",
    ) -> None:
        super().__init__()
        for setting, value in (("batch_size", batch_size), ("val_batch_size", val_batch_size)):
            if value < 1:
                raise DataError(f"{setting} must be >= 1, got {value}")
        if num_workers < 0:
            raise DataError(f"num_workers must be >= 0, got {num_workers}")
        if max_samples is not None and max_samples < 1:
            raise DataError(f"max_samples must be >= 1 or null, got {max_samples}")
        if isinstance(labeled_fraction, bool) or not isinstance(labeled_fraction, int | float) \
                or not 0.0 < labeled_fraction <= 1.0:
            raise DataError(f"labeled_fraction must be in (0, 1], got {labeled_fraction!r} (a number; 1 keeps every label)")
        if labeled_list is not None and labeled_fraction != 1.0:
            raise DataError("give labeled_fraction or labeled_list, not both")
        if len(pad_fill) != 3 or not all(0 <= int(v) <= 255 for v in pad_fill):
            raise DataError(f"pad_fill must be three ints in 0..255 (RGB), got {pad_fill}")
        if pad_position not in ("center", "random"):
            raise DataError(f"pad_position must be 'center' or 'random', got {pad_position!r}")
        if labeled_count is not None and (labeled_list is not None or labeled_fraction != 1.0):
            raise DataError("give labeled_count or labeled_fraction/labeled_list, not both")
        if labeled_from is not None and labeled_list is not None:
            raise DataError("labeled_from bounds a seeded subset; a labeled_list names its samples itself")
        if train_on not in ("labeled", "unlabeled", "semi"):
            raise DataError(f"train_on must be 'labeled', 'unlabeled' or 'semi', got {train_on!r}")
        if not 0.0 <= cutmix_p <= 1.0:
            raise DataError(f"cutmix_p must be in [0, 1], got {cutmix_p}")
        for setting, size in (("crop_size", crop_size), ("val_size", val_size)):
            if size is not None and (len(size) != 2 or min(size) < 1):
                raise DataError(f"{setting} must be two positive ints (height, width), got {size}")
        self.root = Path(root).expanduser()
        self.train_split = train_split
        self.val_split = val_split
        self.test_split = test_split
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.crop_size = tuple(crop_size) if crop_size is not None else None
        self.scale_range = tuple(scale_range)
        self.hflip = hflip
        self.color_jitter = color_jitter
        self.pad_fill = tuple(int(v) for v in pad_fill)
        self.pad_position = pad_position
        self.val_size = tuple(val_size) if val_size is not None else None
        self.skip_bad = skip_bad
        self.seed = seed
        self.predict_dir = Path(predict_dir).expanduser() if predict_dir is not None else None
        self.max_samples = max_samples
        self.labeled_fraction = labeled_fraction
        self.labeled_list = Path(labeled_list).expanduser() if labeled_list is not None else None
        self.split_seed = seed if split_seed is None else split_seed
        self.train_on = train_on
        self.cutmix_p = cutmix_p
        self.labeled_count = labeled_count
        self.labeled_from = labeled_from
        self.label_split: LabelSplit | None = None

        self.num_classes = len(self.CLASS_NAMES)
        self.ignore_index = IGNORE_INDEX
        self.class_names = list(self.CLASS_NAMES)
        self.palette = [tuple(int(c) for c in rgb) for rgb in self.PALETTE]
        self.label_mapping = self.build_label_mapping()
        self.datasets: dict[str, SegmentationDataset] = {}

    # ------------------------------------------------------------------ hooks for subclasses
    def list_samples(self, split: str) -> list[SampleRecord]:
        """Every sample of ``split``, in list order (subclasses implement this)."""
        raise NotImplementedError

    def build_label_mapping(self) -> LabelMapping:
        """How raw label values become train ids (default: they already are)."""
        return LabelMapping.identity(self.num_classes)

    def split_source(self, split: str) -> Path:
        """Where ``split`` is listed on disk (for error messages)."""
        return self.root

    def train_transform(self) -> JointTransform:
        """Augmentation for the training split."""
        return build_train_transform(
            crop_size=self.crop_size,
            scale_range=self.scale_range,
            hflip=self.hflip,
            color_jitter=self.color_jitter,
            seed=self.seed,
            pad_fill=self.pad_fill,
            pad_position=self.pad_position,
        )

    def eval_transform(self) -> JointTransform:
        """Deterministic transform for val/test: full image or ``val_size``."""
        return build_eval_transform(size=self.val_size, seed=self.seed)

    def predict_transform(self) -> JointTransform:
        """Transform for ``predict_dir`` images: full image or ``val_size``."""
        return build_eval_transform(size=self.val_size, seed=self.seed)

    def check_source(self) -> None:
        """Raise :class:`DataError` unless the data can be found (checked before a pipeline starts)."""
        if not self.root.is_dir():
            hint = "" if self.root.is_absolute() else where_to_run_hint()
            raise DataError(f"{self.root}: dataset root (data.root) does not exist or is not a folder{hint}")

    # ------------------------------------------------------------------ shared helpers
    def records_from_list(
        self,
        list_file: Path,
        from_name: Callable[[str], tuple[Path, Path]],
        strip_prefixes: tuple[str, ...] = (),
    ) -> list[SampleRecord]:
        """Parse a split list of ``name`` lines or ``image label`` path pairs into records."""
        records = []
        for lineno, tokens in read_list(list_file):
            source = f"{list_file}:{lineno}"
            if len(tokens) == 1:
                image, label = from_name(tokens[0])
            elif len(tokens) == 2:
                image, label = (resolve_listed(self.root, token, strip_prefixes) for token in tokens)
            else:
                raise DataError(
                    f"{source}: expected 'name' or 'image_path label_path', got {len(tokens)} fields"
                )
            records.append(SampleRecord(image, label, image.stem, self.label_mapping, source))
        return records

    @property
    def uses_label_subset(self) -> bool:
        """Whether only a subset of the train split keeps its masks."""
        return (
            self.labeled_list is not None
            or self.labeled_fraction < 1.0
            or self.labeled_count is not None
            or self.labeled_from is not None
        )

    def write_label_split(self, folder: str | Path) -> None:
        """Write the labelled and unlabelled ids to ``folder``/``labeled.txt``, ``unlabeled.txt``."""
        if not self.uses_label_subset:
            raise DataError("no label subset to write: set data.labeled_fraction < 1 or data.labeled_list")
        if self.label_split is None:
            self.setup("fit")
        folder = Path(folder)
        write_id_list(folder / LABELED_FILE, self.label_split.labeled)
        write_id_list(folder / UNLABELED_FILE, self.label_split.unlabeled)

    # ------------------------------------------------------------------ Lightning hooks
    def setup(self, stage: str | None = None) -> None:
        """Build (once) and validate the datasets the stage needs; raises :class:`DataError`."""
        roles = _STAGE_ROLES.get(stage or "fit")
        if roles is None:
            raise DataError(f"unknown stage {stage!r}; expected one of {sorted(_STAGE_ROLES)}")
        if "train" in roles and self.train_on in ("unlabeled", "semi"):
            roles = (*roles, "unlabeled")
        for role in roles:
            if role not in self.datasets:
                self.datasets[role] = self._build_dataset(role)
        trainer = self.trainer
        if self.label_split is not None and trainer is not None and trainer.is_global_zero:
            self.write_label_split(trainer.default_root_dir)

    def train_dataloader(self) -> DataLoader:
        if self.train_on == "semi":
            return self.semi_dataloader()
        role = "unlabeled" if self.train_on == "unlabeled" else "train"
        return self._loader(role, self.batch_size, shuffle=True)

    def unlabeled_dataloader(self) -> DataLoader:
        """Images of the train split outside the labelled subset, without masks, augmented as train."""
        return self._loader("unlabeled", self.batch_size, shuffle=True)

    def semi_dataloader(self) -> DataLoader:
        """Per step a labelled batch and an unlabelled one (weak view, two strong views, CutMix boxes)."""
        for role in ("train", "unlabeled"):
            if role not in self.datasets:
                self.datasets[role] = self._build_dataset(role)
        dataset = SemiDataset(self.datasets["train"], self.datasets["unlabeled"], cutmix_p=self.cutmix_p)
        for keyed in (dataset.labeled, dataset.unlabeled):
            keyed.key_seed = self.seed  # the SemiDataset's own key_seed is set by resumable_loader
        return resumable_loader(
            dataset, self.batch_size, shuffle=True, seed=self.seed, trainer=self.trainer,
            num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=semi_collate,
            paired_sizes=(len(dataset.labeled), len(dataset.unlabeled)),
        )  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.val_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.val_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """Images of ``predict_dir`` (a folder or one file): ``image``, ``name``, ``size`` and ``input_size``."""
        return self._loader("predict", self.val_batch_size, shuffle=False)

    def eval_dataset(self, role: str) -> SegmentationDataset:
        """The ``train``, ``val`` or ``test`` samples with the deterministic eval transform (no augmentation).

        Built anew on each call (not cached); probes and reports read labelled images through it.
        """
        return self._build_dataset(role, transform=self.eval_transform())

    @property
    def num_skipped(self) -> int:
        """Bad samples skipped so far with ``skip_bad`` (setup and read time, all splits)."""
        return sum(ds.num_skipped for ds in self.datasets.values())

    # ------------------------------------------------------------------ internals
    def _split_for(self, role: str) -> str:
        split = {"train": self.train_split, "val": self.val_split, "test": self.test_split}[role]
        if split is None:
            raise DataError(f"{role}_split is not set (data.{role}_split); cannot build the {role} loader")
        return split

    def _list_role(self, role: str) -> tuple[str, list[SampleRecord], str]:
        if role == "predict":
            if self.predict_dir is None:
                raise DataError("predict_dir is not set (data.predict_dir); cannot build the predict loader")
            if self.predict_dir.is_file():
                records = [SampleRecord(self.predict_dir, None, self.predict_dir.stem)]
            else:
                records = [
                    SampleRecord(path, None, path.relative_to(self.predict_dir).with_suffix("").as_posix())
                    for path in list_images(self.predict_dir)
                ]
            return "predict", records, str(self.predict_dir)
        self.check_source()
        split = self._split_for(role)
        return split, self.list_samples(split), str(self.split_source(split))

    def _build_dataset(self, role: str, transform: JointTransform | None = None) -> SegmentationDataset:
        if role == "unlabeled" and not self.uses_label_subset:
            raise DataError("no unlabelled remainder: set data.labeled_fraction < 1 or data.labeled_list")
        split, records, source = self._list_role("train" if role == "unlabeled" else role)
        if self.max_samples is not None:
            records = records[: self.max_samples]
        if not records:
            raise DataError(f"{source}: split '{split}' is empty (no samples listed)")
        good = self._validate(records, split)
        skipped = len(records) - len(good)
        if not good:
            raise DataError(f"{source}: split '{split}' has no usable samples (all {skipped} were bad)")
        if skipped:
            logger.warning(
                "split '%s': skipped %d of %d samples with bad data (skip_bad)", split, skipped, len(records)
            )
        if role in ("train", "unlabeled") and self.uses_label_subset:
            if self.label_split is None:
                pool = (
                    frozenset(r.name for r in self.list_samples(self.labeled_from))
                    if self.labeled_from is not None
                    else None
                )
                self.label_split = split_labeled(
                    good, fraction=self.labeled_fraction, list_file=self.labeled_list, seed=self.split_seed,
                    count=self.labeled_count, pool=pool,
                )  # fmt: skip
            good = self.label_split.labeled if role == "train" else self.label_split.unlabeled
            if not good:
                raise DataError(f"{source}: the labelled subset leaves no unlabelled sample in '{split}'")
        if transform is None:
            transform = {"train": self.train_transform, "unlabeled": self.train_transform,
                         "predict": self.predict_transform}.get(role, self.eval_transform)()  # fmt: skip
        dataset = SegmentationDataset(
            good, transform, split=split, skip_bad=self.skip_bad, with_size=role == "predict",
            mark_padding=role == "unlabeled",
        )
        dataset.num_skipped_at_setup = skipped
        return dataset

    def _validate(self, records: list[SampleRecord], split: str) -> list[SampleRecord]:
        good = []
        for record in records:
            try:
                check_pair(record.image, record.label)
            except DataError as err:
                if record.source:
                    err = DataError(f"{err} (listed in {record.source})")
                if not self.skip_bad:
                    raise err from None
                logger.warning("skip_bad: skipping bad sample in split '%s': %s", split, err)
                continue
            good.append(record)
        return good

    def _loader(self, role: str, batch_size: int, shuffle: bool) -> DataLoader:
        if role not in self.datasets:
            self.setup(_ROLE_STAGE[role])
        if role not in self.datasets:  # the unlabelled remainder is built on first use
            self.datasets[role] = self._build_dataset(role)
        return resumable_loader(
            self.datasets[role], batch_size, shuffle=shuffle, seed=self.seed, trainer=self.trainer,
            num_workers=self.num_workers, pin_memory=self.pin_memory, collate_fn=pad_collate,
        )


def _cycle(loader: DataLoader) -> Iterator[dict]:
    while True:
        yield from loader


def loader_throughput(dm: SegmentationDataModule, num_batches: int = 20, warmup: int = 2) -> float:
    """Images per second of ``dm.train_dataloader()`` over ``num_batches`` after ``warmup`` batches."""
    batches = _cycle(dm.train_dataloader())
    for _ in range(warmup):
        next(batches)
    images = 0
    start = time.perf_counter()
    for _ in range(num_batches):
        images += next(batches)["image"].shape[0]
    return images / (time.perf_counter() - start)

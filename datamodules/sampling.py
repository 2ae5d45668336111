"""Resumable, rank-aware sampling: a resumed run sees exactly the batches an uninterrupted one would.

The sampler yields *keys* ``epoch * len(dataset) + index``; the dataset maps a
key to its sample and seeds that sample's augmentation from the key. So the
data of a training step depends only on ``(seed, epoch, position)`` — not on
the worker count, prefetching, or how often the process was restarted. When
the loader is built for a run resumed at step ``k`` it starts at batch ``k``
of the same stream.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler, get_worker_info

logger = logging.getLogger("mnm.datamodules")


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size (0, 1 outside torch.distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed python, numpy and the dataset's augmentation per worker.

    ``torch.initial_seed()`` in a worker is the loader generator's base seed +
    worker id, so runs with the same ``seed`` (and rank) are reproducible.
    """
    cv2.setNumThreads(0)  # no OpenCV thread pool inside worker processes (oversubscription, fork issues)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)
    info = get_worker_info()
    if info is not None and hasattr(info.dataset, "set_seed"):
        info.dataset.set_seed(seed)


def init_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: :func:`seed_worker`, and :func:`exit_on_parents_sigterm_only`."""
    exit_on_parents_sigterm_only()
    seed_worker(worker_id)


def exit_on_parents_sigterm_only() -> None:
    """In a DataLoader worker: exit at a SIGTERM from the main process, ignore one from anybody else.

    A scheduler's SIGTERM (``kill -TERM -PGID``, SLURM, Kubernetes) reaches every process of the group. PyTorch's
    worker dies of a SIGTERM its main process did not send, and the main process then fails with "DataLoader
    worker ... is killed by signal" before it can save a checkpoint. Here SIGTERM is blocked in the worker and a
    thread waits for it with ``sigwaitinfo``, which tells the sender: the main process's (its ``terminate()`` at
    exit) ends the worker as before; any other is ignored, so the main process ends the step, saves
    ``last.ckpt`` and stops the workers itself. Where ``sigwaitinfo`` does not exist (macOS) nothing changes.
    """
    if not hasattr(signal, "sigwaitinfo"):
        return
    parent = os.getppid()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started later inherit the mask

    def wait_for_sigterm() -> None:
        while True:
            if signal.sigwaitinfo({signal.SIGTERM}).si_pid == parent:
                os._exit(0)  # what PyTorch's own worker handler does at its main process's SIGTERM

    threading.Thread(target=wait_for_sigterm, name="mnm-worker-sigterm", daemon=True).start()


class ResumableSampler(Sampler[int]):
    """Per-epoch shuffled keys (from ``seed``), sharded across ranks, able to start at any batch.

    Each rank takes every ``world``-th key of the same permutation (wrapped so
    all ranks get equal counts), as Lightning's DistributedSampler would; the
    trainer's ``use_distributed_sampler`` must therefore be off. ``start_batch``
    batches of this rank's stream are skipped once (the batches a resumed run
    has already trained on); Lightning's ``set_epoch`` keeps the epoch in step
    with the trainer afterwards.
    """

    def __init__(
        self,
        size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world: int | None = None,
        batch_size: int = 1,
        drop_last: bool = False,
        start_batch: int = 0,
    ) -> None:
        default_rank, default_world = rank_and_world()
        self.size, self.shuffle, self.seed = size, shuffle, seed
        self.rank = default_rank if rank is None else rank
        self.world = default_world if world is None else world
        self.per_rank = math.ceil(size / self.world)
        per_epoch = self.per_rank // batch_size if drop_last else math.ceil(self.per_rank / batch_size)
        epoch, batch = divmod(start_batch, max(per_epoch, 1))
        self.epoch = epoch if shuffle else 0
        self.skip = batch * batch_size

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def keys(self, epoch: int) -> list[int]:
        """This rank's keys of ``epoch``, in order."""
        if self.shuffle:
            order = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch))
        else:
            order = torch.arange(self.size)
        if self.per_rank * self.world > self.size:
            order = torch.cat([order, order[: self.per_rank * self.world - self.size]])
        return (order[self.rank :: self.world] + epoch * self.size).tolist()

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        yield from self.keys(epoch)[skip:]
        self.epoch = epoch + 1


def split_key(key: int, size: int) -> tuple[int, int]:
    """``(epoch, index)`` of a sampler key."""
    return divmod(int(key), size)


class ResumableLoader(DataLoader):
    """A DataLoader over a :class:`ResumableSampler`, resumable in Lightning's sense (``state_dict`` /
    ``load_state_dict``), so a mid-epoch resume is known to continue the same stream.

    The position needs no saving: the data module builds the sampler at the trainer's restored
    step. The state holds what fixes the stream (seed, batch size, ranks); a resume with other
    settings is logged, since it cannot see the batches an uninterrupted run would.
    """

    def state_dict(self) -> dict[str, Any]:
        """The settings that fix the stream of batches."""
        return {"seed": self.sampler.seed, "batch_size": self.batch_size, "world": self.sampler.world}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Compare the saved settings with this loader's; warn where they differ."""
        if state_dict != self.state_dict():
            logger.warning(
                "resuming with other data settings than the checkpoint's (%s, now %s): the batches differ "
                "from those of an uninterrupted run", state_dict, self.state_dict()
            )


def resumable_loader(
    dataset: Any,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    trainer: Any,
    num_workers: int = 0,
    pin_memory: bool = False,
    collate_fn: Any = None,
    paired_sizes: tuple[int, int] | None = None,
) -> ResumableLoader:
    """A seeded, rank-sharded :class:`ResumableLoader` over ``dataset`` (items keyed by sampler keys).

    Under a ``trainer``, a shuffled (training) loader starts at the batch after the trainer's last step,
    and ranks come from the trainer. ``dataset`` needs ``set_seed(seed)`` and a ``key_seed`` attribute,
    which is set for shuffled loaders so that each item's augmentation depends on its key alone.
    ``paired_sizes`` (labelled, unlabelled) makes it a loader of :class:`PairedSampler` key pairs.
    """
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    loader_seed = seed + 7919 * rank
    dataset.set_seed(loader_seed)  # used as is when num_workers == 0
    drop_last = shuffle and len(dataset) > batch_size * world
    # a resumed fit starts at the batch after the last one it trained on
    start_batch = trainer.global_step * trainer.accumulate_grad_batches if trainer is not None and shuffle else 0
    if shuffle:
        dataset.key_seed = seed  # augmentation keyed by sample and epoch: exact resume
    if paired_sizes is not None:
        drop_last = False
        sampler: Sampler = PairedSampler(
            *paired_sizes, seed=seed, rank=rank, world=world, batch_size=batch_size, start_batch=start_batch
        )
    else:
        sampler = ResumableSampler(
            len(dataset), shuffle=shuffle, seed=seed, rank=rank, world=world,
            batch_size=batch_size, drop_last=drop_last, start_batch=start_batch,
        )  # fmt: skip
    return ResumableLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
        worker_init_fn=init_worker,
        generator=torch.Generator().manual_seed(loader_seed),
        collate_fn=collate_fn,
    )


class PairedSampler(Sampler[tuple[int, int]]):
    """``(labelled key, unlabelled key)`` pairs for semi-supervised training: two endless key streams,
    each a :class:`ResumableSampler` over its own dataset (seeds ``seed`` and ``seed + 1``), read side by side.

    An epoch is as long as the longer stream's share of this rank (at least one batch), cut to whole
    batches; the shorter stream simply runs on into its next epochs. Position ``p`` of the pair stream
    (``epoch * len + offset``) fixes both keys, so a run resumed at ``start_batch`` sees the same pairs
    as an uninterrupted one, and every rank takes its own shard of both streams.
    """

    def __init__(
        self,
        labeled_size: int,
        unlabeled_size: int,
        *,
        seed: int = 0,
        rank: int | None = None,
        world: int | None = None,
        batch_size: int = 1,
        start_batch: int = 0,
    ) -> None:
        self.streams = [
            ResumableSampler(size, shuffle=True, seed=seed + i, rank=rank, world=world)
            for i, size in enumerate((labeled_size, unlabeled_size))
        ]
        self.seed, self.world = seed, self.streams[0].world
        longest = max(max(s.per_rank for s in self.streams), batch_size)
        self.per_epoch = longest // batch_size * batch_size
        self.epoch, self.skip = divmod(start_batch * batch_size, self.per_epoch)
        self._keys: dict[tuple[int, int], list[int]] = {}

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def _key(self, stream: int, position: int) -> int:
        sampler = self.streams[stream]
        epoch, offset = divmod(position, sampler.per_rank)
        if (stream, epoch) not in self._keys:
            self._keys = {k: v for k, v in self._keys.items() if k[0] != stream}
            self._keys[stream, epoch] = sampler.keys(epoch)
        return self._keys[stream, epoch][offset]

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.skip
        self.skip = 0
        for position in range(epoch * self.per_epoch + skip, (epoch + 1) * self.per_epoch):
            yield self._key(0, position), self._key(1, position)
        self.epoch = epoch + 1

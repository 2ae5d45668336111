"""The resumable sampler: rank sharding and starting mid-stream give exactly the uninterrupted stream."""

from __future__ import annotations

import itertools

import pytest

from mnm.datamodules.sampling import ResumableSampler, split_key


def stream(sampler: ResumableSampler, epochs: int) -> list[int]:
    return list(itertools.chain.from_iterable(list(sampler) for _ in range(epochs)))


def test_epochs_are_permutations_with_epoch_keys() -> None:
    s = ResumableSampler(10, seed=3)
    first, second = list(s), list(s)
    assert sorted(split_key(k, 10)[1] for k in first) == list(range(10))
    assert {split_key(k, 10)[0] for k in second} == {1}
    assert [k % 10 for k in first] != [k % 10 for k in second]


@pytest.mark.parametrize(("drop_last", "batch_size"), [(True, 3), (False, 3), (True, 1)])
def test_resume_at_any_batch_continues_the_same_stream(drop_last: bool, batch_size: int) -> None:
    def batches(sampler: ResumableSampler, epochs: int) -> list[list[int]]:
        out = []
        for _ in range(epochs):
            keys = list(sampler)
            n = len(keys) // batch_size if drop_last else -(-len(keys) // batch_size)
            out += [keys[i * batch_size : (i + 1) * batch_size] for i in range(n)]
        return out

    full = batches(ResumableSampler(11, seed=0, batch_size=batch_size, drop_last=drop_last), 3)
    per_epoch = len(full) // 3
    for start in range(len(full) - per_epoch):
        resumed = ResumableSampler(11, seed=0, batch_size=batch_size, drop_last=drop_last, start_batch=start)
        tail = batches(resumed, 3)
        assert tail[: len(full) - start - per_epoch] == full[start : len(full) - per_epoch], start


def test_ranks_split_each_epoch() -> None:
    shards = [list(ResumableSampler(10, seed=1, rank=r, world=3)) for r in range(3)]
    assert all(len(s) == 4 for s in shards)
    assert sorted(set(itertools.chain(*shards))) == list(range(10))


def test_set_epoch_and_no_shuffle() -> None:
    s = ResumableSampler(5, shuffle=False)
    assert list(s) == [0, 1, 2, 3, 4]
    shuffled = ResumableSampler(6, seed=2)
    shuffled.set_epoch(2)
    assert {k // 6 for k in shuffled} == {2}

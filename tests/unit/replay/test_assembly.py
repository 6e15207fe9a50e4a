"""Tests for r2d2_hpc.replay.assembly: shard replies copied once into reused batch buffers."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np
import pytest

from r2d2_hpc.replay.assembly import BatchAssembler
from r2d2_hpc.types import TIME_MAJOR_FIELDS, SequenceBatch

T, H, OBS = 3, 2, (2, 2)


def part(ids: Sequence[int]) -> SequenceBatch:
    """A hand-made reply of the sequences ``ids``: every value encodes (id, t)."""
    ids_ = np.asarray(ids, np.int64)
    tb = 10 * ids_[None, :] + np.arange(T)[:, None]                      # [T, k]
    return SequenceBatch(
        obs=np.broadcast_to(tb[..., None, None], (T, len(ids), *OBS)).astype(np.uint8),
        action=tb.astype(np.int64), reward=tb.astype(np.float32) / 2,
        discount=np.ones((T, len(ids)), np.float32), first=tb % 2 == 0, mask=tb % 3 != 0,
        prev_action=tb + 1, prev_reward=tb.astype(np.float32) / 4,
        state_h=np.repeat(ids_[:, None], H, 1).astype(np.float32),
        state_c=-np.repeat(ids_[:, None], H, 1).astype(np.float32),
        keys=ids_ + 1000, probs=ids_ / 100.0)


def concat(parts: List[SequenceBatch]) -> SequenceBatch:
    """What the batch must be: the parts side by side along the batch axis."""
    return SequenceBatch(*(np.concatenate([getattr(p, n) for p in parts],
                                          axis=1 if n in TIME_MAJOR_FIELDS else 0)
                           for n in SequenceBatch._fields))


def assert_batch_equal(a: SequenceBatch, b: SequenceBatch) -> None:
    for name, x, y in zip(SequenceBatch._fields, a, b):
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def test_parts_land_in_planned_rows_whatever_the_arrival_order() -> None:
    asm = BatchAssembler(batch_size=5)
    a, b = part([1, 2]), part([7, 8, 9])
    asm.expect(0, [(11, 2), (12, 3)])
    asm.add(0, 12, b)  # the second shard answers first
    assert not asm.ready(0)
    asm.add(0, 11, a)
    assert asm.ready(0)
    assert_batch_equal(asm.take(0), concat([a, b]))
    assert asm.batches == 1


def test_one_copy_of_every_byte() -> None:
    asm = BatchAssembler(batch_size=5)
    a, b = part([1, 2]), part([7, 8, 9])
    asm.expect(0, [(11, 2), (12, 3)])
    asm.add(0, 11, a)
    asm.add(0, 12, b)
    batch = asm.take(0)
    nbytes = sum(x.nbytes for x in batch)
    assert asm.bytes_copied == nbytes == sum(x.nbytes for x in a) + sum(x.nbytes for x in b)
    assert batch.obs.flags.c_contiguous  # the learner uses it as is


def test_buffers_are_reused_after_the_next_take() -> None:
    asm = BatchAssembler(batch_size=2)
    batches = {}
    for rid in (0, 1):  # two requests in flight
        asm.expect(rid, [(5, 2)])
    asm.add(0, 5, part([1, 2]))
    batches[0] = asm.take(0)
    asm.add(1, 5, part([3, 4]))
    batches[1] = asm.take(1)  # frees request 0's buffer
    assert not np.shares_memory(batches[0].obs, batches[1].obs)
    asm.expect(2, [(5, 2)])
    asm.add(2, 5, part([5, 6]))
    batches[2] = asm.take(2)
    assert asm.num_buffers == 2
    assert np.shares_memory(batches[0].obs, batches[2].obs)
    assert_batch_equal(batches[2], part([5, 6]))
    assert_batch_equal(batches[1], part([3, 4]))  # still valid until the next take


def test_allocator_is_used_and_a_short_batch_is_a_view() -> None:
    calls = []

    def allocate(shape, dtype):
        calls.append((shape, np.dtype(dtype)))
        return np.full(shape, 99, dtype)

    asm = BatchAssembler(batch_size=4, allocate=allocate)
    asm.expect(0, [(1, 3)])
    asm.add(0, 1, part([4, 5, 6]))
    batch = asm.take(0)
    assert len(calls) == len(SequenceBatch._fields)
    assert calls[0] == ((T, 4, *OBS), np.dtype(np.uint8)) and calls[-1] == ((4,), np.float64)
    assert_batch_equal(batch, part([4, 5, 6]))


def test_misfits_are_refused() -> None:
    asm = BatchAssembler(batch_size=4)
    with pytest.raises(ValueError, match="invalid plan"):
        asm.expect(0, [(1, 3), (2, 2)])  # 5 rows > 4
    with pytest.raises(ValueError, match="invalid plan"):
        asm.expect(0, [(1, 1), (1, 1)])  # a source twice
    asm.expect(0, [(1, 2), (2, 2)])
    with pytest.raises(ValueError, match="invalid plan"):
        asm.expect(0, [(1, 1)])  # the id is in flight
    with pytest.raises(ValueError, match="unexpected part"):
        asm.add(0, 3, part([1, 2]))
    with pytest.raises(ValueError, match="keys is int64\\[3\\]|obs is uint8\\[3, 3"):
        asm.add(0, 1, part([1, 2, 3]))  # 3 rows, 2 planned
    bad = part([1, 2])._replace(reward=np.zeros((T, 2), np.float64))
    with pytest.raises(ValueError, match="reward is float64"):
        asm.add(0, 1, bad)
    asm.add(0, 1, part([1, 2]))
    with pytest.raises(ValueError, match="unexpected part"):
        asm.add(0, 1, part([1, 2]))  # arrived already
    with pytest.raises(ValueError, match=r"missing parts \[2\]"):
        asm.take(0)

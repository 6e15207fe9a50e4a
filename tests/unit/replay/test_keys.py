"""Replay keys name their owner shard: the encoding, and a shard refusing (and counting)
priority updates for keys it did not issue."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from r2d2_hpc.replay.layout import (KEY_GENERATION_BITS, KEY_SHARD_BITS, KEY_SLOT_BITS,
                                    MAX_SHARDS, keys_by_shard, make_keys, split_keys)
from r2d2_hpc.replay.reshard import reshard
from r2d2_hpc.replay.shard import ReplayShard
from tests.helpers.replay_model import FRAME


def shard(index: int, **kw) -> ReplayShard:
    args = dict(capacity_observations=32, capacity_sequences=4, sequence_length=2,
                state_size=1, shard_index=index)
    args.update(kw)
    return ReplayShard(FRAME, **args)


def add(sh: ReplayShard, stream: int, n_seq: int = 1) -> np.ndarray:
    """Stream ``stream``: 2 * n_seq steps from an episode start, a sequence every 2 steps."""
    n = 2 * n_seq
    sh.add_steps(stream, 0, np.zeros((n,) + FRAME, np.uint8), np.zeros(n, np.int64),
                 np.zeros(n, np.float32), np.ones(n, np.float32), np.arange(n) == 0)
    return sh.add_sequences(stream, np.arange(0, n, 2), np.full(n_seq, 2),
                            np.zeros((n_seq, 1)), np.zeros((n_seq, 1)), np.zeros(n_seq, int),
                            np.zeros(n_seq))


# ----------------------------------------------------------------------------
# The encoding (replay.layout.make_keys / split_keys)
# ----------------------------------------------------------------------------

# (shard, slot, generation) -> key, by hand: shard << 51 | generation << 26 | slot.
KEY_TABLE = [
    (0, 0, 1, 2 ** 26),
    (0, 5, 7, 7 * 2 ** 26 + 5),
    (3, 5, 7, 3 * 2 ** 51 + 7 * 2 ** 26 + 5),
    (1, 2 ** 26 - 1, 1, 2 ** 51 + 2 ** 27 - 1),
    (MAX_SHARDS - 1, 2 ** 26 - 1, 2 ** 25 - 1, 2 ** 63 - 1),     # every bit but the sign
]


@pytest.mark.parametrize("shard_index,slot,generation,key", KEY_TABLE)
def test_keys_by_hand(shard_index, slot, generation, key):
    assert KEY_SHARD_BITS + KEY_GENERATION_BITS + KEY_SLOT_BITS == 63
    got = make_keys(shard_index, np.array([slot]), np.array([generation]))
    assert got.dtype == np.int64 and got.tolist() == [key]
    f = split_keys(got)
    assert (f.shard.tolist(), f.slot.tolist(), f.generation.tolist()) == \
        ([shard_index], [slot], [generation])


def test_keys_round_trip_with_per_key_shards():
    rng = np.random.default_rng(0)
    shards = rng.integers(0, MAX_SHARDS, 200)
    slots = rng.integers(0, 2 ** 26, 200)
    gens = rng.integers(0, 2 ** 25, 200)
    keys = make_keys(shards, slots, gens)
    assert (keys >= 0).all()
    f = split_keys(keys)
    np.testing.assert_array_equal(f.shard, shards)
    np.testing.assert_array_equal(f.slot, slots)
    np.testing.assert_array_equal(f.generation, gens)


def test_key_holds_the_generation_modulo_2_25():
    assert split_keys(make_keys(2, [1], [2 ** 25 + 3])).generation.tolist() == [3]
    assert split_keys(make_keys(2, [1], [2 ** 25 + 3])).shard.tolist() == [2]


def test_keys_by_shard_groups_by_the_named_owner_not_by_position():
    """A batch whose keys are interleaved across shards 2, 0, 2, 7, 0."""
    keys = make_keys(np.array([2, 0, 2, 7, 0]), np.array([4, 4, 1, 0, 9]), np.ones(5))
    groups = keys_by_shard(keys)
    assert list(groups) == [0, 2, 7]
    assert {s: idx.tolist() for s, idx in groups.items()} == {0: [1, 4], 2: [0, 2], 7: [3]}
    assert keys_by_shard(np.zeros(0, np.int64)) == {}


def test_shard_index_and_capacity_must_fit_the_key():
    for bad in (-1, MAX_SHARDS, 1.0, True):
        with pytest.raises(ValueError, match="shard_index"):
            shard(bad)
    spec = shard(0).spec
    assert dataclasses.replace(spec, capacity_sequences=2 ** 26).errors() == []
    errors = dataclasses.replace(spec, capacity_sequences=2 ** 26 + 1).errors()
    assert len(errors) == 1 and "capacity_sequences" in errors[0] and "2**26" in errors[0]


# ----------------------------------------------------------------------------
# A shard issues keys naming itself and refuses other shards' keys
# ----------------------------------------------------------------------------


def test_a_shard_issues_keys_naming_itself():
    sh = shard(5)
    keys = add(sh, stream=0, n_seq=3)
    assert split_keys(keys).shard.tolist() == [5, 5, 5]
    assert split_keys(sh.live_keys()).shard.tolist() == [5, 5, 5]
    assert split_keys(sh.sample(4).keys).shard.tolist() == [5] * 4
    assert sh.shard_index == 5 and sh.state().shard_index == 5


def test_misrouted_priority_update_is_refused_and_counted():
    """Shards 0 and 1 hold one sequence each in slot 0, generation 1: without the shard
    field their keys would be equal, and shard 1 would take shard 0's priority."""
    a, b = shard(0), shard(1)
    (ka,), (kb,) = add(a, stream=0), add(b, stream=1)
    assert split_keys([ka, kb]).slot.tolist() == [0, 0] and ka != kb
    before_a = a.state().copy()
    assert b.update_priorities(np.array([ka, kb]), np.array([5.0, 2.0])) == 1
    assert b.misrouted_updates == 1
    assert b.sequence_info([kb])["priority"].tolist() == [2.0]
    assert b.stats().max_priority == 2.0
    before_b = b.state().copy()
    assert b.update_priorities(np.array([ka, ka]), np.array([7.0, 8.0])) == 0
    assert b.misrouted_updates == 3                      # every misrouted key counts
    assert b.state().equals(before_b)                # and none changed anything
    assert a.state().equals(before_a) and a.misrouted_updates == 0
    assert a.update_priorities(np.array([ka]), np.array([5.0])) == 1   # its owner takes it
    assert a.misrouted_updates == 0


def test_bad_update_with_a_misrouted_key_changes_nothing():
    a, b = shard(0), shard(1)
    (ka,), (kb,) = add(a, stream=0), add(b, stream=1)
    with pytest.raises(ValueError, match="priorities"):
        b.update_priorities(np.array([ka, kb]), np.array([1.0, np.nan]))
    assert b.misrouted_updates == 0
    with pytest.raises(ValueError, match="never issued by shard 1"):
        b.update_priorities(make_keys(1, [0], [9]), np.array([1.0]))   # its own, unissued
    with pytest.raises(ValueError, match="unknown key -1"):
        b.update_priorities(np.array([-1]), np.array([1.0]))


def test_read_and_sequence_info_refuse_another_shards_key():
    a, b = shard(0), shard(1)
    (ka,), _ = add(a, stream=0), add(b, stream=1)
    for call in (b.read, b.sequence_info):
        with pytest.raises(ValueError, match="belongs to another shard, not to shard 1"):
            call(np.array([ka]))


def test_keys_after_the_generation_wraps():
    """A slot refilled 2**25 times: its key's generation field is 0 again; the key is
    current, and the key of the sequence before is stale (dropped, not an error)."""
    sh = shard(2)
    add(sh, stream=0)
    state = sh.state().copy()
    state.slots["generation"][0] = 2 ** 25
    sh.load_state(state)
    (key,) = sh.live_keys()
    assert split_keys([key]).generation.tolist() == [0]
    assert sh.update_priorities(np.array([key]), np.array([4.0])) == 1
    older = make_keys(2, [0], [2 ** 25 - 1])
    assert sh.update_priorities(older, np.array([9.0])) == 0
    assert sh.sequence_info([key])["priority"].tolist() == [4.0]


def test_load_state_refuses_another_shards_state():
    a, b = shard(0), shard(1)
    with pytest.raises(ValueError, match="shard_index"):
        b.load_state(a.state())


def test_resharded_keys_name_their_new_owner():
    """Streams 0..3 (one env per actor) on 2 shards, re-sharded onto 3: every key names
    its new shard; an old key sent to its old index is stale, to another index misrouted."""
    old = [shard(i, capacity_sequences=8) for i in range(2)]
    old_keys = {s: int(add(old[s % 2], stream=s)[0]) for s in range(4)}
    new = reshard(old, 3, num_envs=1)
    for i, sh in enumerate(new):
        assert sh.shard_index == i
        assert set(split_keys(sh.live_keys()).shard.tolist()) <= {i}
    # stream 2 was on shard 0 and is now on shard 2 (2 mod 3)
    assert new[2].sequence_info(new[2].live_keys())["stream"].tolist() == [2]
    assert new[2].update_priorities(np.array([old_keys[2]]), np.array([3.0])) == 0
    assert new[2].misrouted_updates == 1
    assert new[0].update_priorities(np.array([old_keys[0]]), np.array([3.0])) == 0
    assert new[0].misrouted_updates == 0                       # stale, not misrouted

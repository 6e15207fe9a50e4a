"""ShardSpec's storage arithmetic (the memory check) against what a shard allocates."""
from __future__ import annotations

import numpy as np
import pytest

from r2d2_hpc.replay.layout import shard_spec
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.replay.sumtree import SumTree


@pytest.mark.parametrize("kw", [
    dict(frame_shape=(84, 84), capacity_observations=1000, capacity_sequences=25,
         sequence_length=20, state_size=16, frame_stack=4),
    dict(frame_shape=(4,), capacity_observations=777, capacity_sequences=33,
         sequence_length=9, state_size=8, obs_dtype=np.float32),
    dict(frame_shape=(42, 42), capacity_observations=64, capacity_sequences=1,
         sequence_length=12, state_size=256, frame_stack=4),
])
def test_spec_storage_bytes_equal_what_the_shard_allocates(kw):
    shard = ReplayShard(**kw)
    assert shard_spec(**kw).storage_bytes() == shard.storage_bytes()
    assert shard.spec == shard_spec(**kw)


def test_ring_bytes_by_hand():
    # 100 rows + the sentinel, each: 84*84 frame + int64 action + float32 reward
    # + float32 discount + bool first.
    spec = shard_spec((84, 84), capacity_observations=100, capacity_sequences=5,
                      sequence_length=10, state_size=4, frame_stack=4)
    assert spec.storage_bytes()["ring"] == 101 * (84 * 84 + 8 + 4 + 4 + 1)
    assert spec.storage_bytes()["tree"] == 8 * 16  # 5 leaves padded to 8, twice


@pytest.mark.parametrize("capacity, nodes", [(1, 2), (2, 4), (5, 16), (8, 16), (9, 32)])
def test_sumtree_num_nodes(capacity, nodes):
    assert SumTree.num_nodes(capacity) == nodes == SumTree(capacity).nodes.size

"""The one stream -> shard routing rule (``replay.routing``), and that re-sharding uses it."""
from __future__ import annotations

import inspect
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import r2d2_hpc
from r2d2_hpc.replay.reshard import build_resharded, reshard
from r2d2_hpc.replay.routing import (actor_of_stream, actors_of_shard, shard_for_actor,
                                     shard_for_stream, stream_id)
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.replay.snapshot import load_resharded
from tests.helpers.replay_model import FRAME

# (actor_index, num_shards) -> shard, by hand: round-robin.
SHARD_TABLE = [(0, 1, 0), (5, 1, 0), (0, 3, 0), (1, 3, 1), (2, 3, 2), (3, 3, 0), (7, 3, 1)]


@pytest.mark.parametrize("actor,shards,expected", SHARD_TABLE)
def test_shard_for_actor_table(actor, shards, expected):
    assert shard_for_actor(actor, shards) == expected


def test_actors_of_shard_by_hand():
    assert actors_of_shard(0, 7, 3) == (0, 3, 6)
    assert actors_of_shard(1, 7, 3) == (1, 4)
    assert actors_of_shard(2, 7, 3) == (2, 5)
    assert actors_of_shard(2, 2, 3) == ()


@pytest.mark.parametrize("bad", [(0, 0), (-1, 2)])
def test_shard_for_actor_rejects_bad_arguments(bad):
    with pytest.raises(ValueError):
        shard_for_actor(*bad)


@given(st.integers(1, 40), st.integers(1, 8))
@settings(max_examples=60, deadline=None)
def test_every_actor_has_exactly_one_shard_and_shards_are_balanced(num_actors, num_shards):
    owners = [[a for a in actors_of_shard(s, num_actors, num_shards)] for s in range(num_shards)]
    flat = sorted(a for group in owners for a in group)
    assert flat == list(range(num_actors))
    for s, group in enumerate(owners):
        assert all(shard_for_actor(a, num_shards) == s for a in group)
    sizes = [len(g) for g in owners]
    assert max(sizes) - min(sizes) <= 1


# (actor, env, num_envs) -> id, by hand.
STREAM_TABLE = [(0, 0, 1, 0), (3, 0, 1, 3), (0, 31, 32, 31), (1, 0, 32, 32), (2, 5, 8, 21)]


@pytest.mark.parametrize("actor,env,num_envs,expected", STREAM_TABLE)
def test_stream_id_table(actor, env, num_envs, expected):
    assert stream_id(actor, env, num_envs) == expected


@given(st.integers(1, 12), st.integers(1, 12))
@settings(max_examples=40, deadline=None)
def test_stream_ids_are_unique_and_dense(num_actors, num_envs):
    ids = [stream_id(a, e, num_envs) for a in range(num_actors) for e in range(num_envs)]
    assert sorted(ids) == list(range(num_actors * num_envs))


@pytest.mark.parametrize("args", [(0, 2, 2), (0, -1, 2), (-1, 0, 2), (0, 0, 0)])
def test_stream_id_rejects_bad_arguments(args):
    with pytest.raises(ValueError):
        stream_id(*args)


@given(st.integers(0, 20), st.integers(1, 9), st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_every_stream_of_an_actor_goes_to_the_actors_shard(actor, num_envs, num_shards):
    for env in range(num_envs):
        sid = stream_id(actor, env, num_envs)
        assert actor_of_stream(sid, num_envs) == actor
        assert shard_for_stream(sid, num_envs, num_shards) == shard_for_actor(actor, num_shards)


def test_shard_for_stream_by_hand():
    # 3 actors x 4 envs, 2 shards: actors 0, 2 -> shard 0; actor 1 -> shard 1
    assert [shard_for_stream(s, 4, 2) for s in range(12)] == [0] * 4 + [1] * 4 + [0] * 4
    # one env per actor: the stream is the actor
    assert [shard_for_stream(s, 1, 3) for s in range(6)] == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ValueError):
        shard_for_stream(-1, 2, 2)


def test_the_rule_is_defined_once():
    """No module but ``replay.routing`` defines a stream/actor -> shard function."""
    root = pathlib.Path(r2d2_hpc.__file__).parent
    pattern = re.compile(r"^def (shard_for_\w+)\(", re.M)
    found = {str(p.relative_to(root)): pattern.findall(p.read_text())
             for p in root.rglob("*.py") if pattern.search(p.read_text())}
    assert found == {"replay/routing.py": ["shard_for_actor", "shard_for_stream"]}


@pytest.mark.parametrize("fn", [build_resharded, reshard, load_resharded])
def test_resharding_requires_num_envs(fn):
    """No silent default: every re-sharding entry point must be told ``num_envs``."""
    param = inspect.signature(fn).parameters["num_envs"]
    assert param.kind is inspect.Parameter.KEYWORD_ONLY
    assert param.default is inspect.Parameter.empty


def test_in_memory_reshard_places_streams_by_their_actor():
    """2 envs per actor: streams 0..7 belong to actors 0..3. By actor, 2 shards hold
    streams {0,1,4,5} and {2,3,6,7}; ``stream mod 2`` would give {0,2,4,6}, {1,3,5,7}."""
    num_envs = 2
    old = [ReplayShard(FRAME, capacity_observations=64, capacity_sequences=16,
                       sequence_length=3, state_size=1, shard_index=i) for i in range(3)]
    for sid in range(8):
        shard = old[shard_for_stream(sid, num_envs, 3)]
        shard.add_steps(sid, 0, np.zeros((4,) + FRAME, np.uint8), np.zeros(4, np.int64),
                        np.zeros(4, np.float32), np.ones(4, np.float32),
                        np.array([True, False, False, False]))
        shard.add_sequences(sid, [0], [3], np.zeros((1, 1)), np.zeros((1, 1)), [0], [0.0])
    new = reshard(old, 2, num_envs=num_envs)
    held = [sorted(s.sequence_info(s.live_keys())["stream"].tolist()) for s in new]
    assert held == [[0, 1, 4, 5], [2, 3, 6, 7]]
    assert [sorted(s.streams()) for s in new] == held

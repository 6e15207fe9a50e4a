"""Rank -> role mapping, shard routing and stream ids (pure; no MPI needed)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.comm.topology import (ACTOR, LEARNER, REPLAY, RoleInfo, TopologyError,
                                    actor_of_stream, actors_of_shard, assign_role, shard_for_actor,
                                    shard_for_stream_id, stream_id)
from r2d2_hpc.config import TopologyConfig


# (learners, shards, size) -> the role of every rank, written out by hand.
ROLE_TABLE = [
    (1, 1, 3, [(LEARNER, 0), (REPLAY, 0), (ACTOR, 0)]),
    (1, 1, 5, [(LEARNER, 0), (REPLAY, 0), (ACTOR, 0), (ACTOR, 1), (ACTOR, 2)]),
    (2, 1, 4, [(LEARNER, 0), (LEARNER, 1), (REPLAY, 0), (ACTOR, 0)]),
    (1, 3, 6, [(LEARNER, 0), (REPLAY, 0), (REPLAY, 1), (REPLAY, 2), (ACTOR, 0), (ACTOR, 1)]),
    (2, 2, 7, [(LEARNER, 0), (LEARNER, 1), (REPLAY, 0), (REPLAY, 1),
               (ACTOR, 0), (ACTOR, 1), (ACTOR, 2)]),
]


@pytest.mark.parametrize("learners,shards,size,expected", ROLE_TABLE)
def test_role_table(learners, shards, size, expected):
    topo = TopologyConfig(learners=learners, replay_shards=shards)
    got = [assign_role(r, size, topo) for r in range(size)]
    assert [(g.role, g.index) for g in got] == expected
    for r, info in enumerate(got):
        assert info.rank == r and info.size == size
        assert info.learner_ranks == tuple(range(learners))
        assert info.replay_ranks == tuple(range(learners, learners + shards))
        assert info.actor_ranks == tuple(range(learners + shards, size))
    assert [g.is_lead for g in got] == [True] + [False] * (size - 1)


def test_two_learners_one_shard_four_ranks_by_hand():
    info = assign_role(3, 4, TopologyConfig(learners=2, replay_shards=1))
    assert info == RoleInfo(ACTOR, 0, (0, 1), (2,), (3,), 3, 4)
    assert info.shard_rank(0) == 2
    assert info.num_actors == 1 and info.num_shards == 1


@pytest.mark.parametrize("learners,shards,size", [(1, 1, 2), (1, 1, 1), (2, 1, 3), (1, 4, 5)])
def test_too_few_ranks_message_says_need_given_and_fix(learners, shards, size):
    topo = TopologyConfig(learners=learners, replay_shards=shards)
    with pytest.raises(TopologyError) as err:
        assign_role(0, size, topo)
    msg = str(err.value)
    need = learners + shards + 1
    assert f"at least {need} MPI ranks" in msg
    assert f"job has {size}" in msg
    assert f"mpiexec -n {need}" in msg
    assert "topology.replay_shards" in msg and "topology.learners" in msg
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("learners,shards", [(0, 1), (1, 0), (-1, 2)])
def test_topology_without_learner_or_shard_is_rejected(learners, shards):
    with pytest.raises(TopologyError, match="must be >= 1"):
        assign_role(0, 10, TopologyConfig(learners=learners, replay_shards=shards))


@pytest.mark.parametrize("rank", [-1, 3])
def test_rank_out_of_range(rank):
    with pytest.raises(TopologyError, match="outside"):
        assign_role(rank, 3, TopologyConfig())


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
    info = assign_role(0, 9, TopologyConfig(learners=1, replay_shards=2))
    assert info.actors_of_shard(0) == (3, 5, 7)
    assert info.actors_of_shard(1) == (4, 6, 8)
    assert [info.shard_rank(a) for a in range(6)] == [1, 2, 1, 2, 1, 2]


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


@given(st.integers(1, 4), st.integers(1, 4), st.integers(0, 6))
@settings(max_examples=60, deadline=None)
def test_roles_partition_the_ranks(learners, shards, extra_actors):
    topo = TopologyConfig(learners=learners, replay_shards=shards)
    size = topo.min_ranks + extra_actors
    infos = [assign_role(r, size, topo) for r in range(size)]
    for role, count in ((LEARNER, learners), (REPLAY, shards), (ACTOR, 1 + extra_actors)):
        mine = [i for i in infos if i.role == role]
        assert [i.index for i in mine] == list(range(count))
    ranks = infos[0].learner_ranks + infos[0].replay_ranks + infos[0].actor_ranks
    assert ranks == tuple(range(size))


@given(st.integers(0, 20), st.integers(1, 9), st.integers(1, 5))
@settings(max_examples=60, deadline=None)
def test_every_stream_of_an_actor_goes_to_the_actors_shard(actor, num_envs, num_shards):
    for env in range(num_envs):
        sid = stream_id(actor, env, num_envs)
        assert actor_of_stream(sid, num_envs) == actor
        assert shard_for_stream_id(sid, num_envs, num_shards) == shard_for_actor(actor, num_shards)


def test_shard_for_stream_id_by_hand():
    # 3 actors x 4 envs, 2 shards: actors 0, 2 -> shard 0; actor 1 -> shard 1
    got = [shard_for_stream_id(s, 4, 2) for s in range(12)]
    assert got == [0] * 4 + [1] * 4 + [0] * 4

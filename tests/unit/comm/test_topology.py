"""Rank -> role mapping and the shard each actor sends to (pure; no MPI needed)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.comm.topology import ACTOR, LEARNER, REPLAY, RoleInfo, TopologyError, assign_role
from r2d2_hpc.config import TopologyConfig
from r2d2_hpc.replay.routing import shard_for_stream, stream_id


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


def test_role_info_routes_actors_by_the_routing_rule():
    info = assign_role(0, 9, TopologyConfig(learners=1, replay_shards=2))
    assert info.actors_of_shard(0) == (3, 5, 7)
    assert info.actors_of_shard(1) == (4, 6, 8)
    assert [info.shard_rank(a) for a in range(6)] == [1, 2, 1, 2, 1, 2]


@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_every_stream_is_sent_to_the_shard_that_owns_it(num_actors, num_shards, num_envs):
    """An actor sends all its streams to ``shard_rank``; that shard is the one
    ``replay.routing.shard_for_stream`` (hence a re-sharding restore) gives each."""
    topo = TopologyConfig(learners=1, replay_shards=num_shards)
    info = assign_role(0, topo.min_ranks - 1 + num_actors, topo)
    for a in range(num_actors):
        for e in range(num_envs):
            owner = shard_for_stream(stream_id(a, e, num_envs), num_envs, num_shards)
            assert info.shard_rank(a) == info.replay_ranks[owner]


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

"""Which MPI rank plays which role: a pure function of (rank, size, config).

A job started as ``mpiexec -n N r2d2-train`` divides its ranks as::

    rank:   0 .. L-1        L .. L+S-1          L+S .. N-1
    role:   learner 0..L-1  replay shard 0..S-1 actor 0..N-L-S-1

with ``L = topology.learners`` and ``S = topology.replay_shards``. Rank 0 is
learner 0, the lead: it prints, writes the run directory and publishes the
parameters. Every actor rank sends all of its environment streams to one
replay shard, ``shard_for_actor(actor_index, S)`` (round-robin), so a stream's
steps always reach the same shard in order; that rule, and the stream -> shard
rule built on it, live in :mod:`r2d2_hpc.replay.routing`.

Only :func:`split_communicators`, :func:`node_local_rank` and :func:`node_size`
touch MPI, and
only the communicator they are given (the entry point passes
``MPI.COMM_WORLD``; library code never fetches it).
"""
from __future__ import annotations

from typing import Any, List, NamedTuple, Optional, Tuple

from r2d2_hpc.config import TopologyConfig
from r2d2_hpc.replay.routing import actors_of_shard, shard_for_actor

#: Role names, as :attr:`RoleInfo.role` spells them.
LEARNER = "learner"
REPLAY = "replay"
ACTOR = "actor"
ROLES = (LEARNER, REPLAY, ACTOR)


class TopologyError(ValueError):
    """The job's rank count cannot hold the configured topology."""


class RoleInfo(NamedTuple):
    """One rank's role and where the other roles live.

    Attributes:
      role: ``'learner'``, ``'replay'`` or ``'actor'``.
      index: position within the role (learner 0 is rank 0, shard 0 is rank L, ...).
      learner_ranks: world ranks of the learners, in learner-index order.
      replay_ranks: world ranks of the replay shards, in shard-index order.
      actor_ranks: world ranks of the actors, in actor-index order.
      rank: this rank in the world communicator.
      size: number of ranks in the world communicator.
    """

    role: str
    index: int
    learner_ranks: Tuple[int, ...]
    replay_ranks: Tuple[int, ...]
    actor_ranks: Tuple[int, ...]
    rank: int = 0
    size: int = 0

    @property
    def is_lead(self) -> bool:
        """True on learner 0 (rank 0), the rank that prints, writes and publishes."""
        return self.role == LEARNER and self.index == 0

    @property
    def num_actors(self) -> int:
        """Number of actor ranks in the job."""
        return len(self.actor_ranks)

    @property
    def num_shards(self) -> int:
        """Number of replay shard ranks in the job."""
        return len(self.replay_ranks)

    def shard_rank(self, actor_index: int) -> int:
        """World rank of the replay shard that actor ``actor_index`` sends to."""
        return self.replay_ranks[shard_for_actor(actor_index, self.num_shards)]

    def actors_of_shard(self, shard_index: int) -> Tuple[int, ...]:
        """World ranks of the actors that send to shard ``shard_index``."""
        return tuple(self.actor_ranks[a]
                     for a in actors_of_shard(shard_index, self.num_actors, self.num_shards))


def _check_topology(topo: TopologyConfig) -> None:
    bad: List[str] = []
    if topo.learners < 1:
        bad.append(f"topology.learners must be >= 1, got {topo.learners}")
    if topo.replay_shards < 1:
        bad.append(f"topology.replay_shards must be >= 1, got {topo.replay_shards}")
    if bad:
        raise TopologyError("; ".join(bad))


def assign_role(rank: int, size: int, topo: TopologyConfig) -> RoleInfo:
    """Maps a rank to its role: learners first, then replay shards, then actors.

    Args:
      rank: this rank, ``0 <= rank < size``.
      size: number of ranks in the job.
      topo: how many learners and replay shards the job has.

    Returns:
      The rank's RoleInfo (role, index within the role, the ranks of every role).

    Raises:
      TopologyError: if ``size < topo.min_ranks`` (the message says how many ranks
        are needed, how many were given and how to fix it), if the topology has
        no learner or no shard, or if ``rank`` is out of range.
    """
    _check_topology(topo)
    need = topo.min_ranks
    if size < need:
        raise TopologyError(
            f"this topology needs at least {need} MPI ranks ({topo.learners} learner(s) + "
            f"{topo.replay_shards} replay shard(s) + at least 1 actor) but the job has "
            f"{size}; start it with `mpiexec -n {need}` (or more; extra ranks become "
            f"actors), or lower topology.learners / topology.replay_shards "
            f"(e.g. --set topology.replay_shards=1), or run in one process with --serial")
    if not 0 <= rank < size:
        raise TopologyError(f"rank {rank} is outside the job's {size} ranks")
    learners = tuple(range(topo.learners))
    shards = tuple(range(topo.learners, topo.learners + topo.replay_shards))
    actors = tuple(range(topo.learners + topo.replay_shards, size))
    if rank < len(learners):
        role, index = LEARNER, rank
    elif rank < topo.learners + topo.replay_shards:
        role, index = REPLAY, rank - len(learners)
    else:
        role, index = ACTOR, rank - len(learners) - len(shards)
    return RoleInfo(role, index, learners, shards, actors, rank, size)


class Comms(NamedTuple):
    """The communicators of one rank.

    Attributes:
      world: the job's communicator, as passed to :func:`split_communicators`.
      learners: the learners' sub-communicator (for gradient allreduce) on
        learner ranks, None on every other rank.
      role_info: this rank's role.
    """

    world: Any
    learners: Optional[Any]
    role_info: RoleInfo

    def free(self) -> None:
        """Frees the learner sub-communicator (``world`` belongs to the caller)."""
        if self.learners is not None:
            self.learners.Free()


def split_communicators(world: Any, topo: TopologyConfig) -> Comms:
    """Assigns this rank's role and splits off the learners' communicator.

    Collective over ``world``: every rank must call it. The size check runs
    before the collective ``Split``, so with too few ranks every rank raises the
    same TopologyError and none waits for the others.

    Args:
      world: an mpi4py communicator holding the whole job (the entry point passes
        ``MPI.COMM_WORLD``).
      topo: the topology section of the config.

    Returns:
      Comms(world, learners, role_info); ``learners`` has the learner ranks in
      learner-index order and is None on replay and actor ranks. Free it with
      ``Comms.free()``.

    Raises:
      TopologyError: see :func:`assign_role`.
    """
    from mpi4py import MPI

    info = assign_role(world.Get_rank(), world.Get_size(), topo)
    color = 0 if info.role == LEARNER else MPI.UNDEFINED
    sub = world.Split(color, info.rank)
    learners = None if sub == MPI.COMM_NULL else sub
    return Comms(world, learners, info)


def node_local_rank(comm: Any) -> int:
    """This rank's index among the ranks of ``comm`` on the same node (collective).

    Args:
      comm: an mpi4py communicator.

    Returns:
      The index in ``[0, ranks of comm on this node)``.
    """
    from mpi4py import MPI  # MPI is imported only where a communicator is used

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(local.Get_rank())
    finally:
        local.Free()


def node_size(comm: Any) -> int:
    """How many ranks of ``comm`` run on this rank's node (collective).

    Args:
      comm: an mpi4py communicator.
    """
    from mpi4py import MPI  # MPI is imported only where a communicator is used

    local = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        return int(local.Get_size())
    finally:
        local.Free()

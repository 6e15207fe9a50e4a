"""The memory check: will every node hold what its ranks are about to allocate?

Before any rank builds its role, the job estimates what each rank will hold
and compares, node by node, the sum over the node's ranks with the memory the
node has available (ranks on one node share it; nodes are found with
``MPI.COMM_TYPE_SHARED``). A replay that cannot fit ends the job at once with
exit code 2 and one message giving the numbers and the fix, instead of an
out-of-memory kill hours later when the replay has filled.

What a rank needs:

* every rank: :data:`RANK_BASE_BYTES` (the interpreter, torch, numpy, MPI's
  buffers, an environment);
* a replay shard: its arrays, from the same layout the shard allocates
  (:meth:`~r2d2_hpc.replay.layout.ShardSpec.storage_bytes`: the step ring, the
  sequence and slot tables, the sum-tree), plus its sample replies in flight;
* a learner: its parameters five times over (online, target, gradient, Adam's
  two moments) plus the sample batches it holds.

Available memory is the kernel's ``MemAvailable`` (``/proc/meminfo``), or
less when the job's cgroup (SLURM's ``--mem``) caps it.
"""
from __future__ import annotations

import os
import socket
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from r2d2_hpc.comm.topology import assign_role
from r2d2_hpc.config import Config
from r2d2_hpc.job.replay import replay_shard_spec
from r2d2_hpc.types import JobSpec

#: Resident bytes of one rank before its own arrays (Python, torch, numpy, MPI,
#: one environment); a rank of the default task measured about 260 MB.
RANK_BASE_BYTES = 300 << 20
#: The job's cgroup (cgroup v2) files for a memory limit and current use.
CGROUP_ROOT = "/sys/fs/cgroup"

GB = 1e9


class NodeMemory(NamedTuple):
    """One node as the memory check sees it.

    Attributes:
      host: the node's name.
      ranks: the world ranks running there.
      available_bytes: memory the node can still give its ranks.
    """

    host: str
    ranks: Sequence[int]
    available_bytes: int


def sample_batch_bytes(cfg: Config, spec: JobSpec) -> int:
    """Bytes of one sampled batch's observations, ``[T, B, *obs_shape]``."""
    per_obs = int(np.prod(spec.obs_shape, dtype=np.int64)) * np.dtype(spec.obs_dtype).itemsize
    return cfg.learner.batch_size * cfg.replay.sequence_length * per_obs


def rank_bytes(cfg: Config, spec: JobSpec, role: str, num_shards: int,
               demo_bytes: int = 0) -> Dict[str, int]:
    """What one rank of ``role`` will hold, by part (see the module docstring;
    ``demo_bytes``: the largest shard's demonstration table, R2D3)."""
    need = {"base": RANK_BASE_BYTES}
    batch = sample_batch_bytes(cfg, spec)
    if role == "replay":
        need["replay"] = sum(replay_shard_spec(cfg, spec, num_shards).storage_bytes().values())
        if demo_bytes:
            need["demo"] = int(demo_bytes)
        need["batches"] = 2 * batch
    elif role == "learner":
        need["params"] = 5 * 4 * spec.num_params
        need["batches"] = (cfg.learner.samples_in_flight + 2) * batch
    return need


def node_needs(cfg: Config, spec: JobSpec, ranks: Sequence[int], size: int,
               demo_bytes: int = 0) -> Dict[str, int]:
    """What the ranks ``ranks`` of a ``size``-rank job need together, by part."""
    total: Dict[str, int] = {}
    for rank in ranks:
        role = assign_role(rank, size, cfg.topology).role
        for part, n in rank_bytes(cfg, spec, role, cfg.topology.replay_shards,
                                  demo_bytes).items():
            total[part] = total.get(part, 0) + n
    return total


def memory_problem(cfg: Config, spec: JobSpec, nodes: Sequence[NodeMemory],
                   size: int, demo_bytes: int = 0) -> Optional[str]:
    """The message for the first node that cannot hold its ranks, else None.

    Args:
      cfg: the run config.
      spec: the job's shapes.
      nodes: every node of the job.
      size: ranks in the job.
      demo_bytes: the largest shard's demonstration table (R2D3; 0: none).
    """
    shards = cfg.topology.replay_shards
    per_shard = sum(replay_shard_spec(cfg, spec, shards).storage_bytes().values())
    for node in nodes:
        need = node_needs(cfg, spec, node.ranks, size, demo_bytes)
        total = sum(need.values())
        if total <= node.available_bytes:
            continue
        here = sum(1 for r in node.ranks
                   if assign_role(r, size, cfg.topology).role == "replay")
        other = total - need.get("replay", 0) - need.get("demo", 0)
        demo = (f", {need['demo'] / GB:.2f} GB of demonstration tables "
                f"(replay.demo_files)" if need.get("demo") else "")
        room = max(0, node.available_bytes - other - need.get("demo", 0))
        fits = int(cfg.replay.capacity_observations * room / max(1, here * per_shard)) \
            if here else 0
        msg = (f"the job does not fit in memory on node {node.host}: its {len(node.ranks)} "
               f"rank(s) need {total / GB:.1f} GB ({here} replay shard(s) x "
               f"{per_shard / GB:.2f} GB of replay for replay.capacity_observations="
               f"{cfg.replay.capacity_observations} over {shards} shard(s){demo}, plus "
               f"{other / GB:.1f} GB for the ranks themselves) but "
               f"{node.available_bytes / GB:.1f} GB is available there. ")
        if here:
            msg += (f"Fix: more replay shards (topology.replay_shards) spread over more "
                    f"nodes, or a smaller replay.capacity_observations (at most about "
                    f"{fits} fits with this layout).")
        else:
            msg += "Fix: fewer ranks on this node, or a node with more memory."
        return msg
    return None


def available_memory_bytes(meminfo: str = "/proc/meminfo",
                           cgroup_root: str = CGROUP_ROOT) -> int:
    """Memory this process's node can still give: ``MemAvailable``, capped by the
    cgroup's ``memory.max - memory.current`` when there is a limit."""
    avail = None
    with open(meminfo, encoding="ascii") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    if avail is None:
        raise RuntimeError(f"{meminfo} has no MemAvailable line")
    try:
        with open(os.path.join(cgroup_root, "memory.max"), encoding="ascii") as fh:
            limit = fh.read().strip()
        with open(os.path.join(cgroup_root, "memory.current"), encoding="ascii") as fh:
            current = int(fh.read().strip())
    except (OSError, ValueError):
        return avail
    if limit != "max":
        avail = min(avail, max(0, int(limit) - current))
    return avail


def gather_nodes(world: Any) -> Optional[List[NodeMemory]]:
    """Every node of ``world`` with its ranks and available memory (collective);
    the list on rank 0, None elsewhere."""
    from mpi4py import MPI  # MPI is imported only where a communicator is used

    local = world.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        leader = local.bcast(world.Get_rank(), root=0)
        avail = available_memory_bytes() if local.Get_rank() == 0 else 0
    finally:
        local.Free()
    rows = world.gather((leader, world.Get_rank(), socket.gethostname(), avail), root=0)
    if rows is None:
        return None
    nodes: Dict[int, NodeMemory] = {}
    for lead, rank, host, bytes_ in rows:
        node = nodes.setdefault(lead, NodeMemory(host, [], 0))
        node.ranks.append(rank)
        if rank == lead:
            nodes[lead] = node._replace(host=host, available_bytes=bytes_)
    return list(nodes.values())


def check_serial_memory(cfg: Config, spec: JobSpec, num_actors: int,
                        demo_bytes: int = 0) -> Optional[str]:
    """The memory check of a serial run (``--serial``): every role in this one
    process, so one :data:`RANK_BASE_BYTES`, not one per role."""
    size = cfg.topology.learners + cfg.topology.replay_shards + num_actors
    # The node is credited the bases of the roles that are not processes here.
    node = NodeMemory(socket.gethostname(), list(range(size)),
                      available_memory_bytes() + (size - 1) * RANK_BASE_BYTES)
    return memory_problem(cfg, spec, [node], size, demo_bytes)

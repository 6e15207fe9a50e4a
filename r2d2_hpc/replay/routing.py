"""Which replay shard owns an actor stream: the job's one stream -> shard rule.

Every actor sends all of its environment streams to one replay shard, round-robin
over the actors; a stream's id names its actor::

    stream id:  s = a * num_envs + e          (environment e of actor a)
    actor:      a = s // num_envs
    shard:      (s // num_envs) mod S         (= a mod S)

    num_envs = 2, S = 2:
      actor     0      1      2      3
      streams   0 1    2 3    4 5    6 7
      shard     0 0    1 1    0 0    1 1

Actors send by this rule (``comm.topology.RoleInfo.shard_rank``), and a
re-sharding restore (``replay.reshard``, ``replay.snapshot.load_resharded``,
``checkpoint.restore.restore_shard``) places every stored stream by it, so a
stream's stored sequences and its future steps meet on one shard and its
overlapping steps stay deduplicated. It lives in ``replay`` because re-sharding
needs it and ``replay`` does not import ``comm``.
"""
from __future__ import annotations

from typing import Tuple

__all__ = ["actor_of_stream", "actors_of_shard", "shard_for_actor", "shard_for_stream",
           "stream_id"]


def shard_for_actor(actor_index: int, num_shards: int) -> int:
    """The replay shard an actor (and every env stream of it) always sends to.

    Round-robin: ``shard = actor_index mod num_shards``, so shards get equal
    numbers of actors (up to one) and a stream never changes shard.

    Args:
      actor_index: index of the actor within the actor role, >= 0.
      num_shards: number of replay shards, >= 1.

    Returns:
      The shard index in ``[0, num_shards)``.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if actor_index < 0:
        raise ValueError(f"actor_index must be >= 0, got {actor_index}")
    return actor_index % num_shards


def actors_of_shard(shard_index: int, num_actors: int, num_shards: int) -> Tuple[int, ...]:
    """Actor indices whose streams go to shard ``shard_index`` (inverse of shard_for_actor).

    Args:
      shard_index: the shard, ``0 <= shard_index < num_shards``.
      num_actors: number of actors in the job.
      num_shards: number of replay shards, >= 1.

    Returns:
      The actor indices ``a`` with ``a mod num_shards == shard_index``, increasing.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index}")
    return tuple(range(shard_index, num_actors, num_shards))


def stream_id(actor_index: int, env_index: int, num_envs: int) -> int:
    """Globally unique id of environment stream ``env_index`` of actor ``actor_index``.

    ``stream_id = actor_index * num_envs + env_index``; every actor runs the same
    ``num_envs`` environments, so ids are dense in ``[0, num_actors * num_envs)``.

    Args:
      actor_index: index of the actor within the actor role, >= 0.
      env_index: environment within the actor's vector, ``0 <= env_index < num_envs``.
      num_envs: environments per actor, >= 1.

    Returns:
      The stream id.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if not 0 <= env_index < num_envs:
        raise ValueError(f"env_index must be in [0, {num_envs}), got {env_index}")
    if actor_index < 0:
        raise ValueError(f"actor_index must be >= 0, got {actor_index}")
    return actor_index * num_envs + env_index


def actor_of_stream(stream: int, num_envs: int) -> int:
    """The actor index that runs stream ``stream`` (inverse of :func:`stream_id`)."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if stream < 0:
        raise ValueError(f"stream id must be >= 0, got {stream}")
    return stream // num_envs


def shard_for_stream(stream: int, num_envs: int, num_shards: int) -> int:
    """The shard that owns stream ``stream``: its actor's shard.

    ``shard = (stream // num_envs) mod num_shards`` (the module docstring draws it).

    Args:
      stream: a :func:`stream_id`, >= 0.
      num_envs: environments per actor, >= 1.
      num_shards: number of replay shards, >= 1.

    Returns:
      The shard index in ``[0, num_shards)``.
    """
    return shard_for_actor(actor_of_stream(int(stream), num_envs), num_shards)

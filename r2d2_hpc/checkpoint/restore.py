"""Reading a checkpoint back: the learner's state, the actors' states, a replay shard.

A replay shard is restored exactly (contents, priorities, RNG: sampling
continues bit-identically) when the job has as many shards as the checkpoint,
and otherwise re-sharded by the rule the actors route by
(:func:`r2d2_hpc.replay.routing.shard_for_stream`), keeping every sequence.
A demonstration table (R2D3) is restored exactly when the shard count is
unchanged; otherwise the run loads its demonstration files afresh.
"""
from __future__ import annotations

import os
from typing import List, Optional, Union

from r2d2_hpc.checkpoint.records import (ACTORS_FILE, LEARNER_FILE, CheckpointError,
                                         CheckpointInfo, LearnerCheckpoint)
from r2d2_hpc.checkpoint.state_files import read_actors_file, read_learner_file
from r2d2_hpc.replay.layout import ShardSpec, demo_table_index
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.replay.snapshot import (INDEX_FILE, SnapshotError, load_resharded, load_snapshot,
                                      read_index_meta)
from r2d2_hpc.types import ActorState

__all__ = ["read_actors", "read_learner", "restore_demo_table", "restore_shard"]

#: Replay layout fields that must agree for the replay to be restored at all.
_RESHARD_FROZEN = ("frame_shape", "obs_dtype", "frame_stack", "stack_fill", "sequence_length",
                   "state_size", "priority_exponent")


def read_learner(source: Union[CheckpointInfo, str]) -> LearnerCheckpoint:
    """The learner file of a checkpoint (an info or a checkpoint directory) or a learner
    file itself (e.g. a run's ``learner_final.h5``); see :mod:`.state_files`.

    Raises:
      CheckpointError: naming the file when it is unreadable or corrupted.
    """
    if isinstance(source, CheckpointInfo):
        return read_learner_file(source.learner_path)
    if os.path.isdir(source):
        return read_learner_file(os.path.join(source, LEARNER_FILE))
    return read_learner_file(source)


def read_actors(info: Union[CheckpointInfo, str]) -> List[ActorState]:
    """Every actor's ``ActorState`` from ``actors.h5`` (an info or a checkpoint directory).

    Raises:
      CheckpointError: naming the file when it is unreadable or corrupted.
    """
    path = info.actors_path if isinstance(info, CheckpointInfo) else \
        os.path.join(info, ACTORS_FILE)
    return read_actors_file(path)


def restore_shard(info: CheckpointInfo, shard_index: int, num_shards: int, *,
                  num_envs: int, spec: Optional[ShardSpec] = None, seed: int = 0,
                  strict: bool = True, verify: Optional[bool] = None) -> ReplayShard:
    """Replay shard ``shard_index`` of ``num_shards`` from a checkpoint.

    Exact (``load_snapshot``: contents, priorities, RNG; sampling continues
    bit-identically; ``shard-<i>`` must hold shard ``i``) when the shard count
    is unchanged and ``spec`` is None or equals the saved layout. Otherwise
    every saved shard is read and the new shard keeps every live sequence of
    the streams that now route to it
    (``replay.routing.shard_for_stream(stream, num_envs, num_shards)``, the
    rule actors send by), with its priority; keys are reissued, naming
    ``shard_index``.

    Args:
      info: the checkpoint (from ``find_latest_valid``/``resume_point``).
      shard_index: this shard's index in the new job.
      num_shards: replay shards of the new job.
      num_envs: environments per actor in the new job (``actor.num_envs``).
      spec: the layout the new job's shard would start with (e.g.
        ``make_shard(...).spec``); its capacities are used when re-sharding.
      seed: generator seed of a re-sharded shard (an exact restore keeps the
        saved generator state).
      strict: when re-sharding, raise if the new capacities cannot hold
        everything (else the oldest data is dropped).
      verify: check segment sizes and crc32s while reading (default: only if
        ``info`` was not deep-verified already).

    Returns:
      The shard.

    Raises:
      CheckpointError: a file is missing or corrupted, or the saved layout
        cannot be restored into ``spec`` (the message says which field differs).
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    check = (not info.deep_verified) if verify is None else bool(verify)
    saved = info.num_shards
    meta = read_index_meta(info.shard_dir(min(shard_index, saved - 1)))
    if meta is None:
        raise CheckpointError(f"{info.path}: shard-{min(shard_index, saved - 1)}/{INDEX_FILE} "
                              f"is missing or unreadable")
    old = meta.get("spec", {})
    if spec is not None:
        diffs = [f"{f}: checkpoint has {old.get(f)!r}, this run has {v!r}"
                 for f, v in spec.to_dict().items()
                 if f in _RESHARD_FROZEN and old.get(f) != v]
        if diffs:
            raise CheckpointError(f"{info.path}: the replay cannot be restored into this "
                                  f"run's layout: " + "; ".join(diffs))
    try:
        if saved == num_shards and (spec is None or old == spec.to_dict()):
            return load_snapshot(info.shard_dir(shard_index), verify=check,
                                 shard_index=shard_index)
        return load_resharded(
            [info.shard_dir(i) for i in range(saved)], shard_index, num_shards,
            num_envs=num_envs,
            capacity_observations=spec.capacity_observations if spec else None,
            capacity_sequences=spec.capacity_sequences if spec else None,
            seed=seed, strict=strict, verify=check)
    except SnapshotError as exc:
        raise CheckpointError(f"{info.name}: {exc}") from None


def restore_demo_table(info: CheckpointInfo, shard_index: int,
                       num_shards: int) -> Optional[ReplayShard]:
    """Shard ``shard_index``'s demonstration table (R2D3) from checkpoint ``info``,
    exactly (priorities, generator), or None when the checkpoint has none for
    ``num_shards`` shards (the caller loads the files afresh then).

    Raises:
      CheckpointError: a demo table file is missing or corrupted.
    """
    if info.num_demo_tables != num_shards or info.num_shards != num_shards:
        return None
    try:
        return load_snapshot(info.demo_dir(shard_index), verify=not info.deep_verified,
                             shard_index=demo_table_index(shard_index))
    except SnapshotError as exc:
        raise CheckpointError(f"{info.name}: {exc}") from None

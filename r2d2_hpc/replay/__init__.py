"""Prioritized sequence replay: sum-tree, cross-shard sampling, shards, snapshots.

No MPI here: a replay rank wraps a ``ReplayShard`` in a message loop, and the
serial mode uses it directly.
"""
from r2d2_hpc.replay.sampling import (ShardStats, allocate_batch, global_count,
                                      global_max_priority, global_probabilities,
                                      global_total_priority)
from r2d2_hpc.replay.shard import (ReplayShard, ShardSpec, ShardState, build_resharded,
                                   make_keys, reshard, shard_for_stream, split_keys)
from r2d2_hpc.replay.snapshot import (SnapshotError, SnapshotReport, SnapshotSource,
                                      load_resharded, load_snapshot, save_snapshot)
from r2d2_hpc.replay.sumtree import SumTree

__all__ = [
    "ReplayShard", "ShardSpec", "ShardState", "ShardStats", "SnapshotError", "SnapshotReport",
    "SnapshotSource", "SumTree", "allocate_batch", "build_resharded", "global_count",
    "global_max_priority", "global_probabilities", "global_total_priority", "load_resharded",
    "load_snapshot", "make_keys", "reshard", "save_snapshot", "shard_for_stream", "split_keys",
]

"""Prioritized sequence replay: layout, shard, sum-tree, cross-shard sampling, rate limit,
re-sharding, snapshots.

No MPI here: a replay rank (:mod:`r2d2_hpc.job.replay`) wraps a
:class:`~r2d2_hpc.replay.shard.ReplayShard` in a message loop, and the serial
mode uses the same objects. Import from the modules themselves.
"""

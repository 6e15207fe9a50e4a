"""Replay shard benchmark: insert, sample, memory, snapshot and restore.

Fills one ``ReplayShard`` with Atari-shaped data (84x84 uint8 frames, 4-frame
stacks, sequences of 40 + 80 = 120 steps every 40 steps, LSTM state 512) the
way actor streams send it, past full capacity, and reports as JSON (stdout and
``--out FILE``):

* ``insert``: steps/s and sequences/s through ``add_steps``/``add_sequences``;
* ``memory``: bytes per stored observation at full capacity against the raw
  frame (84*84 B; target <= 1.1x), beside the naive layout where every
  sequence stores its own 120 stacked frames;
* ``sample``: latency of ``sample(64)`` (stacks rebuilt, [120, 64, 4, 84, 84]
  uint8 = 217 MB per batch);
* ``snapshot``: full snapshot MB/s as a ratio to a raw sequential write
  (``write`` + ``fsync``) of the same number of bytes into the same directory
  in the same run (target >= 0.5); an incremental snapshot after a small
  change against the full one;
* ``restore``: ``load_snapshot`` time, with the snapshot files evicted from the
  page cache first (``posix_fadvise(DONTNEED)``) where the OS allows it.

The default capacity (250k observations, about 1.8 GB of frames, twice that
during the restore check) fits a 24 GB machine with 2 cores and runs in a
couple of minutes; ``--quick`` is a tiny smoke run.

Usage::

    python benchmarks/replay_bench.py [--capacity 250000] [--quick] [--out FILE] [--dir DIR]
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List

import numpy as np

if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import write_result  # noqa: E402

import h5py  # noqa: E402

from r2d2_hpc.replay.shard import ReplayShard  # noqa: E402
from r2d2_hpc.replay.snapshot import load_snapshot, save_snapshot  # noqa: E402

FRAME = (84, 84)


class Stream:
    """One actor environment stream: episodes of random length, sequences of
    ``T`` steps starting every ``period`` steps of an episode, chunks of
    ``period`` new steps (as the actor's adder sends them)."""

    def __init__(self, sid: int, T: int, period: int, rng: np.random.Generator,
                 pool: np.ndarray, episode_range=(400, 3000)) -> None:
        self.sid, self.T, self.period, self.rng, self.pool = sid, T, period, rng, pool
        self.episode_range = episode_range
        self.next_step = 0
        self.episode_start = 0
        self.episode_end = self._new_episode(0)
        self.pending: List[int] = []       # window starts not yet sent

    def _new_episode(self, start: int) -> int:
        return start + int(self.rng.integers(*self.episode_range))

    def chunk(self, state_size: int) -> Dict[str, Any]:
        """The next ``period`` steps and the sequences they complete."""
        n = self.period
        start = self.next_step
        steps = np.arange(start, start + n)
        first = np.zeros(n, bool)
        seq_start, seq_len = [], []
        for i, s in enumerate(steps.tolist()):
            if s == self.episode_end:        # step s starts the next episode
                for w in self.pending:      # close open windows at the episode end
                    seq_start.append(w)
                    seq_len.append(s - w)
                self.pending = []
                self.episode_start, self.episode_end = s, self._new_episode(s)
            if s == self.episode_start:
                first[i] = True
            if (s - self.episode_start) % self.period == 0:
                self.pending.append(s)
            done = [w for w in self.pending if s - w + 1 == self.T]
            for w in done:
                seq_start.append(w)
                seq_len.append(self.T)
                self.pending.remove(w)
        off = int(self.rng.integers(0, self.pool.shape[0] - n))
        m = len(seq_start)
        self.next_step = start + n
        return dict(
            steps=dict(stream_id=self.sid, first_step_index=start, obs=self.pool[off:off + n],
                       action=self.rng.integers(0, 18, n), reward=self.rng.random(n),
                       discount=np.ones(n), first=first),
            seqs=None if m == 0 else dict(
                stream_id=self.sid, start_step=np.array(seq_start), length=np.array(seq_len),
                state_h=self.rng.standard_normal((m, state_size), np.float32),
                state_c=self.rng.standard_normal((m, state_size), np.float32),
                prev_action=self.rng.integers(0, 18, m), prev_reward=np.zeros(m),
                priority=self.rng.random(m) * 2))


def _fadvise_dontneed(directory: str) -> bool:
    if not hasattr(os, "posix_fadvise"):
        return False
    for name in os.listdir(directory):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return True


def raw_write(path: str, buffer: np.ndarray, nbytes: int) -> float:
    """Seconds to write ``nbytes`` (cycling through ``buffer``) sequentially + fsync."""
    flat = buffer.reshape(-1).view(np.uint8)
    block = 8 << 20
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        done = 0
        while done < nbytes:
            n = min(block, nbytes - done)
            lo = done % max(1, flat.size - block)
            f.write(memoryview(flat[lo:lo + n]))
            done += n
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    os.remove(path)
    return dt


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--capacity", type=int, default=250_000,
                   help="observations per shard (default 250k: ~1.8 GB of frames)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--dir", default=None,
                   help="parent directory for snapshot files (default: system temp dir)")
    p.add_argument("--streams", type=int, default=16, help="interleaved actor streams")
    p.add_argument("--batch", type=int, default=64, help="sequences per sample (paper: 64)")
    p.add_argument("--samples", type=int, default=20, help="timed sample calls")
    p.add_argument("--repeats", type=int, default=2,
                   help="full snapshots and raw writes, alternated (medians reported)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    T, period, stack, H = 120, 40, 4, 512
    capacity = 4_000 if a.quick else a.capacity
    samples = 3 if a.quick else a.samples
    rng = np.random.default_rng(a.seed)
    frame_bytes = FRAME[0] * FRAME[1]
    result: Dict[str, Any] = {"config": {
        "capacity_observations": capacity, "capacity_sequences": capacity // period,
        "frame_shape": list(FRAME), "frame_stack": stack, "sequence_length": T,
        "sequence_period": period, "state_size": H, "streams": a.streams,
        "batch_size": a.batch, "quick": a.quick},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "numpy": np.__version__, "h5py": h5py.__version__,
                    "platform": platform.platform()}}

    shard = ReplayShard(FRAME, capacity_observations=capacity,
                        capacity_sequences=capacity // period, sequence_length=T,
                        state_size=H, frame_stack=stack, seed=a.seed)
    pool = rng.integers(0, 256, (4096,) + FRAME, dtype=np.uint8)
    streams = [Stream(i, T, period, np.random.default_rng(a.seed + 1 + i), pool)
               for i in range(a.streams)]

    # ---- insert until the ring has wrapped (full capacity, eviction active).
    # Phase "fill" (the first `capacity` steps) includes the one-time cost of
    # first-touching the freshly allocated ring; phase "steady" is the ring
    # wrapping with FIFO eviction, the state a long run is in.
    phases = {"fill": [0.0, 0, 0], "steady": [0.0, 0, 0]}
    target = int(capacity * 1.25) + T
    while shard.total_steps_written < target:
        for s in streams:
            c = s.chunk(H)
            ph = phases["fill" if shard.total_steps_written < capacity else "steady"]
            t0 = time.perf_counter()
            shard.add_steps(**c["steps"])
            if c["seqs"] is not None:
                shard.add_sequences(**c["seqs"])
                ph[2] += c["seqs"]["start_step"].size
            ph[0] += time.perf_counter() - t0
            ph[1] += period
    result["insert"] = {
        name: {"steps": n, "sequences": q, "seconds": t, "steps_per_s": n / t,
               "sequences_per_s": q / t, "MB_frames_per_s": n * frame_bytes / t / 1e6}
        for name, (t, n, q) in phases.items()}
    result["insert"].update(live_sequences=shard.count,
                            dropped_sequences=shard.num_dropped_sequences,
                            steps_per_call=period)
    # ---- memory at full capacity
    sb = shard.storage_bytes()
    total = sum(sb.values())
    seq_payload = T * stack * frame_bytes + 2 * H * 4 + 3 * T * 4 + 2 * T + 16
    result["memory"] = {
        "storage_bytes": sb, "total_bytes": total,
        "bytes_per_observation": total / capacity,
        "raw_frame_bytes": frame_bytes,
        "ratio_to_raw_frame": total / capacity / frame_bytes,
        "target_ratio_max": 1.1,
        "naive_copy_bytes_per_observation": seq_payload / period,
        "naive_copy_ratio_to_raw_frame": seq_payload / period / frame_bytes,
        "naive_copy_note": ("every sequence stores its own 120 stacked 4x84x84 frames, actions, "
                            "rewards, discounts, flags and state; one sequence per 40 "
                            "observations"),
    }

    # ---- sample latency
    shard.sample(a.batch)                                  # warm-up (page faults)
    times, tree_times = [], []
    for _ in range(samples):
        t0 = time.perf_counter()
        b = shard.sample(a.batch)
        times.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        shard._tree.sample(a.batch, np.random.default_rng(0))
        tree_times.append(time.perf_counter() - t0)
    buf = np.empty((T, a.batch, stack) + FRAME, np.uint8)
    reuse_times = []
    for _ in range(samples):
        t0 = time.perf_counter()
        shard.sample(a.batch, obs_out=buf)
        reuse_times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1e3    # warm: after the first call's page faults
    ms_reuse = np.array(reuse_times) * 1e3
    result["sample"] = {
        "batch_size": a.batch, "obs_shape": list(b.obs.shape), "obs_bytes": int(b.obs.nbytes),
        "calls": samples, "mean_ms": float(ms.mean()), "median_ms": float(np.median(ms)),
        "p90_ms": float(np.percentile(ms, 90)), "sum_tree_ms": float(np.mean(tree_times) * 1e3),
        "obs_gather_GB_per_s": float(b.obs.nbytes / np.median(times) / 1e9),
        "reused_obs_buffer": {"mean_ms": float(ms_reuse.mean()),
                              "median_ms": float(np.median(ms_reuse)),
                              "p90_ms": float(np.percentile(ms_reuse, 90)),
                              "note": "sample(..., obs_out=buf): no fresh 217 MB array "
                                      "(page faults) per batch"}}
    del b

    # ---- snapshots
    parent = a.dir or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="replay_bench_", dir=parent)
    try:
        sdir = os.path.join(work, "shard_000")
        frames = shard.storage_views()[0]["frames"]
        # Alternate full snapshots with raw writes of the same byte count into
        # the same directory, so disk-speed drift hits both alike; medians.
        full = save_snapshot(shard, sdir)
        snap_s, raw_s = [full.seconds], []
        for rep in range(a.repeats):
            raw_s.append(raw_write(os.path.join(work, "raw.bin"), frames, full.bytes_written))
            if rep + 1 < a.repeats:
                snap_s.append(save_snapshot(shard, sdir, full=True).seconds)
        mb = full.bytes_written / 1e6
        # small change: one chunk on one stream, its sequences, a priority update
        c = streams[0].chunk(H)
        shard.add_steps(**c["steps"])
        if c["seqs"] is not None:
            shard.add_sequences(**c["seqs"])
        keys = shard.sample(a.batch).keys
        shard.update_priorities(keys, np.random.default_rng(1).random(keys.size))
        inc = save_snapshot(shard, sdir)
        result["snapshot"] = {
            "directory_parent": parent,
            "full_bytes": full.bytes_written, "full_files": len(full.files_written),
            "full_seconds": snap_s, "full_MB_per_s": [mb / s for s in snap_s],
            "raw_write_seconds": raw_s, "raw_MB_per_s": [mb / s for s in raw_s],
            "full_MB_per_s_median": mb / float(np.median(snap_s)),
            "raw_MB_per_s_median": mb / float(np.median(raw_s)),
            "ratio_to_raw_write": float(np.median(raw_s) / np.median(snap_s)),
            "target_ratio_min": 0.5,
            "incremental": {"change": f"{period} steps on 1 stream, its sequences, "
                                      f"{keys.size} priority updates",
                            "bytes": inc.bytes_written, "files": len(inc.files_written),
                            "seconds": inc.seconds,
                            "bytes_ratio_to_full": inc.bytes_written / full.bytes_written,
                            "time_ratio_to_full": inc.seconds / float(np.median(snap_s))},
        }
        # ---- restore
        cold = _fadvise_dontneed(sdir)
        t0 = time.perf_counter()
        restored = load_snapshot(sdir)
        t_restore = time.perf_counter() - t0
        on_disk = sum(os.path.getsize(os.path.join(sdir, f)) for f in os.listdir(sdir))
        exact = restored.state().equals(shard.state())
        same = np.array_equal(restored.sample(8).keys, shard.sample(8).keys)
        result["restore"] = {"seconds": t_restore, "bytes": on_disk,
                             "MB_per_s": on_disk / 1e6 / t_restore,
                             "page_cache_dropped_first": cold,
                             "state_identical": bool(exact),
                             "next_sample_identical": bool(same)}
        del restored
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result["targets_met"] = {
        "bytes_per_observation<=1.1x_raw": result["memory"]["ratio_to_raw_frame"] <= 1.1,
        "snapshot_write>=0.5x_raw": result["snapshot"]["ratio_to_raw_write"] >= 0.5,
    }
    return write_result(result, a.out)


if __name__ == "__main__":
    main()

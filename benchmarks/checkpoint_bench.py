"""Checkpoint benchmark: write, incremental write, validation and resume.

Builds the state of a paper-scale R2D2 job in one process: the learner of the
Atari network (4x84x84 observations, 18 actions, LSTM 512: online + target +
Adam moments after one step) and ``--shards`` replay shards of Atari-shaped
data (84x84 uint8 frames, 4-frame stacks, 120-step sequences every 40 steps,
LSTM state 512), filled to ``--capacity`` observations each. Then, through
the real protocol of ``r2d2_hpc.checkpoint`` (begin, write_learner,
write_shard, write_actors, commit; fsync on), it reports as JSON (stdout and
``--out FILE``):

* ``full``: the first checkpoint (every byte written): seconds per phase,
  bytes, MB/s, and the ratio to a raw sequential write (``write`` + ``fsync``)
  of the same number of bytes into the same directory in the same run;
* ``incremental``: a checkpoint after ``--change`` of each shard's capacity in
  new steps (hard links for the rest): seconds, bytes written, linked files;
* ``validate``: ``find_latest_valid`` with crc32s (deep) and sizes only;
* ``resume``: ``resume_point`` + ``read_learner`` + ``Learner.load_state`` +
  ``restore_shard`` for every shard, warm (page cache) and cold (files evicted
  with ``posix_fadvise(DONTNEED)`` where the OS allows it).

Usage::

    python benchmarks/checkpoint_bench.py [--capacity 100000] [--shards 2] [--quick]
                                          [--out FILE] [--dir DIR]
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

import torch  # noqa: E402

from r2d2_hpc.agent.learner import Learner  # noqa: E402
from r2d2_hpc.checkpoint.layout import CheckpointLayout  # noqa: E402
from r2d2_hpc.checkpoint.restore import read_learner, restore_shard  # noqa: E402
from r2d2_hpc.checkpoint.resume import resume_point  # noqa: E402
from r2d2_hpc.checkpoint.validate import find_latest_valid  # noqa: E402
from r2d2_hpc.config import (Config, EnvConfig, LearnerConfig, NetworkConfig,  # noqa: E402
                             ReplayConfig)
from r2d2_hpc.replay.shard import ReplayShard  # noqa: E402
from r2d2_hpc.types import ActorState, SequenceBatch  # noqa: E402

FRAME = (84, 84)
OBS = (4, 84, 84)
ACTIONS = 18


def paper_learner(quick: bool) -> Learner:
    """The Atari R2D2 learner after one (tiny) step, so Adam's moments exist."""
    net = NetworkConfig(torso="atari", lstm_size=64 if quick else 512,
                        head_hidden=64 if quick else 512)
    cfg = Config(env=EnvConfig(name="atari"), network=net,
                 replay=ReplayConfig(burn_in=2, trace_length=4, sequence_period=2,
                                     capacity_observations=1000, min_fill_sequences=1),
                 learner=LearnerConfig(batch_size=2, n_step=2, device="cpu"))
    learner = Learner(cfg, OBS, ACTIONS, device="cpu")
    T, B, H = 6, 2, net.lstm_size
    rng = np.random.default_rng(0)
    batch = SequenceBatch(
        obs=rng.integers(0, 256, (T, B) + OBS, dtype=np.uint8),
        action=rng.integers(0, ACTIONS, (T, B)), reward=np.zeros((T, B), np.float32),
        discount=np.ones((T, B), np.float32), first=np.zeros((T, B), bool),
        mask=np.ones((T, B), bool), prev_action=np.zeros((T, B), np.int64),
        prev_reward=np.zeros((T, B), np.float32), state_h=np.zeros((B, H), np.float32),
        state_c=np.zeros((B, H), np.float32), keys=np.arange(B), probs=np.full(B, 0.5))
    learner.step(batch, np.ones(B, np.float32))
    return learner


def fill_shard(shard: ReplayShard, steps: int, rng: np.random.Generator, streams: int = 8,
               chunk: int = 400) -> None:
    """Appends ``steps`` steps over ``streams`` streams, a 120-step sequence every 40."""
    T, period = shard.spec.sequence_length, 40
    H = shard.spec.state_size
    pool = rng.integers(0, 256, (4096,) + FRAME, dtype=np.uint8)
    done = 0
    while done < steps:
        for s in range(streams):
            n = min(chunk, steps - done)
            if n <= 0:
                break
            nxt = shard.streams().get(s, (0, 0))[1]
            first = np.zeros(n, bool)
            first[0] = nxt == 0
            idx = rng.integers(0, len(pool) - n)
            shard.add_steps(s, nxt, pool[idx:idx + n], rng.integers(0, ACTIONS, n),
                            rng.normal(size=n).astype(np.float32), np.ones(n, np.float32),
                            first)
            # every sequence start s (a multiple of the period) whose last step
            # s + T - 1 arrived in this chunk: [nxt, nxt + n)
            lo = -(-max(0, nxt - T + 1) // period) * period
            starts = np.arange(lo, nxt + n - T + 1, period)
            if len(starts):
                m = len(starts)
                shard.add_sequences(s, starts, np.full(m, T), rng.normal(size=(m, H)),
                                    rng.normal(size=(m, H)), np.zeros(m, np.int64),
                                    np.zeros(m, np.float32), rng.random(m) + 0.1)
            done += n


def raw_write(path: str, nbytes: int) -> float:
    """Seconds to write ``nbytes`` sequentially in 8 MiB blocks + fsync."""
    block = np.random.default_rng(1).integers(0, 256, 8 << 20, dtype=np.uint8)
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        done = 0
        while done < nbytes:
            n = min(len(block), nbytes - done)
            f.write(memoryview(block[:n]))
            done += n
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    os.remove(path)
    return dt


def evict(path: str) -> bool:
    """Drops a directory tree's files from the page cache (where supported)."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for root, _, names in os.walk(path):
        for name in names:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def checkpoint(layout: CheckpointLayout, step: int, learner: Learner,
               shards: List[ReplayShard]) -> Dict[str, Any]:
    """One checkpoint through the real protocol; seconds per phase and bytes written."""
    t = {}
    t0 = time.perf_counter()
    path = layout.begin(step)
    t1 = time.perf_counter()
    state = learner.state()
    t["learner_state_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    lent = layout.write_learner(path, state, learner.cfg, {"env_steps": step * 100},
                                step=step)
    t["learner_write_s"] = time.perf_counter() - t1
    t1 = time.perf_counter()
    reps = [layout.write_shard(path, i, sh) for i, sh in enumerate(shards)]
    t["shards_write_s"] = time.perf_counter() - t1
    aent = layout.write_actors(path, [ActorState(env_steps=step)] * 8)
    t1 = time.perf_counter()
    info = layout.commit(path, step, len(shards))
    t["commit_s"] = time.perf_counter() - t1
    t["total_s"] = time.perf_counter() - t0
    written = lent.nbytes + aent.nbytes + sum(r.bytes_written for r in reps)
    files = sum(len(r.snapshot.files_written) for r in reps) + 3
    return {"seconds": t, "bytes_written": written, "files_written": files,
            "mb_per_s": written / 1e6 / t["total_s"],
            "linked_files": sum(r.linked_files for r in reps),
            "checkpoint_bytes": sum(int(e["nbytes"]) for e in info.manifest["files"].values()),
            "learner_bytes": lent.nbytes, "name": info.name}


def main(argv=None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--capacity", type=int, default=100_000,
                   help="observations per shard (default 100k: ~0.7 GB of frames)")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--change", type=float, default=0.05,
                   help="fraction of each shard's capacity added before the incremental one")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.capacity, args.shards = 2_000, 2
    torch.set_num_threads(1)
    base = tempfile.mkdtemp(prefix="ckpt_bench_", dir=args.dir)
    out: Dict[str, Any] = {"host": platform.node(), "python": platform.python_version(),
                           "capacity_per_shard": args.capacity, "shards": args.shards,
                           "quick": args.quick, "dir": base}
    try:
        rng = np.random.default_rng(0)
        learner = paper_learner(args.quick)
        out["learner_params"] = int(learner.num_params)
        shards = []
        t0 = time.perf_counter()
        for i in range(args.shards):
            sh = ReplayShard(FRAME, capacity_observations=args.capacity,
                             capacity_sequences=args.capacity // 40, sequence_length=120,
                             state_size=512, frame_stack=4, seed=i, shard_index=i)
            fill_shard(sh, args.capacity, rng)
            shards.append(sh)
        out["fill_seconds"] = time.perf_counter() - t0
        out["replay_live_sequences"] = [sh.count for sh in shards]
        layout = CheckpointLayout(base, keep=2, fsync=True)

        full = checkpoint(layout, 1000, learner, shards)
        raw_s = raw_write(os.path.join(base, "raw.bin"), full["bytes_written"])
        full["raw_write_s"] = raw_s
        full["raw_mb_per_s"] = full["bytes_written"] / 1e6 / raw_s
        full["ratio_to_raw"] = full["mb_per_s"] / full["raw_mb_per_s"]
        out["full"] = full

        for sh in shards:
            fill_shard(sh, int(args.capacity * args.change), rng)
        inc = checkpoint(layout, 2000, learner, shards)
        inc["fraction_of_full_bytes"] = inc["bytes_written"] / full["bytes_written"]
        inc["fraction_of_full_time"] = inc["seconds"]["total_s"] / full["seconds"]["total_s"]
        out["incremental"] = inc

        v = {}
        for deep in (True, False):
            t0 = time.perf_counter()
            info = find_latest_valid(base, report=None, deep=deep)
            v["deep_s" if deep else "sizes_only_s"] = time.perf_counter() - t0
        out["validate"] = v

        resume: Dict[str, Any] = {}
        for label in ("cold", "warm", "cold", "warm"):  # best of two of each
            if label == "cold":
                resume["cold_evicted"] = evict(os.path.join(base, "checkpoints"))
            t0 = time.perf_counter()
            info = resume_point(base, learner.cfg, report=None)
            t1 = time.perf_counter()
            saved = read_learner(info)
            fresh = Learner(learner.cfg, OBS, ACTIONS, device="cpu")
            fresh.load_state(saved.state)
            t2 = time.perf_counter()
            restored = [restore_shard(info, i, len(shards), num_envs=8, spec=sh.spec)
                        for i, sh in enumerate(shards)]
            t3 = time.perf_counter()
            assert all(r.count == sh.count for r, sh in zip(restored, shards))
            run = {"find_and_validate_s": t1 - t0, "learner_s": t2 - t1,
                   "shards_s": t3 - t2, "total_s": t3 - t0}
            if label not in resume or run["total_s"] < resume[label]["total_s"]:
                resume[label] = run
            del restored
        out["resume"] = resume
        out["ok"] = True
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return write_result(out, args.out)


if __name__ == "__main__":
    main()

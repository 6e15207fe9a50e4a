"""Writing checkpoints: exact round trips, incremental hard links, crash safety, commit, keep K."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch

from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.records import CheckpointError, list_checkpoints
from r2d2_hpc.checkpoint.restore import read_actors, read_learner, restore_shard
from r2d2_hpc.checkpoint.validate import find_latest_valid, open_checkpoint
from r2d2_hpc.replay.layout import demo_table_index
from r2d2_hpc.replay.routing import stream_id
from r2d2_hpc.config import Config
from r2d2_hpc.types import ActorState
from tests.helpers.checkpoints import (JOB_SPEC, NUM_ENVS, a_segment, actor_streams,
                                       assert_batches_equal, fake_learner_state, fill, filled_shard,
                                       flip, make_learner, new_shard, report_sink, trained_learner,
                                       write_checkpoint)
from tests.helpers.fakes import random_sequence_batch, tiny_config
from tests.helpers.launcher import ROOT


def test_learner_and_shards_round_trip_bit_for_bit(tmp_path) -> None:
    cfg = tiny_config(target_update_period=3, learning_rate=1e-2)
    learner = trained_learner(cfg)
    shards = [new_shard(seed=1, shard_index=0), new_shard(seed=2, shard_index=1)]
    for i, sh in enumerate(shards):
        fill(sh, actor_streams([i]), seed=10 + i, rounds=2)
        sh.sample(3)  # advance the generator: its state must be saved
        sh.update_priorities(sh.live_keys(), np.linspace(0.2, 3.0, sh.count))
    alloc = np.random.default_rng(5)
    alloc.random(3)
    actors = [ActorState(env_steps=11, episodes=2), ActorState(env_steps=13)]
    run = str(tmp_path / "run")
    layout = CheckpointLayout(run, keep=3)
    path = layout.begin(2)
    layout.write_learner(path, learner.state(), cfg,
                         {"env_steps": 24, "env_frames": 96, "episodes": 3}, job_spec=JOB_SPEC,
                         extra={"rng": {"alloc": alloc.bit_generator.state}})
    layout.write_actors(path, actors)
    for i, sh in enumerate(shards):
        layout.write_shard(layout.partial_path(2), i, sh)
    committed = layout.commit(path, 2, 2)
    assert committed.name == "ckpt-000000000002" and not os.path.exists(path)
    expected = [sh.state().copy() for sh in shards]

    info = find_latest_valid(run, report=None)
    assert info is not None and info.path == committed.path and info.deep_verified
    assert info.step == 2 and info.counters["env_frames"] == 96
    assert [s["live_sequences"] for s in info.shards] == [sh.count for sh in shards]

    # Learner: a fresh learner continues bit-identically.
    saved = read_learner(info)
    assert saved.step == 2 and saved.counters == {"env_steps": 24, "env_frames": 96,
                                                   "episodes": 3}
    assert Config.from_dict(saved.config) == cfg and saved.job_spec == JOB_SPEC
    restored_alloc = np.random.default_rng()
    restored_alloc.bit_generator.state = saved.extra["rng"]["alloc"]
    assert restored_alloc.random() == alloc.random()
    other = make_learner(cfg, seed=42)
    other.load_state(saved.state)
    batch = random_sequence_batch(cfg, seed=9)
    for _ in range(2):  # the second step updates the target (period 3)
        r1 = learner.step(batch, np.ones(5, np.float32))
        r2 = other.step(batch, np.ones(5, np.float32))
        assert r1.loss == r2.loss
        np.testing.assert_array_equal(r1.priorities, r2.priorities)
    np.testing.assert_array_equal(learner.flat_params(), other.flat_params())
    for p, q in zip(learner.target.parameters(), other.target.parameters()):
        assert torch.equal(p, q)

    # Actors: each actor's record.
    assert read_actors(info) == actors

    # Shards: identical state (contents, priorities, tree, RNG); sampling identical.
    for i, sh in enumerate(shards):
        back = restore_shard(info, i, 2, num_envs=NUM_ENVS, spec=sh.spec)
        assert back.state().equals(expected[i])
        for _ in range(3):
            a, b = sh.sample(4), back.sample(4)
            assert_batches_equal(a, b)
            sh.update_priorities(a.keys, np.full(4, 0.7))
            back.update_priorities(b.keys, np.full(4, 0.7))


def test_incremental_checkpoint_links_unchanged_segments_and_leaves_the_previous_intact(
        tmp_path) -> None:
    cfg = tiny_config()
    run = str(tmp_path / "run")
    shard = new_shard(seed=3, C=192, S=48)
    fill(shard, [0, 1, 2], seed=1, rounds=4)
    layout = CheckpointLayout(run, keep=3, fsync=False)
    first = write_checkpoint(run, 1, cfg, [shard], layout=layout)
    state1 = shard.state().copy()
    fill(shard, [0], seed=2, steps=6)  # a small change: a few segments
    path = layout.begin(2)
    layout.write_learner(path, fake_learner_state(2), cfg, {"env_steps": 0})
    layout.write_actors(path, [])
    rep = layout.write_shard(layout.partial_path(2), 0, shard)
    second = layout.commit(path, 2, 1)

    assert rep.linked_from == first.name and rep.snapshot.incremental
    assert rep.snapshot.segments_reused > 0 and rep.copied_bytes == 0
    written = set(rep.snapshot.files_written)
    total = sum(os.path.getsize(os.path.join(second.shard_dir(0), n))
                for n in os.listdir(second.shard_dir(0)))
    assert rep.bytes_written < total / 2
    # An unchanged segment is the same inode in both checkpoints.
    shared = [n for n in os.listdir(second.shard_dir(0))
              if n not in written and n != "index.h5"]
    assert shared
    for n in shared:
        assert os.stat(os.path.join(first.shard_dir(0), n)).st_ino == \
            os.stat(os.path.join(second.shard_dir(0), n)).st_ino
    # Both checkpoints validate and restore exactly to their own state.
    for info, state in ((open_checkpoint(first.path), state1),
                        (open_checkpoint(second.path), shard.state())):
        assert restore_shard(info, 0, 1, num_envs=NUM_ENVS).state().equals(state)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, sys.argv[2])
    from r2d2_hpc.checkpoint.layout import CheckpointLayout
    from r2d2_hpc.checkpoint.restore import restore_shard
    from r2d2_hpc.checkpoint.validate import find_latest_valid
    from tests.helpers.checkpoints import fake_learner_state
    from tests.helpers.fakes import tiny_config
    run = sys.argv[1]
    info = find_latest_valid(run, report=None)
    shards = [restore_shard(info, i, 2, num_envs=2) for i in range(2)]
    rng = np.random.default_rng(0)
    for sh in shards:   # overwrite most of the ring: nearly every segment changes
        sid, (_, nxt) = next(iter(sh.streams().items()))
        n = sh.spec.capacity_observations - 16
        sh.add_steps(sid, nxt, rng.integers(0, 256, (n,) + sh.spec.frame_shape, np.uint8),
                     np.zeros(n, np.int64), np.zeros(n, np.float32), np.ones(n, np.float32),
                     np.zeros(n, bool))
    layout = CheckpointLayout(run, keep=3, fsync=True)
    path = layout.begin(2)
    print("begun", flush=True)
    layout.write_learner(path, fake_learner_state(2, np.ones(4 << 20, np.float32)),
                         tiny_config(), {"env_steps": 1})
    for i, sh in enumerate(shards):
        layout.write_shard(path, i, sh)
    layout.write_actors(path, [])
    layout.commit(path, 2, 2)
    print("committed", flush=True)
""")


def test_kill_9_while_writing_keeps_the_previous_checkpoint(tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shards = []
    for i in range(2):  # frames of 32x32, 64-row (64 kB) segments: ~100 files per shard
        sh = new_shard(seed=i, C=6000, S=64, frame=(32, 32), seg_obs=64, seg_seq=16,
                       shard_index=i)
        fill(sh, [stream_id(i, 0, 2)], seed=i, steps=40)
        shards.append(sh)
    write_checkpoint(run, 1, cfg, shards)
    before = [sh.state().copy() for sh in shards]
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, run, ROOT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    partial = os.path.join(run, "checkpoints", ".partial-ckpt-000000000002")
    try:
        assert proc.stdout.readline().strip() == "begun"
        deadline = time.monotonic() + 60
        # Kill once shard 0 is being written: learner.h5 done, shard files appearing.
        while time.monotonic() < deadline:
            d = os.path.join(partial, "shard-0")
            if os.path.isdir(d) and len(os.listdir(d)) >= 3:
                break
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert os.path.isdir(partial), "killed too late: the checkpoint was committed"
    assert [os.path.basename(p) for p in list_checkpoints(run)] == ["ckpt-000000000001"]
    lines, say = report_sink()
    info = find_latest_valid(run, report=say)
    assert info is not None and info.step == 1
    assert len(lines) == 1 and "ckpt-000000000002" in lines[0] and "interrupted" in lines[0]
    for i in range(2):  # the hard-linked files of checkpoint 1 were not touched
        assert restore_shard(info, i, 2, num_envs=2).state().equals(before[i])
    # The next checkpoint clears the leftover.
    write_checkpoint(run, 3, cfg, shards)
    assert not os.path.exists(partial)
    assert find_latest_valid(run, report=None).step == 3


def test_commit_refuses_when_a_part_is_missing(tmp_path) -> None:
    run = str(tmp_path / "run")
    layout = CheckpointLayout(run, fsync=False)
    path = layout.begin(5)
    layout.write_learner(path, fake_learner_state(5), tiny_config(), {})
    layout.write_shard(path, 0, new_shard())
    with pytest.raises(CheckpointError) as exc:
        layout.commit(path, 5, 2)
    assert "actors.h5 was not written" in str(exc.value)
    assert "shard-1/index.h5" in str(exc.value)
    layout.write_actors(path, [])
    with pytest.raises(CheckpointError, match="learner.h5 is at step 5, commit asked for step 6"):
        layout.commit(path, 6, 1)
    assert list_checkpoints(run) == []


def test_a_shard_is_written_only_under_its_own_index(tmp_path) -> None:
    """A restore reads ``shard-<i>`` back as shard i, whose keys name i."""
    layout = CheckpointLayout(str(tmp_path / "run"), fsync=False)
    path = layout.begin(5)
    with pytest.raises(ValueError, match="table 1 cannot be written as shard-0"):
        layout.write_shard(path, 0, new_shard(shard_index=1))
    assert not os.path.exists(os.path.join(path, "shard-0"))
    layout.write_shard(path, 1, new_shard(shard_index=1))
    assert os.path.exists(os.path.join(path, "shard-1", "index.h5"))
    # a demonstration table (R2D3) only as demo-<i> of its own rank
    with pytest.raises(ValueError, match="table 1 cannot be written as demo-1"):
        layout.write_shard(path, 1, new_shard(shard_index=1), table="demo")
    with pytest.raises(ValueError, match="cannot be written as demo-0"):
        layout.write_shard(path, 0, new_shard(shard_index=demo_table_index(1)), table="demo")
    layout.write_shard(path, 1, new_shard(shard_index=demo_table_index(1)), table="demo")
    assert os.path.exists(os.path.join(path, "demo-1", "index.h5"))


def test_a_second_checkpoint_at_the_same_step_is_the_newest(tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = filled_shard()
    write_checkpoint(run, 4, cfg, [shard], learner_state=fake_learner_state(4, np.zeros(1)))
    fill(shard, [0], seed=1)
    again = write_checkpoint(run, 4, cfg, [shard],
                             learner_state=fake_learner_state(4, np.ones(1)))
    assert again.name == "ckpt-000000000004.1"
    info = find_latest_valid(run, report=None)
    assert info.path == again.path and read_learner(info).state.online["w"][0] == 1.0


@pytest.mark.parametrize("keep,count", [(1, 3), (2, 4), (3, 2)])
def test_keep_k_newest_and_the_survivors_restore(tmp_path, keep, count) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard(seed=7)
    states = {}
    for k in range(1, count + 1):
        fill(shard, [0, 1], seed=k)
        write_checkpoint(run, 10 * k, cfg, [shard], keep=keep)
        states[10 * k] = shard.state().copy()
    names = [os.path.basename(p) for p in list_checkpoints(run)]
    kept = list(range(max(1, count - keep + 1), count + 1))
    assert names == [f"ckpt-{10 * k:012d}" for k in kept]
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".")]
    for p in list_checkpoints(run):  # deleting older ones broke no hard link
        info = open_checkpoint(p)
        assert restore_shard(info, 0, 1, num_envs=NUM_ENVS).state().equals(
            states[info.step])


def test_layout_without_links_writes_independent_checkpoints(tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard(seed=2, C=192, S=48)
    fill(shard, [0, 1], seed=1, rounds=3)
    layout = CheckpointLayout(run, keep=3, fsync=False, link=False)
    first = write_checkpoint(run, 1, cfg, [shard], layout=layout)
    second = write_checkpoint(run, 2, cfg, [shard], layout=layout)
    for name in os.listdir(second.shard_dir(0)):
        a = os.path.join(first.shard_dir(0), name)
        if os.path.exists(a):
            assert not os.path.samefile(a, os.path.join(second.shard_dir(0), name))
    flip(os.path.join(second.path, a_segment(second.path)))
    assert find_latest_valid(run, report=None).path == first.path

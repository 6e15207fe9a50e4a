"""Tests for r2d2_hpc.checkpoint and r2d2-ckpt: exact round trips, incremental
writes, crash safety (kill -9, second signal), corruption detection, keep-K,
re-sharding, compatibility errors and the inspect command."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from typing import Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import pytest
import torch

from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.preemption import CheckpointSchedule, EXIT_REQUEUE, PreemptionFlag
from r2d2_hpc.checkpoint.records import CheckpointInfo, MANIFEST, list_checkpoints
from r2d2_hpc.checkpoint.records import CheckpointError, CheckpointIncompatible
from r2d2_hpc.checkpoint.restore import read_actors, read_learner, restore_shard
from r2d2_hpc.checkpoint.resume import compatibility_errors, resume_point
from r2d2_hpc.checkpoint.validate import open_checkpoint
from r2d2_hpc.checkpoint.validate import find_latest_valid
from r2d2_hpc.cli.ckpt import main as ckpt_main
from r2d2_hpc.comm.topology import shard_for_stream_id, stream_id
from r2d2_hpc.config import CheckpointConfig, Config, save_config
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.storage.h5tree import read_tree, write_tree
from r2d2_hpc.types import SequenceBatch

from fakes import NUM_ACTIONS, OBS_SHAPE, random_sequence_batch, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAME = (3, 3)
NUM_ENVS = 2          # streams per actor in these tests
JOB_SPEC = {"obs_shape": list(OBS_SHAPE), "frame_shape": list(OBS_SHAPE), "obs_dtype": "float32",
            "num_actions": NUM_ACTIONS, "state_size": 8, "num_params": 1000, "frame_stack": 1}


# --------------------------------------------------------------------------- #
# Builders.

def new_shard(seed: int = 0, C: int = 96, S: int = 24, frame: Tuple[int, ...] = FRAME,
              seg_obs: int = 8, seg_seq: int = 4) -> ReplayShard:
    return ReplayShard(frame, capacity_observations=C, capacity_sequences=S,
                       sequence_length=5, state_size=3, frame_stack=2, seed=seed,
                       segment_observations=seg_obs, segment_sequences=seg_seq)


def fill(shard: ReplayShard, streams: Sequence[int], seed: int, steps: int = 12,
         rounds: int = 1) -> None:
    """Each stream: ``rounds`` chunks of ``steps`` steps, a sequence every 2 steps."""
    rng = np.random.default_rng(seed)
    shape = shard.spec.frame_shape
    for _ in range(rounds):
        for s in streams:
            nxt = shard.streams().get(s, (0, 0))[1]
            first = np.zeros(steps, bool)
            first[0] = nxt == 0
            shard.add_steps(s, nxt, rng.integers(0, 256, (steps,) + tuple(shape), np.uint8),
                            rng.integers(0, 4, steps), rng.normal(size=steps).astype(np.float32),
                            np.ones(steps, np.float32), first)
            starts = np.arange(nxt, nxt + steps - 4, 2)
            m = len(starts)
            shard.add_sequences(s, starts, np.full(m, 5), rng.normal(size=(m, 3)),
                                rng.normal(size=(m, 3)), rng.integers(0, 4, m),
                                rng.normal(size=m), rng.random(m) * 2 + 0.1)


def actor_streams(actors: Sequence[int]) -> List[int]:
    return [stream_id(a, e, NUM_ENVS) for a in actors for e in range(NUM_ENVS)]


def make_learner(cfg: Config, seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    return Learner(cfg, OBS_SHAPE, NUM_ACTIONS, device="cpu")


def trained_learner(cfg: Config, steps: int = 2) -> Learner:
    learner = make_learner(cfg)
    batch = random_sequence_batch(cfg, seed=3)
    for _ in range(steps):
        learner.step(batch, np.ones(5, np.float32))
    return learner


def write_checkpoint(run_dir: str, step: int, cfg: Config, shards: Sequence[ReplayShard],
                     learner_state: Optional[dict] = None, keep: int = 3,
                     actors: Optional[List[Dict[str, int]]] = None,
                     layout: Optional[CheckpointLayout] = None) -> CheckpointInfo:
    """The protocol of the module docstring, all roles in this process."""
    layout = layout or CheckpointLayout(run_dir, keep=keep, fsync=False)
    path = layout.begin(step)
    state = learner_state if learner_state is not None else {"step_count": step, "w": np.ones(3)}
    layout.write_learner(path, state, cfg, {"env_steps": 10 * step, "episodes": step},
                         step=step, job_spec=JOB_SPEC, extra={"note": "test"})
    layout.write_actors(path, actors or [{"env_steps": 5 * step, "episodes": 1},
                                         {"env_steps": 5 * step, "episodes": 2}])
    for i, shard in enumerate(shards):
        layout.write_shard(layout.partial_path(step), i, shard)
    return layout.commit(path, step, len(shards))


def live_records(shards: Sequence[ReplayShard]) -> List[tuple]:
    """Every live sequence, as a hashable record independent of slot and key."""
    out = []
    for shard in shards:
        keys = shard.live_keys()
        if not len(keys):
            continue
        info = shard.sequence_info(keys)
        batch = shard.read(keys)
        for j in range(len(keys)):
            out.append((int(info["stream"][j]), int(info["start_step"][j]),
                        int(info["length"][j]), float(info["priority"][j]),
                        batch.obs[:, j].tobytes(), batch.state_h[j].tobytes()))
    return sorted(out)


def assert_batches_equal(a: SequenceBatch, b: SequenceBatch) -> None:
    for name in SequenceBatch._fields:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def report_sink() -> Tuple[List[str], callable]:
    lines: List[str] = []
    return lines, lines.append


# --------------------------------------------------------------------------- #
# Nested dicts <-> HDF5.

TREE_CASES = [
    ("float32 matrix", {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}),
    ("0-d float32 (Adam step)", {"step": np.array(7.0, np.float32)}),
    ("numpy scalar", {"n": np.int64(5)}),
    ("empty array", {"e": np.zeros((0, 4), np.float64)}),
    ("uint8 rng state", {"rng": np.arange(256, dtype=np.uint8)}),
    ("json leaves", {"i": 3, "f": 0.25, "s": "x", "b": True, "none": None, "l": [1, 2]}),
    ("pcg64 state", {"gen": np.random.default_rng(1).bit_generator.state}),
    ("nested", {"a": {"b": {"c": np.array([1.5, -2.0])}, "d": 4}, "empty": {}}),
    ("dotted names", {"torso.0.weight": np.ones((2, 2), np.float32)}),
]


def _assert_tree_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            _assert_tree_equal(a[k], b[k])
        elif isinstance(a[k], (np.ndarray, np.generic)):
            x = np.asarray(a[k])
            assert b[k].dtype == x.dtype and b[k].shape == x.shape and np.array_equal(b[k], x), k
        else:
            assert b[k] == a[k] and type(b[k]) is type(a[k]), k


@pytest.mark.parametrize("name,tree", TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_tree_round_trip_is_exact(tmp_path, name, tree) -> None:
    path = str(tmp_path / "t.h5")
    with h5py.File(path, "w") as f:
        write_tree(f.create_group("g"), tree)
    with h5py.File(path, "r") as f:
        back = read_tree(f["g"])
        for ds in _datasets(f):
            assert ds.fletcher32, ds.name
    _assert_tree_equal(tree, back)


def _datasets(f: h5py.File) -> List[h5py.Dataset]:
    out: List[h5py.Dataset] = []
    f.visititems(lambda _n, o: out.append(o) if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("tree,needle", [({"a/b": 1}, "a/b"), ({"x": object()}, "x"),
                                         ({"s": np.array(["a"])}, "s")])
def test_tree_rejects_what_it_cannot_store_naming_it(tmp_path, tree, needle) -> None:
    with h5py.File(str(tmp_path / "t.h5"), "w") as f:
        with pytest.raises(TypeError, match=needle):
            write_tree(f.create_group("g"), tree)


# --------------------------------------------------------------------------- #
# Round trip.

def test_learner_and_shards_round_trip_bit_for_bit(tmp_path) -> None:
    cfg = tiny_config(target_update_period=3, learning_rate=1e-2)
    learner = trained_learner(cfg)
    shards = [new_shard(seed=1), new_shard(seed=2)]
    for i, sh in enumerate(shards):
        fill(sh, actor_streams([i]), seed=10 + i, rounds=2)
        sh.sample(3)  # advance the generator: its state must be saved
        sh.update_priorities(sh.live_keys(), np.linspace(0.2, 3.0, sh.count))
    alloc = np.random.default_rng(5)
    alloc.random(3)
    actors = [{"env_steps": 11, "episodes": 2}, {"env_steps": 13, "episodes": 1, "extra": 4}]
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
    expected = [sh.get_state().copy() for sh in shards]

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

    # Actors: per-actor counters, a missing name is 0.
    assert read_actors(info) == [{"env_steps": 11, "episodes": 2, "extra": 0},
                                 {"env_steps": 13, "episodes": 1, "extra": 4}]

    # Shards: identical state (contents, priorities, tree, RNG); sampling identical.
    for i, sh in enumerate(shards):
        back = restore_shard(info, i, 2, num_envs=NUM_ENVS, spec=sh.spec)
        assert back.get_state().equals(expected[i])
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
    state1 = shard.get_state().copy()
    fill(shard, [0], seed=2, steps=6)  # a small change: a few segments
    path = layout.begin(2)
    layout.write_learner(path, {"w": np.zeros(2)}, cfg, {"env_steps": 0}, step=2)
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
                        (open_checkpoint(second.path), shard.get_state())):
        assert restore_shard(info, 0, 1, num_envs=NUM_ENVS).get_state().equals(state)


# --------------------------------------------------------------------------- #
# Crash safety.

_KILL_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[2] + "/tests")
    from r2d2_hpc.checkpoint.layout import CheckpointLayout
    from r2d2_hpc.checkpoint.restore import restore_shard
    from r2d2_hpc.checkpoint.validate import find_latest_valid
    from fakes import tiny_config
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
    layout.write_learner(path, {"big": np.ones(4 << 20, np.float32)}, tiny_config(),
                         {"env_steps": 1}, step=2)
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
        sh = new_shard(seed=i, C=6000, S=64, frame=(32, 32), seg_obs=64, seg_seq=16)
        fill(sh, [stream_id(i, 0, 2)], seed=i, steps=40)
        shards.append(sh)
    write_checkpoint(run, 1, cfg, shards)
    before = [sh.get_state().copy() for sh in shards]
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
        assert restore_shard(info, i, 2, num_envs=2).get_state().equals(before[i])
    # The next checkpoint clears the leftover.
    write_checkpoint(run, 3, cfg, shards)
    assert not os.path.exists(partial)
    assert find_latest_valid(run, report=None).step == 3


_SIGNAL_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    sys.path.insert(0, sys.argv[2]); sys.path.insert(0, sys.argv[2] + "/tests")
    from r2d2_hpc.checkpoint.layout import CheckpointLayout
    from r2d2_hpc.checkpoint.preemption import EXIT_REQUEUE, PreemptionFlag
    from fakes import tiny_config
    flag = PreemptionFlag().install()
    print("ready", flush=True)
    while not flag.requested:
        time.sleep(0.005)
    layout = CheckpointLayout(sys.argv[1], keep=3, fsync=True)
    path = layout.begin(7)
    print("writing", flush=True)
    time.sleep(0.3)   # the test sends more signals now
    for k in range(8):
        layout.write_learner(path, {"w": np.full(1 << 20, k, np.float32)}, tiny_config(),
                             {"env_steps": 7}, step=7)
    layout.write_actors(path, [{"env_steps": 7}])
    from r2d2_hpc.replay.shard import ReplayShard
    sh = ReplayShard((4,), capacity_observations=64, capacity_sequences=8, sequence_length=5,
                     state_size=2)
    layout.write_shard(path, 0, sh)
    layout.commit(path, 7, 1)
    print(f"signals {flag.count} first {flag.signal_name}", flush=True)
    sys.exit(EXIT_REQUEUE)
""")


def test_a_second_signal_during_the_checkpoint_changes_nothing(tmp_path) -> None:
    run = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", _SIGNAL_SCRIPT, run, ROOT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGUSR1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_REQUEUE, err
    assert "signals 3 first SIGUSR1" in out
    info = find_latest_valid(run, report=None)
    assert info is not None and info.step == 7
    assert np.all(read_learner(info).state["w"] == 7)


def test_preemption_flag_counts_signals_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionFlag() as flag:
        assert not flag.requested and flag.signal_name == ""
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while flag.count < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert flag.requested and flag.count == 2 and flag.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) == before
    flag = PreemptionFlag()
    assert flag.take() is None
    flag.trigger(signal.SIGTERM)
    assert flag.requested and flag.signal_name == "SIGTERM"
    assert flag.take() == signal.SIGTERM and not flag.requested  # polled once
    assert flag.take() is None
    flag.trigger(signal.SIGUSR1)
    assert flag.take() == signal.SIGTERM  # the first signal's number stays


# --------------------------------------------------------------------------- #
# Corruption.

def _truncate(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)


def _flip(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) - 9)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x10]))


def _a_segment(ckpt: str) -> str:
    d = os.path.join(ckpt, "shard-0")
    return "shard-0/" + sorted(n for n in os.listdir(d) if n.startswith("steps_"))[0]


@pytest.mark.parametrize("damage,word", [(_truncate, "truncated"), (_flip, "corrupted")],
                         ids=["truncated", "bit-flipped"])
@pytest.mark.parametrize("which", ["learner.h5", "segment", "shard-0/index.h5", "actors.h5"])
def test_damaged_newest_checkpoint_is_named_once_and_the_previous_one_used(
        tmp_path, damage, word, which) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard(seed=1)
    fill(shard, [0, 1], seed=1)
    write_checkpoint(run, 10, cfg, [shard], learner_state={"w": np.arange(5.0)})
    good = shard.get_state().copy()
    fill(shard, [0, 1], seed=2)
    newest = write_checkpoint(run, 20, cfg, [shard], learner_state={"w": np.arange(6.0)})
    rel = _a_segment(newest.path) if which == "segment" else which
    # Damage the newest checkpoint's own copy (not an inode shared with ckpt 10).
    target = os.path.join(newest.path, rel)
    data = open(target, "rb").read()
    os.remove(target)
    open(target, "wb").write(data)
    damage(target)

    lines, say = report_sink()
    info = find_latest_valid(run, report=say)
    assert info is not None and info.step == 10
    assert len(lines) == 1
    assert "ckpt-000000000020" in lines[0] and rel in lines[0] and word in lines[0]
    assert "using the previous one" in lines[0]
    np.testing.assert_array_equal(read_learner(info).state["w"], np.arange(5.0))
    assert restore_shard(info, 0, 1, num_envs=NUM_ENVS).get_state().equals(good)
    # A size-only check catches truncation but not a flipped bit.
    shallow = find_latest_valid(run, report=None, deep=False)
    assert shallow.step == (10 if word == "truncated" else 20)
    # resume_point reports it once and moves it aside; the next resume is silent.
    lines2, say2 = report_sink()
    assert resume_point(run, cfg, report=say2).step == 10
    assert len(lines2) == 1 and "corrupt-ckpt-000000000020" in lines2[0]
    lines3, say3 = report_sink()
    assert resume_point(run, cfg, report=say3).step == 10 and lines3 == []


def test_manifest_damage_and_missing_manifest_are_detected(tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard()
    fill(shard, [0], seed=0)
    write_checkpoint(run, 1, cfg, [shard])
    second = write_checkpoint(run, 2, cfg, [shard])
    third = write_checkpoint(run, 3, cfg, [shard])
    mpath = os.path.join(third.path, MANIFEST)
    manifest = json.load(open(mpath))
    manifest["step"] = 4  # edited without fixing the body crc32
    json.dump(manifest, open(mpath, "w"))
    os.remove(os.path.join(second.path, MANIFEST))
    lines, say = report_sink()
    assert find_latest_valid(run, report=say).step == 1
    assert len(lines) == 2
    assert "ckpt-000000000003" in lines[0] and "does not match its contents" in lines[0]
    assert "ckpt-000000000002" in lines[1] and "MANIFEST.json is missing" in lines[1]


def test_no_checkpoint_means_a_fresh_start(tmp_path) -> None:
    lines, say = report_sink()
    assert find_latest_valid(str(tmp_path), report=say) is None and lines == []
    assert resume_point(str(tmp_path), tiny_config(), report=say) is None


def test_commit_refuses_when_a_part_is_missing(tmp_path) -> None:
    run = str(tmp_path / "run")
    layout = CheckpointLayout(run, fsync=False)
    path = layout.begin(5)
    layout.write_learner(path, {"w": np.zeros(1)}, tiny_config(), {}, step=5)
    layout.write_shard(path, 0, new_shard())
    with pytest.raises(CheckpointError) as exc:
        layout.commit(path, 5, 2)
    assert "actors.h5 was not written" in str(exc.value)
    assert "shard-1/index.h5" in str(exc.value)
    layout.write_actors(path, [])
    with pytest.raises(CheckpointError, match="learner.h5 is at step 5, commit asked for step 6"):
        layout.commit(path, 6, 1)
    assert list_checkpoints(run) == []


def test_a_second_checkpoint_at_the_same_step_is_the_newest(tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard()
    fill(shard, [0], seed=0)
    write_checkpoint(run, 4, cfg, [shard], learner_state={"w": np.zeros(1)})
    fill(shard, [0], seed=1)
    again = write_checkpoint(run, 4, cfg, [shard], learner_state={"w": np.ones(1)})
    assert again.name == "ckpt-000000000004.1"
    info = find_latest_valid(run, report=None)
    assert info.path == again.path and read_learner(info).state["w"][0] == 1.0


# --------------------------------------------------------------------------- #
# Keep K.

@pytest.mark.parametrize("keep,count", [(1, 3), (2, 4), (3, 2)])
def test_keep_k_newest_and_the_survivors_restore(tmp_path, keep, count) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard(seed=7)
    states = {}
    for k in range(1, count + 1):
        fill(shard, [0, 1], seed=k)
        write_checkpoint(run, 10 * k, cfg, [shard], keep=keep)
        states[10 * k] = shard.get_state().copy()
    names = [os.path.basename(p) for p in list_checkpoints(run)]
    kept = list(range(max(1, count - keep + 1), count + 1))
    assert names == [f"ckpt-{10 * k:012d}" for k in kept]
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".")]
    for p in list_checkpoints(run):  # deleting older ones broke no hard link
        info = open_checkpoint(p)
        assert restore_shard(info, 0, 1, num_envs=NUM_ENVS).get_state().equals(
            states[info.step])


# --------------------------------------------------------------------------- #
# Re-sharding.

@pytest.mark.parametrize("old,new,num_actors", [(2, 1, 4), (1, 3, 6), (3, 2, 5)])
def test_reshard_keeps_every_sequence_on_the_actor_routed_shard(tmp_path, old, new,
                                                                num_actors) -> None:
    run = str(tmp_path / "run")
    shards = [new_shard(seed=i, C=200, S=60) for i in range(old)]
    for a in range(num_actors):
        s = shard_for_stream_id(stream_id(a, 0, NUM_ENVS), NUM_ENVS, old)
        fill(shards[s], actor_streams([a]), seed=a, steps=10)
    expected = live_records(shards)
    info = write_checkpoint(run, 3, tiny_config(), shards)
    # Big enough targets (capacity scales with the shard count, as in make_shard).
    spec = dataclasses.replace(shards[0].spec, capacity_observations=200 * old,
                               capacity_sequences=60 * old)
    restored = [restore_shard(info, i, new, num_envs=NUM_ENVS, spec=spec, seed=i)
                for i in range(new)]
    assert live_records(restored) == expected
    for i, sh in enumerate(restored):
        streams = sh.sequence_info(sh.live_keys())["stream"]
        assert all(shard_for_stream_id(int(s), NUM_ENVS, new) == i for s in streams)
        assert sh.spec.capacity_observations == 200 * old
        sh.sample(4)  # sampling works on the new shard


def test_restore_into_another_replay_layout_names_the_field(tmp_path) -> None:
    run = str(tmp_path / "run")
    shard = new_shard()
    fill(shard, [0], seed=0)
    info = write_checkpoint(run, 1, tiny_config(), [shard])
    spec = dataclasses.replace(shard.spec, state_size=4, frame_shape=(4, 4))
    with pytest.raises(CheckpointError) as exc:
        restore_shard(info, 0, 1, num_envs=NUM_ENVS, spec=spec)
    assert "state_size: checkpoint has 3, this run has 4" in str(exc.value)
    assert "frame_shape" in str(exc.value)


# --------------------------------------------------------------------------- #
# Compatibility.

def _with(cfg: Config, section: str, **changes) -> Config:
    return cfg.replace(**{section: dataclasses.replace(getattr(cfg, section), **changes)})


FROZEN_CASES = [
    ("network", {"lstm_size": 16}, ["network.lstm_size: checkpoint has 8, this run has 16"]),
    ("network", {"mlp_hidden": (8, 8)},
     ["network.mlp_hidden: checkpoint has [8], this run has [8, 8]"]),
    ("network", {"dueling": False, "head_hidden": 4},
     ["network.dueling: checkpoint has True, this run has False",
      "network.head_hidden: checkpoint has 8, this run has 4"]),
    ("env", {"name": "cartpole"}, ["env.name: checkpoint has 'counter', this run has 'cartpole'"]),
    ("env", {"game": "Breakout"}, ["env.game: checkpoint has 'Pong', this run has 'Breakout'"]),
    ("env", {"frame_stack": 2}, ["env.frame_stack: checkpoint has 4, this run has 2"]),
    ("replay", {"burn_in": 2}, ["replay.burn_in: checkpoint has 3, this run has 2"]),
]


@pytest.mark.parametrize("section,changes,expected", FROZEN_CASES)
def test_compatibility_errors_name_each_frozen_field(section, changes, expected) -> None:
    saved = tiny_config()
    assert compatibility_errors(saved, _with(saved, section, **changes)) == expected


@pytest.mark.parametrize("section,changes", [
    ("learner", {"learning_rate": 3e-4, "batch_size": 4}),
    ("topology", {"replay_shards": 3}),
    ("replay", {"capacity_observations": 2000, "sequence_period": 2}),
    ("actor", {"num_envs": 4}),
    ("checkpoint", {"keep": 5}),
])
def test_changes_a_resume_honours_are_no_errors(section, changes) -> None:
    saved = tiny_config()
    assert compatibility_errors(saved, _with(saved, section, **changes)) == []


def test_job_shape_differences_are_named() -> None:
    cfg = tiny_config()
    new = dict(JOB_SPEC, obs_shape=[6], num_actions=4)
    assert compatibility_errors(cfg, cfg, JOB_SPEC, new) == [
        "obs_shape: checkpoint has [5], this run has [6]",
        "num_actions: checkpoint has 3, this run has 4"]


def test_resume_point_raises_with_every_differing_field(tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard()
    fill(shard, [0], seed=0)
    write_checkpoint(run, 1, cfg, [shard])
    new = _with(_with(cfg, "network", lstm_size=16), "learner", learning_rate=0.5)
    with pytest.raises(CheckpointIncompatible) as exc:
        resume_point(run, new, job_spec=dict(JOB_SPEC, num_actions=4), report=None)
    assert exc.value.errors == ["network.lstm_size: checkpoint has 8, this run has 16",
                                "num_actions: checkpoint has 3, this run has 4"]
    assert "ckpt-000000000001" in str(exc.value) and "--run-dir" in str(exc.value)
    assert resume_point(run, _with(cfg, "learner", learning_rate=0.5), job_spec=JOB_SPEC,
                        report=None).step == 1


# --------------------------------------------------------------------------- #
# Schedule.

@pytest.mark.parametrize("seconds,steps,at_step,at_time,due", [
    (0.0, 0, 10_000, 1e9, False),     # both off
    (0.0, 100, 99, 1e9, False),
    (0.0, 100, 100, 0.0, True),
    (60.0, 0, 1, 59.9, False),
    (60.0, 0, 1, 60.0, True),
    (60.0, 100, 100, 1.0, True),      # whichever comes first
    (60.0, 0, 0, 120.0, False),       # nothing new since the last one
])
def test_schedule_table(seconds, steps, at_step, at_time, due) -> None:
    sched = CheckpointSchedule(CheckpointConfig(interval_seconds=seconds, interval_steps=steps),
                               step=0, now=0.0)
    assert sched.due(at_step, at_time) is due
    sched.mark(at_step, at_time)
    assert not sched.due(at_step, at_time)


# --------------------------------------------------------------------------- #
# r2d2-ckpt.

def _inspect(capsys, *args: str) -> Tuple[int, str, str]:
    rc = ckpt_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_inspect_shows_step_frames_fill_files_and_config_differences(tmp_path, capsys) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shards = [new_shard(seed=0), new_shard(seed=1)]
    fill(shards[0], [0, 1], seed=0)
    fill(shards[1], [2], seed=1)
    info = write_checkpoint(run, 42, cfg, shards)
    rc, out, err = _inspect(capsys, "inspect", info.path)
    assert rc == 0, err
    assert "status       VALID" in out and "crc32 checked" in out
    assert "step         42" in out
    assert "env frames   420" in out  # env_steps 420, non-Atari: one frame per step
    s0, s1 = shards[0], shards[1]
    assert (f"shard 0    sequences {s0.count}/24 ({100 * s0.count / 24:.1f}%), observations "
            f"{s0.num_steps}/96") in out
    assert f"shard 1    sequences {s1.count}/24" in out
    assert "ok  learner.h5" in out and "ok  shard-1/index.h5" in out
    # A run directory means its newest valid checkpoint; --json for scripts.
    rc, out, _ = _inspect(capsys, "inspect", run, "--json")
    report = json.loads(out)
    assert rc == 0 and report["step"] == 42 and report["valid"]
    assert [s["live_sequences"] for s in report["shards"]] == [s0.count, s1.count]
    # Config differences against a file, frozen ones marked.
    other = _with(_with(cfg, "learner", learning_rate=0.5), "network", lstm_size=16)
    cfg_file = str(tmp_path / "other.yaml")
    save_config(other, cfg_file)
    rc, out, _ = _inspect(capsys, "inspect", info.path, "--config", cfg_file)
    assert rc == 0
    assert "2 field(s) differ" in out and "1 cannot change on resume" in out
    assert "learner.learning_rate: checkpoint 0.01, config 0.5\n" in out or \
        "learner.learning_rate: checkpoint 0.0001, config 0.5\n" in out
    assert "network.lstm_size: checkpoint 8, config 16   (cannot change on resume)" in out


def test_inspect_exit_codes_on_missing_corrupt_and_bad_config(tmp_path, capsys) -> None:
    rc, _, err = _inspect(capsys, "inspect", str(tmp_path / "nope"))
    assert rc == 2 and "no such file or directory" in err
    rc, _, err = _inspect(capsys, "inspect", str(tmp_path))
    assert rc == 2 and "neither a checkpoint directory" in err
    run = str(tmp_path / "run")
    shard = new_shard()
    fill(shard, [0], seed=0)
    info = write_checkpoint(run, 1, tiny_config(), [shard])
    seg = _a_segment(info.path)
    _flip(os.path.join(info.path, seg))
    rc, out, err = _inspect(capsys, "inspect", info.path)
    assert rc == 2 and f"BAD {seg}" in out and "corrupt or truncated" in err and seg in err
    rc, out, err = _inspect(capsys, "inspect", info.path, "--quick")  # sizes only: fine
    assert rc == 0
    rc, _, err = _inspect(capsys, "inspect", run)
    assert rc == 2 and "no valid checkpoint" in err and "ckpt-000000000001" in err
    rc, out, err = _inspect(capsys, "list", run)
    assert rc == 2 and "ckpt-000000000001  step 1  INVALID" in out
    bad_cfg = str(tmp_path / "bad.yaml")
    open(bad_cfg, "w").write("learner:\n  batch_size: -1\n")
    rc, _, err = _inspect(capsys, "inspect", info.path, "--config", bad_cfg)
    assert rc == 2 and "learner.batch_size" in err


def test_ckpt_cli_runs_as_a_module(tmp_path) -> None:
    run = str(tmp_path / "run")
    shard = new_shard()
    fill(shard, [0], seed=0)
    write_checkpoint(run, 9, tiny_config(), [shard])
    res = subprocess.run([sys.executable, "-m", "r2d2_hpc.cli.ckpt", "list", run], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ckpt-000000000009  step 9  valid" in res.stdout


def test_damage_to_a_shared_segment_is_reported_in_every_checkpoint_that_links_it(
        tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard(seed=2, C=192, S=48)
    fill(shard, [0, 1], seed=1, rounds=3)
    first = write_checkpoint(run, 1, cfg, [shard])
    fill(shard, [0], seed=2, steps=6)
    second = write_checkpoint(run, 2, cfg, [shard])
    rel = _a_segment(first.path)
    assert os.path.samefile(os.path.join(first.path, rel), os.path.join(second.path, rel))
    _flip(os.path.join(second.path, rel))
    lines, say = report_sink()
    assert find_latest_valid(run, report=say) is None
    assert len(lines) == 2 and all(rel in line for line in lines)
    assert "no older checkpoint left" in lines[1]


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
    _flip(os.path.join(second.path, _a_segment(second.path)))
    assert find_latest_valid(run, report=None).path == first.path

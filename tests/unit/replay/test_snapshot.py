"""Tests for r2d2_hpc.replay.snapshot: exact round trip, incremental cost,
corruption detection, crash safety and re-sharding."""
from __future__ import annotations

import os
from typing import List, Tuple

import h5py
import numpy as np
import pytest

from r2d2_hpc.replay import snapshot as snap
from r2d2_hpc.replay.routing import shard_for_stream
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.replay.snapshot import (INDEX_FILE, SnapshotError, load_resharded,
                                      load_snapshot, save_snapshot)
from r2d2_hpc.types import SequenceBatch
from tests.helpers.checkpoints import as_snapshot_version_1, rewrite_snapshot_meta
from tests.helpers.replay_model import FRAME, Driver, SeqRef, check_batch_column

SEG_OBS, SEG_SEQ = 8, 4
#: Environments per actor in the re-sharding tests (streams 2a, 2a+1 belong to actor a).
ENVS = 2


def new_shard(seed: int = 0, C: int = 64, S: int = 16, shard_index: int = 0) -> ReplayShard:
    return ReplayShard(FRAME, capacity_observations=C, capacity_sequences=S, sequence_length=5,
                       state_size=3, frame_stack=3, seed=seed, segment_observations=SEG_OBS,
                       segment_sequences=SEG_SEQ, shard_index=shard_index)


def populate(shard: ReplayShard, seed: int, rounds: int = 30, streams=(0, 1, 2)) -> Driver:
    d = Driver(shard, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1000)
    for _ in range(rounds):
        s = int(rng.choice(streams))
        d.steps(s, int(rng.integers(1, 6)), 0.1, False)
        n_seq = int(rng.integers(0, 3))
        if n_seq:
            d.sequences(s, n_seq)
    return d


def continue_run(shard: ReplayShard, seed: int, n: int = 6) -> List[SequenceBatch]:
    """Deterministic continuation: inserts, priority updates and samples."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        stream = 0
        nxt = shard.streams()[stream][1]
        obs = rng.integers(0, 256, (3,) + FRAME, dtype=np.uint8)
        shard.add_steps(stream, nxt, obs, rng.integers(0, 4, 3), rng.random(3), np.ones(3),
                        np.zeros(3, bool))
        shard.add_sequences(stream, [nxt - 1], [4], rng.random((1, 3)), rng.random((1, 3)),
                            [1], [0.0], None if i % 2 else rng.random(1))
        b = shard.sample(4)
        shard.update_priorities(b.keys, rng.random(4) * 3)
        out.append(b)
    return out


def assert_batches_equal(a: List[SequenceBatch], b: List[SequenceBatch]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in SequenceBatch._fields:
            u, v = getattr(x, name), getattr(y, name)
            assert u.dtype == v.dtype and np.array_equal(u, v), name


# ----------------------------------------------------------------------------
# Round trip
# ----------------------------------------------------------------------------


def test_round_trip_is_exact_and_sampling_continues_bit_identically(tmp_path):
    a = new_shard(seed=5)
    populate(a, 1)
    a.sample(3)                       # advance the generator: its state must be saved
    a.update_priorities(a.live_keys(), np.linspace(0.1, 2.0, a.count))
    rep = save_snapshot(a, str(tmp_path))
    assert not rep.incremental and rep.snapshot_id == 1
    b = load_snapshot(str(tmp_path))
    assert b.state().equals(a.state())
    np.testing.assert_array_equal(b._tree.nodes, a._tree.nodes)
    assert_batches_equal(continue_run(a, 9), continue_run(b, 9))
    assert b.state().equals(a.state())


def test_round_trip_of_an_empty_and_a_wrapped_shard(tmp_path):
    empty = new_shard()
    save_snapshot(empty, str(tmp_path / "e"))
    assert load_snapshot(str(tmp_path / "e")).state().equals(empty.state())
    assert sorted(os.listdir(tmp_path / "e")) == [INDEX_FILE]    # no segment ever written
    wrapped = new_shard(C=20, S=5)
    populate(wrapped, 3, rounds=60)
    assert wrapped.total_steps_written > 3 * 20
    save_snapshot(wrapped, str(tmp_path / "w"))
    restored = load_snapshot(str(tmp_path / "w"))
    assert restored.state().equals(wrapped.state())
    assert_batches_equal(continue_run(wrapped, 2), continue_run(restored, 2))


# ----------------------------------------------------------------------------
# Incremental snapshots
# ----------------------------------------------------------------------------


def _files(path) -> List[str]:
    return sorted(os.listdir(path))


def test_incremental_snapshot_writes_only_changed_segments(tmp_path):
    d = str(tmp_path)
    shard = new_shard()
    drv = populate(shard, 4, rounds=40)
    assert shard.total_steps_written > 64                       # ring full
    full = save_snapshot(shard, d)
    assert len(full.files_written) == 64 // SEG_OBS + 16 // SEG_SEQ + 1
    assert full.bytes_written == sum(os.path.getsize(os.path.join(d, f)) for f in _files(d))

    # nothing changed: only the index is rewritten
    again = save_snapshot(shard, d)
    assert again.incremental and again.files_written == (INDEX_FILE,)
    assert again.files_removed == () and again.segments_reused == 12

    # two steps inside one segment and one sequence: one ring segment + one sequence segment
    w = shard.total_steps_written
    n = min(2, SEG_OBS - (w % 64) % SEG_OBS)
    drv.steps(0, n, 0.0, False)
    slot = shard.state().counters["seq_write"] % 16
    drv.sequences(0, 1)
    before = set(_files(d))
    small = save_snapshot(shard, d)
    step_seg, seq_seg = (w % 64) // SEG_OBS, slot // SEG_SEQ
    assert small.files_written == (f"steps_{step_seg:05d}_{small.snapshot_id:08d}.h5",
                                   f"seqs_{seq_seg:05d}_{small.snapshot_id:08d}.h5", INDEX_FILE)
    assert len(small.files_removed) == 2 and set(small.files_removed) <= before
    assert small.bytes_written < full.bytes_written / 3
    assert len(_files(d)) == len(full.files_written)
    assert load_snapshot(d).state().equals(shard.state())

    # a priority update changes only the index
    shard.update_priorities(shard.live_keys()[:2], np.array([0.25, 4.0]))
    prio = save_snapshot(shard, d)
    assert prio.files_written == (INDEX_FILE,)
    assert load_snapshot(d).state().equals(shard.state())

    # full=True rewrites everything
    forced = save_snapshot(shard, d, full=True)
    assert len(forced.files_written) == len(full.files_written)
    assert len(forced.files_removed) == len(full.files_written) - 1


def test_restored_shard_continues_the_incremental_chain(tmp_path):
    d = str(tmp_path)
    shard = new_shard()
    populate(shard, 6)
    save_snapshot(shard, d)
    restored = load_snapshot(d)
    continue_run(restored, 1, n=1)           # touches few segments
    rep = save_snapshot(restored, d)
    assert rep.incremental and len(rep.files_written) <= 4
    assert load_snapshot(d).state().equals(restored.state())


def test_saving_another_shard_into_a_directory_writes_everything(tmp_path):
    d = str(tmp_path)
    a, b = new_shard(), new_shard(seed=1)
    populate(a, 1)
    populate(b, 2)
    save_snapshot(a, d)
    rep = save_snapshot(b, d)
    assert not rep.incremental and rep.segments_reused == 0
    assert load_snapshot(d).state().equals(b.state())
    assert len(_files(d)) == len(rep.files_written)


def test_interrupted_snapshot_leaves_the_previous_one(tmp_path, monkeypatch):
    d = str(tmp_path)
    shard = new_shard()
    drv = populate(shard, 7)
    save_snapshot(shard, d)
    first_files = _files(d)
    saved = shard.state().copy()
    drv.steps(1, 4, 0.0, False)
    drv.sequences(1, 2)
    real = snap._write_h5

    def crash_at_index(path, *args, **kw):
        if os.path.basename(path) == INDEX_FILE:
            open(path + ".tmp", "wb").write(b"partial")
            raise OSError("simulated crash")
        return real(path, *args, **kw)

    monkeypatch.setattr(snap, "_write_h5", crash_at_index)
    with pytest.raises(OSError):
        save_snapshot(shard, d)
    monkeypatch.setattr(snap, "_write_h5", real)
    files_after_crash = _files(d)
    assert len(files_after_crash) > len(first_files)      # orphan segments and a .tmp
    assert load_snapshot(d).state().equals(saved)
    save_snapshot(shard, d)
    state = shard.state()
    referenced = int((state.step_segment_versions > 0).sum() +
                     (state.sequence_segment_versions > 0).sum()) + 1
    assert len(_files(d)) == referenced                      # orphans removed
    assert not any(f.endswith(".tmp") for f in _files(d))
    assert load_snapshot(d).state().equals(shard.state())


# ----------------------------------------------------------------------------
# Corruption
# ----------------------------------------------------------------------------


def _saved(tmp_path) -> Tuple[str, str]:
    d = str(tmp_path)
    shard = new_shard()
    populate(shard, 8)
    save_snapshot(shard, d)
    seg = next(f for f in _files(d) if f.startswith("steps_"))
    return d, os.path.join(d, seg)


def _data_offset(path: str, name: str) -> int:
    with h5py.File(path, "r") as f:
        return f[name].id.get_chunk_info(0).byte_offset


def _flip(path: str, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x10]))


def test_truncated_segment_is_named(tmp_path):
    d, seg = _saved(tmp_path)
    with open(seg, "r+b") as f:
        f.truncate(os.path.getsize(seg) // 2)
    with pytest.raises(SnapshotError, match=os.path.basename(seg) + ".*size"):
        load_snapshot(d)


def test_bit_flipped_segment_is_named(tmp_path):
    d, seg = _saved(tmp_path)
    _flip(seg, _data_offset(seg, "frames") + 3)
    with pytest.raises(SnapshotError, match=os.path.basename(seg) + ".*crc32"):
        load_snapshot(d)
    # without the file checksum, HDF5's fletcher32 still catches it
    with pytest.raises(SnapshotError, match=os.path.basename(seg) + ".*frames.*corrupted"):
        load_snapshot(d, verify=False)


def test_truncated_index_is_named(tmp_path):
    d, _ = _saved(tmp_path)
    idx = os.path.join(d, INDEX_FILE)
    with open(idx, "r+b") as f:
        f.truncate(os.path.getsize(idx) - 100)
    with pytest.raises(SnapshotError, match=INDEX_FILE):
        load_snapshot(d)


@pytest.mark.parametrize("dataset", ["slots/priority", "slots/tree_leaves", "meta"])
def test_bit_flipped_index_is_named(tmp_path, dataset):
    d, _ = _saved(tmp_path)
    idx = os.path.join(d, INDEX_FILE)
    _flip(idx, _data_offset(idx, dataset) + 5)
    with pytest.raises(SnapshotError, match=INDEX_FILE + f".*{dataset}.*corrupted"):
        load_snapshot(d)


def test_missing_files_are_named(tmp_path):
    d, seg = _saved(tmp_path)
    os.remove(seg)
    with pytest.raises(SnapshotError, match=os.path.basename(seg) + ".*missing"):
        load_snapshot(d)
    os.remove(os.path.join(d, INDEX_FILE))
    with pytest.raises(SnapshotError, match=INDEX_FILE + ".*missing"):
        load_snapshot(d)
    assert issubclass(SnapshotError, ValueError)


# ----------------------------------------------------------------------------
# Shard identity and format versions
# ----------------------------------------------------------------------------


def test_snapshot_records_the_shard_index(tmp_path):
    a = new_shard(seed=1, shard_index=3)
    populate(a, 1)
    save_snapshot(a, str(tmp_path))
    b = load_snapshot(str(tmp_path))
    assert b.shard_index == 3 and b.state().equals(a.state())
    np.testing.assert_array_equal(b.live_keys(), a.live_keys())
    assert load_snapshot(str(tmp_path), shard_index=3).shard_index == 3
    with pytest.raises(SnapshotError, match="holds shard 3, expected shard 2"):
        load_snapshot(str(tmp_path), shard_index=2)


def test_version_1_snapshot_loads_as_the_shard_the_caller_names(tmp_path):
    a = new_shard(seed=1, shard_index=1)
    populate(a, 1)
    save_snapshot(a, str(tmp_path))
    rewrite_snapshot_meta(str(tmp_path), as_snapshot_version_1)
    with pytest.raises(SnapshotError, match=r"'r2d2_hpc\.replay\.snapshot/1' does not record"):
        load_snapshot(str(tmp_path))
    b = load_snapshot(str(tmp_path), shard_index=1)
    assert b.state().equals(a.state())
    # re-sharding reads it too: a source's own index plays no part
    assert load_resharded([str(tmp_path)], 0, 1, num_envs=ENVS).count == a.count


def test_unknown_snapshot_format_is_refused_naming_it(tmp_path):
    save_snapshot(new_shard(), str(tmp_path))
    rewrite_snapshot_meta(str(tmp_path), lambda m: m.update(format="r2d2_hpc.replay.snapshot/9"))
    with pytest.raises(SnapshotError, match="unknown format 'r2d2_hpc.replay.snapshot/9'"):
        load_snapshot(str(tmp_path))


# ----------------------------------------------------------------------------
# Re-sharding
# ----------------------------------------------------------------------------


def _sequence_records(shards: List[ReplayShard]) -> List[tuple]:
    """A canonical, comparable record of every live sequence (content included)."""
    out = []
    for s in shards:
        keys = s.live_keys()
        if not keys.size:
            continue
        info = s.sequence_info(keys)
        b = s.read(keys)
        for j in range(keys.size):
            out.append((int(info["stream"][j]), int(info["start_step"][j]),
                        int(info["length"][j]), float(info["priority"][j]),
                        b.obs[:, j].tobytes(), b.action[:, j].tobytes(),
                        b.reward[:, j].tobytes(), b.discount[:, j].tobytes(),
                        b.first[:, j].tobytes(), b.mask[:, j].tobytes(),
                        b.prev_action[:, j].tobytes(), b.prev_reward[:, j].tobytes(),
                        b.state_h[j].tobytes(), b.state_c[j].tobytes()))
    return sorted(out)


def _sharded_sources(tmp_path, num: int, streams: int = 9):
    shards, drivers, dirs = [], [], []
    for i in range(num):
        s = new_shard(seed=i, C=48, S=12, shard_index=i)
        mine = [x for x in range(streams) if shard_for_stream(x, ENVS, num) == i]
        drivers.append(populate(s, 20 + i, rounds=25, streams=mine))
        shards.append(s)
        dirs.append(str(tmp_path / f"shard_{i}"))
        save_snapshot(s, dirs[-1])
    return shards, drivers, dirs


@pytest.mark.parametrize("old,new", [(3, 2), (2, 5)])
def test_reshard_keeps_every_sequence_and_priority(tmp_path, old, new):
    shards, drivers, dirs = _sharded_sources(tmp_path, old)
    before = _sequence_records(shards)
    assert len(before) >= 8
    targets = [load_resharded(dirs, i, new, num_envs=ENVS, capacity_observations=150,
                              capacity_sequences=40) for i in range(new)]
    assert _sequence_records(targets) == before
    for i, t in enumerate(targets):
        info = t.sequence_info(t.live_keys()) if t.count else {"stream": np.zeros(0, int)}
        assert all(shard_for_stream(x, ENVS, new) == i for x in info["stream"].tolist())
        assert all(shard_for_stream(x, ENVS, new) == i for x in t.streams())
        st = t.stats()
        assert st.count == t.count and st.max_priority == max(s.max_priority for s in shards)
    # every stream continues on its new shard: numbering, steps and stacks carry over
    for drv in drivers:
        for sid, epoch in drv.epochs.items():
            t = targets[shard_for_stream(sid, ENVS, new)]
            assert t.streams()[sid] == (epoch.base, epoch.next_step)
            nxt = epoch.next_step
            rng = np.random.default_rng(sid)
            obs = rng.integers(0, 256, (2,) + FRAME, dtype=np.uint8)
            t.add_steps(sid, nxt, obs, np.array([3, 4]), np.array([0.5, 1.5]), np.ones(2),
                        np.zeros(2, bool))
            epoch.obs.extend(obs)
            epoch.action.extend([3, 4])
            epoch.reward.extend([0.5, 1.5])
            epoch.discount.extend([1.0, 1.0])
            epoch.first.extend([False, False])
            start = max(epoch.base, epoch.episode_start(nxt + 1), nxt - 2)
            length = nxt + 2 - start
            key = t.add_sequences(sid, [start], [length], np.ones((1, 3)), np.ones((1, 3)),
                                  [2], [0.25], [1.0])
            ref = SeqRef(epoch, start, length, np.ones(3, np.float32), np.ones(3, np.float32),
                         2, 0.25, 1.0, 0, [])
            check_batch_column(t.read(key), 0, ref, 5, 3, "zeros")


def test_reshard_capacity_overflow(tmp_path):
    shards, _, dirs = _sharded_sources(tmp_path, 2, streams=4)
    with pytest.raises(ValueError, match="capacity_observations"):
        load_resharded(dirs, 0, 1, num_envs=ENVS, capacity_observations=20,
                       capacity_sequences=40)
    total = sum(s.count for s in shards)
    kept = load_resharded(dirs, 0, 1, num_envs=ENVS, capacity_observations=40,
                          capacity_sequences=5, strict=False)
    assert kept.count == min(5, total)
    assert kept.num_dropped_sequences == total - kept.count
    newest = _sequence_records([kept])
    assert set(newest) <= set(_sequence_records(shards))

"""The memory check's arithmetic and verdict (r2d2_hpc.job.memory), without MPI."""
from __future__ import annotations

import pytest

from r2d2_hpc.config import load_config
from r2d2_hpc.job.memory import (RANK_BASE_BYTES, NodeMemory, available_memory_bytes,
                                 memory_problem, node_needs, rank_bytes)
from r2d2_hpc.job.replay import make_shard, replay_shard_spec
from r2d2_hpc.types import JobSpec

#: Atari shapes without building an ALE env.
ATARI = JobSpec((4, 84, 84), (84, 84), "uint8", 18, 512, 4_000_000, 4)


def atari_cfg(*extra: str):
    return load_config(None, ["env.name=atari", "topology.replay_shards=2",
                              "replay.capacity_observations=1000000", *extra])


def test_replay_part_is_the_shards_own_arrays():
    cfg = load_config(None, ["replay.capacity_observations=5000", "topology.replay_shards=2",
                             "replay.min_fill_sequences=10"])
    spec = JobSpec((4,), (4,), "float32", 2, 16, 1000, 1)
    need = rank_bytes(cfg, spec, "replay", 2)
    shard = make_shard(cfg, spec, 0, 2)
    assert need["replay"] == sum(shard.storage_bytes().values())
    assert need["base"] == RANK_BASE_BYTES
    assert set(rank_bytes(cfg, spec, "actor", 2)) == {"base"}
    assert rank_bytes(cfg, spec, "learner", 2)["params"] == 5 * 4 * 1000


def test_node_needs_count_the_roles_on_the_node():
    cfg = atari_cfg()
    # ranks: 0 learner, 1-2 shards, 3+ actors
    both = node_needs(cfg, ATARI, [1, 2], 6)
    one = node_needs(cfg, ATARI, [2, 3], 6)
    per_shard = sum(replay_shard_spec(cfg, ATARI, 2).storage_bytes().values())
    assert both["replay"] == 2 * per_shard and one["replay"] == per_shard
    assert both["base"] == one["base"] == 2 * RANK_BASE_BYTES


def test_a_replay_that_fits_passes():
    cfg = atari_cfg()
    nodes = [NodeMemory("a", [0, 1, 3], 64e9), NodeMemory("b", [2, 4, 5], 64e9)]
    assert memory_problem(cfg, ATARI, nodes, 6) is None


def test_a_replay_that_cannot_fit_names_node_numbers_and_fix():
    cfg = atari_cfg()
    per_shard = sum(replay_shard_spec(cfg, ATARI, 2).storage_bytes().values())
    assert per_shard > 3e9  # ~3.6 GB: 500k 84x84 frames and their sequences
    nodes = [NodeMemory("big", [0, 1, 3], 64e9), NodeMemory("small", [2, 4, 5], 2e9)]
    msg = memory_problem(cfg, ATARI, nodes, 6)
    assert msg is not None
    assert "node small" in msg and "2.0 GB is available" in msg
    assert f"{per_shard / 1e9:.2f} GB of replay" in msg
    assert "topology.replay_shards" in msg and "replay.capacity_observations" in msg
    # the suggested capacity would fit: room for the replay scaled by it
    fits = int(msg.split("at most about ")[1].split(" ")[0])
    assert 0 <= fits < 1_000_000


def test_a_node_without_shards_is_told_to_use_fewer_ranks():
    cfg = atari_cfg()
    nodes = [NodeMemory("a", [0, 1, 2], 64e9), NodeMemory("b", list(range(3, 40)), 1e9)]
    msg = memory_problem(cfg, ATARI, nodes, 40)
    assert "node b" in msg and "fewer ranks" in msg


def write(path, text):
    path.write_text(text)
    return str(path)


MEMINFO = "MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   20000000 kB\n"


def test_available_memory_reads_meminfo(tmp_path):
    meminfo = write(tmp_path / "meminfo", MEMINFO)
    assert available_memory_bytes(meminfo, str(tmp_path / "no-cgroup")) == 20000000 * 1024


@pytest.mark.parametrize("limit, current, expected", [
    ("max", "5", 20000000 * 1024),                       # no limit
    (str(8 << 30), str(3 << 30), 5 << 30),                # the cgroup's room is smaller
    (str(100 << 30), str(1 << 30), 20000000 * 1024),      # MemAvailable is smaller
])
def test_available_memory_respects_a_cgroup_limit(tmp_path, limit, current, expected):
    meminfo = write(tmp_path / "meminfo", MEMINFO)
    write(tmp_path / "memory.max", limit + "\n")
    write(tmp_path / "memory.current", current + "\n")
    assert available_memory_bytes(meminfo, str(tmp_path)) == expected


def test_meminfo_without_available_is_an_error(tmp_path):
    meminfo = write(tmp_path / "meminfo", "MemTotal: 1 kB\n")
    with pytest.raises(RuntimeError, match="MemAvailable"):
        available_memory_bytes(meminfo, str(tmp_path))


def test_serial_run_counts_one_process_base(monkeypatch):
    """--serial: every role in one process, so one base; the replay still counts."""
    from r2d2_hpc.job import memory

    cfg = atari_cfg()
    per_shard = sum(replay_shard_spec(cfg, ATARI, 2).storage_bytes().values())
    learner = sum(rank_bytes(cfg, ATARI, "learner", 2).values()) - RANK_BASE_BYTES
    shards = 2 * (sum(rank_bytes(cfg, ATARI, "replay", 2).values()) - RANK_BASE_BYTES)
    need = RANK_BASE_BYTES + learner + shards
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: need)
    assert memory.check_serial_memory(cfg, ATARI, num_actors=3) is None
    monkeypatch.setattr(memory, "available_memory_bytes", lambda: need - 1)
    msg = memory.check_serial_memory(cfg, ATARI, num_actors=3)
    assert msg is not None and f"{per_shard / 1e9:.2f} GB of replay" in msg

"""The runners: the whole job in serial mode, in one process; torch threads per rank."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from r2d2_hpc.job.runner import dead_peers, run_serial, torch_threads, wait_for_dead_peers
from tests.helpers.launcher import by_role, check_nothing_lost, tiny_job_config


def test_serial_run_counts_everything(tmp_path):
    cfg = tiny_job_config("learner.max_steps=25", "topology.replay_shards=2")
    result = run_serial(cfg, str(tmp_path), num_actors=2, quiet=True)
    ranks = result["ranks"]
    (learner,) = by_role(ranks, "learner")
    assert learner["learner_step"] == 25
    assert learner["stop_reason"] == "learner.max_steps=25 reached"
    check_nothing_lost(ranks)
    shards = by_role(ranks, "replay")
    assert len(shards) == 2
    # every learner step sends each key's priority to the shard the key names: both
    # shards get keys, none names another shard, and every key of every batch arrives
    # (the end-of-run checkpoint lets the shards take the last step's before the STOP)
    assert sum(s["priority_updates"] for s in shards) >= 25
    assert all(s["priority_keys"] > 0 and s["misrouted_updates"] == 0 for s in shards)
    assert learner["priority_keys_sent"] == [s["priority_keys"] for s in shards]
    assert sum(s["priority_keys"] for s in shards) == 25 * cfg.learner.batch_size
    # the union of shards' samples is the learner's batches (plus requests in flight)
    sampled = sum(s["sampled_sequences"] for s in shards)
    assert 25 * 16 <= sampled <= (25 + cfg.learner.samples_in_flight) * 16
    # parameters reached the actors, and newer ones than the initial publication
    for actor in by_role(ranks, "actor"):
        assert actor["param_updates"] >= 2 and actor["params_version"] > 0
    assert (tmp_path / "metrics.csv").is_file()
    assert json.loads((tmp_path / "summary.json").read_text()) == ranks


def test_serial_run_stops_on_env_budget(tmp_path):
    cfg = tiny_job_config("actor.max_env_steps=3000", "learner.max_steps=0")
    result = run_serial(cfg, None, quiet=True)
    (learner,) = by_role(result["ranks"], "learner")
    assert learner["stop_reason"].startswith("actor.max_env_steps")
    assert learner["env_steps"] >= 3000


@pytest.mark.parametrize("role, cores, ranks, expected", [
    # 4 ranks on a 2-core laptop: the learner must not run 2 threads (torch's
    # default); docs/decisions.md, "Torch threads per rank".
    ("learner", 2, 4, 1),
    ("replay", 2, 4, 1),
    ("actor", 2, 4, 1),
    # A big node: the learner gets its share, actors always 1.
    ("learner", 64, 4, 16),
    ("actor", 64, 4, 1),
    ("learner", 8, 3, 2),
    # Degenerate inputs never give 0 threads.
    ("learner", 1, 1, 1),
    ("learner", 0, 0, 1),
])
def test_torch_threads_is_the_fair_share_of_the_node(role, cores, ranks, expected):
    assert torch_threads(role, cores, ranks) == expected


def test_a_dead_peer_is_looked_for_again_until_it_shows():
    """A killed rank closes its sockets before it is a zombie: the first look finds
    nothing, a later one finds it; with no dead peer the wait ends at its bound."""
    looks = iter([[], [], [1]])
    assert wait_for_dead_peers([("h", 1), ("h", 2)], 5.0, lambda peers: next(looks)) == [1]
    t0 = time.monotonic()
    assert wait_for_dead_peers([("h", 1)], 0.2, lambda peers: []) == []
    assert 0.2 <= time.monotonic() - t0 < 2.0


def test_an_exited_process_is_gone_and_a_live_one_is_not():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert dead_peers([(socket.gethostname(), os.getpid()),
                       (socket.gethostname(), child.pid)]) == [1]

"""The whole job under mpiexec through the real entry point (``python -m r2d2_hpc.cli``)."""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import yaml

from r2d2_hpc.job.memory import available_memory_bytes
from r2d2_hpc.job.replay import replay_shard_spec
from r2d2_hpc.job.role import job_spec
from tests.helpers.launcher import (ROOT, START_STATE_SETS, TINY, check_nothing_lost, launch,
                                    mpiexec_cmd, sets, tiny_job_config)


@pytest.mark.parametrize("core", sorted(START_STATE_SETS))
def test_mpi_end_to_end_four_ranks(tmp_path, core):
    run = tmp_path / "run"
    proc, _ = launch(4, ["--run-dir", str(run)] + sets(*TINY, *START_STATE_SETS[core],
                                                        "learner.max_steps=200"), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = json.loads((run / "summary.json").read_text())
    assert [r["role"] for r in ranks] == ["learner", "replay", "actor", "actor"]
    assert all(r["clean_shutdown"] for r in ranks)
    check_nothing_lost(ranks)
    learner = ranks[0]
    assert learner["learner_step"] == 200
    network = yaml.safe_load((run / "config.yaml").read_text())["network"]
    assert network["core"] == core.split("_")[0]
    if network["core"] == "gtrxl":
        assert network["gtrxl_start_state"] == ("zero" if core == "gtrxl_zero" else "stored")
    assert ranks[1]["priority_updates"] == 200  # one shard: every update reaches it
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert rows and float(rows[-1]["learner_step"]) == 200
    lags = [float(r["param_lag"]) for r in rows if r["param_lag"] not in ("", "nan")]
    # actors act with parameters the learner published during the run, not only the
    # initial ones (the lag: learner version minus the version in the actors' last
    # reports; TINY has no rate limiter to hold the actors back)
    assert lags and max(lags) < 100, lags
    for actor in ranks[2:]:
        assert actor["param_updates"] >= 2
    assert (run / "config.yaml").is_file()
    # every rank left within 30 s of the learner's stop decision
    assert max(r["exit_time"] for r in ranks) - learner["stop_time"] < 30


def test_mpi_two_shards_priorities_reach_their_owners(tmp_path):
    run = tmp_path / "run"
    proc, _ = launch(5, ["--run-dir", str(run)] + sets(*TINY, "learner.max_steps=60",
                                                        "topology.replay_shards=2"), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = json.loads((run / "summary.json").read_text())
    assert [r["role"] for r in ranks] == ["learner", "replay", "replay", "actor", "actor"]
    check_nothing_lost(ranks)
    learner, shards = ranks[0], ranks[1:3]
    # each actor feeds its own shard; both are sampled and both get priority updates
    for shard in shards:
        assert shard["inserted_sequences"] > 0 and shard["sampled_sequences"] > 0
        assert shard["priority_updates"] > 0 and shard["priority_keys"] > 0
        # every key a shard was sent names it: none was refused as another shard's
        assert shard["misrouted_updates"] == 0
    # the learner sent each shard as many keys as the shard received, and every key of
    # the 60 batches of 16 reached a shard (the end-of-run checkpoint comes before STOP)
    assert learner["priority_keys_sent"] == [s["priority_keys"] for s in shards]
    assert sum(s["priority_keys"] for s in shards) == 60 * 16
    assert sum(s["sampled_sequences"] for s in shards) >= 60 * 16


def test_mpi_actor_crash_aborts_the_job(tmp_path):
    proc, seconds = launch(4, ["--run-dir", str(tmp_path / "run"), "--inject-actor-failure",
                               "500"] + sets(*TINY, "learner.max_steps=1000000"), tmp_path,
                           timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("rank 2 (actor 0) failed; aborting the whole job") == 1
    assert "injected actor failure" in proc.stderr
    assert seconds < 100  # aborted, not hung until the budget


def test_mpi_too_few_ranks(tmp_path):
    proc, _ = launch(2, sets("topology.replay_shards=1"), tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("need 3 MPI ranks, but the job has 2") == 1
    assert "mpiexec -n 3" in proc.stderr


def test_serial_flag_under_mpiexec_is_refused(tmp_path):
    proc, _ = launch(2, ["--serial"], tmp_path, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.count("--serial runs every role in one process") == 1


def test_config_reaches_every_rank_from_rank_0(tmp_path):
    """r2d2-train's broadcast: ranks 1-3 are launched (MPMD) with a config file
    that does not exist, another run directory and a conflicting network size;
    the job runs on rank 0's config alone. Were ranks 1-3 to read their own
    arguments, they would exit 2 on the missing file, or their parameter
    vectors would not match the learner's."""
    run, other = tmp_path / "run", tmp_path / "other"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cli = [sys.executable, "-m", "r2d2_hpc.cli", "--quiet"]
    rank0 = cli + ["--run-dir", str(run)] + sets(*TINY, "learner.max_steps=30")
    others = cli + ["--config", str(tmp_path / "missing.yaml"), "--run-dir", str(other),
                    "--set", "network.lstm_size=7"]
    proc = subprocess.run([*mpiexec_cmd(), "-n", "1"] + rank0 + [":", "-n", "3"] + others,
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = json.loads((run / "summary.json").read_text())
    assert [r["role"] for r in ranks] == ["learner", "replay", "actor", "actor"]
    assert ranks[0]["learner_step"] == 30
    check_nothing_lost(ranks)
    assert not other.exists()


def test_a_replay_too_big_for_the_node_stops_before_anything_starts(tmp_path):
    """The memory check through the real entry point: a replay twice this
    machine's available memory ends the job with exit 2 and one message (rank
    0), before any rank allocates and before the run directory is made."""
    cfg = tiny_job_config()
    spec = job_spec(cfg)
    small = dataclasses.replace(cfg, replay=dataclasses.replace(
        cfg.replay, capacity_observations=100_000))
    per_obs = sum(replay_shard_spec(small, spec, 1).storage_bytes().values()) / 100_000
    capacity = int(2 * available_memory_bytes() / per_obs)
    run = tmp_path / "run"
    proc, seconds = launch(4, ["--run-dir", str(run)]
                           + sets(*TINY, f"replay.capacity_observations={capacity}"), tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("does not fit in memory") == 1, proc.stderr
    assert "replay.capacity_observations" in proc.stderr and "GB" in proc.stderr
    assert not run.exists()
    assert seconds < 60


def test_stop_at_a_target_return_ends_cleanly(tmp_path):
    """learner.target_return through the real entry point: the first greedy
    evaluation at or above it ends the run with a final checkpoint, the run's
    outputs, exit 0, and a line saying why."""
    run = tmp_path / "run"
    proc, _ = launch(4, ["--run-dir", str(run)] + sets(
        *TINY, "learner.max_steps=100000", "learner.target_return=5",
        "logging.eval_interval_steps=10", "logging.eval_episodes=4"), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lead = json.loads((run / "summary.json").read_text())[0]
    assert lead["stop_reason"].startswith("learner.target_return=5 reached")
    assert lead["learner_step"] % 10 == 0 and lead["learner_step"] < 100000
    assert lead["last_eval_return"] >= 5
    assert "done: learner.target_return=5 reached" in proc.stdout
    assert (run / "learner_final.h5").is_file() and (run / "metrics.csv").is_file()
    assert lead["checkpoints"] and lead["checkpoints"][-1].endswith(f"{lead['learner_step']:09d}")

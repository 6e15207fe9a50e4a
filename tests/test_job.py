"""The whole job: serial mode in-process, and the real entry point under mpiexec."""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time


from r2d2_hpc.config import load_config
from r2d2_hpc.job.runner import run_serial
from r2d2_hpc.presets import load_preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Small, fast settings on top of the embedded default.
TINY = ["replay.min_fill_sequences=40", "actor.num_envs=8", "learner.batch_size=16",
        "network.lstm_size=32", "network.head_hidden=32", "network.mlp_hidden=[32]",
        "logging.log_interval_seconds=0.5", "logging.tensorboard=false",
        "learner.publish_period=2", "actor.param_refresh_period=16",
        # no rate limit: these tests are about plumbing, not learning (a limited
        # actor waits, and its parameter lag then depends on the machine's load)
        "replay.samples_per_insert=0"]


def tiny_config(*extra):
    return load_config(None, TINY + list(extra), base=load_preset("default"))


def by_role(ranks, role):
    return [r for r in ranks if r["role"] == role]


def check_nothing_lost(ranks):
    actors, shards = by_role(ranks, "actor"), by_role(ranks, "replay")
    sent = sum(a["sequences_sent"] for a in actors)
    stored = sum(s["inserted_sequences"] + s["dropped_sequences"] for s in shards)
    assert sent == stored > 0
    assert sum(a["steps_sent"] for a in actors) == sum(s["steps_received"] for s in shards)
    assert sum(a["chunks_sent"] for a in actors) == sum(s["chunks_received"] for s in shards)


def test_serial_run_counts_everything(tmp_path):
    cfg = tiny_config("learner.max_steps=25", "topology.replay_shards=2")
    result = run_serial(cfg, str(tmp_path), num_actors=2, quiet=True)
    ranks = result["ranks"]
    (learner,) = by_role(ranks, "learner")
    assert learner["learner_step"] == 25
    assert learner["stop_reason"] == "learner.max_steps=25 reached"
    check_nothing_lost(ranks)
    shards = by_role(ranks, "replay")
    assert len(shards) == 2
    # every learner step sends priorities to the shards its batch came from
    assert sum(s["priority_updates"] for s in shards) >= 25
    # the union of shards' samples is the learner's batches (plus requests in flight)
    sampled = sum(s["sampled_sequences"] for s in shards)
    assert 25 * 16 <= sampled <= (25 + cfg.learner.samples_in_flight) * 16
    # parameters reached the actors, and newer ones than the initial publication
    for actor in by_role(ranks, "actor"):
        assert actor["param_updates"] >= 2 and actor["params_version"] > 0
    assert (tmp_path / "metrics.csv").is_file()
    assert json.loads((tmp_path / "summary.json").read_text()) == ranks


def test_serial_run_stops_on_env_budget(tmp_path):
    cfg = tiny_config("actor.max_env_steps=3000", "learner.max_steps=0")
    result = run_serial(cfg, None, quiet=True)
    (learner,) = by_role(result["ranks"], "learner")
    assert learner["stop_reason"].startswith("actor.max_env_steps")
    assert learner["env_steps"] >= 3000


# --- the real entry point under mpiexec ----------------------------------------

def mpiexec():
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.path.exists(here) else shutil.which("mpiexec")
    assert found, "mpiexec not found: install the [mpich] extra or a system MPI"
    return found


def launch(n, args, cwd, timeout=240):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [mpiexec(), "-n", str(n), sys.executable, "-m", "r2d2_hpc.cli", "--quiet"] + args
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


def sets(*fields):
    out = []
    for f in fields:
        out += ["--set", f]
    return out


def test_mpi_end_to_end_four_ranks(tmp_path):
    run = tmp_path / "run"
    proc, _ = launch(4, ["--run-dir", str(run)] + sets(*TINY, "learner.max_steps=200"),
                     tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = json.loads((run / "summary.json").read_text())
    assert [r["role"] for r in ranks] == ["learner", "replay", "actor", "actor"]
    assert all(r["clean_shutdown"] for r in ranks)
    check_nothing_lost(ranks)
    learner = ranks[0]
    assert learner["learner_step"] == 200
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
    shards = ranks[1:3]
    # each actor feeds its own shard; both are sampled and both get priority updates
    for shard in shards:
        assert shard["inserted_sequences"] > 0 and shard["sampled_sequences"] > 0
        assert shard["priority_updates"] > 0
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

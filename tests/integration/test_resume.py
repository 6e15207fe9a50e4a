"""Checkpoints in the running job: signal -> coordinated checkpoint -> exit 3 -> resume.

The resumed learner state (parameters, optimizer, counters, RNG) and every
replay shard (contents, priorities, sum-tree, generations, RNG) must equal what
was checkpointed bit for bit: each rank records a digest of the state it wrote
(``checkpoint_digests``) and of the state it resumed with (``resume_digest``).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from r2d2_hpc.checkpoint.preemption import EXIT_REQUEUE
from r2d2_hpc.checkpoint.records import list_checkpoints
from r2d2_hpc.checkpoint.validate import find_latest_valid
from r2d2_hpc.replay.snapshot import load_snapshot

from benchmarks._common import rank_pids  # shared with benchmarks/preempt_bench.py
from tests.helpers.launcher import CORE_SETS, ROOT, TINY, launch, mpiexec_cmd, sets


SMALL = TINY + ["logging.eval_interval_steps=0", "logging.final_eval_episodes=0"]


def serial(run, *extra, timeout=300):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "r2d2_hpc.cli", "--serial", "--quiet", "--run-dir", str(run)]
    cmd += sets(*SMALL, *extra)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def summary(run):
    return json.loads((run / "summary.json").read_text())


def learner_step(run) -> int:
    path = run / "metrics.csv"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        return 0
    header = lines[0].split(",")
    try:
        return int(float(lines[-1].split(",")[header.index("learner_step")] or 0))
    except (ValueError, IndexError):
        return 0


@pytest.mark.parametrize("core", sorted(CORE_SETS))
def test_sigusr1_checkpoints_exits_3_and_resumes_bit_exact(tmp_path, core):
    run = tmp_path / "run"
    args = ["--quiet", "--run-dir", str(run)] + sets(*SMALL, *CORE_SETS[core],
                                                     "logging.log_interval_seconds=0.2",
                                                     "learner.max_steps=400")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([*mpiexec_cmd(), "-n", "4", sys.executable, "-m", "r2d2_hpc.cli"] + args,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while learner_step(run) < 30 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()
        pids = rank_pids(str(run))
        assert len(pids) == 4, pids
        # A signal reaching one rank (not the learner) is enough; a second signal
        # to another rank during the checkpoint must not corrupt anything.
        os.kill(pids[-1], signal.SIGUSR1)
        time.sleep(0.05)
        os.kill(pids[-2], signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_REQUEUE, out + err
    first = summary(run)
    assert all(r["exit_code"] == EXIT_REQUEUE for r in first), first
    lead = first[0]
    assert lead["stop_reason"].startswith("preempted by SIG")
    (name,) = lead["checkpoints"]
    step = int(name.split("-")[1])
    assert 30 <= step < 400
    info = find_latest_valid(str(run), report=None)
    assert info is not None and info.name == name and info.step == step
    assert info.counters["env_steps"] > 0
    # the end-of-run files wait for the run's real end (grace time goes to exiting)
    assert not (run / "learning_curve.png").exists()
    assert not (run / "learner_final.h5").exists()

    # The requeued job: the same command resumes by itself.
    proc2, _ = launch(4, args[1:], tmp_path, timeout=240)
    assert proc2.returncode == 0, proc2.stdout + proc2.stderr
    assert f"resuming from checkpoint {name}" in proc2.stdout
    second = summary(run)
    lead2, shard2 = second[0], second[1]
    assert lead2["resumed_from"] == step
    assert lead2["resume_digest"] == lead["checkpoint_digests"][str(step)]
    assert shard2["resume_digest"] == first[1]["checkpoint_digests"][str(step)]
    assert lead2["learner_step"] == 400          # continued from `step`, not from 0
    assert lead2["env_steps"] >= info.counters["env_steps"]
    assert (run / "learning_curve.png").is_file() and (run / "learner_final.h5").is_file()


def test_corrupt_newest_checkpoint_is_named_once_and_previous_used(tmp_path):
    run = tmp_path / "run"
    proc = serial(run, "learner.max_steps=60", "checkpoint.interval_steps=25")
    assert proc.returncode == 0, proc.stderr
    names = [os.path.basename(p) for p in list_checkpoints(str(run))]
    assert names == ["ckpt-000000000025", "ckpt-000000000050", "ckpt-000000000060"]
    learner_file = run / "checkpoints" / names[-1] / "learner.h5"
    data = learner_file.read_bytes()
    learner_file.write_bytes(data[: len(data) // 2])   # truncated
    proc = serial(run, "learner.max_steps=70", "checkpoint.interval_steps=25")
    assert proc.returncode == 0, proc.stderr
    named = [line for line in proc.stderr.splitlines() if names[-1] in line]
    assert len(named) == 1 and "truncated" in named[0], proc.stderr
    assert "resuming from checkpoint ckpt-000000000050" in proc.stdout
    assert summary(run)[0]["resumed_from"] == 50


def test_incompatible_resume_names_the_field_and_exits_2(tmp_path):
    run = tmp_path / "run"
    assert serial(run, "learner.max_steps=10").returncode == 0
    before = sorted(os.listdir(run / "checkpoints"))
    proc = serial(run, "learner.max_steps=20", "network.lstm_size=48")
    assert proc.returncode == 2
    assert "network.lstm_size" in proc.stderr and "32" in proc.stderr and "48" in proc.stderr
    assert sorted(os.listdir(run / "checkpoints")) == before  # nothing lost


def test_resume_requires_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("learner:\n  max_steps: 5\n")
    proc = subprocess.run([sys.executable, "-m", "r2d2_hpc.cli", "--serial", "--resume", str(run)],
                          env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("holds no complete, valid checkpoint") == 1


def test_resume_into_more_shards_keeps_every_sequence(tmp_path):
    run = tmp_path / "run"
    proc = serial(run, "learner.max_steps=30", "replay.samples_per_insert=0")
    assert proc.returncode == 0, proc.stderr
    info = find_latest_valid(str(run), report=None)
    stored = load_snapshot(info.shard_dir(0)).count
    # resume with two shards and no further training step to compare the fill
    proc = serial(run, "learner.max_steps=30", "topology.replay_shards=2",
                  "checkpoint.at_end=false")
    assert proc.returncode == 0, proc.stderr
    shards = [r for r in summary(run) if r["role"] == "replay"]
    assert len(shards) == 2
    restored = sum(s["stored_sequences"] - s["inserted_sequences"] for s in shards)
    assert stored > 0 and restored == stored


def test_resume_with_a_new_replay_capacity_takes_it_and_keeps_every_sequence(tmp_path):
    """Same shard count, bigger replay: the resumed shard has this run's capacity
    (the one the memory check counted), not the checkpoint's, and every sequence."""
    run = tmp_path / "run"
    proc = serial(run, "learner.max_steps=30", "replay.samples_per_insert=0")
    assert proc.returncode == 0, proc.stderr
    saved = load_snapshot(find_latest_valid(str(run), report=None).shard_dir(0))
    bigger = 2 * saved.spec.capacity_observations
    proc = serial(run, "learner.max_steps=30", f"replay.capacity_observations={bigger}",
                  "checkpoint.at_end=false")
    assert proc.returncode == 0, proc.stderr
    (shard,) = [r for r in summary(run) if r["role"] == "replay"]
    assert shard["capacity_observations"] == bigger
    assert shard["stored_sequences"] - shard["inserted_sequences"] == saved.count > 0

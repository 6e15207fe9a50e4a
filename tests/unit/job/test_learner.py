"""The learner rank: in a serial job (evaluations, their metrics rows, the epsilon buckets),
and ticked by hand through a preemption checkpoint."""
from __future__ import annotations

import errno
import json
import math
import os
import signal

import numpy as np
import pytest

import r2d2_hpc.job.actor as actor_rank
from r2d2_hpc.agent.exploration import EPSILON_BUCKET_COLUMNS
from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.preemption import EXIT_CHECKPOINT_FAILED, EXIT_REQUEUE
from r2d2_hpc.comm.memory_endpoint import InMemoryHub
from r2d2_hpc.comm.messages import Command, job_messages
from r2d2_hpc.comm.topology import assign_role
from r2d2_hpc.config import load_config
from r2d2_hpc.job.learner import LearnerRank
from r2d2_hpc.job.replay import ReplayRank
from r2d2_hpc.job.role import job_spec, poll_control
from r2d2_hpc.job.runner import run_serial
from r2d2_hpc.presets import load_preset
from r2d2_hpc.storage.digest import state_digest
from tests.helpers.launcher import tiny_job_config


def test_serial_job_logs_evaluations_and_buckets(tmp_path, monkeypatch):
    monkeypatch.setattr(actor_rank, "REPORT_INTERVAL_S", 0.0)  # episodes reach the learner
    cfg = load_config(None, [
        "env.name=counter", "replay.min_fill_sequences=20", "actor.num_envs=6",
        "learner.batch_size=8", "network.lstm_size=16", "network.head_hidden=16",
        "network.mlp_hidden=[16]", "logging.log_interval_seconds=0.05",
        "logging.tensorboard=false", "learner.max_steps=30", "logging.eval_interval_steps=10",
        "logging.eval_episodes=4", "logging.final_eval_episodes=5",
        "replay.samples_per_insert=0"], base=load_preset("default"))
    result = run_serial(cfg, str(tmp_path), num_actors=2, quiet=True)
    lead = result["ranks"][0]
    assert lead["learner_step"] == 30
    assert lead["evaluations"] == 3  # steps 10, 20, 30; the final one is apart
    assert lead["final_eval_episodes"] == 5 and len(lead["final_eval_returns"]) == 5
    # counter: env i lasts 5 + 5 i steps and pays 1 or 2 per step
    lengths = 5 + 5 * np.arange(5)
    returns = np.asarray(lead["final_eval_returns"])
    assert (returns >= lengths).all() and (returns <= 2 * lengths).all()
    assert lead["final_eval_return"] == pytest.approx(returns.mean())
    rows = result["metrics"]
    evals = [(r["learner_step"], r["eval_return"]) for r in rows
             if not math.isnan(r["eval_return"])]
    assert [s for s, _ in evals] == [10.0, 20.0, 30.0]
    # the final evaluation has its own columns, on a row of its own
    finals = [r for r in rows if not math.isnan(r["final_eval_return"])]
    assert len(finals) == 1 and finals[0]["learner_step"] == 30.0
    assert finals[0]["final_eval_return"] == pytest.approx(lead["final_eval_return"])
    assert finals[0]["final_eval_return_std"] == pytest.approx(returns.std())
    assert math.isnan(finals[0]["eval_return"])
    # once learning runs, no two rows at one learner step without an evaluation to
    # tell them apart (while the replay fills, rows at step 0 show the env steps)
    plain = [r["learner_step"] for r in rows if r["learner_step"] > 0
             and math.isnan(r["eval_return"]) and math.isnan(r["final_eval_return"])]
    assert len(plain) == len(set(plain))
    for r in rows:
        for col in EPSILON_BUCKET_COLUMNS:
            assert col in r
    with_episodes = [r for r in rows if not math.isnan(r["episode_return"])]
    assert with_episodes and any(not math.isnan(r["return_eps_low"]) for r in with_episodes)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary[0]["final_eval_return"] == pytest.approx(lead["final_eval_return"])
    assert (tmp_path / "learning_curve.png").is_file()
    assert (tmp_path / "learner_final.h5").is_file()


def _lead_shard_and_actor(tmp_path):
    """Learner 0 and a real replay rank writing ``tmp_path/run``, and an actor's
    endpoint, on one in-memory hub: (lead, shard, actor endpoint, hub, run dir)."""
    cfg = tiny_job_config("logging.final_eval_episodes=0", "logging.eval_interval_steps=0")
    spec = job_spec(cfg)
    hub = InMemoryHub(job_messages(cfg, spec), 3)  # learner 0, shard 1, actor 2
    run = str(tmp_path / "run")
    lead = LearnerRank(cfg, spec, hub.endpoint(0), assign_role(0, 3, cfg.topology),
                       run_dir=run)
    shard = ReplayRank(cfg, spec, hub.endpoint(1), assign_role(1, 3, cfg.topology),
                       run_dir=run)
    return lead, shard, hub.endpoint(2), hub, run


def test_preemption_checkpoints_once_then_stops_everyone_with_exit_3(tmp_path):
    """Learner 0, a real replay rank and an actor's endpoint, ticked by hand: the first
    signal starts the checkpoint, a second one (and a peer's PREEMPT) starts no other,
    and the STOP with exit code 3 waits for the shard's part."""
    lead, shard, actor, hub, run = _lead_shard_and_actor(tmp_path)
    lead.on_preempt(signal.SIGUSR1)
    assert not lead.tick() and lead.checkpoints.pending is not None and not lead.done
    lead.on_preempt(signal.SIGTERM)
    actor.send("CONTROL", 0, command=int(Command.PREEMPT), argument=int(signal.SIGUSR1))
    assert not lead.tick() and not lead.done  # the shard has not written yet
    assert [c.command for c in poll_control(hub.endpoint(1))] == [int(Command.CHECKPOINT)]
    shard.write_checkpoint(0, lead=0)  # what its tick does on that CONTROL
    assert poll_control(actor) == []
    lead.tick()
    assert lead.done and lead.exit_code == EXIT_REQUEUE
    assert [(c.command, c.argument) for c in poll_control(actor)] == \
        [(int(Command.STOP), EXIT_REQUEUE)]
    summary = lead.summary()
    assert summary["stop_reason"] == "preempted by SIGUSR1"
    assert summary["exit_code"] == EXIT_REQUEUE and len(summary["checkpoints"]) == 1
    assert summary["checkpoint_digests"] == {"0": state_digest(lead.learner.state())}


def test_a_preemption_checkpoint_that_fails_stops_everyone_with_exit_4(tmp_path, monkeypatch,
                                                                       capsys):
    """The shard's disk is full: the checkpoint fails, the STOP carries
    EXIT_CHECKPOINT_FAILED (not 3: nothing new to resume from), and it is said."""
    lead, shard, actor, hub, run = _lead_shard_and_actor(tmp_path)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(CheckpointLayout, "write_shard", disk_full)
    lead.on_preempt(signal.SIGUSR1)
    assert not lead.tick() and lead.checkpoints.pending is not None
    assert [c.command for c in poll_control(hub.endpoint(1))] == [int(Command.CHECKPOINT)]
    shard.write_checkpoint(0, lead=0)
    lead.tick()
    assert lead.done and lead.exit_code == EXIT_CHECKPOINT_FAILED
    assert [(c.command, c.argument) for c in poll_control(actor)] == \
        [(int(Command.STOP), EXIT_CHECKPOINT_FAILED)]
    summary = lead.summary()
    assert summary["checkpoints"] == [] and summary["checkpoint_failures"] == [0]
    err = capsys.readouterr().err
    assert "replay shard 0: checkpoint 0 failed: [Errno 28] No space left on device" in err
    assert "checkpoint at step 0 failed: the replay shard at rank 1 could not write its part; " \
           "there is no earlier checkpoint" in err
    assert os.listdir(os.path.join(run, "checkpoints")) == []  # nothing half-written is left

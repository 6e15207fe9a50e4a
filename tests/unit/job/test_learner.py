"""The learner rank in a serial job: evaluations, their metrics rows and the epsilon buckets."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

import r2d2_hpc.job.actor as actor_rank
from r2d2_hpc.agent.exploration import EPSILON_BUCKET_COLUMNS
from r2d2_hpc.config import load_config
from r2d2_hpc.job.runner import run_serial
from r2d2_hpc.presets import load_preset


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
    assert lead["evaluations"] == 4  # steps 10, 20, 30 and the final one
    assert lead["final_eval_episodes"] == 5 and len(lead["final_eval_returns"]) == 5
    # counter: env i lasts 5 + 5 i steps and pays 1 or 2 per step
    lengths = 5 + 5 * np.arange(5)
    returns = np.asarray(lead["final_eval_returns"])
    assert (returns >= lengths).all() and (returns <= 2 * lengths).all()
    assert lead["final_eval_return"] == pytest.approx(returns.mean())
    rows = result["metrics"]
    evals = [(r["learner_step"], r["eval_return"]) for r in rows
             if not math.isnan(r["eval_return"])]
    assert [s for s, _ in evals] == [10.0, 20.0, 30.0, 30.0]
    assert evals[-1][1] == pytest.approx(lead["final_eval_return"])
    for r in rows:
        for col in EPSILON_BUCKET_COLUMNS:
            assert col in r
    with_episodes = [r for r in rows if not math.isnan(r["episode_return"])]
    assert with_episodes and any(not math.isnan(r["return_eps_low"]) for r in with_episodes)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary[0]["final_eval_return"] == pytest.approx(lead["final_eval_return"])
    assert (tmp_path / "learning_curve.png").is_file()
    assert (tmp_path / "learner_final.h5").is_file()

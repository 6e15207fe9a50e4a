"""Greedy evaluation (Evaluator), epsilon buckets, and the learner rank's eval metrics."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.agent.evaluation import Evaluator
from r2d2_hpc.agent.exploration import apex_epsilon
from r2d2_hpc.agent.exploration import EPSILON_BUCKET_COLUMNS, epsilon_buckets
from r2d2_hpc.agent.network import R2D2Network
from r2d2_hpc.config import EnvConfig, LoggingConfig, load_config
from r2d2_hpc.job.runner import run_serial
from r2d2_hpc.presets import load_preset

from tests.fakes import tiny_config


def counter_config(max_episode_steps: int = 500, epsilon: float = 0.0, episodes: int = 3):
    cfg = tiny_config()
    return dataclasses.replace(
        cfg, env=EnvConfig(name="counter", frame_stack=1, max_episode_steps=max_episode_steps),
        logging=LoggingConfig(eval_episodes=episodes, eval_epsilon=epsilon))


def fixed_action_params(cfg, obs_shape, num_actions: int, action: int) -> np.ndarray:
    """Flat parameters whose Q-values are 0 except 1 for ``action``, whatever the input."""
    net = R2D2Network(obs_shape, num_actions, cfg.network)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.advantage_head[-1].bias[action] = 1.0
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy().astype(np.float32)


# Counter env i terminates after 5 + 5 (i mod 8) steps; action a earns 1 + a.
@pytest.mark.parametrize("action, episodes, cap, returns, lengths", [
    (1, 3, 500, [10, 20, 30], [5, 10, 15]),    # reward 2 per step
    (0, 3, 500, [5, 10, 15], [5, 10, 15]),     # reward 1 per step
    (1, 2, 7, [10, 14], [5, 7]),               # env 1 truncated at 7 steps
    (0, 1, 500, [5], [5]),
])
def test_counter_returns_are_hand_computed(action, episodes, cap, returns, lengths):
    cfg = counter_config(max_episode_steps=cap, episodes=episodes)
    ev = Evaluator(cfg, (2,), 2, seed=3)
    res = ev.evaluate(fixed_action_params(cfg, (2,), 2, action), params_version=17)
    np.testing.assert_array_equal(res.returns, returns)
    np.testing.assert_array_equal(res.lengths, lengths)
    assert res.mean_return == pytest.approx(np.mean(returns))
    assert res.env_steps == sum(lengths)
    assert res.params_version == 17
    assert ev.num_evaluations == 1 and res.seconds >= 0


def test_epsilon_one_explores_and_epsilon_zero_does_not():
    cfg = counter_config(episodes=8, epsilon=1.0)
    params = fixed_action_params(cfg, (2,), 2, 1)
    explore = Evaluator(cfg, (2,), 2, seed=0).evaluate(params)
    greedy = Evaluator(dataclasses.replace(cfg, logging=LoggingConfig(
        eval_episodes=8, eval_epsilon=0.0)), (2,), 2, seed=0).evaluate(params)
    # greedy: 2 per step; uniformly random actions: 1.5 per step on average
    np.testing.assert_array_equal(greedy.returns, 2 * greedy.lengths)
    assert explore.returns.sum() < greedy.returns.sum()
    assert (explore.returns >= explore.lengths).all()


def test_cartpole_evaluation_is_seeded_and_successive_ones_differ():
    cfg = load_config(None, ["env.name=cartpole_masked", "network.mlp_hidden=[8]",
                             "network.lstm_size=8", "network.head_hidden=8"],
                      base=load_preset("default"))
    obs_shape, num_actions = (2,), 2
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = R2D2Network(obs_shape, num_actions, cfg.network)
    params = torch.cat([p.detach().reshape(-1) for p in net.parameters()]).numpy()
    a, b = Evaluator(cfg, obs_shape, num_actions, seed=5), Evaluator(cfg, obs_shape,
                                                                       num_actions, seed=5)
    first_a, first_b = a.evaluate(params), b.evaluate(params)
    np.testing.assert_array_equal(first_a.returns, first_b.returns)
    second = a.evaluate(params)
    assert not np.array_equal(first_a.returns, second.returns)  # fresh start states
    # CartPole pays 1 per step
    np.testing.assert_array_equal(first_a.returns, first_a.lengths)
    assert first_a.returns.size == cfg.logging.eval_episodes


def test_evaluator_rejects_zero_episodes():
    with pytest.raises(ValueError, match="episodes"):
        Evaluator(counter_config(), (2,), 2, seed=0, episodes=0)


# ---------------------------------------------------------------- epsilon buckets

@pytest.mark.parametrize("num_envs, buckets, expected", [
    # env j (0 = greediest) -> floor(buckets * j / N)
    (6, 3, [0, 0, 1, 1, 2, 2]),
    (3, 3, [0, 1, 2]),
    (4, 2, [0, 0, 1, 1]),
    (5, 3, [0, 0, 1, 1, 2]),
    (1, 3, [0]),
])
def test_epsilon_buckets_table(num_envs, buckets, expected):
    all_eps = np.asarray(apex_epsilon(np.arange(num_envs), num_envs))  # decreasing
    greedy_first = np.sort(all_eps)
    got = epsilon_buckets(greedy_first, all_eps, buckets)
    np.testing.assert_array_equal(got, expected)
    # order of the episodes does not matter
    perm = np.random.default_rng(0).permutation(num_envs)
    np.testing.assert_array_equal(epsilon_buckets(greedy_first[perm], all_eps, buckets),
                                  np.asarray(expected)[perm])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 64), st.integers(1, 5), st.integers(0, 2**31))
def test_epsilon_buckets_property(num_envs, buckets, seed):
    all_eps = np.asarray(apex_epsilon(np.arange(num_envs), num_envs), np.float64)
    rng = np.random.default_rng(seed)
    env = rng.integers(0, num_envs, size=20)
    got = epsilon_buckets(all_eps[env], all_eps, buckets)
    # actor env index i has the (N-1-i)-th smallest epsilon
    np.testing.assert_array_equal(got, (num_envs - 1 - env) * buckets // num_envs)
    # greedier envs never land in a more exploring bucket
    order = np.argsort(all_eps[env], kind="stable")
    assert (np.diff(got[order]) >= 0).all()


# ---------------------------------------------------------------- in the job

def test_serial_job_logs_evaluations_and_buckets(tmp_path, monkeypatch):
    import r2d2_hpc.job.actor as actor_rank

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


def test_default_step_cap_is_the_atari_frame_cap_or_the_episode_cap():
    from r2d2_hpc.config import load_config
    from r2d2_hpc.agent.evaluation import default_step_cap

    atari = load_config(None, ["env.name=atari", "env.max_episode_frames=108000"])
    assert default_step_cap(atari) == 27_000          # 108,000 frames / frame skip 4
    cart = load_config(None, ["env.name=cartpole_masked", "env.max_episode_steps=321"])
    assert default_step_cap(cart) == 321

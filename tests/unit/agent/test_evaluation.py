"""Greedy evaluation (Evaluator): hand-computed returns, exploration, seeding, the step cap."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from r2d2_hpc.agent.evaluation import Evaluator, default_step_cap
from r2d2_hpc.agent.network import R2D2Network
from r2d2_hpc.agent.params import to_flat_array
from r2d2_hpc.config import EnvConfig, LoggingConfig, load_config
from r2d2_hpc.presets import load_preset
from tests.helpers.fakes import tiny_config


def counter_config(max_episode_steps: int = 500, epsilon: float = 0.0, episodes: int = 3,
                   core: str = "lstm"):
    cfg = tiny_config()
    return dataclasses.replace(
        cfg, env=EnvConfig(name="counter", frame_stack=1, max_episode_steps=max_episode_steps),
        network=dataclasses.replace(cfg.network, core=core),
        logging=LoggingConfig(eval_episodes=episodes, eval_epsilon=epsilon))


def fixed_action_params(cfg, obs_shape, num_actions: int, action: int) -> np.ndarray:
    """Flat parameters whose Q-values are 0 except 1 for ``action``, whatever the input."""
    net = R2D2Network(obs_shape, num_actions, cfg.network)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        net.advantage_head[-1].bias[action] = 1.0
    return to_flat_array(net.parameters())


# Counter env i terminates after 5 + 5 (i mod 8) steps; action a earns 1 + a.
@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
@pytest.mark.parametrize("action, episodes, cap, returns, lengths", [
    (1, 3, 500, [10, 20, 30], [5, 10, 15]),    # reward 2 per step
    (0, 3, 500, [5, 10, 15], [5, 10, 15]),     # reward 1 per step
    (1, 2, 7, [10, 14], [5, 7]),               # env 1 truncated at 7 steps
    (0, 1, 500, [5], [5]),
])
def test_counter_returns_are_hand_computed(action, episodes, cap, returns, lengths, core):
    cfg = counter_config(max_episode_steps=cap, episodes=episodes, core=core)
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
    params = to_flat_array(net.parameters())
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


def test_default_step_cap_is_the_atari_frame_cap_or_the_episode_cap():
    atari = load_config(None, ["env.name=atari", "env.max_episode_frames=108000"])
    assert default_step_cap(atari) == 27_000          # 108,000 frames / frame skip 4
    cart = load_config(None, ["env.name=cartpole_masked", "env.max_episode_steps=321"])
    assert default_step_cap(cart) == 321

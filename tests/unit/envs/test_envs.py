"""Tests for r2d2_hpc.envs: the counter fake, CartPole against gymnasium, the factory."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from r2d2_hpc.config import EnvConfig
from r2d2_hpc.envs.base import EpisodeStats, FrameStack
from r2d2_hpc.envs.classic import CartPoleEnv, CounterEnv, counter_episode_lengths
from r2d2_hpc.envs.factory import make_vector_env


# --------------------------------------------------------------------------- #
# Counter.

def test_counter_table():
    # Env 0 terminates after 2 steps, env 1 after 5 but is truncated at 3.
    env = CounterEnv(2, [2, 5], max_episode_steps=3)
    obs = env.reset()
    np.testing.assert_array_equal(obs, [[0, 0], [0, 1]])
    assert obs.dtype == np.float32
    #        actions  reward      terminated     truncated      obs after (k per env)
    rows = [([0, 1], [1, 2], [False, False], [False, False], [1, 1]),
            ([1, 0], [2, 1], [True, False], [False, False], [0, 2]),
            ([0, 0], [1, 1], [False, False], [False, True], [1, 0]),
            ([1, 1], [2, 2], [True, False], [False, False], [0, 1])]
    for actions, reward, term, trunc, k in rows:
        res = env.step(np.array(actions))
        np.testing.assert_array_equal(res.reward, reward)
        assert res.reward.dtype == np.float32
        np.testing.assert_array_equal(res.terminated, term)
        np.testing.assert_array_equal(res.truncated, trunc)
        np.testing.assert_array_equal(res.obs, np.stack([k, [0, 1]], 1))


def test_counter_terminates_and_truncates_together():
    env = CounterEnv(1, 3, max_episode_steps=3)
    env.reset()
    for _ in range(2):
        res = env.step(np.zeros(1, np.int64))
        assert not res.terminated[0] and not res.truncated[0]
    res = env.step(np.zeros(1, np.int64))
    assert res.terminated[0] and res.truncated[0]
    assert res.obs[0, 0] == 0


@pytest.mark.parametrize("bad", [np.array([0, 2]), np.array([0]), np.array([0.0, 1.0]),
                                 np.array([-1, 0])])
def test_counter_rejects_bad_actions(bad):
    env = CounterEnv(2, 4)
    env.reset()
    with pytest.raises(ValueError, match="actions"):
        env.step(bad)


# --------------------------------------------------------------------------- #
# CartPole against gymnasium.

def _random_states(rng: np.random.Generator, n: int) -> np.ndarray:
    """States spread up to the thresholds, so that many steps terminate."""
    return np.stack([rng.uniform(-2.4, 2.4, n), rng.uniform(-2.0, 2.0, n),
                     rng.uniform(-0.21, 0.21, n), rng.uniform(-2.0, 2.0, n)], axis=1)


@pytest.mark.parametrize("masked", [False, True])
def test_cartpole_matches_gymnasium_step_by_step(masked):
    gym_cartpole = pytest.importorskip("gymnasium.envs.classic_control.cartpole")
    n = 32
    rng = np.random.default_rng(123)
    env = CartPoleEnv(n, masked=masked, max_episode_steps=10_000, seed=0)
    env.reset()
    refs = [gym_cartpole.CartPoleEnv() for _ in range(n)]
    for ref in refs:
        ref.reset(seed=0)
    num_terminated = 0
    for _ in range(40):
        env.state = _random_states(rng, n)
        before = env.state.copy()
        actions = rng.integers(0, 2, n)
        res = env.step(actions)
        for i, ref in enumerate(refs):
            ref.state = before[i].copy()
            ref.steps_beyond_terminated = None
            obs, reward, terminated, truncated, _ = ref.step(int(actions[i]))
            assert res.terminated[i] == terminated
            assert res.reward[i] == reward == 1.0
            assert not res.truncated[i] and not truncated
            if terminated:
                num_terminated += 1
                # Autoreset: a fresh state from U(-0.05, 0.05).
                assert np.all(np.abs(env.state[i]) <= 0.05)
            else:
                np.testing.assert_array_equal(env.state[i], ref.state)  # bit-identical
                expected = obs[[0, 2]] if masked else obs
                np.testing.assert_array_equal(res.obs[i], expected)
    assert num_terminated > 20  # the comparison covered many terminations


def test_cartpole_long_rollouts_match_gymnasium():
    gym_cartpole = pytest.importorskip("gymnasium.envs.classic_control.cartpole")
    n = 4
    rng = np.random.default_rng(7)
    env = CartPoleEnv(n, seed=5)
    env.reset()
    refs = [gym_cartpole.CartPoleEnv() for _ in range(n)]
    for i, ref in enumerate(refs):
        ref.reset(seed=0)
        ref.state = env.state[i].copy()
    alive = np.ones(n, bool)
    for _ in range(200):
        actions = rng.integers(0, 2, n)
        res = env.step(actions)
        for i in np.flatnonzero(alive):
            _, _, terminated, _, _ = refs[i].step(int(actions[i]))
            assert res.terminated[i] == terminated
            if terminated:
                alive[i] = False
            else:
                np.testing.assert_array_equal(env.state[i], refs[i].state)
    assert not alive.all()


def test_cartpole_truncates_at_max_episode_steps():
    env = CartPoleEnv(8, max_episode_steps=5, seed=3)
    env.reset()
    alternate = np.array([0, 1] * 4)
    for t in range(5):
        res = env.step(alternate if t % 2 == 0 else 1 - alternate)
        assert not res.terminated.any()  # 5 steps from near-upright cannot fall
        assert res.truncated.all() == (t == 4)
    np.testing.assert_array_equal(env.elapsed, 0)
    assert np.all(np.abs(env.state) <= 0.05)


def test_cartpole_seeding_and_initial_states():
    a = CartPoleEnv(16, seed=11).reset()
    b = CartPoleEnv(16, seed=11).reset()
    c = CartPoleEnv(16, seed=12).reset()
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == np.float32 and a.shape == (16, 4)
    assert np.all(np.abs(a) <= 0.05)
    env = CartPoleEnv(16, seed=99)
    np.testing.assert_array_equal(env.reset(seed=11), a)


def test_cartpole_masked_hides_velocities():
    env = CartPoleEnv(6, masked=True, seed=1)
    obs = env.reset()
    assert env.observation_shape == (2,) and obs.shape == (6, 2)
    np.testing.assert_array_equal(obs, env.state[:, [0, 2]].astype(np.float32))
    res = env.step(np.ones(6, np.int64))
    np.testing.assert_array_equal(res.obs, env.state[:, [0, 2]].astype(np.float32))


# --------------------------------------------------------------------------- #
# Frame stacking and episode statistics.

def test_frame_stack_zero_fills_before_episode_start():
    env = FrameStack(CounterEnv(2, [2, 4]), 3)
    assert env.observation_shape == (3, 2)
    obs = env.reset()
    np.testing.assert_array_equal(obs[:, :, 0], [[0, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(obs[:, :, 1], [[0, 0, 0], [0, 0, 1]])
    # k of the newest three frames per step (zeros before the episode start).
    expected_k = [([0, 0, 1], [0, 0, 1]),   # step 1
                  ([0, 0, 0], [0, 1, 2]),   # env 0 ended: fresh stack
                  ([0, 0, 1], [1, 2, 3]),
                  ([0, 0, 0], [0, 0, 0])]   # both ended
    for k0, k1 in expected_k:
        res = env.step(np.zeros(2, np.int64))
        np.testing.assert_array_equal(res.obs[0, :, 0], k0)
        np.testing.assert_array_equal(res.obs[1, :, 0], k1)


def test_episode_stats_table():
    stats = EpisodeStats(3)
    #        reward          terminated             truncated              finished
    #                                                                       (env, return, length)
    rows = [([1.0, 2.0, 0.5], [False, False, False], [False, False, False], []),
            ([1.0, 2.0, 0.5], [True, False, False], [False, False, False], [(0, 2.0, 2)]),
            ([3.0, 2.0, 0.5], [False, False, True], [False, True, True], [(1, 6.0, 3),
                                                                         (2, 1.5, 3)]),
            ([4.0, 1.0, 1.0], [True, False, True], [False, False, False], [(0, 7.0, 2),
                                                                          (2, 1.0, 1)])]
    for reward, term, trunc, expected in rows:
        done = stats.update(np.array(reward), np.array(term), np.array(trunc))
        got = list(zip(done.env_index.tolist(), done.episode_return.tolist(),
                       done.episode_length.tolist()))
        assert got == expected


# --------------------------------------------------------------------------- #
# Factory.

@pytest.mark.parametrize("name,shape", [("counter", (2,)), ("cartpole", (4,)),
                                        ("cartpole_masked", (2,))])
def test_make_vector_env(name, shape):
    cfg = EnvConfig(name=name, frame_stack=1, max_episode_steps=50)
    env = make_vector_env(cfg, 5, seed=0)
    assert env.name == name and env.num_envs == 5 and env.num_actions == 2
    assert env.observation_shape == shape and env.observation_dtype == np.float32
    obs = env.reset(seed=0)
    assert obs.shape == (5,) + shape
    res = env.step(np.zeros(5, np.int64))
    assert res.obs.shape == (5,) + shape and res.reward.dtype == np.float32
    assert res.terminated.dtype == bool and res.truncated.dtype == bool

    stacked = make_vector_env(dataclasses.replace(cfg, frame_stack=4), 5, seed=0)
    assert stacked.observation_shape == (4,) + shape
    assert stacked.reset(seed=0).shape == (5, 4) + shape


def test_make_counter_uses_per_env_lengths_and_cap():
    env = make_vector_env(EnvConfig(name="counter", frame_stack=1, max_episode_steps=12), 10, 0)
    np.testing.assert_array_equal(counter_episode_lengths(10),
                                  [5, 10, 15, 20, 25, 30, 35, 40, 5, 10])
    env.reset()
    ends = np.full(10, -1)
    for t in range(12):
        res = env.step(np.zeros(10, np.int64))
        first_end = (res.terminated | res.truncated) & (ends < 0)
        ends[first_end] = t + 1
    np.testing.assert_array_equal(ends, [5, 10, 12, 12, 12, 12, 12, 12, 5, 10])


def test_make_vector_env_errors():
    with pytest.raises(ValueError, match=r"env.game='Pongg'.*did you mean 'Pong'"):
        make_vector_env(EnvConfig(name="atari", game="Pongg"), 2, 0)
    with pytest.raises(ValueError, match=r"'mujoco'.*cartpole_masked.*counter"):
        make_vector_env(EnvConfig(name="mujoco"), 2, 0)
    with pytest.raises(ValueError, match="num_envs"):
        make_vector_env(EnvConfig(name="cartpole", frame_stack=1), 0, 0)

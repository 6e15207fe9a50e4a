"""Tests for r2d2_hpc.agent.policy: state carry, resets, epsilon-greedy, parameter loads."""
from __future__ import annotations

import dataclasses
from typing import List, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.helpers.chi2 import chi2_goodness_of_fit
from tests.helpers.fakes import NUM_ACTIONS, OBS_SHAPE, random_sequence_batch, tiny_config
from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.agent.policy import ActOutput, ActorPolicy

torch.set_num_threads(1)

NUM_ENVS = 4


def core_config(core: str = "lstm"):
    """``tiny_config`` with the given core (gtrxl: 2 layers of width 8, memory 3, the
    memory stored at sequence starts: the actor hands out the state it used)."""
    cfg = tiny_config()
    return cfg.replace(network=dataclasses.replace(
        cfg.network, core=core, gtrxl_dim=8, gtrxl_heads=2, gtrxl_memory_length=3,
        gtrxl_start_state="stored"))


def make_policy(epsilon: float | np.ndarray = 0.0, seed: int = 0,
                num_envs: int = NUM_ENVS, core: str = "lstm") -> ActorPolicy:
    eps = np.broadcast_to(np.asarray(epsilon, dtype=np.float64), (num_envs,)).copy()
    return ActorPolicy(core_config(core), OBS_SHAPE, NUM_ACTIONS, eps, seed=seed)


def random_inputs(t_len: int, num_envs: int = NUM_ENVS,
                  seed: int = 1) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``obs <float32>[T, N, D]``, ``reward <float32>[T, N]``, ``first <bool>[T, N]``.

    ``first[0]`` is all True (the envs' first observations); env 1 starts a new
    episode at t = 3 and env 2 at t = 5 (where T is long enough).
    """
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((t_len, num_envs, *OBS_SHAPE)).astype(np.float32)
    reward = rng.standard_normal((t_len, num_envs)).astype(np.float32)
    first = np.zeros((t_len, num_envs), dtype=bool)
    first[0] = True
    if t_len > 3:
        first[3, 1] = True
    if t_len > 5:
        first[5, 2] = True
    return obs, reward, first


def run(policy: ActorPolicy, obs: np.ndarray, reward: np.ndarray,
        first: np.ndarray) -> List[ActOutput]:
    outs = []
    for t in range(obs.shape[0]):
        outs.append(policy.act(obs[t], first[t]))
        policy.observe(reward[t])
    return outs


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
def test_greedy_actions_match_one_unroll_over_the_sequence(core: str) -> None:
    """ε = 0: T calls of act == one forward over [T, N] with the same inputs."""
    policy = make_policy(0.0, core=core)
    obs, reward, first = random_inputs(t_len=8)
    outs = run(policy, obs, reward, first)
    prev_action = np.stack([o.prev_action for o in outs])
    prev_reward = np.stack([o.prev_reward for o in outs])
    # The inputs the policy fed are the previous step's action and reward, 0 at first.
    actions = np.stack([o.action for o in outs])
    expected_prev_action = np.vstack([np.zeros((1, NUM_ENVS), np.int64), actions[:-1]])
    expected_prev_reward = np.vstack([np.zeros((1, NUM_ENVS), np.float32), reward[:-1]])
    expected_prev_action[first] = 0
    expected_prev_reward[first] = 0.0
    np.testing.assert_array_equal(prev_action, expected_prev_action)
    np.testing.assert_array_equal(prev_reward, expected_prev_reward)

    with torch.no_grad():
        q_seq, _ = policy.network(torch.from_numpy(obs), torch.from_numpy(prev_action),
                                  torch.from_numpy(prev_reward), torch.from_numpy(first), None)
    q_steps = np.stack([o.q for o in outs])
    np.testing.assert_allclose(q_steps, q_seq.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(actions, q_seq.numpy().argmax(-1))
    assert all(o.greedy.all() for o in outs)
    assert actions.dtype == np.int64 and q_steps.dtype == np.float32


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
def test_returned_state_is_the_state_before_the_step(core: str) -> None:
    policy = make_policy(0.0, core=core)
    obs, reward, first = random_inputs(t_len=6)
    outs = run(policy, obs, reward, first)
    hidden = policy.network.state_size
    np.testing.assert_array_equal(outs[0].state_h, np.zeros((NUM_ENVS, hidden), np.float32))
    np.testing.assert_array_equal(outs[0].state_c, np.zeros((NUM_ENVS, hidden), np.float32))
    # State used at step t = the forward's state after steps 0..t-1.
    with torch.no_grad():
        for t in range(1, 6):
            _, (h, c) = policy.network(
                torch.from_numpy(obs[:t]),
                torch.from_numpy(np.stack([o.prev_action for o in outs[:t]])),
                torch.from_numpy(np.stack([o.prev_reward for o in outs[:t]])),
                torch.from_numpy(first[:t]), None)
            h, c = h.numpy(), c.numpy()
            h[first[t]] = 0.0  # reset before step t where it starts an episode
            c[first[t]] = 0.0
            np.testing.assert_allclose(outs[t].state_h, h, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(outs[t].state_c, c, rtol=1e-5, atol=1e-6)
    assert outs[3].state_h[1].tolist() == [0.0] * hidden  # env 1 starts at t = 3
    assert np.any(outs[3].state_h[0] != 0.0)
    # policy.state is the state after the last step (the next step's input).
    with torch.no_grad():
        _, (h_all, _) = policy.network(
            torch.from_numpy(obs), torch.from_numpy(np.stack([o.prev_action for o in outs])),
            torch.from_numpy(np.stack([o.prev_reward for o in outs])),
            torch.from_numpy(first), None)
    np.testing.assert_allclose(policy.state[0], h_all.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
def test_first_resets_one_env_like_a_fresh_policy(core: str) -> None:
    """After a reset at first, env i acts exactly as a fresh policy on the same inputs."""
    obs, reward, first = random_inputs(t_len=8)
    policy = make_policy(0.0, core=core)
    outs = run(policy, obs, reward, first)
    fresh = make_policy(0.0, core=core)
    # Env 1 restarts at t = 3: feed a fresh policy obs[3:] of env 1 in every slot.
    sub_obs = np.repeat(obs[3:, 1:2], NUM_ENVS, axis=1)
    sub_reward = np.repeat(reward[3:, 1:2], NUM_ENVS, axis=1)
    sub_first = np.zeros((5, NUM_ENVS), dtype=bool)
    sub_first[0] = True
    fresh_outs = run(fresh, sub_obs, sub_reward, sub_first)
    for k in range(5):
        np.testing.assert_allclose(outs[3 + k].q[1], fresh_outs[k].q[0], rtol=1e-5, atol=1e-6)
    assert outs[3].prev_action[1] == 0 and outs[3].prev_reward[1] == 0.0
    assert outs[3].prev_reward[0] == reward[2, 0] and outs[3].prev_action[0] == outs[2].action[0]


def test_epsilon_one_gives_uniform_actions() -> None:
    num_envs, steps = 32, 60
    policy = make_policy(1.0, seed=3, num_envs=num_envs)
    rng = np.random.default_rng(0)
    counts = np.zeros(NUM_ACTIONS, dtype=np.int64)
    first = np.ones(num_envs, dtype=bool)
    for _ in range(steps):
        out = policy.act(rng.standard_normal((num_envs, *OBS_SHAPE)).astype(np.float32), first)
        policy.observe(np.zeros(num_envs, dtype=np.float32))
        first[:] = False
        assert not out.greedy.any()
        counts += np.bincount(out.action, minlength=NUM_ACTIONS)
    assert counts.sum() == num_envs * steps
    _, p_value, _ = chi2_goodness_of_fit(counts, np.full(NUM_ACTIONS, 1.0 / NUM_ACTIONS))
    assert p_value > 1e-4, counts


def test_per_env_epsilons_explore_at_their_rates() -> None:
    eps = np.array([0.0, 0.5, 1.0, 0.0])
    policy = make_policy(eps, seed=5)
    rng = np.random.default_rng(1)
    explored = np.zeros(NUM_ENVS)
    steps = 400
    first = np.ones(NUM_ENVS, dtype=bool)
    for _ in range(steps):
        out = policy.act(rng.standard_normal((NUM_ENVS, *OBS_SHAPE)).astype(np.float32), first)
        policy.observe(np.zeros(NUM_ENVS, dtype=np.float32))
        first[:] = False
        explored += ~out.greedy
        np.testing.assert_array_equal(out.action[out.greedy], out.q.argmax(-1)[out.greedy])
    assert explored[0] == 0 and explored[3] == 0 and explored[2] == steps
    assert 0.4 * steps < explored[1] < 0.6 * steps  # Binomial(400, .5): sd = 10


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), eps=st.floats(0.0, 1.0))
def test_exploration_draws_do_not_depend_on_the_parameters(seed: int, eps: float) -> None:
    """Same seed, different parameters: the same envs explore at the same steps."""
    a = make_policy(eps, seed=seed)
    b = make_policy(eps, seed=seed)
    b.load_flat_params(np.random.default_rng(seed).standard_normal(b.num_params)
                       .astype(np.float32), version=1)
    obs, reward, first = random_inputs(t_len=5, seed=seed % 1000)
    for out_a, out_b in zip(run(a, obs, reward, first), run(b, obs, reward, first)):
        np.testing.assert_array_equal(out_a.greedy, out_b.greedy)
        explored = ~out_a.greedy
        np.testing.assert_array_equal(out_a.action[explored], out_b.action[explored])


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
def test_load_flat_params_from_a_learner_gives_the_learners_greedy_actions(core: str) -> None:
    cfg = core_config(core)
    torch.manual_seed(123)
    learner = Learner(cfg, OBS_SHAPE, NUM_ACTIONS, device="cpu")
    # Freshly initialised tiny networks are bias-dominated (one action everywhere);
    # unit-scale weights make the greedy action depend on the inputs.
    rng = np.random.default_rng(0)
    learner.load_flat_params(rng.standard_normal(learner.num_params).astype(np.float32))
    learner.step(random_sequence_batch(cfg, seed=0, state_size=cfg.network.stored_state_size),
                 np.ones(5, dtype=np.float32))
    num_envs = 16
    obs, reward, first = random_inputs(t_len=4, num_envs=num_envs, seed=7)

    before = run(make_policy(0.0, seed=0, num_envs=num_envs, core=core), obs, reward, first)
    policy = make_policy(0.0, seed=0, num_envs=num_envs, core=core)
    assert policy.params_version == 0
    policy.load_flat_params(learner.flat_params(), version=learner.params_version + 5)
    assert policy.params_version == 6
    np.testing.assert_array_equal(policy.flat_params(), learner.flat_params())
    after = run(policy, obs, reward, first)

    with torch.no_grad():
        q_learner, _ = learner.online(
            torch.from_numpy(obs), torch.from_numpy(np.stack([o.prev_action for o in after])),
            torch.from_numpy(np.stack([o.prev_reward for o in after])),
            torch.from_numpy(first), None)
    actions_after = np.stack([o.action for o in after])
    np.testing.assert_array_equal(actions_after, q_learner.numpy().argmax(-1))
    assert np.any(actions_after != np.stack([o.action for o in before]))


def test_act_observe_protocol_and_shape_checks() -> None:
    policy = make_policy(0.0)
    obs = np.zeros((NUM_ENVS, *OBS_SHAPE), dtype=np.float32)
    first = np.ones(NUM_ENVS, dtype=bool)
    policy.act(obs, first)
    with pytest.raises(RuntimeError, match="observe"):
        policy.act(obs, first)
    with pytest.raises(ValueError, match="reward"):
        policy.observe(np.zeros(NUM_ENVS + 1))
    policy.observe(np.zeros(NUM_ENVS))
    with pytest.raises(ValueError, match="expected obs"):
        policy.act(obs[:-1], first[:-1])
    with pytest.raises(ValueError, match="flat"):
        policy.load_flat_params(np.zeros(3, dtype=np.float32), version=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        make_policy(np.array([0.1, 1.5, 0.0, 0.0]))


def test_reset_zeroes_chosen_envs() -> None:
    policy = make_policy(0.0)
    obs, reward, first = random_inputs(t_len=3)
    run(policy, obs, reward, first)
    h_before, _ = policy.state
    policy.reset(np.array([0, 2]))
    h_after, c_after = policy.state
    assert not h_after[[0, 2]].any() and not c_after[[0, 2]].any()
    np.testing.assert_array_equal(h_after[[1, 3]], h_before[[1, 3]])
    out = policy.act(obs[0], np.zeros(NUM_ENVS, dtype=bool))
    assert out.prev_action[0] == 0 and out.prev_reward[2] == 0.0
    assert out.prev_reward[1] == reward[2, 1]


def test_same_seed_same_actions() -> None:
    obs, reward, first = random_inputs(t_len=6)
    a = run(make_policy(0.3, seed=11), obs, reward, first)
    b = run(make_policy(0.3, seed=11), obs, reward, first)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.action, y.action)
        np.testing.assert_array_equal(x.q, y.q)

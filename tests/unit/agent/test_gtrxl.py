"""Tests for r2d2_hpc.agent.gtrxl and the gtrxl core in the network, learner and policy.

The core is a recurrent function: step by step (the actor) and one unroll (the
learner) must agree, across episode boundaries, and nothing crosses a boundary.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.agent import losses
from r2d2_hpc.agent.adder import SequenceAdder
from r2d2_hpc.agent.gtrxl import (
    GRUGate,
    GTrXLCore,
    attention_mask,
    key_distances,
    pack_memory,
    relative_positions,
    unpack_memory,
)
from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.agent.network import R2D2Network, TorchState
from r2d2_hpc.agent.policy import ActorPolicy
from r2d2_hpc.config import Config, ConfigError, NetworkConfig
from r2d2_hpc.types import SequenceBatch
from tests.helpers.fakes import NUM_ACTIONS, OBS_SHAPE, random_sequence_batch, tiny_config

torch.set_num_threads(1)

VECTOR_SHAPE = (6,)


def gtrxl_cfg(**overrides: object) -> NetworkConfig:
    """A tiny gtrxl network: 2 layers of width 8, 2 heads, memory 3, its memory stored
    at each sequence start (the start state the replay carries; ``zero`` where named)."""
    base = NetworkConfig(torso="mlp", mlp_hidden=(12,), head_hidden=8, core="gtrxl",
                         gtrxl_layers=2, gtrxl_heads=2, gtrxl_dim=8, gtrxl_memory_length=3,
                         gtrxl_start_state="stored")
    return dataclasses.replace(base, **overrides)


def make_net(seed: int = 0, **overrides: object) -> R2D2Network:
    torch.manual_seed(seed)
    return R2D2Network(VECTOR_SHAPE, NUM_ACTIONS, gtrxl_cfg(**overrides))


def make_inputs(t_len: int, batch: int, seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(t_len, batch, *VECTOR_SHAPE, generator=gen),
            torch.randint(0, NUM_ACTIONS, (t_len, batch), generator=gen),
            torch.randn(t_len, batch, generator=gen))


def boundaries(t_len: int, batch: int) -> torch.Tensor:
    """``first``: b0 starts at 0 and 5, b1 at 2, b2 at 7, b3 never."""
    first = torch.zeros(t_len, batch, dtype=torch.bool)
    first[0, 0] = first[5, 0] = first[2, 1] = first[7, 2] = True
    return first


def step_by_step(net: R2D2Network, obs, pa, pr, first,
                 state: TorchState) -> Tuple[torch.Tensor, TorchState]:
    """The actor's way: ``T`` forwards of one step, the state carried between."""
    qs = []
    for t in range(obs.shape[0]):
        q, state = net(obs[t:t + 1], pa[t:t + 1], pr[t:t + 1], first[t:t + 1], state)
        qs.append(q)
    return torch.cat(qs), state


def warm_state(net: R2D2Network, batch: int, seed: int = 7) -> TorchState:
    """A full memory: the state after 5 steps of one episode."""
    obs, pa, pr = make_inputs(5, batch, seed)
    first = torch.zeros(5, batch, dtype=torch.bool)
    first[0] = True
    with torch.no_grad():
        return net(obs, pa, pr, first)[1]


# --------------------------------------------------------------------------- pure helpers

def test_relative_positions_table() -> None:
    enc = relative_positions(2, 4)
    expected = torch.tensor([[math.sin(d), math.cos(d), math.sin(d / 100), math.cos(d / 100)]
                             for d in range(3)])
    assert enc.shape == (3, 4)
    torch.testing.assert_close(enc, expected)


_ = False
X = True
MASK_CASES = [
    # (M, T, valid memory, first[t] of the one element, allowed [T, M+T], valid_out)
    ("docstring: boundary at t=2", 2, 4, [_, _], [_, _, X, _],
     [[_, _, X, _, _, _],
      [_, _, X, X, _, _],
      [_, _, _, _, X, _],
      [_, _, _, _, X, X]], [X, X]),
    ("valid memory, window slides out", 2, 3, [_, X], [_, _, _],
     [[_, X, X, _, _],
      [_, X, X, X, _],
      [_, _, X, X, X]], [X, X]),
    ("first at t=0 masks all memory", 3, 1, [X, X, X], [X],
     [[_, _, _, X]], [_, _, X]),
    ("one step carries the memory on", 3, 1, [_, X, X], [_],
     [[_, X, X, X]], [X, X, X]),
    ("boundary at the last step", 2, 3, [X, X], [_, _, X],
     [[X, X, X, _, _],
      [_, X, X, X, _],
      [_, _, _, _, X]], [_, X]),
]


@pytest.mark.parametrize("name, mem, t_len, valid, first, allowed, valid_out", MASK_CASES,
                         ids=[c[0] for c in MASK_CASES])
def test_attention_mask_table(name, mem, t_len, valid, first, allowed, valid_out) -> None:
    got, got_valid = attention_mask(torch.tensor(first).unsqueeze(1), torch.tensor([valid]))
    assert got.shape == (1, t_len, mem + t_len)
    assert got[0].tolist() == allowed
    assert got_valid[0].tolist() == valid_out


def test_key_distances_table() -> None:
    # M = 2, T = 3: step t sits at key position 2 + t; d = 2 + t - p, clamped to [0, 2]
    assert key_distances(3, 2, torch.device("cpu")).tolist() == [
        [2, 1, 0, 0, 0],
        [2, 2, 1, 0, 0],
        [2, 2, 2, 1, 0]]


def test_pack_round_trip_and_zeros_are_the_empty_memory() -> None:
    cfg = gtrxl_cfg()
    layers, mem, dim = cfg.gtrxl_layers, cfg.gtrxl_memory_length, cfg.gtrxl_dim
    assert cfg.core_state_size == math.ceil((layers * mem * dim + mem) / 2)
    memory = torch.randn(layers, mem, 4, dim)
    valid = torch.tensor([[True, False, True]] * 4)
    h, c = pack_memory(memory, valid, cfg.core_state_size)
    assert h.shape == c.shape == (4, cfg.core_state_size)
    got_memory, got_valid = unpack_memory((h, c), layers, mem, dim)
    assert torch.equal(got_memory, memory) and torch.equal(got_valid, valid)
    zeros = torch.zeros(4, cfg.core_state_size)
    assert not unpack_memory((zeros, zeros), layers, mem, dim)[1].any()
    with pytest.raises(ValueError, match="does not fit"):
        pack_memory(memory, valid, cfg.core_state_size - 1)


@pytest.mark.parametrize("core, start, core_size, stored_size", [
    ("lstm", "stored", 16, 16),
    ("gtrxl", "stored", (2 * 3 * 8 + 3 + 1) // 2, (2 * 3 * 8 + 3 + 1) // 2),
    ("gtrxl", "zero", (2 * 3 * 8 + 3 + 1) // 2, 1),
    ("lstm", "zero", 16, 16),   # the field only applies to gtrxl
])
def test_state_sizes_table(core, start, core_size, stored_size) -> None:
    cfg = gtrxl_cfg(core=core, gtrxl_start_state=start, lstm_size=16)
    assert (cfg.core_state_size, cfg.stored_state_size) == (core_size, stored_size)


def test_gate_with_a_large_bias_is_the_identity() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(5, 8), torch.randn(5, 8)
    torch.testing.assert_close(GRUGate(8, gate_bias=40.0)(x, y), x)
    # The paper's b_g = 2: z = σ(. - 2) starts small, so g stays close to x.
    near = GRUGate(8, gate_bias=2.0)(x, y)
    far = GRUGate(8, gate_bias=-2.0)(x, y)
    assert (near - x).norm() < 0.5 * (far - x).norm()


def test_every_layer_starts_near_the_identity_with_a_large_gate_bias() -> None:
    torch.manual_seed(0)
    core = GTrXLCore(5, layers=3, heads=2, dim=8, memory_length=4, gate_bias=40.0,
                     state_size=gtrxl_cfg(gtrxl_layers=3, gtrxl_memory_length=4).core_state_size)
    core_in = torch.randn(6, 2, 5)
    zeros = torch.zeros(2, core.state_size)
    out, _ = core(core_in, None, (zeros, zeros))
    torch.testing.assert_close(out, core.embedding(core_in))


# --------------------------------------------------------------------------- the recurrence

@pytest.mark.parametrize("warm", [False, True])
def test_step_by_step_equals_one_unroll_across_episode_boundaries(warm: bool) -> None:
    net = make_net()
    obs, pa, pr = make_inputs(10, 4)
    first = boundaries(10, 4)
    state = warm_state(net, 4) if warm else net.initial_state(4)
    with torch.no_grad():
        q_seq, (h_seq, c_seq) = net(obs, pa, pr, first, state)
        q_step, (h_step, c_step) = step_by_step(net, obs, pa, pr, first, state)
    torch.testing.assert_close(q_step, q_seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h_step, h_seq, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c_step, c_seq, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [1, 3, 5, 9])
def test_two_parts_carrying_the_state_equal_one_unroll(split: int) -> None:
    """Burn-in then trace, as the loss unrolls: the carried memory loses nothing."""
    net = make_net()
    obs, pa, pr = make_inputs(10, 4)
    first = boundaries(10, 4)
    state = warm_state(net, 4)
    with torch.no_grad():
        q_all, end_all = net(obs, pa, pr, first, state)
        q_a, mid = net(obs[:split], pa[:split], pr[:split], first[:split], state)
        q_b, end = net(obs[split:], pa[split:], pr[split:], first[split:], mid)
    torch.testing.assert_close(torch.cat([q_a, q_b]), q_all, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(end[0], end_all[0], rtol=1e-5, atol=1e-5)


_HYPOTHESIS_NET = make_net()


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_split_and_boundaries_give_the_one_unroll(data) -> None:
    """Random ``first`` flags, a random incoming memory and a random cut into two parts
    and into single steps: all the same function."""
    t_len = data.draw(st.integers(2, 9), label="T")
    batch = data.draw(st.integers(1, 3), label="B")
    split = data.draw(st.integers(1, t_len - 1), label="split")
    flags = data.draw(st.lists(st.booleans(), min_size=t_len * batch, max_size=t_len * batch))
    warm = data.draw(st.booleans(), label="warm")
    net = _HYPOTHESIS_NET
    first = torch.tensor(flags, dtype=torch.bool).reshape(t_len, batch)
    obs, pa, pr = make_inputs(t_len, batch, seed=t_len * 10 + batch)
    state = warm_state(net, batch) if warm else net.initial_state(batch)
    with torch.no_grad():
        q, end = net(obs, pa, pr, first, state)
        q_steps, end_steps = step_by_step(net, obs, pa, pr, first, state)
        q_a, mid = net(obs[:split], pa[:split], pr[:split], first[:split], state)
        q_b, end_b = net(obs[split:], pa[split:], pr[split:], first[split:], mid)
    for other, other_end in ((q_steps, end_steps), (torch.cat([q_a, q_b]), end_b)):
        torch.testing.assert_close(other, q, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(other_end[0], end[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(other_end[1], end[1], rtol=1e-5, atol=1e-5)


def test_observations_before_a_boundary_change_no_output_after_it() -> None:
    net = make_net()
    obs, pa, pr = make_inputs(10, 4)
    first = boundaries(10, 4)   # b0 restarts at 5, b1 at 2, b2 at 7
    state = warm_state(net, 4)
    changed_obs, changed_pa, changed_pr = obs.clone(), pa.clone(), pr.clone()
    changed_obs[:5, 0] += 3.0
    changed_obs[:2, 1] -= 3.0
    changed_obs[:7, 2] *= -2.0
    changed_pa[:7, 2] = (changed_pa[:7, 2] + 1) % NUM_ACTIONS
    changed_pr[:7, 2] += 1.0
    changed_state = warm_state(net, 4, seed=8)   # another memory before the sequence
    with torch.no_grad():
        q, end = net(obs, pa, pr, first, state)
        q_changed, end_changed = net(changed_obs, changed_pa, changed_pr, first, changed_state)
    for b, start in ((0, 5), (1, 2), (2, 7)):
        assert torch.equal(q[start:, b], q_changed[start:, b]), b
        assert torch.equal(end[0][b], end_changed[0][b]) and torch.equal(end[1][b], end_changed[1][b])
        assert not torch.equal(q[:start, b], q_changed[:start, b])
    # The element without a boundary sees the other memory all along.
    assert not torch.equal(q[:, 3], q_changed[:, 3])
    # After a boundary the output is a fresh unroll's from the empty memory.
    with torch.no_grad():
        fresh, _ = net(obs[5:, :1], pa[5:, :1], pr[5:, :1], None)
    torch.testing.assert_close(q[5:, :1], fresh, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layers", [1, 2])
def test_a_step_sees_exactly_layers_times_memory_length_steps_back(layers: int) -> None:
    """Layer l's memory holds layer l-1's outputs, so L layers reach L*M steps back."""
    net = make_net(gtrxl_layers=layers)
    reach = layers * net.cfg.gtrxl_memory_length
    t_len = reach + 3
    obs, pa, pr = make_inputs(t_len, 1)
    last = t_len - 1

    def q_last(t_changed: int) -> torch.Tensor:
        changed = obs.clone()
        changed[t_changed] += 5.0
        with torch.no_grad():
            return net(changed, pa, pr, None)[0][last]

    with torch.no_grad():
        q = net(obs, pa, pr, None)[0][last]
    assert not torch.equal(q_last(last - reach), q)
    assert torch.equal(q_last(last - reach - 1), q)


def test_bf16_forward_with_the_core_in_float32_runs() -> None:
    net = make_net()
    obs, pa, pr = make_inputs(10, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q, (h, c) = net(obs, pa, pr, boundaries(10, 4), warm_state(net, 4), core_float32=True)
    assert q.shape == (10, 4, NUM_ACTIONS) and torch.isfinite(q.float()).all()
    assert h.dtype == torch.float32


def test_zero_start_state_stores_a_zero_and_starts_from_the_empty_memory() -> None:
    net = make_net(gtrxl_start_state="zero")
    assert net.state_size == 1 and net.core_state_size > 1
    state = warm_state(net, 2)
    stored = net.stored_state(state)
    assert stored[0].shape == stored[1].shape == (2, 1) and not stored[0].any()
    start = net.start_state(stored)
    assert torch.equal(start[0], net.initial_state(2)[0])
    kept = make_net()
    assert kept.stored_state(state) is state and kept.start_state(state) is state


def test_burn_in_refreshes_the_memory_without_gradient() -> None:
    """The loss's burn-in unroll (no grad) builds the memory the trace attends to."""
    online, target = make_net(seed=0), make_net(seed=1)
    t_len, batch, burn_in = 9, 3, 4
    obs, pa, pr = make_inputs(t_len, batch)
    gen = torch.Generator().manual_seed(5)

    def loss_of(observations: torch.Tensor) -> torch.Tensor:
        seq = SequenceBatch(
            obs=observations, action=torch.randint(0, NUM_ACTIONS, (t_len, batch), generator=gen),
            reward=torch.randn(t_len, batch, generator=gen), discount=torch.ones(t_len, batch),
            first=torch.zeros(t_len, batch, dtype=torch.bool),
            mask=torch.ones(t_len, batch, dtype=torch.bool), prev_action=pa, prev_reward=pr,
            state_h=state[0], state_c=state[1], keys=torch.arange(batch),
            probs=torch.full((batch,), 1.0 / batch))
        return losses.sequence_loss(online, target, seq, torch.ones(batch), burn_in=burn_in,
                                    n=2, gamma=0.9).loss

    state = warm_state(online, batch)
    leaf = obs.clone().requires_grad_(True)
    gen.manual_seed(5)
    loss = loss_of(leaf)
    loss.backward()
    assert torch.count_nonzero(leaf.grad[:burn_in]) == 0
    assert torch.count_nonzero(leaf.grad[burn_in:]) > 0
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0
               for p in online.gtrxl.parameters())
    assert all(p.grad is None for p in target.parameters())
    # ... yet the burn-in is unrolled into the memory: it changes the loss.
    changed = obs.clone()
    changed[burn_in - 1] += 2.0
    gen.manual_seed(5)
    with torch.no_grad():
        assert abs(loss_of(changed).item() - loss.item()) > 1e-6


# --------------------------------------------------------------------------- configuration

def network_errors(**network: object) -> list:
    with pytest.raises(ConfigError) as info:
        Config.from_dict({"network": {"core": "gtrxl", **network}})
    return info.value.errors


@pytest.mark.parametrize("network, field, fix", [
    ({"gtrxl_heads": 3, "gtrxl_dim": 64}, "network.gtrxl_heads", "(e.g. gtrxl_heads: 2)"),
    ({"gtrxl_heads": 12, "gtrxl_dim": 100}, "network.gtrxl_heads", "(e.g. gtrxl_heads: 10)"),
    ({"gtrxl_memory_length": 0}, "network.gtrxl_memory_length", "must be > 0"),
    ({"gtrxl_layers": 0}, "network.gtrxl_layers", "must be > 0"),
    ({"gtrxl_dim": -8}, "network.gtrxl_dim", "must be > 0"),
    ({"gtrxl_heads": 0}, "network.gtrxl_heads", "must be > 0"),
    ({"gtrxl_start_state": "zeros"}, "network.gtrxl_start_state", "did you mean 'zero'"),
    ({"core": "gtrxI"}, "network.core", "did you mean 'gtrxl'"),
])
def test_config_errors_name_the_field_and_the_fix(network, field, fix) -> None:
    errors = network_errors(**network)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{field}:") and fix in errors[0]


def test_config_errors_are_reported_together() -> None:
    errors = network_errors(gtrxl_heads=3, gtrxl_memory_length=0, gtrxl_start_state="x")
    assert [e.split(":")[0] for e in errors] == [
        "network.gtrxl_memory_length", "network.gtrxl_heads", "network.gtrxl_start_state"]


# --------------------------------------------------------------------------- learner and actor

def gtrxl_run_config(start_state: str = "stored") -> Config:
    cfg = tiny_config()
    return cfg.replace(network=dataclasses.replace(
        cfg.network, core="gtrxl", gtrxl_layers=2, gtrxl_heads=2, gtrxl_dim=8,
        gtrxl_memory_length=3, gtrxl_start_state=start_state))


def replayed_batch(learner: Learner, seed: int = 0):
    """A random batch whose stored states are real memories (or the zero-start's zeros)."""
    net = learner.online
    batch = random_sequence_batch(learner.cfg, seed=seed, state_size=net.state_size)
    if net.state_size == 1:
        return batch._replace(state_h=np.zeros_like(batch.state_h),
                              state_c=np.zeros_like(batch.state_c))
    b = batch.action.shape[1]
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(4, b, *OBS_SHAPE, generator=gen)
    pa = torch.randint(0, NUM_ACTIONS, (4, b), generator=gen)
    with torch.no_grad():
        _, (h, c) = net(obs, pa, torch.zeros(4, b), None)
    # Sequences that start an episode have the empty memory, as an actor stores them.
    starts = batch.first[0]
    h[torch.from_numpy(starts)] = 0.0
    c[torch.from_numpy(starts)] = 0.0
    return batch._replace(state_h=h.numpy(), state_c=c.numpy())


@pytest.mark.parametrize("start_state", ["stored", "zero"])
def test_the_learner_steps_on_a_gtrxl_network(start_state: str) -> None:
    torch.manual_seed(0)
    learner = Learner(gtrxl_run_config(start_state), OBS_SHAPE, NUM_ACTIONS, device="cpu")
    batch = replayed_batch(learner)
    before = [p.detach().clone() for p in learner.online.gtrxl.parameters()]
    result = learner.step(batch, np.ones(batch.action.shape[1], dtype=np.float32))
    assert np.isfinite(result.loss) and result.priorities.shape == (batch.action.shape[1],)
    after = list(learner.online.gtrxl.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))
    stale = learner.q_staleness(batch)
    if start_state == "zero":
        assert stale == 0.0     # both unrolls start from the empty memory
    else:
        assert stale > 0.0
        empty = batch._replace(state_h=np.zeros_like(batch.state_h),
                               state_c=np.zeros_like(batch.state_c))
        assert learner.q_staleness(empty) == 0.0


def test_the_learner_overfits_a_fixed_batch_with_gtrxl() -> None:
    torch.manual_seed(0)
    cfg = gtrxl_run_config()
    cfg = cfg.replace(learner=dataclasses.replace(cfg.learner, learning_rate=3e-3))
    learner = Learner(cfg, OBS_SHAPE, NUM_ACTIONS, device="cpu")
    batch = replayed_batch(learner, seed=3)
    weights = np.ones(batch.action.shape[1], dtype=np.float32)
    first = learner.step(batch, weights).loss
    for _ in range(60):
        last = learner.step(batch, weights).loss
    assert last < 0.2 * first


@pytest.mark.parametrize("start_state", ["stored", "zero"])
def test_the_actor_policy_runs_gtrxl_and_matches_one_unroll(start_state: str) -> None:
    cfg = gtrxl_run_config(start_state)
    num_envs = 3
    policy = ActorPolicy(cfg, OBS_SHAPE, NUM_ACTIONS, np.zeros(num_envs), seed=0)
    rng = np.random.default_rng(1)
    t_len = 8
    obs = rng.standard_normal((t_len, num_envs, *OBS_SHAPE)).astype(np.float32)
    reward = rng.standard_normal((t_len, num_envs)).astype(np.float32)
    first = np.zeros((t_len, num_envs), dtype=bool)
    first[0] = True
    first[3, 1] = first[5, 2] = True
    outs = []
    for t in range(t_len):
        outs.append(policy.act(obs[t], first[t]))
        policy.observe(reward[t])
    stored = cfg.network.stored_state_size
    assert all(o.state_h.shape == o.state_c.shape == (num_envs, stored) for o in outs)
    prev_action = np.stack([o.prev_action for o in outs])
    prev_reward = np.stack([o.prev_reward for o in outs])
    with torch.no_grad():
        q, _ = policy.network(torch.from_numpy(obs), torch.from_numpy(prev_action),
                              torch.from_numpy(prev_reward), torch.from_numpy(first))
    np.testing.assert_allclose(np.stack([o.q for o in outs]), q.numpy(), rtol=1e-5, atol=1e-5)
    if start_state == "stored":
        # The state an actor stores at step t is the memory the unroll had before t.
        with torch.no_grad():
            _, (h, c) = policy.network(torch.from_numpy(obs[:4]),
                                       torch.from_numpy(prev_action[:4]),
                                       torch.from_numpy(prev_reward[:4]),
                                       torch.from_numpy(first[:4]))
        np.testing.assert_allclose(outs[4].state_h, h.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(outs[4].state_c, c.numpy(), rtol=1e-5, atol=1e-5)
    else:
        assert not any(o.state_h.any() or o.state_c.any() for o in outs)
    adder = SequenceAdder.from_config(cfg, num_streams=num_envs)
    assert adder.state_size == stored

"""Tests for r2d2_hpc.agent.network: shapes, in-sequence resets, state carry, scaling, heads."""
from __future__ import annotations

import dataclasses
import itertools
from typing import Optional, Tuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.agent.network import (
    R2D2Network,
    TorchState,
    conv_output_hw,
    dueling_combine,
    reset_state,
    segment_starts,
)
from r2d2_hpc.config import NetworkConfig

torch.set_num_threads(1)

ATARI_SHAPE = (4, 44, 44)  # smallest comfortable size for the Nature convs: 10 -> 4 -> 2
VECTOR_SHAPE = (6,)
NUM_ACTIONS = 3


def small_cfg(**overrides) -> NetworkConfig:
    """A tiny configuration; everything not overridden keeps the dataclass default
    (but gtrxl's start state: stored, so a stored state is the core's state)."""
    base = NetworkConfig(mlp_hidden=(12,), lstm_size=16, head_hidden=8, gtrxl_dim=8,
                         gtrxl_heads=2, gtrxl_memory_length=3, gtrxl_start_state="stored")
    return dataclasses.replace(base, **overrides)


def make_net(obs_shape: Tuple[int, ...] = VECTOR_SHAPE, seed: int = 0, **overrides) -> R2D2Network:
    torch.manual_seed(seed)
    return R2D2Network(obs_shape, NUM_ACTIONS, small_cfg(**overrides))


def make_inputs(obs_shape: Tuple[int, ...], t_len: int, batch: int, seed: int = 1):
    """Random ``(obs, prev_action, prev_reward)`` for ``[T, B]``; uint8 for 3-D obs."""
    gen = torch.Generator().manual_seed(seed)
    if len(obs_shape) == 3:
        obs = torch.randint(0, 256, (t_len, batch, *obs_shape), generator=gen, dtype=torch.uint8)
    else:
        obs = torch.randn(t_len, batch, *obs_shape, generator=gen)
    prev_action = torch.randint(0, NUM_ACTIONS, (t_len, batch), generator=gen)
    prev_reward = torch.randn(t_len, batch, generator=gen)
    return obs, prev_action, prev_reward


def random_state(net: R2D2Network, batch: int, seed: int = 2) -> TorchState:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, net.state_size, generator=gen),
            torch.randn(batch, net.state_size, generator=gen))


def reference_unroll(net: R2D2Network, obs, prev_action, prev_reward, first: Optional[torch.Tensor],
                     state: TorchState) -> Tuple[torch.Tensor, TorchState]:
    """Step-by-step reference: zero the state where first[t], run one step, repeat."""
    h, c = state
    qs = []
    for t in range(obs.shape[0]):
        if first is not None:
            keep = (~first[t]).float().unsqueeze(-1)
            h, c = h * keep, c * keep
        torso_out, core_in = net.embed(obs[t:t + 1], prev_action[t:t + 1], prev_reward[t:t + 1])
        if net.lstm is not None:
            out, (h_n, c_n) = net.lstm(core_in, (h.unsqueeze(0), c.unsqueeze(0)))
            h, c = h_n[0], c_n[0]
        else:
            out = torch.relu(net.feedforward(core_in))
        if net.cfg.res_link:
            out = out + (net.res_proj(torso_out) if net.res_proj is not None else torso_out)
        qs.append(net.head(out))
    return torch.cat(qs, dim=0), (h, c)


# --------------------------------------------------------------------------- pure helpers

@pytest.mark.parametrize("hw, expected", [
    ((84, 84), (7, 7)),   # (84-8)//4+1=20, (20-4)//2+1=9, 9-3+1=7
    ((44, 44), (2, 2)),   # 10, 4, 2
    ((36, 36), (1, 1)),   # 8, 3, 1
    ((84, 44), (7, 2)),
])
def test_conv_output_hw_table(hw, expected):
    assert conv_output_hw(*hw) == expected


def test_conv_output_hw_rejects_too_small():
    with pytest.raises(ValueError, match="too small"):
        conv_output_hw(35, 84)


@pytest.mark.parametrize("first_rows, expected", [
    # rows are time steps, columns batch elements
    ([[0, 0]], [0]),
    ([[1, 1]], [0]),                                   # a reset at t=0 needs no split
    ([[0, 0], [0, 0], [0, 0]], [0]),
    ([[1, 0], [0, 0], [0, 1], [0, 0]], [0, 2]),
    ([[0, 0], [0, 0], [0, 0], [1, 0], [0, 0], [0, 1], [0, 0], [0, 0]], [0, 3, 5]),  # docstring
    ([[0, 0], [1, 1], [1, 0], [0, 1]], [0, 1, 2, 3]),
])
def test_segment_starts_table(first_rows, expected):
    assert segment_starts(torch.tensor(first_rows, dtype=torch.bool)) == expected


def test_reset_state_zeros_only_flagged_rows():
    h = torch.tensor([[1.0, 2.0], [3.0, float("nan")], [5.0, 6.0]])
    c = -h
    new_h, new_c = reset_state((h, c), torch.tensor([False, True, False]))
    assert torch.equal(new_h, torch.tensor([[1.0, 2.0], [0.0, 0.0], [5.0, 6.0]]))
    assert torch.equal(new_c, torch.tensor([[-1.0, -2.0], [0.0, 0.0], [-5.0, -6.0]]))


@pytest.mark.parametrize("value, advantage, expected", [
    ([1.0], [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]),        # mean A = 2
    ([0.0], [4.0, 4.0], [0.0, 0.0]),
    ([-2.0], [3.0, -1.0, 0.0, 2.0], [0.0, -4.0, -3.0, -1.0]),  # Q = V + A - 1 = A - 3
])
def test_dueling_combine_table(value, advantage, expected):
    q = dueling_combine(torch.tensor(value), torch.tensor(advantage))
    assert torch.allclose(q, torch.tensor(expected))


# --------------------------------------------------------------------------- construction

def test_config_errors_are_collected():
    with pytest.raises(ValueError) as err:
        R2D2Network(VECTOR_SHAPE, 0, small_cfg(core="gru", torso="resnet"))
    msg = str(err.value)
    assert "num_actions" in msg and "core" in msg and "torso" in msg


def test_auto_torso_picks_by_rank():
    assert make_net(ATARI_SHAPE, torso="auto").torso_kind == "atari"
    assert make_net(VECTOR_SHAPE, torso="auto").torso_kind == "mlp"


@pytest.mark.parametrize("hw, grid", [((42, 42), 3), ((84, 84), 6), ((44, 44), 3), ((16, 16), 1)])
def test_universe_torso_keeps_a_grid(hw, grid):
    # 4 stride-2 'same' convs: ceil(x / 16) per side, 32 channels, no linear layer.
    net = make_net((4, *hw), torso="universe")
    assert net.torso.output_size == 32 * grid * grid
    obs, pa, pr = make_inputs((4, *hw), 2, 3)
    q, _ = net(obs, pa, pr, None)
    assert q.shape == (2, 3, NUM_ACTIONS) and torch.isfinite(q).all()


def test_universe_torso_sees_where_a_pixel_is():
    # The grid keeps position: a bright pixel in two far-apart places gives two
    # different torso outputs (at 42x42 the Nature convs end at 1x1).
    net = make_net((1, 42, 42), torso="universe")
    left = torch.zeros(1, 1, 42, 42, dtype=torch.uint8)
    right = left.clone()
    left[0, 0, 20, 2] = 255
    right[0, 0, 20, 39] = 255
    with torch.no_grad():
        out_l, out_r = net.torso(left), net.torso(right)
    assert not torch.allclose(out_l, out_r)


def test_universe_torso_refuses_vector_observations():
    with pytest.raises(ValueError, match="universe torso needs a"):
        make_net(VECTOR_SHAPE, torso="universe")


def test_atari_torso_rejects_small_frames():
    with pytest.raises(ValueError, match="too small"):
        make_net((4, 30, 30), torso="atari")


def test_atari_torso_layers_follow_nature_dqn():
    net = make_net((4, 84, 84), torso="atari")
    convs = [m for m in net.torso.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.stride) for m in convs] == [
        (4, 32, (8, 8), (4, 4)), (32, 64, (4, 4), (2, 2)), (64, 64, (3, 3), (1, 1))]
    assert net.torso.linear.in_features == 64 * 7 * 7
    assert net.torso.linear.out_features == 512


def test_initial_state_is_zeros():
    net = make_net()
    h, c = net.initial_state(5)
    for x in (h, c):
        assert x.shape == (5, 16) and x.dtype == torch.float32
        assert torch.count_nonzero(x) == 0
    assert h.data_ptr() != c.data_ptr()


def test_default_config_uses_paper_sizes():
    net = R2D2Network((4, 84, 84), 18, NetworkConfig())
    assert net.lstm is not None and net.lstm.hidden_size == 512
    assert net.core_input_size == 512 + 18 + 1
    assert net.value_head is not None


# --------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("torso, core, dueling, res_link, prev", list(itertools.product(
    ["atari", "universe", "mlp"], ["lstm", "feedforward", "gtrxl"], [True, False], [True, False],
    [True, False])))
def test_output_shapes_and_dtypes(torso, core, dueling, res_link, prev):
    obs_shape = VECTOR_SHAPE if torso == "mlp" else ATARI_SHAPE
    net = make_net(obs_shape, torso=torso, core=core, dueling=dueling, res_link=res_link,
                   use_prev_action=prev, use_prev_reward=prev)
    t_len, batch = 3, 2
    obs, pa, pr = make_inputs(obs_shape, t_len, batch)
    first = torch.zeros(t_len, batch, dtype=torch.bool)
    first[1, 0] = True
    q, (h, c) = net(obs, pa if prev else None, pr if prev else None, first,
                    net.initial_state(batch))
    assert q.shape == (t_len, batch, NUM_ACTIONS) and q.dtype == torch.float32
    width = 16 if core != "gtrxl" else net.cfg.core_state_size
    assert h.shape == (batch, width) and c.shape == (batch, width)
    assert h.dtype == torch.float32 and c.dtype == torch.float32
    assert torch.isfinite(q).all()
    torso_size = {"atari": 512, "universe": 32 * 3 * 3, "mlp": 12}[torso]
    expected_in = torso_size + (NUM_ACTIONS + 1 if prev else 0)
    assert net.core_input_size == expected_in


def test_prev_action_required_when_enabled():
    net = make_net(use_prev_action=True)
    obs, _, pr = make_inputs(VECTOR_SHAPE, 2, 2)
    with pytest.raises(ValueError, match="prev_action"):
        net(obs, None, pr, None)


def test_prev_action_and_reward_change_q():
    net = make_net()
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 2, 2)
    q, _ = net(obs, pa, pr, None)
    q_a, _ = net(obs, (pa + 1) % NUM_ACTIONS, pr, None)
    q_r, _ = net(obs, pa, pr + 1.0, None)
    assert not torch.allclose(q, q_a)
    assert not torch.allclose(q, q_r)


# --------------------------------------------------------------------------- resets and carry

@pytest.mark.parametrize("torso", ["atari", "universe", "mlp"])
def test_reset_equals_fresh_unroll_from_k(torso):
    obs_shape = VECTOR_SHAPE if torso == "mlp" else ATARI_SHAPE
    net = make_net(obs_shape, torso=torso)
    t_len, batch, k = 6, 3, 4
    obs, pa, pr = make_inputs(obs_shape, t_len, batch)
    first = torch.zeros(t_len, batch, dtype=torch.bool)
    first[k] = True
    with torch.no_grad():
        q, state = net(obs, pa, pr, first, random_state(net, batch))
        q_k, state_k = net(obs[k:], pa[k:], pr[k:], None, net.initial_state(batch))
    assert torch.allclose(q[k:], q_k, atol=1e-5)
    assert torch.allclose(state[0], state_k[0], atol=1e-5)
    assert torch.allclose(state[1], state_k[1], atol=1e-5)


def test_reset_only_affects_flagged_batch_element():
    net = make_net()
    t_len, batch, k = 5, 2, 2
    obs, pa, pr = make_inputs(VECTOR_SHAPE, t_len, batch)
    first = torch.zeros(t_len, batch, dtype=torch.bool)
    first[k, 1] = True
    with torch.no_grad():
        state0 = random_state(net, batch)
        q, _ = net(obs, pa, pr, first, state0)
        q_none, _ = net(obs, pa, pr, None, state0)
        q_k, _ = net(obs[k:, 1:], pa[k:, 1:], pr[k:, 1:], None, net.initial_state(1))
    assert torch.allclose(q[:, 0], q_none[:, 0], atol=1e-6)   # element 0 untouched
    assert torch.allclose(q[:k, 1], q_none[:k, 1], atol=1e-6)  # element 1 before the reset
    assert torch.allclose(q[k:, 1], q_k[:, 0], atol=1e-5)      # element 1 restarted at k
    assert not torch.allclose(q[k:, 1], q_none[k:, 1])


def test_reset_at_step_zero_ignores_incoming_state():
    net = make_net()
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 3, 2)
    first = torch.zeros(3, 2, dtype=torch.bool)
    first[0] = True
    with torch.no_grad():
        q_rand, _ = net(obs, pa, pr, first, random_state(net, 2))
        q_zero, _ = net(obs, pa, pr, None, net.initial_state(2))
    assert torch.allclose(q_rand, q_zero, atol=1e-6)


def test_first_none_equals_all_false_and_state_none_equals_zeros():
    net = make_net()
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 4, 2)
    with torch.no_grad():
        q1, s1 = net(obs, pa, pr, None, net.initial_state(2))
        q2, s2 = net(obs, pa, pr, torch.zeros(4, 2, dtype=torch.bool))
    assert torch.equal(q1, q2) and torch.equal(s1[0], s2[0]) and torch.equal(s1[1], s2[1])


@pytest.mark.parametrize("core, res_link", [("lstm", False), ("lstm", True),
                                            ("feedforward", True), ("gtrxl", True)])
def test_core_float32_changes_nothing_outside_autocast(core, res_link):
    net = make_net(core=core, res_link=res_link)
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 6, 3)
    first = torch.zeros(6, 3, dtype=torch.bool)
    first[3, 1] = True
    state = random_state(net, 3)
    with torch.no_grad():
        q1, (h1, c1) = net(obs, pa, pr, first, state)
        q2, (h2, c2) = net(obs, pa, pr, first, state, core_float32=True)
    assert torch.equal(q1, q2) and torch.equal(h1, h2) and torch.equal(c1, c2)


def test_core_float32_keeps_the_core_out_of_autocast():
    net = make_net()
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 4, 2)
    seen = {}
    net.lstm.register_forward_hook(lambda _m, _i, out: seen.update(lstm=out[0].dtype))
    net.torso.register_forward_hook(lambda _m, _i, out: seen.update(torso=out.dtype))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        q, (h, c) = net(obs, pa, pr, None, core_float32=True)
    assert seen == {"torso": torch.bfloat16, "lstm": torch.float32}
    assert h.dtype == c.dtype == torch.float32 and q.dtype == torch.bfloat16


def test_incoming_state_matters_for_lstm():
    net = make_net()
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 3, 2)
    with torch.no_grad():
        q_zero, _ = net(obs, pa, pr, None)
        q_rand, _ = net(obs, pa, pr, None, random_state(net, 2))
    assert not torch.allclose(q_zero, q_rand)


# Built once: hypothesis examples should not pay for construction.
_hypothesis_nets = {flag: make_net(res_link=flag, mlp_hidden=(12,)) for flag in (False, True)}


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_segmented_unroll_equals_step_by_step(data):
    t_len = data.draw(st.integers(1, 7), label="T")
    batch = data.draw(st.integers(1, 3), label="B")
    flags = data.draw(st.lists(st.booleans(), min_size=t_len * batch, max_size=t_len * batch))
    res_link = data.draw(st.booleans(), label="res_link")
    net = _hypothesis_nets[res_link]
    first = torch.tensor(flags, dtype=torch.bool).reshape(t_len, batch)
    obs, pa, pr = make_inputs(VECTOR_SHAPE, t_len, batch, seed=t_len * 10 + batch)
    state0 = random_state(net, batch)
    with torch.no_grad():
        q, (h, c) = net(obs, pa, pr, first, state0)
        q_ref, (h_ref, c_ref) = reference_unroll(net, obs, pa, pr, first, state0)
    assert torch.allclose(q, q_ref, atol=1e-5)
    assert torch.allclose(h, h_ref, atol=1e-5)
    assert torch.allclose(c, c_ref, atol=1e-5)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_two_halves_carrying_state_equal_one_unroll(data):
    t_len = data.draw(st.integers(2, 8), label="T")
    split = data.draw(st.integers(1, t_len - 1), label="split")
    batch = 2
    flags = data.draw(st.lists(st.booleans(), min_size=t_len * batch, max_size=t_len * batch))
    net = _hypothesis_nets[False]
    first = torch.tensor(flags, dtype=torch.bool).reshape(t_len, batch)
    obs, pa, pr = make_inputs(VECTOR_SHAPE, t_len, batch, seed=t_len)
    state0 = random_state(net, batch)
    with torch.no_grad():
        q, state = net(obs, pa, pr, first, state0)
        q_a, state_a = net(obs[:split], pa[:split], pr[:split], first[:split], state0)
        q_b, state_b = net(obs[split:], pa[split:], pr[split:], first[split:], state_a)
    assert torch.allclose(torch.cat([q_a, q_b]), q, atol=1e-5)
    assert torch.allclose(state_b[0], state[0], atol=1e-5)
    assert torch.allclose(state_b[1], state[1], atol=1e-5)


def test_segmented_path_calls_lstm_once_per_segment():
    net = make_net()
    calls = []
    net.lstm.register_forward_hook(lambda mod, inp, out: calls.append(inp[0].shape[0]))
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 8, 2)
    first = torch.zeros(8, 2, dtype=torch.bool)
    first[0, 1] = first[3, 0] = first[5, 1] = True
    with torch.no_grad():
        net(obs, pa, pr, first)
        assert calls == [3, 2, 3]
        calls.clear()
        first[3, 0] = first[5, 1] = False   # only t=0 resets: one call over the whole sequence
        net(obs, pa, pr, first)
    assert calls == [8]


# --------------------------------------------------------------------------- cores

def test_feedforward_output_at_k_ignores_earlier_steps_lstm_does_not():
    k = 3
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 5, 2)
    changed = obs.clone()
    changed[:k] += 5.0
    for core, depends in (("feedforward", False), ("lstm", True)):
        net = make_net(core=core)
        with torch.no_grad():
            q, _ = net(obs, pa, pr, None)
            q_changed, _ = net(changed, pa, pr, None)
        assert torch.allclose(q[:k], q_changed[:k]) is False
        assert (not torch.allclose(q[k], q_changed[k])) is depends, core


def test_feedforward_passes_state_through():
    net = make_net(core="feedforward")
    assert net.lstm is None
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 3, 2)
    first = torch.ones(3, 2, dtype=torch.bool)
    state0 = random_state(net, 2)
    with torch.no_grad():
        q, state = net(obs, pa, pr, first, state0)
        q_other, _ = net(obs, pa, pr, first, net.initial_state(2))
    assert state[0] is state0[0] and state[1] is state0[1]
    assert torch.equal(q, q_other)


@pytest.mark.parametrize("mlp_hidden, expect_proj", [((16,), False), ((12,), True)])
def test_res_link_adds_torso_output(mlp_hidden, expect_proj):
    net = make_net(res_link=True, mlp_hidden=mlp_hidden)   # lstm_size = 16
    assert (net.res_proj is not None) is expect_proj
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 3, 2)
    with torch.no_grad():
        q, _ = net(obs, pa, pr, None)
        torso_out, core_in = net.embed(obs, pa, pr)
        core_out, _ = net.unroll_core(core_in, None, net.initial_state(2))
        skip = net.res_proj(torso_out) if expect_proj else torso_out
        assert torch.allclose(q, net.head(core_out + skip), atol=1e-6)
        assert not torch.allclose(q, net.head(core_out))


# --------------------------------------------------------------------------- observation scaling

def test_uint8_frames_are_scaled_into_unit_interval():
    net = make_net(ATARI_SHAPE, torso="atari")
    seen = []
    first_conv = net.torso.convs[0]
    first_conv.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach().clone()))
    obs, pa, pr = make_inputs(ATARI_SHAPE, 2, 2)
    obs[0, 0] = 255
    with torch.no_grad():
        q_uint8, _ = net(obs, pa, pr, None)
        q_float, _ = net(obs.float() / 255.0, pa, pr, None)
    assert seen[0].dtype == torch.float32
    assert seen[0].min() >= 0.0 and seen[0].max() == 1.0
    assert torch.allclose(q_uint8, q_float, atol=1e-6)


def test_mlp_scales_uint8_too():
    net = make_net((5,), torso="mlp")
    obs = torch.tensor([[[0, 51, 102, 204, 255]]], dtype=torch.uint8)   # [T=1, B=1, 5]
    pa = torch.zeros(1, 1, dtype=torch.long)
    pr = torch.zeros(1, 1)
    with torch.no_grad():
        q_uint8, _ = net(obs, pa, pr, None)
        q_float, _ = net(torch.tensor([[[0.0, 0.2, 0.4, 0.8, 1.0]]]), pa, pr, None)
    assert torch.allclose(q_uint8, q_float, atol=1e-6)


# --------------------------------------------------------------------------- heads

def test_dueling_q_centres_on_value():
    net = make_net(dueling=True)
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 3, 2)
    with torch.no_grad():
        q, _ = net(obs, pa, pr, None)
        _, core_in = net.embed(obs, pa, pr)
        core_out, _ = net.unroll_core(core_in, None, net.initial_state(2))
        value, adv = net.dueling_streams(core_out)
    assert torch.allclose(q - q.mean(-1, keepdim=True), adv - adv.mean(-1, keepdim=True), atol=1e-6)
    assert torch.allclose(q.mean(-1, keepdim=True), value, atol=1e-6)
    # the raw advantages are not already centred, so the subtraction is doing work
    assert not torch.allclose(adv.mean(-1), torch.zeros(3, 2), atol=1e-4)


def test_non_dueling_head_is_linear():
    net = make_net(dueling=False)
    assert net.value_head is None and isinstance(net.q_head, torch.nn.Linear)
    with pytest.raises(RuntimeError):
        net.dueling_streams(torch.zeros(1, 16))
    x = torch.randn(4, 16)
    w, b = net.q_head.weight, net.q_head.bias
    assert torch.allclose(net.head(x), x @ w.T + b)


# --------------------------------------------------------------------------- gradients

@pytest.mark.parametrize("torso, core, res_link", [
    ("atari", "lstm", False), ("mlp", "lstm", True), ("mlp", "feedforward", False),
    ("atari", "feedforward", True)])
def test_gradients_reach_every_parameter(torso, core, res_link):
    obs_shape = ATARI_SHAPE if torso == "atari" else VECTOR_SHAPE
    net = make_net(obs_shape, torso=torso, core=core, res_link=res_link,
                   mlp_hidden=(12,) if not res_link else (10,))
    obs, pa, pr = make_inputs(obs_shape, 4, 3)
    first = torch.zeros(4, 3, dtype=torch.bool)
    first[2, 1] = True
    h0 = torch.zeros(3, 16, requires_grad=True)
    c0 = torch.zeros(3, 16, requires_grad=True)
    q, (h, c) = net(obs, pa, pr, first, (h0, c0))
    (q.square().sum() + (h.sum() + c.sum() if core == "lstm" else 0.0)).backward()
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        assert param.grad.abs().sum() > 0, name
    if core == "lstm":
        assert h0.grad is not None and h0.grad.abs().sum() > 0


def test_reset_blocks_gradient_to_incoming_state():
    net = make_net()
    obs, pa, pr = make_inputs(VECTOR_SHAPE, 3, 2)
    first = torch.zeros(3, 2, dtype=torch.bool)
    first[1, 0] = True
    h0 = torch.randn(2, 16, requires_grad=True)
    c0 = torch.randn(2, 16, requires_grad=True)
    q, _ = net(obs, pa, pr, first, (h0, c0))
    q[1:, 0].sum().backward()   # element 0 after its reset
    assert torch.count_nonzero(h0.grad) == 0 and torch.count_nonzero(c0.grad) == 0

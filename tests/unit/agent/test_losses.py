"""Tests of r2d2_hpc.agent.losses against hand-computed values.

Conventions in the tables: ``h`` is the value rescaling with eps = 1e-3; numbers
``h(k)`` with ``k + 1`` a perfect square are exact by hand, e.g.
``h(3) = sqrt(4) - 1 + 0.003 = 1.003``. For the n-step targets the table holds the
return *before* ``h`` (``G``); the expected target is ``h(G)``, and the bootstrap
values are given as ``v`` with ``Q_target = h(v)`` so that ``h^-1`` returns ``v``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from r2d2_hpc.agent.exploration import apex_epsilon
from r2d2_hpc.agent.losses import (
    episode_run_end,
    importance_weights,
    n_step_double_q_targets,
    sequence_loss,
    sequence_priorities,
    signed_hyperbolic,
    signed_parabolic,
)
from r2d2_hpc.types import SequenceBatch

NAN = float("nan")
EPS = 1e-3


def h(x: float) -> float:
    return math.copysign(math.sqrt(abs(x) + 1.0) - 1.0, x) + EPS * x


# ---------------------------------------------------------------------------
# h and h^-1.
# ---------------------------------------------------------------------------

H_TABLE = [
    # x,     h(x)
    (0.0, 0.0),
    (3.0, 1.003),      # sqrt(4) - 1 + 0.003
    (-3.0, -1.003),    # odd function
    (8.0, 2.008),      # sqrt(9) - 1 + 0.008
    (99.0, 9.099),     # sqrt(100) - 1 + 0.099
    (-0.44, -0.20044),  # -(sqrt(1.44) - 1) - 0.00044 = -0.2 - 0.00044
]


@pytest.mark.parametrize("x,expected", H_TABLE)
def test_signed_hyperbolic_table(x: float, expected: float) -> None:
    got = signed_hyperbolic(torch.tensor([x], dtype=torch.float64), EPS)
    assert got.item() == pytest.approx(expected, abs=1e-12)
    assert float(signed_hyperbolic(np.array(x), EPS)) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("x,h_x", H_TABLE)
def test_signed_parabolic_table(x: float, h_x: float) -> None:
    # By hand for h^-1(1.003): 1 + 4 * 0.001 * (1.003 + 1 + 0.001) = 1.008016,
    # sqrt = 1.004, (1.004 - 1) / 0.002 = 2, 2^2 - 1 = 3.
    got = signed_parabolic(torch.tensor([h_x], dtype=torch.float64), EPS)
    assert got.item() == pytest.approx(x, abs=1e-9)
    assert float(signed_parabolic(np.array(h_x), EPS)) == pytest.approx(x, abs=1e-9)


def test_signed_parabolic_is_exactly_zero_at_zero_in_float32() -> None:
    # sqrt(1 + 4 eps (1 + eps)) = 1 + 2 eps, so the rationalised form gives 1^2 - 1 = 0.
    assert signed_parabolic(torch.zeros(3), EPS).abs().max().item() == 0.0


def test_default_epsilon_is_papers() -> None:
    # h(3) with eps = 1e-3 is 1.003 (DI-engine's 1e-2 would give 1.03).
    assert signed_hyperbolic(torch.tensor(3.0, dtype=torch.float64)).item() == pytest.approx(1.003)


def test_signed_parabolic_rejects_zero_eps() -> None:
    with pytest.raises(ValueError):
        signed_parabolic(torch.tensor(1.0), 0.0)


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False))
def test_h_inverse_round_trips(x: float) -> None:
    t = torch.tensor(x, dtype=torch.float64)
    assert signed_parabolic(signed_hyperbolic(t)).item() == pytest.approx(x, rel=1e-9, abs=1e-9)
    assert signed_hyperbolic(signed_parabolic(t)).item() == pytest.approx(x, rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------------------
# n-step double-Q targets.
# ---------------------------------------------------------------------------


def _q_pair(v: List[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Two-action Q tables where online and target agree the best action has value v.

    Online argmax is action 0; Q_target(o, 0) = h(v), Q_target(o, 1) = h(v) - 1.
    NaN in ``v`` gives NaN everywhere at that step (padding).
    """
    vv = torch.tensor(v, dtype=torch.float64)
    target = torch.stack([signed_hyperbolic(vv), signed_hyperbolic(vv) - 1.0], dim=-1)
    online = torch.stack([torch.ones_like(vv), torch.zeros_like(vv)], dim=-1) + 0.0 * vv[:, None]
    return online[:, None], target[:, None]  # [T, 1, 2]


# Each row: reward r, discount d, mask m, first (or None), bootstrap values v, n, gamma,
# expected G (return before h; None where there is no target). One batch column.
N_STEP_CASES = {
    # n = 2, gamma = 0.5, all valid, no termination.
    #   G_0 = 1 + .5*2 + .25*v_2 = 2 + 7.5 = 9.5
    #   G_1 = 2 + .5*3 + .25*v_3 = 3.5 + 10 = 13.5
    #   G_2 = 3 + .5*4 + .25*v_4 = 5 + 12.5 = 17.5
    #   G_3: the sequence ends (last valid step 4) before 3 + 2, no termination:
    #        n' = 4 - 3 = 1, bootstrap from o_4: 4 + .5*50 = 29
    #   G_4: last valid step, not terminal: no next observation -> no target
    "mid_episode_and_truncated_end": dict(
        r=[1, 2, 3, 4, 5], d=[1, 1, 1, 1, 1], m=[1, 1, 1, 1, 1], first=None,
        v=[10, 20, 30, 40, 50], n=2, gamma=0.5,
        G=[9.5, 13.5, 17.5, 29.0, None]),
    # Terminates after step 2, steps 3-4 are padding holding NaN everywhere; n = 3.
    #   G_0 = 1 + .5*2 + .25*3 = 2.75   (d_2 = 0 zeroes the bootstrap)
    #   G_1 = 2 + .5*3 = 3.5
    #   G_2 = 3                          (terminal step: reward only)
    "episode_end_and_nan_padding": dict(
        r=[1, 2, 3, NAN, NAN], d=[1, 1, 0, NAN, NAN], m=[1, 1, 1, 0, 0], first=None,
        v=[10, 20, 30, NAN, NAN], n=3, gamma=0.5,
        G=[2.75, 3.5, 3.0, None, None]),
    # Episode ends after step 1 inside the 3-step window of step 0, a new episode
    # starts at 2 (d_1 = 0 already cuts the window; first flags given too).
    #   G_0 = 1 + .5*2 = 2;  G_1 = 2
    #   G_2 = 3 + .5*4 + .25*v_4 = 5 + 12.5 = 17.5  (R = 3 = n -> truncated to n' = 2)
    #   G_3 = 4 + .5*v_4 = 4 + 25 = 29;  G_4: no next observation
    "episode_end_inside_window_then_new_episode": dict(
        r=[1, 2, 3, 4, 5], d=[1, 0, 1, 1, 1], m=[1, 1, 1, 1, 1], first=[1, 0, 1, 0, 0],
        v=[10, 20, 30, 40, 50], n=3, gamma=0.5,
        G=[2.0, 2.0, 17.5, 29.0, None]),
    # Padded tail after a time-limit end (no termination); n = 2, gamma = 0.5.
    #   G_0 = 1 + .5*2 + .25*v_2 = 2 + 7.5 = 9.5
    #   G_1 = 2 + .5*v_2 = 2 + 15 = 17  (n' = 1, bootstrap from the last valid step)
    #   G_2: last valid, not terminal -> no target; G_3 padding
    "padded_tail_without_termination": dict(
        r=[1, 2, 3, NAN], d=[1, 1, 1, NAN], m=[1, 1, 1, 0], first=None,
        v=[10, 20, 30, NAN], n=2, gamma=0.5,
        G=[9.5, 17.0, None, None]),
    # Starts mid-episode (first_0 False): step 0 gets an ordinary target; n = 2, gamma = 0.9.
    #   G_0 = 1 + .9*0 + .81*v_2 = 1 + .81*100 = 82
    #   G_1 = 0 + .9*(-2) + .81*v_3 = -1.8 + 81 = 79.2
    #   G_2 = -2 + .9*v_3 = -2 + 90 = 88
    "starts_mid_episode": dict(
        r=[1, 0, -2, 7], d=[1, 1, 1, 1], m=[1, 1, 1, 1], first=[0, 0, 0, 0],
        v=[0, 0, 100, 100], n=2, gamma=0.9,
        G=[82.0, 79.2, 88.0, None]),
    # Time-limit end after step 2 (d = 1) and a new episode at 3, known only from first:
    # the window of 0 and 1 must stop at step 2; n = 3, gamma = 0.5.
    #   G_0 = 1 + .5*2 + .25*v_2 = 2 + 7.5 = 9.5   (n' = 2, not 1 + 1 + .75 + .125*v_3)
    #   G_1 = 2 + .5*v_2 = 17;  G_2: no next observation in its episode
    #   G_3 = 4 + .5*v_4 = 4 + 25 = 29;  G_4: no next observation
    "time_limit_boundary_from_first": dict(
        r=[1, 2, 3, 4, 5], d=[1, 1, 1, 1, 1], m=[1, 1, 1, 1, 1], first=[0, 0, 0, 1, 0],
        v=[10, 20, 30, 40, 50], n=3, gamma=0.5,
        G=[9.5, 17.0, None, 29.0, None]),
    # n = 1, gamma = 0.5, terminal last step.
    #   G_0 = 1 + .5*20 = 11;  G_1 = 2 + .5*30 = 17;  G_2 = 3 (terminal)
    "one_step": dict(
        r=[1, 2, 3], d=[1, 1, 0], m=[1, 1, 1], first=None,
        v=[10, 20, 30], n=1, gamma=0.5,
        G=[11.0, 17.0, 3.0]),
}


@pytest.mark.parametrize("name", sorted(N_STEP_CASES))
def test_n_step_double_q_targets_table(name: str) -> None:
    case = N_STEP_CASES[name]
    col = lambda x: torch.tensor(x, dtype=torch.float64)[:, None]  # noqa: E731
    q_online, q_target = _q_pair(case["v"])
    first = None if case["first"] is None else col(case["first"]).bool()
    targets, valid = n_step_double_q_targets(
        col(case["r"]), col(case["d"]), col(case["m"]).bool(), q_online, q_target,
        n=case["n"], gamma=case["gamma"], eps=EPS, first=first)
    expected_valid = [g is not None for g in case["G"]]
    assert valid[:, 0].tolist() == expected_valid
    assert torch.isfinite(targets).all()
    for t, g in enumerate(case["G"]):
        expected = h(g) if g is not None else 0.0
        assert targets[t, 0].item() == pytest.approx(expected, abs=1e-9), f"t={t}"


def test_n_step_targets_columns_are_independent() -> None:
    # The cases above stacked as columns of one batch give the same results
    # (same T, n and gamma: "mid_episode..." and "episode_end_and_nan_padding" with n = 3).
    r = torch.tensor([[1, 1], [2, 2], [3, 3], [4, NAN], [5, NAN]], dtype=torch.float64)
    d = torch.tensor([[1, 1], [1, 1], [1, 0], [1, NAN], [1, NAN]], dtype=torch.float64)
    m = torch.tensor([[1, 1], [1, 1], [1, 1], [1, 0], [1, 0]]).bool()
    qo, qt = _q_pair([10, 20, 30, 40, 50])
    qo = qo.expand(5, 2, 2).clone()
    qt = qt.expand(5, 2, 2).clone()
    qo[3:, 1] = NAN
    qt[3:, 1] = NAN
    targets, valid = n_step_double_q_targets(r, d, m, qo, qt, n=3, gamma=0.5, eps=EPS)
    # Column 0, n = 3: G_0 = 1 + 1 + .75 + .125*40 = 7.75; G_1 = 2 + 1.5 + 1 + .125*50 = 10.75
    #   G_2 (n' = 2) = 3 + 2 + .25*50 = 17.5; G_3 = 4 + .5*50 = 29; G_4 none.
    # Column 1: as "episode_end_and_nan_padding".
    expected = [[7.75, 2.75], [10.75, 3.5], [17.5, 3.0], [29.0, None], [None, None]]
    for t, row in enumerate(expected):
        for b, g in enumerate(row):
            assert bool(valid[t, b]) == (g is not None)
            assert targets[t, b].item() == pytest.approx(h(g) if g is not None else 0.0, abs=1e-9)


def test_double_q_argmax_from_online_value_from_target() -> None:
    # o_1: online prefers action 1 (Q_online = [0, 1]); target prefers action 0
    # (Q_target = [h(100), h(7)]). Double Q reads Q_target(o_1, 1) = h(7) -> v = 7.
    #   G_0 = 1 + .5*7 = 4.5  (target max would give 1 + 50 = 51).
    q_online = torch.tensor([[[0.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    q_target = signed_hyperbolic(torch.tensor([[[0.0, 0.0]], [[100.0, 7.0]]], dtype=torch.float64))
    targets, valid = n_step_double_q_targets(
        torch.tensor([[1.0], [0.0]], dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64),
        torch.ones(2, 1, dtype=torch.bool), q_online, q_target, n=1, gamma=0.5, eps=EPS)
    assert valid[:, 0].tolist() == [True, False]
    assert targets[0, 0].item() == pytest.approx(h(4.5), abs=1e-12)


def test_n_step_targets_carry_no_gradient() -> None:
    qo, qt = _q_pair([1.0, 2.0, 3.0])
    qt = qt.clone().requires_grad_(True)
    targets, _ = n_step_double_q_targets(
        torch.ones(3, 1), torch.ones(3, 1), torch.ones(3, 1, dtype=torch.bool),
        qo, qt, n=1, gamma=0.9)
    assert not targets.requires_grad


def test_n_step_targets_reject_n_below_one() -> None:
    qo, qt = _q_pair([1.0])
    with pytest.raises(ValueError):
        n_step_double_q_targets(torch.ones(1, 1), torch.ones(1, 1),
                                torch.ones(1, 1, dtype=torch.bool), qo, qt, n=0, gamma=0.9)


def test_episode_run_end_table() -> None:
    #        t:  0  1  2  3  4  5
    # mask       1  1  1  0  0  0    -> L = 2 2 2 (3 4 5 on padding: itself)
    # first      1  0  0  1  0  0    (column 1: all valid, episode starts at 3)
    mask = torch.tensor([[1, 1], [1, 1], [1, 1], [0, 1], [0, 1], [0, 1]]).bool()
    first = torch.tensor([[1, 1], [0, 0], [0, 0], [1, 1], [0, 0], [0, 0]]).bool()
    run_end = episode_run_end(mask, first)
    assert run_end[:, 0].tolist() == [2, 2, 2, 3, 4, 5]
    assert run_end[:, 1].tolist() == [2, 2, 2, 5, 5, 5]
    assert episode_run_end(mask)[:, 1].tolist() == [5, 5, 5, 5, 5, 5]


# ---------------------------------------------------------------------------
# Priorities, importance weights, epsilons.
# ---------------------------------------------------------------------------


def test_sequence_priorities_table() -> None:
    abs_td = torch.tensor([[1.0, 4.0, NAN],
                           [2.0, 0.0, NAN],
                           [3.0, 2.0, NAN],
                           [6.0, NAN, NAN]])
    valid = torch.tensor([[1, 1, 0], [1, 1, 0], [1, 1, 0], [1, 0, 0]]).bool()
    # col 0: max 6, mean 3  -> .9*6 + .1*3 = 5.4 + .3 = 5.7
    # col 1: max 4, mean 2 (step 3 invalid, NaN ignored) -> 3.6 + .2 = 3.8
    # col 2: no valid step -> 0
    assert sequence_priorities(abs_td, valid, eta=0.9).tolist() == pytest.approx([5.7, 3.8, 0.0])
    # eta = 0.5: col 0: 3 + 1.5 = 4.5; col 1: 2 + 1 = 3
    assert sequence_priorities(abs_td, valid, eta=0.5).tolist() == pytest.approx([4.5, 3.0, 0.0])


IMPORTANCE_CASES = [
    # probs,         N,  beta, expected
    # N P = [2, 1, 1] -> [2^-.5, 1, 1] = [.70711, 1, 1], max 1
    ([0.5, 0.25, 0.25], 4, 0.5, [2 ** -0.5, 1.0, 1.0]),
    # beta = 1: [1/2, 1, 1]
    ([0.5, 0.25, 0.25], 4, 1.0, [0.5, 1.0, 1.0]),
    # N P = [1, 4] -> [1, 4^-.5 = .5], max 1
    ([0.1, 0.4], 10, 0.5, [1.0, 0.5]),
    # N P = [2, 8] -> [2^-1/3, 8^-1/3 = .5] / 2^-1/3 = [1, .5 * 2^(1/3) = .62996]
    ([0.2, 0.8], 10, 1.0 / 3.0, [1.0, 0.5 * 2 ** (1.0 / 3.0)]),
]


@pytest.mark.parametrize("probs,num_items,beta,expected", IMPORTANCE_CASES)
def test_importance_weights_table(probs, num_items, beta, expected) -> None:
    got_t = importance_weights(torch.tensor(probs, dtype=torch.float64), num_items, beta)
    got_np = importance_weights(np.array(probs), num_items, beta)
    assert got_t.tolist() == pytest.approx(expected, rel=1e-12)
    assert isinstance(got_np, np.ndarray)
    assert got_np.tolist() == pytest.approx(expected, rel=1e-12)


def test_apex_epsilon_table() -> None:
    assert apex_epsilon(0, 10) == pytest.approx(0.4)
    assert apex_epsilon(9, 10) == pytest.approx(0.4 ** 8)  # 0.00065536
    assert 0.4 ** 8 == pytest.approx(0.00065536)
    # N = 3, i = 1: 0.4^(1 + 3.5) = 0.4^4 * sqrt(0.4) = 0.0256 * 0.6324555 = 0.0161909
    assert apex_epsilon(1, 3) == pytest.approx(0.0161909, rel=1e-5)
    assert apex_epsilon(0, 1) == 0.4  # single actor: base
    got = apex_epsilon(np.array([0, 1, 2]), 3)
    assert isinstance(got, np.ndarray)
    assert got.tolist() == pytest.approx([0.4, 0.0161909, 0.4 ** 8], rel=1e-5)
    assert np.all(np.diff(apex_epsilon(np.arange(256), 256)) < 0)
    with pytest.raises(ValueError):
        apex_epsilon(0, 0)


# ---------------------------------------------------------------------------
# The sequence loss.
# ---------------------------------------------------------------------------


class TableNet(nn.Module):
    """Q(o_t) = scale * o_t: the observation *is* the Q table ``[T, B, A]``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

    def forward(self, obs, prev_action, prev_reward, first, state):
        return self.scale * obs, state


class FakeRecurrentNet(nn.Module):
    """A tiny tanh RNN with the R2D2Network signature; zeros its state where first."""

    def __init__(self, obs_dim: int = 3, num_actions: int = 2, hidden: int = 4, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.num_actions = num_actions
        self.w_in = nn.Parameter(torch.randn(obs_dim + num_actions + 1, hidden, generator=gen) * 0.5)
        self.w_rec = nn.Parameter(torch.randn(hidden, hidden, generator=gen) * 0.5)
        self.w_out = nn.Parameter(torch.randn(hidden, num_actions, generator=gen) * 0.5)

    def forward(self, obs, prev_action, prev_reward, first, state):
        h, c = state
        outputs = []
        for t in range(obs.shape[0]):
            keep = ~first[t].bool().unsqueeze(-1)
            h = torch.where(keep, h, torch.zeros_like(h))
            c = torch.where(keep, c, torch.zeros_like(c))
            x = torch.cat([obs[t], nn.functional.one_hot(prev_action[t], self.num_actions).float(),
                           prev_reward[t].unsqueeze(-1)], dim=-1)
            h = torch.tanh(x @ self.w_in + h @ self.w_rec)
            c = c + h
            outputs.append(h @ self.w_out)
        return torch.stack(outputs), (h, c)


def _hand_batch() -> Tuple[SequenceBatch, torch.Tensor]:
    """T = 4, burn_in = 1, B = 2, A = 2 for TableNet (obs = Q table), n = 1, gamma = 0.5.

    Column 0 (terminates after step 2, step 3 is padding):
      step 1: a = 0, Q(o_1) = [-0.997, 0]; y = h(1 + .5 h^-1(max Q(o_2))) = h(1 + .5*4)
              = h(3) = 1.003 -> delta = 1.003 + 0.997 = 2
      step 2: a = 1, Q(o_2) = [h(4), 0.003]; terminal: y = h(3) = 1.003 -> delta = 1
      loss_0 = (.5*4 + .5*1) / 2 = 1.25;  priority .9*2 + .1*1.5 = 1.95
    Column 1 (no termination, n = 1):
      step 1: a = 1, Q(o_1) = [0, 0.003]; y = h(0 + .5*6) = 1.003 (Q(o_2)[0] = h(6) is max)
              -> delta = 1
      step 2: a = 1, Q(o_2) = [h(6), -1.997]; y = h(1 + .5*4) = 1.003 (max Q(o_3) = h(4))
              -> delta = 3
      step 3: last valid, not terminal: no target
      loss_1 = (.5*1 + .5*9) / 2 = 2.5;  priority .9*3 + .1*2 = 2.9
    Weights [1, .5]: loss = (1*1.25 + .5*2.5) / 2 = 1.25.
    """
    h4, h6 = h(4.0), h(6.0)
    obs = torch.tensor([
        [[5.0, 5.0], [5.0, 5.0]],            # burn-in step: never a target
        [[-0.997, 0.0], [0.0, 0.003]],
        [[h4, 0.003], [h6, -1.997]],
        [[0.0, 0.0], [0.0, h4]],              # column 0: padding
    ], dtype=torch.float64)
    batch = SequenceBatch(
        obs=obs,
        action=torch.tensor([[0, 0], [0, 1], [1, 1], [0, 0]]),
        reward=torch.tensor([[9.0, 9.0], [1.0, 0.0], [3.0, 1.0], [NAN, 5.0]], dtype=torch.float64),
        discount=torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [NAN, 1.0]], dtype=torch.float64),
        first=torch.zeros(4, 2, dtype=torch.bool),
        mask=torch.tensor([[1, 1], [1, 1], [1, 1], [0, 1]]).bool(),
        prev_action=torch.zeros(4, 2, dtype=torch.int64),
        prev_reward=torch.zeros(4, 2, dtype=torch.float64),
        state_h=torch.zeros(2, 1, dtype=torch.float64),
        state_c=torch.zeros(2, 1, dtype=torch.float64),
        keys=torch.arange(2),
        probs=torch.full((2,), 0.5, dtype=torch.float64),
    )
    return batch, torch.tensor([1.0, 0.5], dtype=torch.float64)


def test_sequence_loss_hand_computed() -> None:
    # |delta| per column (valid steps): col 0 = (2, 1), col 1 = (1, 3); w = (1, 0.5).
    # sum (Acme, SEED RL): 1/2 (1 * (4 + 1) / 2 + 0.5 * (1 + 9) / 2) = 1/2 (2.5 + 2.5) = 2.5
    batch, weights = _hand_batch()
    online, target = TableNet(), TableNet()
    out = sequence_loss(online, target, batch, weights, burn_in=1, n=1, gamma=0.5, eps=EPS)
    assert out.loss.item() == pytest.approx(2.5, abs=1e-9)
    # mean: each sequence divided by its 2 valid steps: 1/2 (1.25 + 1.25) = 1.25
    out_mean = sequence_loss(online, target, batch, weights, burn_in=1, n=1, gamma=0.5,
                             eps=EPS, reduction="mean")
    assert out_mean.loss.item() == pytest.approx(1.25, abs=1e-9)
    assert out_mean.priorities.tolist() == pytest.approx(out.priorities.tolist(), abs=1e-12)
    assert out.priorities.tolist() == pytest.approx([1.95, 2.9], abs=1e-9)
    assert out.valid.tolist() == [[True, True], [True, True], [False, False]]
    assert out.abs_td_error.flatten().tolist() == pytest.approx([2.0, 1.0, 1.0, 3.0, 0.0, 0.0], abs=1e-9)
    assert out.targets[:2].flatten().tolist() == pytest.approx([1.003] * 4, abs=1e-9)
    assert int(out.num_valid) == 4
    # mean Q(o_t, a_t) = (-0.997 + 0.003 + 0.003 - 1.997) / 4 = -0.747
    assert out.mean_q.item() == pytest.approx(-0.747, abs=1e-9)
    assert out.mean_target.item() == pytest.approx(1.003, abs=1e-9)
    assert not out.priorities.requires_grad and not out.abs_td_error.requires_grad


@pytest.mark.parametrize("shared_target", [False, True])
@pytest.mark.parametrize("reduction, expected", [("sum", 2.4925), ("mean", 1.24625)])
def test_sequence_loss_gradient_hand_computed(shared_target: bool, reduction: str,
                                              expected: float) -> None:
    # Q = scale * obs, so with sum: dL/dscale = -1/B sum_i w_i sum_t delta_t * obs_taken_t:
    #   col 0: 2 * -0.997 + 1 * 0.003 = -1.991, * w 1   = -1.991
    #   col 1: 1 * 0.003 + 3 * -1.997 = -5.988, * w 0.5 = -2.994
    #   dL/dscale = -(-1.991 - 2.994) / 2 = 2.4925
    # With mean each column is divided by its n_i = 2 valid steps: 1.24625.
    # With the online net also used as target net the value is the same only if the
    # targets carry no gradient.
    batch, weights = _hand_batch()
    online = TableNet()
    target = online if shared_target else TableNet()
    out = sequence_loss(online, target, batch, weights, burn_in=1, n=1, gamma=0.5, eps=EPS,
                        reduction=reduction)
    out.loss.backward()
    assert online.scale.grad.item() == pytest.approx(expected, abs=1e-9)


def test_sum_and_mean_differ_by_the_valid_steps_on_full_sequences() -> None:
    # No padding, no termination: every column has T - burn_in - n + 1 valid steps
    # (n = 2: the last trace step has no target), so sum = mean * that count, for the
    # loss and for every gradient entry.
    batch = _random_batch(num_steps=9, batch_size=4)
    weights = torch.tensor([0.2, 1.0, 0.7, 0.4])
    online, target = FakeRecurrentNet(seed=0), FakeRecurrentNet(seed=1)
    results = {}
    for reduction in ("sum", "mean"):
        out = sequence_loss(online, target, batch, weights, burn_in=3, n=2, gamma=0.9,
                            reduction=reduction)
        grads = torch.autograd.grad(out.loss, list(online.parameters()))
        results[reduction] = (out, grads)
    valid_steps = 9 - 3 - 1
    out_sum, g_sum = results["sum"]
    out_mean, g_mean = results["mean"]
    assert out_sum.valid.sum(dim=0).tolist() == [valid_steps] * 4
    assert out_sum.loss.item() == pytest.approx(valid_steps * out_mean.loss.item(), rel=1e-5)
    for gs, gm in zip(g_sum, g_mean):
        torch.testing.assert_close(gs, valid_steps * gm, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(out_sum.priorities, out_mean.priorities)


def test_sum_reduction_weights_a_short_sequence_by_its_length() -> None:
    # A sequence padded after 2 of its 5 trace steps contributes its 2 squared errors
    # with sum, but their mean (the weight of a whole sequence) with mean.
    batch = _random_batch(num_steps=8, batch_size=2, mask_len=[8, 5])
    online, target = FakeRecurrentNet(seed=0), FakeRecurrentNet(seed=1)
    out = sequence_loss(online, target, batch, torch.tensor([0.0, 1.0]), burn_in=3, n=1,
                        gamma=0.9)
    out_mean = sequence_loss(online, target, batch, torch.tensor([0.0, 1.0]), burn_in=3, n=1,
                             gamma=0.9, reduction="mean")
    count = int(out.valid[:, 1].sum())
    assert count == 2
    expected = 0.5 * float((out.abs_td_error[:, 1] ** 2).sum()) / 2  # 1/B, B = 2
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out_mean.loss.item() == pytest.approx(expected / count, rel=1e-5)


def test_unknown_reduction_is_refused() -> None:
    batch, weights = _hand_batch()
    with pytest.raises(ValueError, match="reduction"):
        sequence_loss(TableNet(), TableNet(), batch, weights, burn_in=1, n=1, gamma=0.5,
                      reduction="median")


def _random_batch(num_steps: int = 7, batch_size: int = 3, obs_dim: int = 3, seed: int = 1,
                  mask_len: Optional[List[int]] = None) -> SequenceBatch:
    gen = torch.Generator().manual_seed(seed)
    mask_len = mask_len or [num_steps] * batch_size
    t = torch.arange(num_steps).unsqueeze(-1)
    mask = t < torch.tensor(mask_len).unsqueeze(0)
    discount = torch.ones(num_steps, batch_size)
    for b, length in enumerate(mask_len):
        if length < num_steps:
            discount[length - 1, b] = 0.0  # episode terminates at its last valid step
    action = torch.randint(0, 2, (num_steps, batch_size), generator=gen)
    reward = torch.randn(num_steps, batch_size, generator=gen)
    prev_action = torch.cat([torch.zeros(1, batch_size, dtype=torch.int64), action[:-1]])
    prev_reward = torch.cat([torch.zeros(1, batch_size), reward[:-1]])
    return SequenceBatch(
        obs=torch.randn(num_steps, batch_size, obs_dim, generator=gen),
        action=action, reward=reward, discount=discount,
        first=torch.zeros(num_steps, batch_size, dtype=torch.bool), mask=mask,
        prev_action=prev_action, prev_reward=prev_reward,
        state_h=torch.randn(batch_size, 4, generator=gen),
        state_c=torch.randn(batch_size, 4, generator=gen),
        keys=torch.arange(batch_size), probs=torch.full((batch_size,), 1.0 / batch_size))


def _column(batch: SequenceBatch, b: int) -> SequenceBatch:
    """Batch element ``b`` alone, as a batch of size 1."""
    batch_major = {"state_h", "state_c", "keys", "probs"}
    return SequenceBatch(**{
        name: (x[b:b + 1] if name in batch_major else x[:, b:b + 1])
        for name, x in batch._asdict().items()})


def _loss_and_grads(batch: SequenceBatch, weights: torch.Tensor, burn_in: int = 3,
                    n: int = 2) -> Tuple[torch.Tensor, List[torch.Tensor]]:
    online, target = FakeRecurrentNet(seed=0), FakeRecurrentNet(seed=1)
    out = sequence_loss(online, target, batch, weights, burn_in=burn_in, n=n, gamma=0.9)
    grads = torch.autograd.grad(out.loss, list(online.parameters()))
    return out.loss.detach(), [g.detach() for g in grads]


def test_burn_in_receives_no_gradient() -> None:
    torch.manual_seed(0)
    batch = _random_batch()
    obs = batch.obs.clone().requires_grad_(True)
    state_h = batch.state_h.clone().requires_grad_(True)
    state_c = batch.state_c.clone().requires_grad_(True)
    batch = batch._replace(obs=obs, state_h=state_h, state_c=state_c)
    online, target = FakeRecurrentNet(seed=0), FakeRecurrentNet(seed=1)
    out = sequence_loss(online, target, batch, torch.ones(3), burn_in=3, n=2, gamma=0.9)
    out.loss.backward()
    # The burn-in observations and the stored state influence the loss (through the
    # state), but must not receive gradient; the trace observations must.
    assert obs.grad is not None
    assert torch.count_nonzero(obs.grad[:3]) == 0
    assert torch.count_nonzero(obs.grad[3:]) > 0
    assert state_h.grad is None or torch.count_nonzero(state_h.grad) == 0
    assert state_c.grad is None or torch.count_nonzero(state_c.grad) == 0
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in online.parameters())


def test_burn_in_changes_the_loss_but_resets_at_first() -> None:
    batch = _random_batch()
    weights = torch.ones(3)
    loss, _ = _loss_and_grads(batch, weights)
    # Changing a burn-in observation changes the trace's starting state, hence the loss
    # (so the burn-in is really unrolled) ...
    obs = batch.obs.clone()
    obs[0] += 1.0
    changed, _ = _loss_and_grads(batch._replace(obs=obs), weights)
    assert abs(changed.item() - loss.item()) > 1e-6
    # ... but with an episode start at step 2 (inside the burn-in), nothing before it
    # (observations, stored state) may matter: the unrolls reset there.
    first = batch.first.clone()
    first[2] = True
    reset = batch._replace(first=first)
    loss_reset, grads_reset = _loss_and_grads(reset, weights)
    obs = batch.obs.clone()
    obs[:2] += 3.0
    other, grads_other = _loss_and_grads(
        reset._replace(obs=obs, state_h=batch.state_h + 1.0, state_c=batch.state_c - 1.0), weights)
    assert other.item() == pytest.approx(loss_reset.item(), abs=1e-6)
    for a, b in zip(grads_reset, grads_other):
        torch.testing.assert_close(a, b)


def test_padded_steps_contribute_nothing() -> None:
    # Column 0 ends (terminates) at step 4 of 7; steps 5 and 6 are padding.
    batch = _random_batch(mask_len=[5, 7, 6])
    weights = torch.tensor([1.0, 0.7, 0.4])
    loss, grads = _loss_and_grads(batch, weights)
    pad = ~batch.mask
    obs = batch.obs.clone()
    obs[pad] = 100.0
    reward = batch.reward.clone()
    reward[pad] = NAN
    discount = batch.discount.clone()
    discount[pad] = NAN
    prev_reward = batch.prev_reward.clone()
    prev_reward[pad] = -50.0
    prev_action = batch.prev_action.clone()
    prev_action[pad] = 1 - prev_action[pad]
    action = batch.action.clone()
    action[pad] = 1 - action[pad]
    garbage = batch._replace(obs=obs, reward=reward, discount=discount, prev_reward=prev_reward,
                             prev_action=prev_action, action=action)
    loss_g, grads_g = _loss_and_grads(garbage, weights)
    assert torch.isfinite(loss_g)
    assert loss_g.item() == pytest.approx(loss.item(), abs=1e-6)
    for a, b in zip(grads, grads_g):
        torch.testing.assert_close(a, b)
    # Sanity: changing a *valid* reward does change the loss.
    reward = batch.reward.clone()
    reward[3, 0] += 1.0
    changed, _ = _loss_and_grads(batch._replace(reward=reward), weights)
    assert abs(changed.item() - loss.item()) > 1e-6


def test_zero_importance_weight_removes_a_sequence() -> None:
    batch = _random_batch(batch_size=2)
    loss_pair, grads_pair = _loss_and_grads(batch, torch.tensor([0.0, 1.0]))
    # Column 1 alone, weight 1: the pair's loss is the batch mean, (0 + l_1) / 2.
    single = _column(batch, 1)
    loss_single, grads_single = _loss_and_grads(single, torch.tensor([1.0]))
    assert loss_pair.item() == pytest.approx(0.5 * loss_single.item(), rel=1e-5)
    for a, b in zip(grads_pair, grads_single):
        torch.testing.assert_close(a, 0.5 * b)
    # And column 0's data does not matter at all.
    reward = batch.reward.clone()
    reward[:, 0] += 10.0
    loss_other, _ = _loss_and_grads(batch._replace(reward=reward), torch.tensor([0.0, 1.0]))
    assert loss_other.item() == pytest.approx(loss_pair.item(), abs=1e-7)


def test_importance_weights_scale_each_sequence() -> None:
    batch = _random_batch(batch_size=2)
    online, target = FakeRecurrentNet(seed=0), FakeRecurrentNet(seed=1)
    per_column = []
    for w in ([1.0, 0.0], [0.0, 1.0]):
        out = sequence_loss(online, target, batch, torch.tensor(w), burn_in=3, n=2, gamma=0.9)
        per_column.append(out.loss.item())
    out = sequence_loss(online, target, batch, torch.tensor([0.3, 0.8]), burn_in=3, n=2, gamma=0.9)
    assert out.loss.item() == pytest.approx(0.3 * per_column[0] + 0.8 * per_column[1], rel=1e-5)


def test_sequence_loss_without_burn_in_and_bad_burn_in() -> None:
    batch = _random_batch()
    online, target = FakeRecurrentNet(seed=0), FakeRecurrentNet(seed=1)
    out = sequence_loss(online, target, batch, torch.ones(3), burn_in=0, n=2, gamma=0.9)
    assert out.valid.shape == (7, 3)
    # n = 2, no termination, all 7 steps valid: the last step of each column has no target.
    assert out.valid.sum(dim=0).tolist() == [6, 6, 6]
    with pytest.raises(ValueError):
        sequence_loss(online, target, batch, torch.ones(3), burn_in=7, n=2, gamma=0.9)


def test_sequence_loss_stops_windows_at_an_episode_start() -> None:
    # All 7 steps valid, no termination, but a new episode starts at step 5 (the one
    # before ended on a time limit). burn_in = 3, so the trace is steps 3..6 and with
    # n = 2: step 3 -> bootstraps from o_4 (n' = 1, its episode ends at 4), step 4 has
    # no next observation in its episode, step 5 -> bootstraps from o_6, step 6 none.
    batch = _random_batch()
    first = batch.first.clone()
    first[5] = True
    online, target = FakeRecurrentNet(seed=0), FakeRecurrentNet(seed=1)
    out = sequence_loss(online, target, batch._replace(first=first), torch.ones(3),
                        burn_in=3, n=2, gamma=0.9)
    assert out.valid[:, 0].tolist() == [True, False, True, False]
    # The targets are those of n_step_double_q_targets with the trace's first flags.
    with torch.no_grad():
        q_online, _ = online(batch.obs[3:], batch.prev_action[3:], batch.prev_reward[3:],
                             first[3:], online(batch.obs[:3], batch.prev_action[:3],
                                               batch.prev_reward[:3], first[:3],
                                               (batch.state_h, batch.state_c))[1])
        q_target, _ = target(batch.obs, batch.prev_action, batch.prev_reward, first,
                             (batch.state_h, batch.state_c))
    expected, _ = n_step_double_q_targets(batch.reward[3:], batch.discount[3:], batch.mask[3:],
                                          q_online, q_target[3:], n=2, gamma=0.9,
                                          first=first[3:])
    torch.testing.assert_close(out.targets, expected)

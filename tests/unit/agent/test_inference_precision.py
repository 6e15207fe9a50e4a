"""The actors' inference precision (``actor.inference_precision``): what ``auto``
resolves to from the CPU's flags, and bf16 inference against float32 on the
paper's Atari network (Nature torso, LSTM 512, dueling head).

Stated tolerances (bf16 keeps 8 bits of mantissa, a relative rounding of 2^-9;
a forward rounds a few times):

* Q-values: ``|q_bf16 - q_f32| <= 2^-5 * max_a |q_f32| + 1e-6`` per env, so the
  actions differ only where the float32 top two are within twice that;
* the recurrent state carried and stored (float32 by design): within 1e-2
  absolute after 12 steps (LSTM ``h`` lies in [-1, 1]);
* the adder's initial priorities: within 5 % relative + 1e-3.

On a CPU without native bf16 oneDNN emulates it, so these run everywhere.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from r2d2_hpc.agent.adder import SequenceAdder
from r2d2_hpc.agent.device import cpu_flags, cpu_model, resolve_inference_precision
from r2d2_hpc.agent.policy import ActorPolicy
from r2d2_hpc.config import Config, ConfigError, ReplayConfig

torch.set_num_threads(1)

OBS = (4, 84, 84)
ACTIONS = 18
Q_REL_TOL = 2.0 ** -5


def atari_config(precision: str) -> Config:
    """The paper's network, short sequences (burn-in 2, trace 8, period 4)."""
    cfg = Config()
    return cfg.replace(
        actor=dataclasses.replace(cfg.actor, inference_precision=precision),
        replay=ReplayConfig(capacity_observations=10_000, burn_in=2, trace_length=8,
                            sequence_period=4, min_fill_sequences=1))


def policies(num_envs: int, epsilon: float):
    """float32 and bf16 policies with the same parameters: the initial ones with the
    advantage layer's weights x20, as a trained head whose advantages differ (at
    initialisation all 18 Q-values lie within ~0.1 % of each other, so any
    rounding reorders them)."""
    eps = np.full(num_envs, epsilon)
    pols = [ActorPolicy(atari_config(p), OBS, ACTIONS, eps, seed=7) for p in ("float32", "bf16")]
    for p in pols:
        with torch.no_grad():
            p.network.advantage_head[2].weight.mul_(20.0)
    return pols


def frames(rng: np.random.Generator, num_envs: int) -> np.ndarray:
    """Pong-like frames: a dark field with bright blocks, not white noise."""
    obs = np.full((num_envs, *OBS), 40, np.uint8)
    for i in range(num_envs):
        for _ in range(3):
            y, x = rng.integers(0, 76, size=2)
            obs[i, :, y:y + 8, x:x + 4] = rng.integers(120, 255)
    return obs


# ------------------------------------------------------------ what auto picks
@pytest.mark.parametrize("flags, dtype, says", [
    (("fpu", "avx2", "amx_bf16", "avx512_bf16"), torch.bfloat16, "amx_bf16/avx512_bf16"),
    (("fpu", "avx512f", "avx512_bf16"), torch.bfloat16, "avx512_bf16"),
    (("fp", "asimd", "bf16"), torch.bfloat16, "bf16"),           # ARMv8.6 BF16
    (("fpu", "avx2", "avx512f"), None, "no native bf16"),        # AVX-512 without BF16
    ((), None, "no native bf16"),                                 # flags unknown
])
def test_auto_is_bf16_only_where_the_cpu_has_native_bf16(flags, dtype, says):
    got, reason = resolve_inference_precision("auto", flags)
    assert got == dtype
    assert "actor.inference_precision=auto" in reason and says in reason


def test_forced_choices_and_a_bad_value():
    assert resolve_inference_precision("float32", ("amx_bf16",))[0] is None
    dtype, reason = resolve_inference_precision("bf16", ("avx2",))
    assert dtype == torch.bfloat16 and "emulates" in reason
    with pytest.raises(ConfigError, match="actor.inference_precision.*float32"):
        resolve_inference_precision("fp8")


def test_cpu_flags_reads_x86_and_arm_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu avx2 amx_bf16\n\n"
                   "processor\t: 1\nflags\t\t: fpu\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")
    assert cpu_flags(str(x86)) == ("fpu", "avx2", "amx_bf16")
    assert cpu_flags(str(arm)) == ("fp", "asimd", "bf16", "i8mm")
    assert cpu_flags(str(tmp_path / "absent")) == ()
    assert cpu_model(str(x86)) == "X" and cpu_model(str(arm)) == ""


def test_config_rejects_an_unknown_precision():
    cfg = atari_config("bf61")
    assert any("actor.inference_precision" in e and "bf16" in e for e in cfg.validate())


# ------------------------------------------------------- bf16 against float32
def test_bf16_actions_equal_float32_actions_except_at_near_ties():
    n = 64
    f32, b16 = policies(n, epsilon=0.0)
    assert f32.autocast_dtype is None and b16.autocast_dtype == torch.bfloat16
    obs = frames(np.random.default_rng(0), n)
    first = np.ones(n, bool)
    a, b = f32.act(obs, first), b16.act(obs, first)
    assert b.q.dtype == np.float32 and b.state_h.dtype == np.float32
    scale = np.abs(a.q).max(axis=1)
    tol = Q_REL_TOL * scale + 1e-6
    assert np.all(np.abs(b.q - a.q).max(axis=1) <= tol)
    assert not np.array_equal(b.q, a.q)  # bf16 really ran
    top2 = np.sort(a.q, axis=1)[:, -2:]
    near_tie = (top2[:, 1] - top2[:, 0]) <= 2 * tol
    differ = a.action != b.action
    assert not np.any(differ & ~near_tie), np.flatnonzero(differ & ~near_tie)
    assert near_tie.mean() < 0.5  # the comparison is not vacuous


def test_bf16_states_and_initial_priorities_stay_within_tolerance():
    """epsilon 1 for both: the same seed gives the same (random) actions, so the
    inputs agree at every step and only the precision differs."""
    n, steps = 8, 12
    pols = policies(n, epsilon=1.0)
    adders = [SequenceAdder.from_config(p_cfg, n, emit_period=1)
              for p_cfg in (atari_config("float32"), atari_config("bf16"))]
    rng = np.random.default_rng(3)
    first = np.ones(n, bool)
    chunks = [[], []]
    for t in range(steps):
        obs = frames(rng, n)
        reward = rng.standard_normal(n).astype(np.float32)
        outs = [p.act(obs, first) for p in pols]
        assert np.array_equal(outs[0].action, outs[1].action)
        np.testing.assert_allclose(outs[1].state_h, outs[0].state_h, atol=1e-2)
        np.testing.assert_allclose(outs[1].state_c, outs[0].state_c, atol=1e-2)
        for k, (p, o, adder) in enumerate(zip(pols, outs, adders)):
            p.observe(reward)
            chunks[k] += adder.add(obs, o.action, reward, np.ones(n, np.float32), first,
                                   o.state_h, o.state_c, o.q, o.prev_action, o.prev_reward)
        first = np.zeros(n, bool)
    prio = [np.concatenate([c.priority for c in ch]) for ch in chunks]
    assert prio[0].size >= n  # sequences were cut and prioritised
    np.testing.assert_allclose(prio[1], prio[0], rtol=0.05, atol=1e-3)
    h32, _ = pols[0].state
    h16, _ = pols[1].state
    assert h16.dtype == np.float32 and np.abs(h16 - h32).max() > 0  # carried in float32

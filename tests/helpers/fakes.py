"""Small fakes for the learner and policy tests: a tiny config and random batches.

``random_sequence_batch`` builds a random but valid ``SequenceBatch``. Each
column ``b`` is one of ``SEQUENCE_KINDS`` (``b % 5``), drawn for ``T = 9``,
``burn_in = 3`` (``B`` burn-in, ``·`` trace, ``F`` first, ``|`` termination,
``x`` padding)::

    kind          t: 0 1 2 3 4 5 6 7 8
    mid_episode      B B B · · · · · ·      stored state, no event
    terminates       B B B · · ·|x x x      discount 0 at e, padding after
    starts           F B B · · · · · ·      episode starts at t = 0, zero state
    new_episode      B|F B · · · · · ·      terminates in burn-in, next episode follows
    truncated        B B B · · · · x x      ends without termination, padding after

(event positions are drawn at random within the ranges the drawing shows).
Every column has at least two valid trace steps, so every sequence has a
target and a positive priority. Padding is all zeros (``mask`` False).
"""
from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np

from r2d2_hpc.config import (
    Config,
    EnvConfig,
    LearnerConfig,
    NetworkConfig,
    ReplayConfig,
)
from r2d2_hpc.types import SequenceBatch

SEQUENCE_KINDS: Tuple[str, ...] = ("mid_episode", "terminates", "starts", "new_episode",
                                   "truncated")

OBS_SHAPE = (5,)
NUM_ACTIONS = 3


def tiny_config(**learner_overrides: object) -> Config:
    """A valid config with a tiny MLP network and short sequences.

    ``burn_in = 3``, ``trace_length = 6`` (``T = 9``), ``n_step = 2``,
    ``batch_size = 5``; ``learner_overrides`` replace ``cfg.learner`` fields.
    """
    learner = dataclasses.replace(
        LearnerConfig(batch_size=5, n_step=2, target_update_period=1000, device="cpu"),
        **learner_overrides)
    cfg = Config(
        env=EnvConfig(name="counter"),
        network=NetworkConfig(torso="mlp", mlp_hidden=(8,), lstm_size=8, head_hidden=8),
        replay=ReplayConfig(capacity_observations=1000, burn_in=3, trace_length=6,
                            sequence_period=3, min_fill_sequences=1),
        learner=learner,
    )
    errors = cfg.validate()
    assert not errors, errors
    return cfg


def random_sequence_batch(cfg: Config, obs_shape: Tuple[int, ...] = OBS_SHAPE,
                          num_actions: int = NUM_ACTIONS, batch_size: int = 5,
                          seed: int = 0, state_size: int | None = None,
                          state_scale: float = 0.5) -> SequenceBatch:
    """A random valid ``SequenceBatch`` of numpy arrays (see the module docstring).

    Args:
      cfg: gives ``T = burn_in + trace_length``, ``burn_in`` and the LSTM size.
      obs_shape: observation shape; 3-D shapes give ``uint8`` frames, others
        ``float32`` vectors.
      num_actions: ``A``.
      batch_size: ``B``; column ``b`` has kind ``SEQUENCE_KINDS[b % 5]``.
      seed: numpy seed.
      state_size: ``H`` (default ``cfg.network.lstm_size``).
      state_scale: stored states are uniform in ``[-state_scale, state_scale]``.

    Returns:
      The batch, ``[T, B, ...]``.
    """
    rng = np.random.default_rng(seed)
    burn_in = cfg.replay.burn_in
    t_len = cfg.replay.sequence_length
    hidden = cfg.network.lstm_size if state_size is None else state_size
    assert cfg.replay.trace_length >= 4 and burn_in >= 2, "the kinds need room"

    image = len(obs_shape) == 3
    if image:
        obs = rng.integers(0, 256, size=(t_len, batch_size, *obs_shape), dtype=np.uint8)
    else:
        obs = rng.standard_normal((t_len, batch_size, *obs_shape)).astype(np.float32)
    action = rng.integers(0, num_actions, size=(t_len, batch_size)).astype(np.int64)
    reward = rng.standard_normal((t_len, batch_size)).astype(np.float32)
    discount = np.ones((t_len, batch_size), dtype=np.float32)
    first = np.zeros((t_len, batch_size), dtype=bool)
    mask = np.ones((t_len, batch_size), dtype=bool)
    state_h = rng.uniform(-state_scale, state_scale, (batch_size, hidden)).astype(np.float32)
    state_c = rng.uniform(-state_scale, state_scale, (batch_size, hidden)).astype(np.float32)
    # Action and reward before the sequence (for t = 0 when it is no episode start).
    before_action = rng.integers(0, num_actions, size=batch_size).astype(np.int64)
    before_reward = rng.standard_normal(batch_size).astype(np.float32)

    for b in range(batch_size):
        kind = SEQUENCE_KINDS[b % len(SEQUENCE_KINDS)]
        if kind == "terminates":
            end = int(rng.integers(burn_in, t_len - 1))  # a trace step, padding after
            discount[end, b] = 0.0
            mask[end + 1:, b] = False
        elif kind == "starts":
            first[0, b] = True
            state_h[b] = 0.0
            state_c[b] = 0.0
        elif kind == "new_episode":
            end = int(rng.integers(0, burn_in - 1))
            discount[end, b] = 0.0
            first[end + 1, b] = True
        elif kind == "truncated":
            last = int(rng.integers(burn_in + 1, t_len - 1))  # >= 2 valid trace steps
            mask[last + 1:, b] = False

    prev_action = np.zeros_like(action)
    prev_reward = np.zeros_like(reward)
    prev_action[0] = before_action
    prev_reward[0] = before_reward
    prev_action[1:] = action[:-1]
    prev_reward[1:] = reward[:-1]
    prev_action[first] = 0
    prev_reward[first] = 0.0

    pad = ~mask
    obs[pad] = 0
    for arr in (action, prev_action):
        arr[pad] = 0
    for arr in (reward, prev_reward, discount):
        arr[pad] = 0.0

    keys = np.arange(batch_size, dtype=np.int64)
    probs = rng.uniform(0.01, 0.1, size=batch_size)
    return SequenceBatch(obs=obs, action=action, reward=reward, discount=discount, first=first,
                         mask=mask, prev_action=prev_action, prev_reward=prev_reward,
                         state_h=state_h, state_c=state_c, keys=keys, probs=probs)


def select_columns(batch: SequenceBatch, columns: np.ndarray) -> SequenceBatch:
    """The batch restricted to some sequences (``[T, B]`` fields and ``[B]`` fields)."""
    columns = np.asarray(columns)
    out = {}
    for name, value in zip(SequenceBatch._fields, batch):
        if name in ("state_h", "state_c", "keys", "probs"):
            out[name] = value[columns]
        else:
            out[name] = value[:, columns]
    return SequenceBatch(**out)

"""Type aliases and the records shared across layers: the replayed batch, the job's shapes,
an actor's saved counters.

Shapes follow the SEED RL convention: time first, then batch.
"""
from __future__ import annotations

from typing import NamedTuple, Tuple

import numpy as np

Array = np.ndarray
#: Recurrent state of the LSTM core, ``(h, c)``, each ``<float32>[B, H]``.
RecurrentState = Tuple[np.ndarray, np.ndarray]


class SequenceBatch(NamedTuple):
    """A batch of stored sequences, laid out ``[T, B, ...]`` for the learner.

    Step ``t`` of a sequence holds observation ``o_t``, the action ``a_t`` taken
    there, the reward ``r_t`` received after it and ``discount_t`` (0.0 when the
    episode terminated after ``a_t``, else 1.0; the agent's gamma is applied by
    the loss, not stored).

    Attributes:
      obs: ``<uint8>[T, B, *obs_shape]`` (frame stacks rebuilt) or ``<float32>``
        for vector observations.
      action: ``<int64>[T, B]`` action taken at step t.
      reward: ``<float32>[T, B]`` reward after the action at step t.
      discount: ``<float32>[T, B]`` 0.0 if the episode terminated after step t.
      first: ``<bool>[T, B]`` True where step t is the first step of an episode.
      mask: ``<bool>[T, B]`` False on padding after an episode's last step.
      prev_action: ``<int64>[T, B]`` action at t-1 (0 at an episode start).
      prev_reward: ``<float32>[T, B]`` reward at t-1 (0.0 at an episode start).
      state_h: ``<float32>[B, H]`` stored LSTM h at the sequence start.
      state_c: ``<float32>[B, H]`` stored LSTM c at the sequence start.
      keys: ``<int64>[B]`` replay keys (for priority updates).
      probs: ``<float64>[B]`` probability with which each sequence was sampled.
    """

    obs: Array
    action: Array
    reward: Array
    discount: Array
    first: Array
    mask: Array
    prev_action: Array
    prev_reward: Array
    state_h: Array
    state_c: Array
    keys: Array
    probs: Array


#: ``SequenceBatch`` fields laid out ``[T, B, ...]``; the others are ``[B, ...]``.
TIME_MAJOR_FIELDS: Tuple[str, ...] = ("obs", "action", "reward", "discount", "first", "mask",
                                      "prev_action", "prev_reward")


class JobSpec(NamedTuple):
    """Shapes every rank derives identically from the config (``job.role.job_spec``).

    Checkpoints record it and a resume compares it field by field.

    Attributes:
      obs_shape: one observation as the network sees it (stacked frames included).
      frame_shape: one stored frame (``obs_shape[1:]`` when frames are stacked).
      obs_dtype: numpy dtype name of observations.
      num_actions: size of the action set.
      state_size: width of each stored state half, ``state_h`` and ``state_c``
        (``NetworkConfig.stored_state_size``: LSTM units, or the packed gtrxl memory).
      num_params: length of the flat parameter vector.
      frame_stack: frames per observation.
    """

    obs_shape: Tuple[int, ...]
    frame_shape: Tuple[int, ...]
    obs_dtype: str
    num_actions: int
    state_size: int
    num_params: int
    frame_stack: int


class ActorState(NamedTuple):
    """An actor rank's counters: what a checkpoint keeps of it (``ActorRank.state()``,
    one row of ``actors.h5``). Episodes in flight are not kept: they restart.

    Attributes:
      env_steps: agent steps of the actor's envs in this run and the runs it resumed.
      episodes: episodes the actor finished, likewise.
    """

    env_steps: int = 0
    episodes: int = 0

"""The vector-environment protocol, frame stacking and episode statistics (no MPI here).

An actor rank steps ``N`` environments as one vector (``actor.num_envs``, 16-64)
and runs one batched network forward per step, so ``step`` is NumPy over the
``N`` envs, never a Python loop per env.

Protocol (``VectorEnv``)::

    obs = env.reset(seed)                  <obs_dtype>[N, *observation_shape]
    res = env.step(actions)                actions <int>[N] in [0, num_actions)
    res.obs, res.reward, res.terminated, res.truncated

**Same-step autoreset.** Where env ``i``'s episode ended on this step
(``terminated[i] or truncated[i]``), ``res.obs[i]`` is already the *first*
observation of its next episode; the final observation of the finished episode
is not returned. An R2D2 actor never needs it: a terminated step has discount
0, so its target does not bootstrap, and a truncated step gets no target at all
(the n-step target of a sequence's last stored step is not computed, see
``r2d2_hpc.agent.losses.n_step_double_q_targets``). A step sequence of one env
therefore reads::

    step t        ...  t-1     t        t+1      t+2
    obs given     ...  o       o_last   o'_0     o'_1       (o' = next episode)
    action        ...  a       a_last   a'_0
    reward                     r_last   r'_0                 (after the action)
    terminated                 True     False
                               ^ episode ends; obs returned by this step is o'_0

With ``env.frame_stack > 1`` the non-Atari observations are stacked by
``FrameStack`` (zeros before an episode's first frame, as the replay shard's
default ``stack_fill='zeros'`` rebuilds them). The environments themselves are
in :mod:`r2d2_hpc.envs.classic` and :mod:`r2d2_hpc.envs.atari`;
:func:`r2d2_hpc.envs.factory.make_vector_env` builds one from the config.
"""
from __future__ import annotations

import abc
from typing import NamedTuple, Optional, Tuple

import numpy as np

__all__ = ["EpisodeStats", "FinishedEpisodes", "FrameStack", "StepResult", "VectorEnv",
           "positive_int"]


class StepResult(NamedTuple):
    """What ``VectorEnv.step`` returns for ``N`` envs.

    Attributes:
      obs: ``<obs_dtype>[N, *observation_shape]`` next observation; where the
        episode ended on this step, the first observation of the next episode.
      reward: ``<float32>[N]`` reward after the action.
      terminated: ``<bool>[N]`` the episode reached a terminal state (discount 0).
      truncated: ``<bool>[N]`` the episode was cut by the time limit (no terminal
        state; may coincide with ``terminated``, as gymnasium's TimeLimit does).
    """

    obs: np.ndarray
    reward: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray


class VectorEnv(abc.ABC):
    """``N`` environments stepped together with same-step autoreset.

    Attributes:
      name: environment family (``env.name``).
      num_envs: ``N``.
      observation_shape: shape of one env's observation.
      observation_dtype: ``np.float32`` or ``np.uint8``.
      num_actions: number of discrete actions ``A``.
    """

    name: str
    num_envs: int
    observation_shape: Tuple[int, ...]
    observation_dtype: np.dtype
    num_actions: int

    @abc.abstractmethod
    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        """Starts a new episode in every env.

        Args:
          seed: reseeds the env's generator when given (same seed, same episodes).

        Returns:
          ``<obs_dtype>[N, *observation_shape]`` first observations.
        """

    @abc.abstractmethod
    def step(self, actions: np.ndarray) -> StepResult:
        """Applies one action per env; ended episodes restart in the same step.

        Args:
          actions: ``<int>[N]`` in ``[0, num_actions)``.

        Returns:
          A ``StepResult``; see the module docstring for autoreset.
        """

    def close(self) -> None:
        """Releases resources (nothing for the NumPy environments)."""

    def _check_actions(self, actions: np.ndarray) -> np.ndarray:
        a = np.asarray(actions)
        if a.shape != (self.num_envs,):
            raise ValueError(f"{self.name}: actions: expected shape ({self.num_envs},), "
                             f"got {a.shape}")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{self.name}: actions: expected integers, got dtype {a.dtype}")
        if a.size and ((a < 0).any() or (a >= self.num_actions).any()):
            raise ValueError(f"{self.name}: actions: must lie in [0, {self.num_actions}), "
                             f"got {a.min()}..{a.max()}")
        return a.astype(np.int64, copy=False)


def positive_int(name: str, value: int) -> int:
    """``value`` as an int >= 1; ValueError naming ``name`` otherwise (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- #
# Frame stacking and episode statistics.

class FrameStack(VectorEnv):
    """Stacks the last ``k`` observations: ``<dtype>[N, k, *shape]``, newest last.

    Slots before an episode's first observation are zeros (the replay shard's
    default ``stack_fill='zeros'`` rebuilds the same stacks from single frames).
    """

    def __init__(self, env: VectorEnv, k: int) -> None:
        """Wraps ``env``.

        Args:
          env: the vector env to wrap.
          k: frames per stack, >= 1.
        """
        self.env = env
        self.k = positive_int("frame_stack", k)
        self.name = env.name
        self.num_envs = env.num_envs
        self.observation_shape = (self.k,) + tuple(env.observation_shape)
        self.observation_dtype = env.observation_dtype
        self.num_actions = env.num_actions
        self._stack = np.zeros((self.num_envs,) + self.observation_shape, self.observation_dtype)

    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        obs = self.env.reset(seed)
        self._stack[:] = 0
        self._stack[:, -1] = obs
        return self._stack.copy()

    def step(self, actions: np.ndarray) -> StepResult:
        res = self.env.step(actions)
        self._stack[:, :-1] = self._stack[:, 1:]
        self._stack[res.terminated | res.truncated, :-1] = 0
        self._stack[:, -1] = res.obs
        return res._replace(obs=self._stack.copy())

    def close(self) -> None:
        self.env.close()


class FinishedEpisodes(NamedTuple):
    """Episodes that ended on one step.

    Attributes:
      env_index: ``<int64>[K]`` env of each finished episode.
      episode_return: ``<float64>[K]`` undiscounted return.
      episode_length: ``<int64>[K]`` steps taken.
    """

    env_index: np.ndarray
    episode_return: np.ndarray
    episode_length: np.ndarray


class EpisodeStats:
    """Per-env running return and length; reports the episodes that finish."""

    def __init__(self, num_envs: int) -> None:
        self.num_envs = positive_int("num_envs", num_envs)
        self.returns = np.zeros(self.num_envs, np.float64)
        self.lengths = np.zeros(self.num_envs, np.int64)

    def update(self, reward: np.ndarray, terminated: np.ndarray,
               truncated: np.ndarray) -> FinishedEpisodes:
        """Adds one step of every env.

        Args:
          reward: ``<float>[N]``.
          terminated: ``<bool>[N]``.
          truncated: ``<bool>[N]``.

        Returns:
          The episodes that ended on this step (their counters restart at 0).
        """
        self.returns += np.asarray(reward, np.float64)
        self.lengths += 1
        done = np.asarray(terminated, bool) | np.asarray(truncated, bool)
        idx = np.flatnonzero(done)
        out = FinishedEpisodes(idx.astype(np.int64), self.returns[idx].copy(),
                               self.lengths[idx].copy())
        self.returns[idx] = 0.0
        self.lengths[idx] = 0
        return out

    def reset(self) -> None:
        """Forgets the running episodes (after ``VectorEnv.reset``)."""
        self.returns[:] = 0.0
        self.lengths[:] = 0


# --------------------------------------------------------------------------- #
# Factory.

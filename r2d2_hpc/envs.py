"""Vectorised environments stepped by one actor rank (no MPI here).

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
``r2d2_hpc.losses.n_step_double_q_targets``). A step sequence of one env
therefore reads::

    step t        ...  t-1     t        t+1      t+2
    obs given     ...  o       o_last   o'_0     o'_1       (o' = next episode)
    action        ...  a       a_last   a'_0
    reward                     r_last   r'_0                 (after the action)
    terminated                 True     False
                               ^ episode ends; obs returned by this step is o'_0

Environments (``make_vector_env``, ``env.name``):

* ``counter``: deterministic fake for tests; obs ``(step in episode, env index)``.
* ``cartpole``: CartPole-v1 (gymnasium's dynamics exactly, NumPy over envs).
* ``cartpole_masked``: CartPole-v1 with the velocities hidden, obs
  ``(cart position, pole angle)``: the embedded default task, which needs memory.
* ``atari``: the Atari-57 games through ale-py's C++ vector env with the
  paper's protocol (``r2d2_hpc.atari.AtariEnv``; ``env.game`` picks the game).

With ``env.frame_stack > 1`` the non-Atari observations are stacked by
``FrameStack`` (zeros before an episode's first frame, as the replay shard's
default ``stack_fill='zeros'`` rebuilds them).
"""
from __future__ import annotations

import abc
import math
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from r2d2_hpc.config import KNOWN_ENVS, EnvConfig

__all__ = [
    "StepResult", "VectorEnv", "CounterEnv", "CartPoleEnv", "FrameStack", "EpisodeStats",
    "FinishedEpisodes", "make_vector_env", "counter_episode_lengths",
]


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


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: must be a positive int, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- #
# Counter: the deterministic fake.

class CounterEnv(VectorEnv):
    """Deterministic fake: every quantity is readable from the observation.

    Env ``i`` observes ``o = (k, i)`` as ``<float32>[2]``, where ``k`` counts the
    steps of the current episode (0 at its first observation). Action ``a`` in
    {0, 1} earns reward ``1 + a``, so tests can tell which action was recorded.
    The episode *terminates* after ``episode_lengths[i]`` steps (the step taken
    at ``k = episode_lengths[i] - 1``) and is *truncated* after
    ``max_episode_steps`` steps if that comes first (both flags if equal).
    ``reset(seed)`` ignores the seed: nothing is random.
    """

    def __init__(self, num_envs: int, episode_lengths: Union[int, Sequence[int]],
                 max_episode_steps: Optional[int] = None) -> None:
        """Creates the envs.

        Args:
          num_envs: ``N`` >= 1.
          episode_lengths: steps until termination, one int for all envs or one per env.
          max_episode_steps: time limit (truncation), or None for none.
        """
        self.name = "counter"
        self.num_envs = _positive_int("num_envs", num_envs)
        lengths = np.broadcast_to(np.asarray(episode_lengths, np.int64), (self.num_envs,))
        if (lengths < 1).any():
            raise ValueError(f"counter: episode_lengths: must be >= 1, got {lengths.tolist()}")
        self.episode_lengths = lengths.copy()
        self.max_episode_steps = (None if max_episode_steps is None
                                  else _positive_int("max_episode_steps", max_episode_steps))
        self.observation_shape = (2,)
        self.observation_dtype = np.dtype(np.float32)
        self.num_actions = 2
        self._k = np.zeros(self.num_envs, np.int64)
        self._index = np.arange(self.num_envs, dtype=np.float32)

    def _obs(self) -> np.ndarray:
        return np.stack([self._k.astype(np.float32), self._index], axis=1)

    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        self._k[:] = 0
        return self._obs()

    def step(self, actions: np.ndarray) -> StepResult:
        a = self._check_actions(actions)
        reward = (1.0 + a).astype(np.float32)
        self._k += 1
        terminated = self._k >= self.episode_lengths
        truncated = (self._k >= self.max_episode_steps if self.max_episode_steps is not None
                     else np.zeros(self.num_envs, bool))
        self._k[terminated | truncated] = 0
        return StepResult(self._obs(), reward, terminated, truncated)


def counter_episode_lengths(num_envs: int) -> np.ndarray:
    """Termination lengths of ``make_vector_env``'s counter: ``5 + 5 (i mod 8)``.

    Different per env (5, 10, ..., 40), so episodes of the streams of one actor
    end at different steps.
    """
    return 5 + 5 * (np.arange(num_envs, dtype=np.int64) % 8)


# --------------------------------------------------------------------------- #
# CartPole.

class CartPoleEnv(VectorEnv):
    """CartPole-v1 over ``N`` envs with gymnasium's dynamics, in NumPy.

    Same constants, same explicit Euler step and same thresholds as
    ``gymnasium.envs.classic_control.CartPoleEnv`` (Barto, Sutton and Anderson,
    1983): state ``s = (x, x_dot, theta, theta_dot)`` in float64, force
    ``+-10`` N, ``tau = 0.02`` s, termination when ``|x| > 2.4`` or
    ``|theta| > 12 deg``, reward 1 on every step (the terminating one included),
    truncation after ``max_episode_steps`` (CartPole-v1: 500) as gymnasium's
    TimeLimit. A new episode starts at ``s ~ U(-0.05, 0.05)^4`` drawn from this
    env's own ``np.random.Generator``. Observations are float32:
    ``s`` (``cartpole``) or ``(x, theta)`` with the velocities hidden
    (``masked=True``, ``cartpole_masked``).
    """

    gravity = 9.8
    masscart = 1.0
    masspole = 0.1
    total_mass = masspole + masscart
    length = 0.5  # half the pole's length
    polemass_length = masspole * length
    force_mag = 10.0
    tau = 0.02
    theta_threshold_radians = 12 * 2 * math.pi / 360
    x_threshold = 2.4

    def __init__(self, num_envs: int, masked: bool = False, max_episode_steps: int = 500,
                 seed: Optional[int] = None) -> None:
        """Creates the envs (call ``reset`` before ``step``).

        Args:
          num_envs: ``N`` >= 1.
          masked: hide the velocities (obs ``(x, theta)``).
          max_episode_steps: time limit (CartPole-v1: 500).
          seed: seed of the env's generator (``reset(seed)`` may reseed).
        """
        self.name = "cartpole_masked" if masked else "cartpole"
        self.num_envs = _positive_int("num_envs", num_envs)
        self.masked = bool(masked)
        self.max_episode_steps = _positive_int("max_episode_steps", max_episode_steps)
        self.observation_shape = (2,) if masked else (4,)
        self.observation_dtype = np.dtype(np.float32)
        self.num_actions = 2
        self.rng = np.random.default_rng(seed)
        self.state = np.zeros((self.num_envs, 4), np.float64)
        self.elapsed = np.zeros(self.num_envs, np.int64)

    def _obs(self) -> np.ndarray:
        s = self.state[:, [0, 2]] if self.masked else self.state
        return s.astype(np.float32)

    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.state = self.rng.uniform(-0.05, 0.05, size=(self.num_envs, 4))
        self.elapsed[:] = 0
        return self._obs()

    def step(self, actions: np.ndarray) -> StepResult:
        a = self._check_actions(actions)
        x, x_dot, theta, theta_dot = self.state.T
        # Written exactly as gymnasium's CartPoleEnv.step, so the float64
        # results agree to the last bit.
        force = np.where(a == 1, self.force_mag, -self.force_mag)
        costheta = np.cos(theta)
        sintheta = np.sin(theta)
        temp = (force + self.polemass_length * np.square(theta_dot) * sintheta) / self.total_mass
        thetaacc = (self.gravity * sintheta - costheta * temp) / (
            self.length * (4.0 / 3.0 - self.masspole * np.square(costheta) / self.total_mass))
        xacc = temp - self.polemass_length * thetaacc * costheta / self.total_mass
        x = x + self.tau * x_dot
        x_dot = x_dot + self.tau * xacc
        theta = theta + self.tau * theta_dot
        theta_dot = theta_dot + self.tau * thetaacc
        self.state = np.stack([x, x_dot, theta, theta_dot], axis=1)
        self.elapsed += 1

        terminated = ((x < -self.x_threshold) | (x > self.x_threshold)
                      | (theta < -self.theta_threshold_radians)
                      | (theta > self.theta_threshold_radians))
        truncated = self.elapsed >= self.max_episode_steps
        reward = np.ones(self.num_envs, np.float32)
        done = terminated | truncated
        k = int(done.sum())
        if k:
            self.state[done] = self.rng.uniform(-0.05, 0.05, size=(k, 4))
            self.elapsed[done] = 0
        return StepResult(self._obs(), reward, terminated, truncated)


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
        self.k = _positive_int("frame_stack", k)
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
        self.num_envs = _positive_int("num_envs", num_envs)
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

def make_vector_env(env_cfg: EnvConfig, num_envs: int, seed: int) -> VectorEnv:
    """Builds the ``num_envs`` environments of one actor rank.

    Args:
      env_cfg: ``env`` config section (``name``, ``max_episode_steps``,
        ``frame_stack``).
      num_envs: ``N`` >= 1.
      seed: seed of the env's generator (give each actor rank its own).

    Returns:
      The vector env; not yet reset. ``atari``: ``AtariEnv.from_config`` (one
      ALE thread). ``counter`` terminates env ``i`` after
      ``counter_episode_lengths`` steps and truncates at ``max_episode_steps``.

    Raises:
      ValueError: for an unknown ``env.name`` or (``atari``) an unknown ``env.game``.
    """
    name = env_cfg.name
    env: VectorEnv
    if name == "atari":
        # ale-py stacks the frames itself (zeros before an episode's first frame).
        from r2d2_hpc.atari import make_atari_env

        return make_atari_env(env_cfg, num_envs, seed)
    if name == "counter":
        env = CounterEnv(num_envs, counter_episode_lengths(num_envs),
                         max_episode_steps=env_cfg.max_episode_steps)
    elif name in ("cartpole", "cartpole_masked"):
        env = CartPoleEnv(num_envs, masked=name == "cartpole_masked",
                          max_episode_steps=env_cfg.max_episode_steps, seed=seed)
    else:
        raise ValueError(f"env.name={name!r} is unknown; known environments: "
                         f"{', '.join(KNOWN_ENVS)}")
    if env_cfg.frame_stack > 1:
        env = FrameStack(env, env_cfg.frame_stack)
    return env

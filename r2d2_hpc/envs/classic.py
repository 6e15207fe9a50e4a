"""The small vector environments: a deterministic counter (tests) and CartPole.

* ``counter``: deterministic fake for tests; obs ``(step in episode, env index)``.
* ``cartpole``: CartPole-v1 (gymnasium's dynamics exactly, NumPy over envs).
* ``cartpole_masked``: CartPole-v1 with the velocities hidden, obs
  ``(cart position, pole angle)``: the embedded default task, which needs memory.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import numpy as np

from r2d2_hpc.envs.base import StepResult, VectorEnv, positive_int

__all__ = ["CartPoleEnv", "CounterEnv", "counter_episode_lengths"]


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
        self.num_envs = positive_int("num_envs", num_envs)
        lengths = np.broadcast_to(np.asarray(episode_lengths, np.int64), (self.num_envs,))
        if (lengths < 1).any():
            raise ValueError(f"counter: episode_lengths: must be >= 1, got {lengths.tolist()}")
        self.episode_lengths = lengths.copy()
        self.max_episode_steps = (None if max_episode_steps is None
                                  else positive_int("max_episode_steps", max_episode_steps))
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
        self.num_envs = positive_int("num_envs", num_envs)
        self.masked = bool(masked)
        self.max_episode_steps = positive_int("max_episode_steps", max_episode_steps)
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

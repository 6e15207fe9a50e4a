"""``make_vector_env``: the vector environment that ``env.name`` names.

Environments (``env.name``):

* ``counter``: deterministic fake for tests; obs ``(step in episode, env index)``.
* ``cartpole``: CartPole-v1 (gymnasium's dynamics exactly, NumPy over envs).
* ``cartpole_masked``: CartPole-v1 with the velocities hidden, obs
  ``(cart position, pole angle)``: the embedded default task, which needs memory.
* ``atari``: the Atari-57 games through ale-py's C++ vector env with the
  paper's protocol (:class:`r2d2_hpc.envs.atari.AtariEnv`; ``env.game`` picks the game).
"""
from __future__ import annotations

from r2d2_hpc.config import KNOWN_ENVS, EnvConfig
from r2d2_hpc.envs.atari import make_atari_env
from r2d2_hpc.envs.base import FrameStack, VectorEnv
from r2d2_hpc.envs.classic import CartPoleEnv, CounterEnv, counter_episode_lengths

__all__ = ["make_vector_env"]


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

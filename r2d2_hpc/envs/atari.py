"""Atari through ale-py's C++ vector environment, with the R2D2 paper's protocol.

:class:`AtariEnv` wraps ``ale_py.vector_env.AtariVectorEnv`` (ale-py 0.12:
emulation, frame skip, max-pooling, resizing and frame stacking run in C++
worker threads; the ROMs ship with ale-py) in the project's
:class:`~r2d2_hpc.envs.base.VectorEnv` protocol. ``make_vector_env`` builds it for
``env.name = 'atari'`` from the ``env`` config section.

The protocol (Mnih et al. 2015; Horgan et al. 2018 (Ape-X); Kapturowski et
al. 2019 (R2D2), Section 2 and Appendix), each setting an ``EnvConfig`` field::

    EnvConfig field         paper value   how it reaches ALE
    ---------------------   -----------   ---------------------------------------------
    full_action_space       True          full_action_space (ALE's legal set; else minimal)
    terminal_on_life_loss   False         episodic_life (see below)
    noop_max                30            noop_max = noop_max + 1 (see below)
    frame_skip              4             frameskip, maxpool=True (max of the last 2 frames)
    screen_size             84            img_height = img_width (grayscale, INTER_AREA)
    frame_stack             4             stack_num (zeros before the first frame)
    max_episode_frames      108,000       max_num_frames_per_episode (see below)
    clip_rewards            False         reward_clipping
    sticky_action_prob      0.0           repeat_action_probability
    (fixed)                               use_fire_reset=False, autoreset_mode=SameStep

What ale-py 0.12.1 does, measured (``tests/unit/envs/test_atari.py`` pins each point):

* **No-op starts.** At each episode start ALE emulates ``U{0, ..., m - 1}``
  single frames of NOOP for its ``noop_max = m``, before the first
  observation. We pass ``m = noop_max + 1``, so an episode starts after
  ``U{0, ..., noop_max}`` no-op frames: "up to 30". The no-op frames are
  emulator frames, not agent steps (as OpenAI Baselines' ``NoopResetEnv``
  inside its frame skip); ``info['episode_frame_number']`` counts them.
* **Episode cap.** ALE truncates when the frames of *agent steps* reach
  ``max_num_frames_per_episode`` (the no-op frames are not counted): with the
  cap ``F`` and frame skip ``k`` the episode is truncated on agent step
  ``ceil(F / k)`` (27,000 for the paper's 108,000 frames at ``k = 4``).
* **Frame stack at an episode start.** ALE fills the ``stack_num - 1`` slots
  before an episode's first frame with zeros, at ``reset`` and at autoreset.
  That is what the replay shard rebuilds (``stack_fill='zeros'``, the
  default), so stacks seen by the actor and stacks sampled by the learner
  agree bit for bit. Stack order: ``obs[i, -1]`` is the newest frame.
* **Autoreset.** ALE's ``SameStep`` mode is exactly the project's same-step
  autoreset: where ``terminated[i] or truncated[i]``, ``obs[i]`` is already the
  first (zero-padded) stack of the next episode; the final observation is
  only in ALE's ``info['final_obs']``, which we drop (an R2D2 actor does not
  need it, see ``r2d2_hpc.envs.base``).
* **Life loss as terminal** (``terminal_on_life_loss=True``, off in the
  paper): ALE's ``episodic_life`` ends the episode at a lost life *and
  restarts the game* (all lives again), so every episode is one life of a
  fresh game; the later lives of a game are never played. This is not the
  DQN-era ``EpisodicLifeEnv`` (which continues the game after a
  life-loss terminal); the paper's protocol does not use either.
* **Action set.** ``full_action_space`` is ALE's legal action set: 18
  actions in every Atari-57 game except Skiing, whose ROM has no fire button
  and whose legal set in ale-py 0.12 is 9 actions (NOOP and the eight
  directions). The paper's "full 18-action set" therefore reads "all legal
  actions" there; ``num_actions`` says which.
* **FIRE at reset.** ALE would press FIRE after the no-ops in games that have
  it (``use_fire_reset``); the paper's protocol does not, so it is off.

Seeding: ``AtariEnv(seed=s)`` derives one ALE seed per env from
``numpy.random.SeedSequence(s)`` (:func:`env_seeds`), so two actor ranks with different ``s``
never share an env's seed (ALE's own ``reset(seed=int)`` would give env ``i``
the seed ``s + i``, which collides across ranks with consecutive seeds). The
first ``reset()`` applies the constructor's seed; ``reset(seed)`` reseeds;
a later ``reset(None)`` continues the envs' streams. With
``sticky_action_prob = 0`` an episode is a deterministic function of its seed
and the actions.

Threads: ALE steps the ``N`` envs on ``num_threads`` C++ threads (default 1:
an actor rank owns one core; the Python thread waits while they run).
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

from r2d2_hpc.config import EnvConfig
from r2d2_hpc.envs.base import StepResult, VectorEnv, positive_int
from r2d2_hpc.envs.games import ATARI57, rom_id

__all__ = ["AtariEnv", "check_game", "env_seeds", "episode_step_cap", "step_cap", "make_atari_env"]

#: Raw Atari 2600 screen (height, width).
ATARI_SCREEN = (210, 160)


def check_game(game: str) -> str:
    """Checks that ``game`` is one of the Atari-57 names and its ROM ships with ale-py.

    Args:
      game: ``env.game``, e.g. ``Pong``, ``MsPacman`` (as in ``r2d2_hpc.envs.games``).

    Returns:
      ale-py's ROM id, e.g. ``ms_pacman``.

    Raises:
      ValueError: naming ``env.game``, with a did-you-mean over the 57 names.
    """
    if not isinstance(game, str) or not game:
        raise ValueError(f"env.game: no Atari game given ({game!r}); set env.game to one of "
                         f"the Atari-57 names, e.g. Pong, MsPacman "
                         f"(python -m r2d2_hpc.envs.games --list)")
    if game not in ATARI57:
        by_lower = {n.lower(): n for n in ATARI57}
        key = game.replace("_", "").replace("-", "").lower()
        close = [by_lower[key]] if key in by_lower else difflib.get_close_matches(
            game, ATARI57, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"env.game={game!r} is not an Atari-57 game; {hint}names are "
                         f"CamelCase as in python -m r2d2_hpc.envs.games --list "
                         f"(e.g. Pong, MsPacman, MontezumaRevenge)")
    from ale_py import roms

    rid = rom_id(game)
    try:
        path = roms.get_rom_path(rid)
    except Exception as exc:  # ale-py raises its own error type for a missing ROM
        path = None
        why = f" ({exc})"
    else:
        why = ""
    if path is None:
        raise ValueError(f"env.game={game!r}: ale-py has no ROM {rid!r}{why}; reinstall ale-py "
                         f">= 0.9, which ships the ROMs")
    return rid


def env_seeds(seed: int, num_envs: int) -> np.ndarray:
    """ALE seeds of ``num_envs`` envs for ``seed``: ``<int64>[num_envs]`` in [1, 2^31 - 1).

    Derived with ``SeedSequence(seed)``, so different ``seed`` values give
    unrelated per-env seeds (no overlap between actor ranks).
    """
    words = np.random.SeedSequence(int(seed)).generate_state(int(num_envs), np.uint32)
    return (words.astype(np.int64) % (2**31 - 2)) + 1


def episode_step_cap(max_episode_frames: int, frame_skip: int) -> int:
    """Agent step on which ALE truncates an episode: ``ceil(max_episode_frames / frame_skip)``.

    The paper's 108,000 frames at frame skip 4 are 27,000 agent steps.
    """
    return -(-int(max_episode_frames) // int(frame_skip))


class AtariEnv(VectorEnv):
    """``N`` Atari games of one ROM in ale-py's C++ vector env, same-step autoreset.

    Observations ``<uint8>[N, frame_stack, screen_size, screen_size]``, newest
    frame last, zeros before an episode's first frame; rewards are the game
    score differences summed over the skipped frames (float32, unclipped by
    default). See the module docstring for the protocol.

    Attributes:
      game: the game's name (``env.game``).
      frame_skip: emulator frames per agent step.
      max_episode_frames: the episode cap in frames (``env.max_episode_frames``).
      max_episode_steps: agent step on which an episode is truncated.
    """

    def __init__(self, game: str, num_envs: int, *, frame_stack: int = 4, frame_skip: int = 4,
                 screen_size: int = 84, noop_max: int = 30, max_episode_frames: int = 108_000,
                 full_action_space: bool = True, terminal_on_life_loss: bool = False,
                 clip_rewards: bool = False, sticky_action_prob: float = 0.0,
                 seed: Optional[int] = None, num_threads: int = 1) -> None:
        """Creates the envs (call ``reset`` before ``step``).

        Args:
          game: Atari-57 name, e.g. ``Pong``.
          num_envs: ``N`` >= 1.
          frame_stack: frames per observation (paper: 4).
          frame_skip: frames per agent step, max-pooling the last two (paper: 4).
          screen_size: side of the square grayscale frame (paper: 84).
          noop_max: up to this many no-op frames at an episode start (paper: 30).
          max_episode_frames: episode cap in frames (paper: 108,000).
          full_action_space: 18 actions (paper) instead of the game's minimal set.
          terminal_on_life_loss: one life per episode (ALE restarts the game).
          clip_rewards: clip each step's reward to [-1, 1] (paper: no).
          sticky_action_prob: ALE's repeat_action_probability (paper: 0).
          seed: seeds the envs' no-op draws and emulators at the first ``reset``
            (None: unseeded, ALE draws its own seeds; saves a ROM reload per env).
          num_threads: C++ threads stepping the envs.

        Raises:
          ValueError: an unknown game (naming ``env.game``) or an invalid setting.
        """
        rid = check_game(game)
        self.game = game
        self.name = "atari"
        self.num_envs = positive_int("num_envs", num_envs)
        self.frame_stack = positive_int("env.frame_stack", frame_stack)
        self.frame_skip = positive_int("env.frame_skip", frame_skip)
        self.screen_size = positive_int("env.screen_size", screen_size)
        self.max_episode_frames = positive_int("env.max_episode_frames", max_episode_frames)
        if isinstance(noop_max, bool) or not isinstance(noop_max, (int, np.integer)) \
                or noop_max < 0:
            raise ValueError(f"env.noop_max: must be an int >= 0, got {noop_max!r}")
        self.noop_max = int(noop_max)
        if not 0.0 <= float(sticky_action_prob) <= 1.0:
            raise ValueError(f"env.sticky_action_prob: must be in [0, 1], "
                             f"got {sticky_action_prob!r}")
        self.max_episode_steps = episode_step_cap(self.max_episode_frames, self.frame_skip)
        self.observation_shape: Tuple[int, ...] = (self.frame_stack, self.screen_size,
                                                   self.screen_size)
        self.observation_dtype = np.dtype(np.uint8)
        self._pending_seed: Optional[int] = None if seed is None else int(seed)

        from ale_py.vector_env import AtariVectorEnv

        self.settings: Dict[str, Any] = dict(
            num_threads=positive_int("num_threads", num_threads),
            max_num_frames_per_episode=self.max_episode_frames,
            repeat_action_probability=float(sticky_action_prob),
            full_action_space=bool(full_action_space),
            autoreset_mode="SameStep",
            img_height=self.screen_size, img_width=self.screen_size, grayscale=True,
            stack_num=self.frame_stack, frameskip=self.frame_skip, maxpool=True,
            noop_max=self.noop_max + 1,  # ALE draws U{0..m-1}: see the module docstring
            episodic_life=bool(terminal_on_life_loss), life_loss_info=False,
            reward_clipping=bool(clip_rewards), use_fire_reset=False,
        )
        self._env = AtariVectorEnv(rid, self.num_envs, **self.settings)
        self.num_actions = int(self._env.single_action_space.n)
        self._order = np.arange(self.num_envs)
        self.last_info: Dict[str, np.ndarray] = {}
        self._closed = False

    @classmethod
    def from_config(cls, env_cfg: EnvConfig, num_envs: int, seed: Optional[int],
                    num_threads: int = 1) -> "AtariEnv":
        """Builds the envs from the ``env`` config section (``env.name`` must be ``atari``)."""
        return cls(env_cfg.game, num_envs, frame_stack=env_cfg.frame_stack,
                   frame_skip=env_cfg.frame_skip, screen_size=env_cfg.screen_size,
                   noop_max=env_cfg.noop_max, max_episode_frames=env_cfg.max_episode_frames,
                   full_action_space=env_cfg.full_action_space,
                   terminal_on_life_loss=env_cfg.terminal_on_life_loss,
                   clip_rewards=env_cfg.clip_rewards,
                   sticky_action_prob=env_cfg.sticky_action_prob, seed=seed,
                   num_threads=num_threads)

    def _in_env_order(self, info: Dict[str, Any], *arrays: np.ndarray) -> Tuple[np.ndarray, ...]:
        """Reorders ALE's results by ``info['env_id']`` (ALE may return completion order)."""
        env_id = np.asarray(info["env_id"])
        if np.array_equal(env_id, self._order):
            return arrays
        order = np.argsort(env_id, kind="stable")
        return tuple(a[order] for a in arrays)

    def reset(self, seed: Optional[int] = None) -> np.ndarray:
        if seed is not None:
            self._pending_seed = int(seed)
        if self._pending_seed is not None:
            obs, info = self._env.reset(seed=env_seeds(self._pending_seed, self.num_envs))
            self._pending_seed = None
        else:
            obs, info = self._env.reset()
        (obs,) = self._in_env_order(info, obs)
        self.last_info = dict(info)
        return np.ascontiguousarray(obs)

    def step(self, actions: np.ndarray) -> StepResult:
        a = self._check_actions(actions)
        obs, reward, terminated, truncated, info = self._env.step(a)
        obs, reward, terminated, truncated = self._in_env_order(
            info, obs, reward, terminated, truncated)
        info.pop("final_obs", None)  # see the module docstring: not needed, not kept
        self.last_info = dict(info)
        return StepResult(np.ascontiguousarray(obs), np.asarray(reward, np.float32),
                          np.asarray(terminated, bool), np.asarray(truncated, bool))

    def action_meanings(self) -> Sequence[str]:
        """Names of the actions in index order (e.g. ``NOOP``, ``FIRE``, ...)."""
        return [str(a).split(".")[-1] for a in self._env.ale.get_action_set()]

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._env.close()


def make_atari_env(env_cfg: EnvConfig, num_envs: int, seed: int,
                   num_threads: int = 1) -> AtariEnv:
    """``make_vector_env``'s Atari branch: :meth:`AtariEnv.from_config`."""
    return AtariEnv.from_config(env_cfg, num_envs, seed, num_threads=num_threads)


def step_cap(env_cfg: EnvConfig) -> int:
    """Agent steps of the longest episode under ``env_cfg`` (27,000 for the paper)."""
    return episode_step_cap(env_cfg.max_episode_frames, env_cfg.frame_skip)


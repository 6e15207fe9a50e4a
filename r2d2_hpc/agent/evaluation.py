"""Greedy evaluation: separate episodes played with the current parameters (no MPI).

Training returns come from the actors' epsilon-greedy episodes (Ape-X
epsilons from 0.4 down to 0.4^8), so they mix exploration into the figure.
The evaluation protocol of R2D2 / Ape-X plays separate episodes with a
near-greedy policy, ``epsilon = 0.001`` (``logging.eval_epsilon``), from the
start of an episode with a zero recurrent state. :class:`Evaluator` does
exactly that on its own vector of ``K`` environments (one episode each, in
parallel), so it never disturbs the actors' episodes or their recurrent
states, and its result is a plain number the learner logs as ``eval_return``.

Where it runs and what it costs. The lead learner owns an ``Evaluator`` and
calls it every ``logging.eval_interval_steps`` learner steps and once at the
end of the run, with the online parameters (``Learner.flat_params``). The
learner does no gradient step meanwhile. One evaluation is at most
``max_episode_steps`` batched forwards of ``K`` envs (``T = 1``):

* CartPole (the embedded default, ``K = 16`` every 1000 steps and ``K = 32``
  at the end, ``max_episode_steps = 500``): at most 500 forwards of a 64-unit
  LSTM, a small share of a run (docs/decisions.md, "Greedy evaluation on the
  learner").
* Atari (108,000 frames = 27,000 agent steps per episode at most, a 512-unit
  LSTM over 84x84x4 frame stacks): up to 27,000 CPU forwards of the Nature
  torso, i.e. minutes per evaluation during which the learner is idle. There
  the learner should not evaluate (``eval_interval_steps = 0``); a dedicated
  evaluator rank that subscribes to the parameter publication like an actor
  is the right design and is not built here.

Episodes are seeded: evaluation ``j`` of an ``Evaluator`` made with
``seed`` plays the same start states whatever the parameters, so two
evaluations of the same parameters give the same returns (with
``epsilon = 0`` exactly; with ``epsilon > 0`` also, since the per-env
exploration streams are seeded too), and successive evaluations use fresh
start states.
"""
from __future__ import annotations

import time
from typing import Dict, List, NamedTuple, Optional, Tuple

import numpy as np

from r2d2_hpc.agent.policy import ActorPolicy
from r2d2_hpc.config import Config
from r2d2_hpc.envs.atari import step_cap
from r2d2_hpc.envs.factory import make_vector_env
from r2d2_hpc.seeding import derive_seed


class EvalResult(NamedTuple):
    """One evaluation.

    Attributes:
      mean_return: mean undiscounted return over the episodes.
      returns: ``<float64>[K]`` each episode's return.
      lengths: ``<int64>[K]`` each episode's length in agent steps.
      env_steps: agent steps played (``lengths.sum()``).
      seconds: wall time of the evaluation.
      params_version: the ``params_version`` of the evaluated parameters.
      steps: with ``record=True``, each episode's steps: a dict of ``frames``
        (the newest frame of each observation), ``action``, ``reward``,
        ``discount`` (0.0 after a terminal step) and ``first`` arrays; else None.
    """

    mean_return: float
    returns: np.ndarray
    lengths: np.ndarray
    env_steps: int
    seconds: float
    params_version: int
    steps: Optional[List[Dict[str, np.ndarray]]] = None


def default_step_cap(cfg: Config) -> int:
    """Agent steps of the longest episode: the Atari frame cap over the frame skip
    (27,000 for the paper's 108,000 frames), else ``env.max_episode_steps``."""
    if cfg.env.name == "atari":
        return step_cap(cfg.env)
    return cfg.env.max_episode_steps


class Evaluator:
    """Plays ``episodes`` separate episodes with epsilon-greedy parameters.

    Args:
      cfg: run config (``env``, ``network``, ``logging.eval_epsilon``,
        ``logging.eval_episodes``).
      obs_shape: shape of one observation.
      num_actions: size of the action set.
      seed: seeds the environments' start states and the exploration draws;
        evaluation ``j`` plays with ``derive_seed(seed, "evaluation", j)``.
      episodes: episodes per evaluation; default ``cfg.logging.eval_episodes``.
      epsilon: exploration rate; default ``cfg.logging.eval_epsilon``.
      max_steps: safety cap on agent steps per episode; default
        :func:`default_step_cap` (the envs truncate there anyway).
    """

    def __init__(self, cfg: Config, obs_shape: Tuple[int, ...], num_actions: int, seed: int,
                 episodes: Optional[int] = None, epsilon: Optional[float] = None,
                 max_steps: Optional[int] = None) -> None:
        self.cfg = cfg
        self.episodes = int(episodes if episodes is not None else cfg.logging.eval_episodes)
        if self.episodes < 1:
            raise ValueError(f"Evaluator: episodes must be >= 1, got {self.episodes}")
        self.epsilon = float(epsilon if epsilon is not None else cfg.logging.eval_epsilon)
        if max_steps is None:
            max_steps = default_step_cap(cfg)
        self.max_steps = int(max_steps)
        self.seed = int(seed)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.num_actions = int(num_actions)
        self.num_evaluations = 0
        self.total_seconds = 0.0

    def evaluate(self, flat_params: np.ndarray, params_version: int = 0,
                 record: bool = False) -> EvalResult:
        """Plays one episode in each of ``episodes`` envs with these parameters.

        Args:
          flat_params: ``<float32>[num_params]`` (``Learner.flat_params``).
          params_version: recorded in the result.
          record: keep every step of each episode (``EvalResult.steps``; R2D3
            demonstrations are recorded this way).

        Returns:
          An ``EvalResult``; only each env's first episode counts.
        """
        t0 = time.perf_counter()
        k = self.episodes
        eval_seed = derive_seed(self.seed, "evaluation", self.num_evaluations)
        self.num_evaluations += 1
        env = make_vector_env(self.cfg.env, k, seed=eval_seed)
        # A fresh policy state per evaluation; the exploration draws are
        # reseeded too, so an evaluation depends only on (seed, j, params).
        policy = ActorPolicy(self.cfg, self.obs_shape, self.num_actions,
                             np.full(k, self.epsilon), seed=eval_seed)
        policy.load_flat_params(flat_params, params_version)
        try:
            obs = env.reset(seed=eval_seed)
            first = np.ones(k, bool)
            running = np.ones(k, bool)
            returns = np.zeros(k, np.float64)
            lengths = np.zeros(k, np.int64)
            tape: List[Tuple[np.ndarray, ...]] = []
            for _ in range(self.max_steps):
                out = policy.act(obs, first)
                res = env.step(out.action)
                policy.observe(res.reward)
                returns += np.where(running, res.reward, 0.0)
                lengths += running
                terminated = np.asarray(res.terminated, bool)
                if record:
                    frames = obs[:, -1] if self.cfg.env.frame_stack > 1 else obs
                    tape.append((running.copy(), np.array(frames), np.array(out.action),
                                 np.asarray(res.reward, np.float32),
                                 (~terminated).astype(np.float32)))
                ended = terminated | np.asarray(res.truncated, bool)
                running &= ~ended
                if not running.any():
                    break
                obs, first = res.obs, ended
        finally:
            env.close()
        seconds = time.perf_counter() - t0
        self.total_seconds += seconds
        return EvalResult(float(returns.mean()), returns, lengths, int(lengths.sum()), seconds,
                          int(params_version), _episodes_of(tape, k) if record else None)


def _episodes_of(tape: List[Tuple[np.ndarray, ...]], k: int) -> List[Dict[str, np.ndarray]]:
    """Each env's first episode from the recorded ticks (running, frame, action, reward,
    discount for every env)."""
    out = []
    for i in range(k):
        rows = [t for t in tape if t[0][i]]
        n = len(rows)
        first = np.zeros(n, bool)
        first[:1] = True
        out.append({"frames": np.stack([r[1][i] for r in rows]),
                    "action": np.array([r[2][i] for r in rows], np.int32),
                    "reward": np.array([r[3][i] for r in rows], np.float32),
                    "discount": np.array([r[4][i] for r in rows], np.float32),
                    "first": first})
    return out

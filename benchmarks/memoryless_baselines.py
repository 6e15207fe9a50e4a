"""What can a policy without memory score on the embedded default task?

Masked CartPole (``cartpole_masked``: only cart position ``x`` and pole angle
``theta`` are observed, episodes capped at 500 steps). A policy without memory
sees ``(x, theta)`` and, like the feedforward R2D2 core, the previous action.
This script measures, on ``--episodes`` episodes each:

* ``random``: uniformly random actions;
* ``angle_sign``: push towards the side the pole leans to;
* ``best_memoryless``: the best deterministic policy
  ``a = [w . phi(x, theta, a_prev) > 0]`` over the features
  ``phi = (x, 10 theta, s, 1, x s, 10 theta s, x^2, 100 theta^2, 10 x theta)``
  with ``s = 2 a_prev - 1``, found by random search and then the
  cross-entropy method (re-evaluated on fresh start states).

These bound what ``tests/integration/test_learns.py``'s threshold must exceed. Writes JSON
to stdout and ``--out``. About a minute on 2 cores.

Usage::

    python benchmarks/memoryless_baselines.py [--episodes 200] [--out FILE]
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Optional

import numpy as np

if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import write_result  # noqa: E402

from r2d2_hpc.envs.classic import CartPoleEnv  # noqa: E402

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]


def episode_returns(policy: Policy, episodes: int, seed: int) -> np.ndarray:
    """One episode per env; ``policy(obs [N, 2], prev_action [N]) -> actions [N]``."""
    env = CartPoleEnv(episodes, masked=True, max_episode_steps=500, seed=seed)
    obs = env.reset(seed=seed)
    prev = np.zeros(episodes, np.int64)
    done = np.zeros(episodes, bool)
    ret = np.zeros(episodes)
    while not done.all():
        a = policy(obs, prev).astype(np.int64)
        res = env.step(a)
        ret += np.where(done, 0.0, res.reward)
        done |= res.terminated | res.truncated
        obs, prev = res.obs, a
    return ret


def features(obs: np.ndarray, prev: np.ndarray) -> np.ndarray:
    x, th = obs[:, 0], obs[:, 1]
    s = 2.0 * prev - 1.0
    return np.stack([x, 10 * th, s, np.ones_like(x), x * s, 10 * th * s, x * x,
                     100 * th * th, 10 * x * th], axis=1)


def linear_policy(w: np.ndarray) -> Policy:
    return lambda obs, prev: (features(obs, prev) @ w > 0)


def search(episodes: int, seed: int, random_tries: int = 300, cem_iters: int = 12,
           population: int = 40, elite: int = 8) -> np.ndarray:
    """Random search, then the cross-entropy method from the best weights."""
    rng = np.random.default_rng(seed)
    best_w: Optional[np.ndarray] = None
    best = -1.0
    for _ in range(random_tries):
        w = rng.normal(size=9) * np.array([1, 1, 1, 0.1, 0, 0, 0, 0, 0])
        score = episode_returns(linear_policy(w), episodes, seed).mean()
        if score > best:
            best, best_w = score, w
    assert best_w is not None
    mu, sd = best_w.copy(), np.ones(9)
    for it in range(cem_iters):
        pop = mu + sd * rng.normal(size=(population, 9))
        scores = np.array([episode_returns(linear_policy(w), episodes, seed + 1 + it).mean()
                           for w in pop])
        top = pop[np.argsort(scores)[-elite:]]
        mu, sd = top.mean(axis=0), top.std(axis=0) + 0.05
        if scores.max() > best:
            best, best_w = float(scores.max()), pop[int(np.argmax(scores))]
    # the CEM mean and the best sample, re-evaluated on fresh start states
    candidates = [mu, best_w]
    fresh = [episode_returns(linear_policy(w), episodes, seed + 1000).mean()
             for w in candidates]
    return candidates[int(np.argmax(fresh))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--episodes", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    n, seed = args.episodes, args.seed
    rng = np.random.default_rng(seed)
    eval_seed = seed + 12345  # start states never used by the search
    w = search(n, seed)
    report = {
        "task": "cartpole_masked, 500-step cap",
        "episodes": n,
        "random": float(episode_returns(lambda o, p: rng.integers(0, 2, len(o)), n,
                                        eval_seed).mean()),
        "angle_sign": float(episode_returns(lambda o, p: o[:, 1] > 0, n, eval_seed).mean()),
        "best_memoryless": float(episode_returns(linear_policy(w), n, eval_seed).mean()),
        "best_memoryless_weights": w.tolist(),
    }
    write_result(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

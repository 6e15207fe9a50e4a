"""Exploration: Ape-X's per-env epsilons and the buckets their returns are logged in.

Every env of every actor rank acts epsilon-greedily with its own epsilon,
``eps_i = 0.4^(1 + 7 i / (N - 1))`` over the *global* env index ``i`` of ``N``
(Ape-X, Horgan et al., 2018; used by R2D2). The learner logs the mean
training return of the greediest, middle and most exploring third of the envs
(:func:`epsilon_buckets`).
"""
from __future__ import annotations

from typing import Union

import numpy as np

__all__ = ["EPSILON_BUCKET_COLUMNS", "apex_epsilon", "env_epsilons", "epsilon_buckets"]

#: Metric columns of the mean training return per epsilon bucket, greediest first.
EPSILON_BUCKET_COLUMNS = ("return_eps_low", "return_eps_mid", "return_eps_high")


def epsilon_buckets(episode_eps: np.ndarray, all_eps: np.ndarray,
                    num_buckets: int = len(EPSILON_BUCKET_COLUMNS)) -> np.ndarray:
    """Bucket of each episode by the rank of its env's epsilon among all envs.

    With ``all_eps`` the ``N`` Ape-X epsilons of every env of the job, env
    ``j`` (``j = 0`` the greediest) is in bucket ``floor(num_buckets * j / N)``;
    an episode goes to the bucket of the env whose epsilon is nearest its own
    (an epsilon travels exactly, so nearest means equal in practice). With
    ``N = 6, num_buckets = 3``: envs 0-1 -> 0 (greediest third), 2-3 -> 1,
    4-5 -> 2 (most exploring third).

    Args:
      episode_eps: ``<float>[E]`` epsilon of each finished episode's env.
      all_eps: ``<float>[N]`` epsilons of all envs (any order), ``N >= 1``.
      num_buckets: buckets, >= 1.

    Returns:
      ``<int64>[E]`` bucket in ``[0, num_buckets)``, 0 the greediest.
    """
    ranked = np.sort(np.asarray(all_eps, np.float64))            # greediest first
    eps = np.asarray(episode_eps, np.float64)
    n = ranked.size
    right = np.clip(np.searchsorted(ranked, eps), 0, n - 1)
    left = np.clip(right - 1, 0, n - 1)
    nearest = np.where(np.abs(ranked[left] - eps) <= np.abs(ranked[right] - eps), left, right)
    return (nearest * num_buckets // n).astype(np.int64)


def apex_epsilon(index: Union[int, np.ndarray], num_actors: int, base: float = 0.4,
                 alpha: float = 7.0) -> Union[float, np.ndarray]:
    """Per-actor exploration epsilon of Ape-X (Horgan et al., 2018), used by R2D2.

    ``eps_i = base^(1 + alpha i / (N - 1))`` for actor ``i`` in ``0..N-1``:
    actor 0 gets ``base`` (0.4), actor ``N-1`` gets ``base^(1 + alpha)`` (0.4^8).
    With a single actor (``N == 1``) the formula is undefined; it gets ``base``.

    Args:
      index: actor index ``i`` (int or ``<int>[K]`` numpy array).
      num_actors: ``N`` >= 1.
      base: epsilon of actor 0; paper: 0.4.
      alpha: exponent range; paper: 7.

    Returns:
      ``eps_i``: a float for an int index, else an array shaped like ``index``.
    """
    if num_actors < 1:
        raise ValueError(f"apex_epsilon needs num_actors >= 1, got {num_actors}")
    index_arr = np.asarray(index, dtype=np.float64)
    if num_actors == 1:
        eps = np.full_like(index_arr, base)
    else:
        eps = base ** (1.0 + alpha * index_arr / (num_actors - 1))
    return float(eps) if eps.ndim == 0 else eps


def env_epsilons(total_envs: int, base: float = 0.4, alpha: float = 7.0) -> np.ndarray:
    """``<float64>[total_envs]``: the Ape-X epsilon of every env of the job, by global index.

    Actor ``a`` with ``n`` envs runs global envs ``a * n .. a * n + n - 1``.
    """
    return np.asarray(apex_epsilon(np.arange(total_envs), total_envs, base, alpha), np.float64)

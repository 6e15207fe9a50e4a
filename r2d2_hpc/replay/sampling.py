"""Exact proportional sampling over the union of ``S`` replay shards.

Replay is split over ``S`` shards (one per replay rank). Shard ``s`` holds items
with priorities ``p_{s,j}`` (already raised to ``priority_exponent``) in its own
:class:`~r2d2_hpc.replay.sumtree.SumTree` and reports only three numbers,
:class:`ShardStats`: its mass ``m_s = sum_j p_{s,j}``, its item count and its
largest priority. With ``M = sum_s m_s`` the target distribution is the one a
single buffer holding every item would sample from::

    P(s, j) = p_{s,j} / M

Why "multinomial counts, then local proportional draws" is exact
-----------------------------------------------------------------
By the law of total probability, ``P(s, j) = P(s) * P(j | s)`` with
``P(s) = m_s / M`` and ``P(j | s) = p_{s,j} / m_s``. So one draw from the union
is "pick shard ``s`` with probability ``m_s / M``, then pick ``j`` inside it in
proportion to its priority", and ``B`` iid draws are ``B`` independent such
two-stage draws. Group those ``B`` draws by shard (multinomial thinning): the
numbers landing in each shard are ``(n_1, ..., n_S) ~ Multinomial(B, m / M)``
and, given those numbers, the draws inside shard ``s`` are ``n_s`` iid draws
from ``P(. | s)``, independent across shards. :func:`allocate_batch` samples the
counts and each shard then runs ``SumTree.sample(n_s, rng)``; the concatenation
is therefore distributed exactly as ``B`` iid draws from ``P`` (as a multiset;
the order is grouped by shard, which a mean-over-batch loss does not see).

The naive scheme of Ape-X / RLlib-style sharded buffers, where every shard
independently draws ``B / S`` items, samples item ``(s, j)`` with probability
``(1 / S) * p_{s,j} / m_s``: it equals ``P(s, j)`` only when all shard masses are
equal, and is otherwise biased towards items in light shards.
``tests/unit/replay/test_sampling.py`` checks both claims with chi-squared tests.

Importance weights
------------------
Shards return *local* probabilities ``p_{s,j} / m_s``.
:func:`global_probabilities` turns them into ``P(s, j)`` and
:func:`global_count` gives ``N``, the number of items in the union; the learner
passes both to ``r2d2_hpc.agent.losses.importance_weights(probs, num_items, beta)``,
which computes ``w_i = (N * P(i)) ** -beta / max_k w_k`` (Schaul et al., 2016;
``beta`` is R2D2's ``importance_sampling_exponent``, 0.6).

The masses used by :func:`allocate_batch`, by the shards' local probabilities
and by :func:`global_probabilities` must come from the same snapshot of the
shards (no priority update in between) for the probabilities to be exact.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence, Tuple

import numpy as np

__all__ = [
    "ShardStats",
    "allocate_batch",
    "allocate_split",
    "global_count",
    "global_max_priority",
    "global_probabilities",
    "global_total_priority",
    "shard_masses",
    "split_demo",
]


class ShardStats(NamedTuple):
    """What a replay shard reports about itself for cross-shard sampling.

    Attributes:
      total_priority: ``m_s``, the sum of the shard's (exponentiated) priorities,
        i.e. its sum-tree total.
      count: number of items currently stored in the shard.
      max_priority: the shard's largest priority, as the shard tracks it (the
        usual default priority for items inserted without one).
    """

    total_priority: float
    count: int
    max_priority: float


def shard_masses(stats: Sequence[ShardStats]) -> np.ndarray:
    """Validated shard masses ``m_s``.

    Args:
      stats: one :class:`ShardStats` per shard, ``S >= 1``.

    Returns:
      ``<float64>[S]`` the ``total_priority`` of each shard.

    Raises:
      ValueError: if ``stats`` is empty, a mass or max priority is negative or
        not finite, a count is negative, or an empty shard reports mass.
    """
    if len(stats) == 0:
        raise ValueError("stats must describe at least one shard")
    masses = np.empty(len(stats), dtype=np.float64)
    for s, st in enumerate(stats):
        mass = float(st.total_priority)
        if not (math.isfinite(mass) and mass >= 0.0):
            raise ValueError(
                f"shard {s}: total_priority must be finite and >= 0; got {mass!r}")
        if int(st.count) < 0:
            raise ValueError(f"shard {s}: count must be >= 0; got {st.count}")
        if int(st.count) == 0 and mass > 0.0:
            raise ValueError(
                f"shard {s}: count is 0 but total_priority is {mass!r}")
        max_p = float(st.max_priority)
        if not (math.isfinite(max_p) and max_p >= 0.0):
            raise ValueError(
                f"shard {s}: max_priority must be finite and >= 0; got {max_p!r}")
        masses[s] = mass
    return masses


def global_total_priority(stats: Sequence[ShardStats]) -> float:
    """``M = sum_s m_s``, summed exactly (``math.fsum``) so it does not depend on
    the order in which shards are listed.

    Args:
      stats: one :class:`ShardStats` per shard.

    Returns:
      The total mass of the union.
    """
    return math.fsum(shard_masses(stats))


def allocate_batch(stats: Sequence[ShardStats], batch_size: int,
                   rng: np.random.Generator) -> np.ndarray:
    """How many of ``batch_size`` draws each shard makes.

    ``n ~ Multinomial(batch_size, m / M)``: if shard ``s`` then draws ``n_s``
    items iid in proportion to its own priorities, the union is ``batch_size``
    iid draws with ``P(s, j) = p_{s,j} / M`` (see the module docstring).
    Shards with zero mass always get 0.

    Args:
      stats: one :class:`ShardStats` per shard, ``S >= 1``.
      batch_size: ``B >= 0``, the number of draws in total.
      rng: numpy random generator (one ``multinomial`` call is made).

    Returns:
      ``<int64>[S]`` counts summing to ``batch_size``.

    Raises:
      ValueError: if every shard has zero mass, ``batch_size < 0``, or the
        stats are invalid (see :func:`shard_masses`).
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0; got {batch_size}")
    masses = shard_masses(stats)
    total = math.fsum(masses)
    if not total > 0.0:
        raise ValueError("cannot allocate a batch: every shard has zero priority mass")
    counts = rng.multinomial(int(batch_size), masses / total)
    return counts.astype(np.int64, copy=False)


def split_demo(batch_size: int, demo_ratio: float, rng: np.random.Generator) -> int:
    """How many of ``batch_size`` elements the demonstration table gives (R2D3).

    Each batch element comes from the demonstrations with probability
    ``demo_ratio`` (Paine et al., 2019, section 4: "each element ... with
    probability rho"), independently, so the number is ``Binomial(B, rho)``;
    the rest come from the agent's replay. One ``binomial`` call.

    Raises:
      ValueError: ``batch_size < 0`` or ``demo_ratio`` outside ``[0, 1]``.
    """
    if batch_size < 0:
        raise ValueError(f"batch_size must be >= 0; got {batch_size}")
    if not 0.0 <= demo_ratio <= 1.0:
        raise ValueError(f"demo_ratio must be in [0, 1]; got {demo_ratio}")
    return int(rng.binomial(int(batch_size), float(demo_ratio)))


def allocate_split(stats: Sequence[ShardStats], demo_stats: Sequence[ShardStats],
                   batch_size: int, demo_ratio: float,
                   rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """R2D3's batch over agent and demo tables: ``n_demo ~ Binomial(B, rho)``
    (:func:`split_demo`), then each part allocated over its own tables' masses
    (:func:`allocate_batch`), so within each table the draws are exactly
    proportional prioritized sampling over that table's union of shards.

    Args:
      stats: the agent shards' stats.
      demo_stats: the demo tables' stats (same order; ignored when ``demo_ratio`` is 0).
      batch_size: ``B``.
      demo_ratio: ``rho`` in [0, 1].
      rng: draws the split and both allocations.

    Returns:
      ``(agent counts <int64>[S], demo counts <int64>[S])``, summing to ``B`` together.

    Raises:
      ValueError: a part that must draw has no mass, or invalid arguments.
    """
    n_demo = split_demo(batch_size, demo_ratio, rng) if demo_ratio > 0 else 0
    zeros = np.zeros(len(stats), np.int64)
    agent = allocate_batch(stats, batch_size - n_demo, rng) if batch_size > n_demo else zeros
    demo = allocate_batch(demo_stats, n_demo, rng) if n_demo else zeros.copy()
    return agent, demo


def global_probabilities(local_probs: np.ndarray, shard_ids: np.ndarray,
                         stats: Sequence[ShardStats]) -> np.ndarray:
    """Probabilities of the sampled items under the union distribution.

    ``P(i) = p_i / M = local_prob_i * (m_{s_i} / M)``, where ``local_prob_i =
    p_i / m_{s_i}`` is what ``SumTree.sample`` in shard ``s_i`` returned.

    Args:
      local_probs: ``<float>[B]`` within-shard probabilities, in ``(0, 1]``.
      shard_ids: ``<int>[B]`` the shard each item was drawn from.
      stats: one :class:`ShardStats` per shard, the snapshot used to allocate.

    Returns:
      ``<float64>[B]`` global sampling probabilities.

    Raises:
      ValueError: on a shape mismatch, a shard id out of range or of a shard
        with zero mass, or a local probability outside ``(0, 1]``.
    """
    masses = shard_masses(stats)
    total = math.fsum(masses)
    probs = np.asarray(local_probs, dtype=np.float64).reshape(-1)
    ids = np.asarray(shard_ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"shard_ids must be integers; got dtype {ids.dtype}")
    ids = ids.astype(np.int64, copy=False).reshape(-1)
    if ids.shape != probs.shape:
        raise ValueError(
            f"local_probs and shard_ids must have the same length; got "
            f"{probs.shape[0]} and {ids.shape[0]}")
    if probs.size == 0:
        return probs
    if ((ids < 0) | (ids >= masses.size)).any():
        raise ValueError(f"shard_ids must lie in [0, {masses.size}); got {ids}")
    if not (masses[ids] > 0.0).all():
        raise ValueError("an item was attributed to a shard with zero priority mass")
    if not ((probs > 0.0) & (probs <= 1.0)).all():
        raise ValueError("local_probs must lie in (0, 1]")
    return probs * (masses[ids] / total)


def global_count(stats: Sequence[ShardStats]) -> int:
    """``N``, the number of items in the union of the shards.

    Args:
      stats: one :class:`ShardStats` per shard.

    Returns:
      ``sum_s count_s``.
    """
    shard_masses(stats)
    return int(sum(int(st.count) for st in stats))


def global_max_priority(stats: Sequence[ShardStats]) -> float:
    """Largest priority over all non-empty shards (0.0 if every shard is empty).

    Args:
      stats: one :class:`ShardStats` per shard.

    Returns:
      ``max_s max_priority_s`` over shards with ``count > 0``.
    """
    shard_masses(stats)
    return max((float(st.max_priority) for st in stats if int(st.count) > 0),
               default=0.0)

"""Cross-shard sampling is exactly proportional over the union of the shards.

Four SumTree shards with differently skewed priorities and sizes (one nearly
empty) are compared with one SumTree holding the union of the same items:

* ``allocate_batch`` + per-shard ``SumTree.sample`` must be indistinguishable
  from ``p_i / sum(p)`` (goodness of fit) and from draws of the single buffer
  (two-sample test);
* the naive scheme (each shard draws ``B / S`` on its own) must be rejected by
  the same tests, which shows they have the power to see a wrong scheme.
"""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.replay.sampling import (
    ShardStats,
    allocate_batch,
    allocate_split,
    global_count,
    global_max_priority,
    global_probabilities,
    global_total_priority,
    shard_masses,
    split_demo,
)
from r2d2_hpc.replay.sumtree import SumTree
from tests.helpers.chi2 import chi2_goodness_of_fit, chi2_two_sample

NUM_DRAWS = 200_000
BATCH_SIZE = 64
STRICT = 1e-3  # a correct scheme must not be rejected at this level
POWER = 1e-6  # the naive scheme must be rejected at this level


def make_shards() -> List[np.ndarray]:
    """Leaf priorities of 4 shards: different sizes, skews and masses."""
    rng = np.random.default_rng(2024)
    heavy_tail = rng.pareto(1.2, size=200) + 0.05  # a few huge priorities
    exponential = 3.0 * rng.exponential(size=120)
    exponential[::7] = 0.0  # zero-priority items must never be drawn
    lognormal = rng.lognormal(mean=-1.0, sigma=1.5, size=60)
    nearly_empty = np.array([0.02, 0.0, 0.05])  # tiny mass
    return [heavy_tail, exponential, lognormal, nearly_empty]


def stats_of(trees: List[SumTree]) -> List[ShardStats]:
    return [ShardStats(t.total, t.capacity, float(t.leaves().max()))
            for t in trees]


Draws = Tuple[np.ndarray, np.ndarray, np.ndarray]  # global ids, shard ids, local probs


def draw_sharded(trees: List[SumTree], offsets: np.ndarray, rng: np.random.Generator,
                 naive: bool) -> Draws:
    """``NUM_DRAWS`` draws in batches of ``BATCH_SIZE`` across the shards."""
    stats = stats_of(trees)
    num_shards = len(trees)
    ids, shard_ids, local_probs = [], [], []
    for _ in range(NUM_DRAWS // BATCH_SIZE):
        if naive:
            counts = np.full(num_shards, BATCH_SIZE // num_shards)
        else:
            counts = allocate_batch(stats, BATCH_SIZE, rng)
            assert counts.sum() == BATCH_SIZE
        for s, n in enumerate(counts):
            if n == 0:
                continue
            idx, probs = trees[s].sample(int(n), rng)
            ids.append(idx + offsets[s])
            shard_ids.append(np.full(n, s))
            local_probs.append(probs)
    return np.concatenate(ids), np.concatenate(shard_ids), np.concatenate(local_probs)


@pytest.fixture(scope="module")
def setup():
    shards = make_shards()
    trees = [SumTree.from_leaves(p) for p in shards]
    offsets = np.cumsum([0] + [p.size for p in shards[:-1]])
    union_leaves = np.concatenate(shards)
    union = SumTree.from_leaves(union_leaves)
    target = union_leaves / math.fsum(union_leaves)
    return trees, offsets, union_leaves, union, target


@pytest.fixture(scope="module")
def single_buffer_counts(setup):
    _, _, union_leaves, union, _ = setup
    idx, _ = union.sample(NUM_DRAWS, np.random.default_rng(11))
    return np.bincount(idx, minlength=union_leaves.size)


def test_shards_are_skewed_enough_to_matter(setup):
    # The naive scheme is only wrong when masses differ; make sure they do.
    trees = setup[0]
    masses = shard_masses(stats_of(trees))
    assert masses.max() / masses.min() > 100.0


def test_allocated_sampling_matches_single_buffer(setup, single_buffer_counts):
    trees, offsets, union_leaves, union, target = setup
    ids, shard_ids, local_probs = draw_sharded(trees, offsets, np.random.default_rng(5),
                                               naive=False)
    assert ids.size == NUM_DRAWS - NUM_DRAWS % BATCH_SIZE
    counts = np.bincount(ids, minlength=union_leaves.size)
    assert counts[union_leaves == 0.0].sum() == 0

    stat, p_value, dof = chi2_goodness_of_fit(counts, target)
    assert dof > 200
    assert p_value > STRICT, f"goodness of fit rejected: chi2={stat:.1f}, dof={dof}"

    stat, p_value, dof = chi2_two_sample(counts, single_buffer_counts)
    assert dof > 200
    assert p_value > STRICT, f"two-sample test rejected: chi2={stat:.1f}, dof={dof}"

    # Importance-sampling probabilities: P(i) = p_i / sum_all p.
    probs = global_probabilities(local_probs, shard_ids, stats_of(trees))
    np.testing.assert_allclose(probs, union_leaves[ids] / union.total, rtol=1e-12, atol=0)


def test_naive_per_shard_sampling_is_rejected(setup, single_buffer_counts):
    trees, offsets, union_leaves, _, target = setup
    ids, _, _ = draw_sharded(trees, offsets, np.random.default_rng(5), naive=True)
    counts = np.bincount(ids, minlength=union_leaves.size)

    _, p_value, _ = chi2_goodness_of_fit(counts, target)
    assert p_value < POWER
    _, p_value, _ = chi2_two_sample(counts, single_buffer_counts)
    assert p_value < POWER
    # The nearly empty shard (0.07 of a mass in the hundreds) gets 1/4 of draws.
    assert counts[offsets[3]:].sum() == NUM_DRAWS // BATCH_SIZE * (BATCH_SIZE // 4)


def test_naive_sampling_is_rejected_for_a_moderate_mass_imbalance():
    # Without the nearly empty shard, masses only 1 : 1.25 : 1.5 apart: the
    # naive scheme's bias (shares 1/3 instead of 0.27 / 0.33 / 0.4) is still seen.
    shards = [p * (m / p.sum()) for p, m in zip(make_shards()[:3], (1.0, 1.25, 1.5))]
    trees = [SumTree.from_leaves(p) for p in shards]
    offsets = np.cumsum([0] + [p.size for p in shards[:-1]])
    union_leaves = np.concatenate(shards)
    target = union_leaves / math.fsum(union_leaves)
    ids, _, _ = draw_sharded(trees, offsets, np.random.default_rng(8), naive=True)
    counts = np.bincount(ids, minlength=union_leaves.size)
    _, p_value, _ = chi2_goodness_of_fit(counts, target)
    assert p_value < POWER


def test_single_buffer_draws_fit_their_own_probabilities(setup, single_buffer_counts):
    # Sanity of the reference sample used by the two-sample tests.
    _, p_value, _ = chi2_goodness_of_fit(single_buffer_counts, setup[4])
    assert p_value > STRICT


# --------------------------------------------------------------------------
# Hypothesis: global probabilities of every item equal p_i / sum_all p
# --------------------------------------------------------------------------

shard_leaves = st.lists(
    st.one_of(st.just(0.0), st.floats(1e-6, 1e6)), min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(st.lists(shard_leaves, min_size=1, max_size=5))
def test_global_probabilities_of_every_item(shards):
    trees = [SumTree.from_leaves(np.array(p)) for p in shards]
    stats = [ShardStats(t.total, t.capacity, float(t.leaves().max())) for t in trees]
    union = np.concatenate([np.array(p) for p in shards])
    if union.sum() == 0.0:
        with pytest.raises(ValueError, match="zero priority mass"):
            allocate_batch(stats, 8, np.random.default_rng(0))
        return
    local, ids, values = [], [], []
    for s, t in enumerate(trees):
        leaves = t.leaves()
        positive = leaves > 0.0
        local.append(leaves[positive] / t.total)
        ids.append(np.full(positive.sum(), s))
        values.append(leaves[positive])
    probs = global_probabilities(np.concatenate(local), np.concatenate(ids), stats)
    expected = np.concatenate(values) / math.fsum(union)
    np.testing.assert_allclose(probs, expected, rtol=1e-12, atol=0)
    assert math.fsum(probs) == pytest.approx(1.0, rel=1e-12)
    counts = allocate_batch(stats, 64, np.random.default_rng(0))
    assert counts.sum() == 64 and counts.dtype == np.int64
    assert np.all(counts[[t.total == 0.0 for t in trees]] == 0)
    assert global_count(stats) == union.size


# --------------------------------------------------------------------------
# Hand-computed tables
# --------------------------------------------------------------------------

STATS = [ShardStats(1.0, 2, 0.75), ShardStats(0.0, 4, 0.0), ShardStats(3.0, 5, 2.5)]


def test_global_probabilities_table():
    # M = 4: P = local * m_s / M.
    probs = global_probabilities(np.array([0.5, 1.0 / 3.0, 1.0]), np.array([0, 2, 2]), STATS)
    np.testing.assert_allclose(probs, [0.125, 0.25, 0.75], rtol=1e-15)
    assert global_probabilities(np.array([]), np.array([], dtype=np.int64), STATS).shape == (0,)


@pytest.mark.parametrize(
    "stats,count,max_priority,total",
    [
        (STATS, 11, 2.5, 4.0),
        ([ShardStats(0.0, 0, 0.0)], 0, 0.0, 0.0),
        # An empty shard's max_priority (a default) is ignored.
        ([ShardStats(0.0, 0, 9.0), ShardStats(2.0, 1, 2.0)], 1, 2.0, 2.0),
        ([ShardStats(0.1, 1, 0.1), ShardStats(0.2, 1, 0.2), ShardStats(0.3, 1, 0.3)],
         3, 0.3, 0.6),
    ],
)
def test_global_aggregates(stats, count, max_priority, total):
    assert global_count(stats) == count
    assert global_max_priority(stats) == max_priority
    assert global_total_priority(stats) == total  # fsum: 0.1 + 0.2 + 0.3 == 0.6


@pytest.mark.parametrize(
    "stats,batch_size,expected",
    [
        ([ShardStats(5.0, 3, 2.0)], 64, [64]),
        ([ShardStats(0.0, 3, 0.0), ShardStats(5.0, 3, 2.0), ShardStats(0.0, 0, 0.0)], 32,
         [0, 32, 0]),
        (STATS, 0, [0, 0, 0]),
    ],
)
def test_allocate_batch_table(stats, batch_size, expected):
    np.testing.assert_array_equal(allocate_batch(stats, batch_size, np.random.default_rng(0)),
                                  expected)


def test_allocate_batch_is_deterministic_given_the_rng():
    a = allocate_batch(STATS, 64, np.random.default_rng(42))
    b = allocate_batch(STATS, 64, np.random.default_rng(42))
    np.testing.assert_array_equal(a, b)
    assert a[1] == 0 and a.sum() == 64


@pytest.mark.parametrize(
    "stats,batch_size,match",
    [
        ([ShardStats(0.0, 3, 0.0), ShardStats(0.0, 0, 0.0)], 8, "zero priority mass"),
        ([], 8, "at least one shard"),
        ([ShardStats(-1.0, 3, 0.0)], 8, "total_priority"),
        ([ShardStats(float("nan"), 3, 0.0)], 8, "total_priority"),
        ([ShardStats(1.0, 0, 1.0)], 8, "count is 0"),
        ([ShardStats(1.0, -2, 1.0)], 8, "count must be >= 0"),
        ([ShardStats(1.0, 2, float("inf"))], 8, "max_priority"),
        ([ShardStats(1.0, 2, 1.0)], -1, "batch_size"),
    ],
)
def test_allocate_batch_errors(stats, batch_size, match):
    with pytest.raises(ValueError, match=match):
        allocate_batch(stats, batch_size, np.random.default_rng(0))


@pytest.mark.parametrize(
    "local,ids,match",
    [
        ([0.5], [1], "zero priority mass"),
        ([0.5], [3], r"shard_ids must lie in"),
        ([0.5], [-1], r"shard_ids must lie in"),
        ([0.0], [0], r"\(0, 1\]"),
        ([1.5], [0], r"\(0, 1\]"),
        ([0.5, 0.5], [0], "same length"),
        ([0.5], [0.0], "integers"),
    ],
)
def test_global_probabilities_errors(local, ids, match):
    with pytest.raises(ValueError, match=match):
        global_probabilities(np.array(local), np.array(ids), STATS)


@pytest.mark.parametrize("ratio", [0.0, 1 / 256, 0.25, 1.0])
def test_the_demo_split_is_binomial(ratio):
    """R2D3: each of B elements is a demonstration with probability rho, so the
    demo count over many batches fits Binomial(B, rho) (chi-squared)."""
    rng, B, batches = np.random.default_rng(11), 32, 20000
    counts = np.bincount([split_demo(B, ratio, rng) for _ in range(batches)], minlength=B + 1)
    if ratio in (0.0, 1.0):
        assert counts[int(ratio * B)] == batches
        return
    pmf = np.array([math.comb(B, k) * ratio ** k * (1 - ratio) ** (B - k) for k in range(B + 1)])
    _, p, _ = chi2_goodness_of_fit(counts, pmf / pmf.sum())
    assert p > 1e-3, p


def test_the_demo_split_refuses_a_ratio_outside_0_1():
    with pytest.raises(ValueError, match="demo_ratio must be in"):
        split_demo(8, 1.5, np.random.default_rng(0))


def test_the_r2d3_split_allocates_each_part_over_its_own_tables():
    """allocate_split: the demo count fits Binomial(B, rho); given the split, the demo
    rows spread over the shards by the demo tables' masses and the agent rows by the
    agent shards' (pooled counts, chi-squared)."""
    rng, B, rho, batches = np.random.default_rng(5), 16, 0.25, 20000
    agent = [ShardStats(3.0, 10, 1.0), ShardStats(1.0, 10, 1.0), ShardStats(0.0, 0, 0.0)]
    demo = [ShardStats(0.5, 4, 1.0), ShardStats(0.0, 0, 0.0), ShardStats(2.0, 9, 1.0)]
    totals, agent_rows, demo_rows = np.zeros(B + 1, np.int64), np.zeros(3), np.zeros(3)
    for _ in range(batches):
        a, d = allocate_split(agent, demo, B, rho, rng)
        assert a.sum() + d.sum() == B
        totals[d.sum()] += 1
        agent_rows += a
        demo_rows += d
    pmf = np.array([math.comb(B, k) * rho ** k * (1 - rho) ** (B - k) for k in range(B + 1)])
    assert chi2_goodness_of_fit(totals, pmf / pmf.sum())[1] > STRICT
    assert agent_rows[2] == 0 and demo_rows[1] == 0  # no mass, no rows
    assert chi2_goodness_of_fit(agent_rows[:2].astype(np.int64), np.array([0.75, 0.25]))[1] \
        > STRICT
    assert chi2_goodness_of_fit(demo_rows[[0, 2]].astype(np.int64), np.array([0.2, 0.8]))[1] \
        > STRICT


def test_without_demonstrations_the_split_is_the_plain_allocation():
    agent = [ShardStats(3.0, 10, 1.0), ShardStats(1.0, 10, 1.0)]
    a, d = allocate_split(agent, [ShardStats(0.0, 0, 0.0)] * 2, 8, 0.0,
                          np.random.default_rng(3))
    np.testing.assert_array_equal(a, allocate_batch(agent, 8, np.random.default_rng(3)))
    assert d.tolist() == [0, 0]

"""Tests for r2d2_hpc.replay.sumtree.SumTree against a brute-force numpy reference."""
from __future__ import annotations

import math
from typing import List, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.replay.sumtree import SumTree
from tests.helpers.chi2 import chi2_goodness_of_fit, chi2_sf

# --------------------------------------------------------------------------
# Reference model and strategies
# --------------------------------------------------------------------------

Update = Tuple[List[int], List[float]]


def apply_reference(leaves: np.ndarray, indices: List[int], values: List[float]) -> None:
    """Sequential reference update: later entries overwrite earlier ones."""
    for i, v in zip(indices, values):
        leaves[i] = v


def reference_find(leaves: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """``prefix(i) <= u < prefix(i + 1)`` via searchsorted on the cumulative sum."""
    return np.searchsorted(np.cumsum(leaves), targets, side="right")


# Leaf values: exact zeros are frequent on purpose (they must never be found).
float_values = st.one_of(
    st.just(0.0),
    st.floats(min_value=0.0, max_value=1e3, allow_nan=False, allow_infinity=False),
    st.floats(min_value=1e-9, max_value=1e-3),
)
# Dyadic rationals: every partial sum is exact in float64, so the descent must
# agree with searchsorted bit for bit, boundaries included.
dyadic_values = st.one_of(st.just(0.0), st.integers(0, 256).map(lambda n: n / 8.0))


@st.composite
def update_histories(draw, values=float_values, max_capacity: int = 40):
    capacity = draw(st.integers(1, max_capacity))
    batches: List[Update] = []
    for _ in range(draw(st.integers(1, 6))):
        size = draw(st.integers(0, 2 * capacity + 2))
        idx = draw(st.lists(st.integers(0, capacity - 1), min_size=size, max_size=size))
        vals = draw(st.lists(values, min_size=size, max_size=size))
        batches.append((idx, vals))
    return capacity, batches


def build(capacity: int, batches: List[Update]) -> Tuple[SumTree, np.ndarray]:
    tree = SumTree(capacity)
    ref = np.zeros(capacity, dtype=np.float64)
    for idx, vals in batches:
        tree.update(np.asarray(idx, dtype=np.int64), np.asarray(vals, dtype=np.float64))
        apply_reference(ref, idx, vals)
    return tree, ref


# --------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(update_histories(), st.lists(st.floats(0.0, 1.0, exclude_max=True), min_size=1, max_size=20))
def test_matches_reference_for_float_values(history, fractions):
    capacity, batches = history
    tree, ref = build(capacity, batches)

    np.testing.assert_array_equal(tree.leaves(), ref)
    np.testing.assert_array_equal(tree.get(np.arange(capacity)), ref)
    exact_total = math.fsum(ref)
    assert tree.total == pytest.approx(exact_total, rel=1e-12, abs=0.0)
    # Snapshot invariant: the tree is a pure function of its leaves.
    rebuilt = SumTree.from_leaves(tree.leaves())
    assert np.array_equal(rebuilt.nodes, tree.nodes)

    if tree.total == 0.0:
        with pytest.raises(ValueError):
            tree.find(np.array([0.0]))
        return
    targets = np.asarray(fractions) * tree.total
    found = tree.find(targets)
    assert found.dtype == np.int64
    assert np.all(ref[found] > 0.0), "a zero-valued leaf was returned"
    # With general floats the descent's subtractions and np.cumsum round
    # differently, so the bracket holds up to round-off of order total * eps.
    cumsum = np.cumsum(ref)
    lower = cumsum[found] - ref[found]
    tol = 1e-12 * tree.total
    assert np.all(lower <= targets + tol)
    assert np.all(targets < cumsum[found] + tol)


@settings(max_examples=150, deadline=None)
@given(update_histories(values=dyadic_values), st.data())
def test_find_equals_searchsorted_for_exact_values(history, data):
    capacity, batches = history
    tree, ref = build(capacity, batches)
    assert tree.total == math.fsum(ref)
    if tree.total == 0.0:
        return
    cumsum = np.cumsum(ref)
    # Every boundary prefix(i) that lies below the total, plus random targets.
    boundaries = np.concatenate([[0.0], cumsum[cumsum < tree.total]])
    fractions = data.draw(st.lists(st.floats(0.0, 1.0, exclude_max=True), max_size=10))
    targets = np.concatenate([boundaries, np.asarray(fractions) * tree.total])
    np.testing.assert_array_equal(tree.find(targets), reference_find(ref, targets))


@settings(max_examples=60, deadline=None)
@given(update_histories(), st.integers(0, 2**32 - 1))
def test_restored_tree_samples_identically(history, seed):
    capacity, batches = history
    tree, _ = build(capacity, batches)
    if tree.total == 0.0:
        return
    restored = SumTree.from_leaves(tree.leaves())
    idx_a, p_a = tree.sample(32, np.random.default_rng(seed))
    idx_b, p_b = restored.sample(32, np.random.default_rng(seed))
    np.testing.assert_array_equal(idx_a, idx_b)
    np.testing.assert_array_equal(p_a, p_b)


# --------------------------------------------------------------------------
# Hand-computed tables
# --------------------------------------------------------------------------

# leaves [1, 0, 2, 0, 3] (capacity 5, padded to 8): prefix = [0, 1, 1, 3, 3, 6].
FIND_CASES = [
    # (target, expected leaf)
    (0.0, 0),
    (0.5, 0),
    (1.0, 2),  # prefix(1) = prefix(2) = 1: leaf 1 has zero mass and is skipped
    (2.999, 2),
    (3.0, 4),
    (5.999, 4),
    (6.0, 4),  # exactly the total: clamps to the last positive leaf
    (np.nextafter(6.0, np.inf), 4),
    (1e300, 4),
]


@pytest.mark.parametrize("target,expected", FIND_CASES)
def test_find_table_non_power_of_two(target, expected):
    tree = SumTree(5)
    tree.update(np.array([0, 2, 4]), np.array([1.0, 2.0, 3.0]))
    assert tree.total == 6.0
    np.testing.assert_array_equal(tree.find(np.array([target])), [expected])


@pytest.mark.parametrize(
    "leaves,target,expected",
    [
        ([0.0, 3.0, 0.0, 0.0], 3.0, 1),  # trailing zeros, target at total
        ([0.0, 3.0, 0.0, 0.0], 2.5, 1),
        ([0.0, 0.0, 2.0], 0.0, 2),  # leading zeros, target 0
        ([0.0, 0.0, 0.0, 0.0, 0.0, 7.0], 7.0, 5),
        ([5.0], 0.0, 0),  # capacity 1
        ([5.0], 5.0, 0),
        ([5.0], 4.999, 0),
        ([0.1, 0.2, 0.3, 0.0, 0.0], np.nextafter(0.1 + 0.2 + 0.3, 0.0), 2),
    ],
)
def test_find_edges(leaves, target, expected):
    tree = SumTree.from_leaves(np.array(leaves))
    np.testing.assert_array_equal(tree.find(np.array([target])), [expected])


def test_right_edge_round_off_never_returns_zero_leaf():
    # Many tiny leaves followed by zeros: subtracting left masses during the
    # descent can leave u >= the remaining right mass; it must not fall off
    # into the zero leaves or the padding.
    leaves = np.zeros(1000)
    leaves[:333] = np.random.default_rng(0).random(333) * 1e-3 + 1e-7
    tree = SumTree.from_leaves(leaves)
    total = tree.total
    targets = np.array([total, np.nextafter(total, 0.0), np.nextafter(total, np.inf),
                        total * (1 - 2**-53)])
    found = tree.find(targets)
    assert np.all(leaves[found] > 0.0)
    assert np.all(found == 332)


def test_capacity_one():
    tree = SumTree(1)
    assert tree.capacity == 1 and tree.total == 0.0
    tree.update(np.array([0]), np.array([2.5]))
    assert tree.total == 2.5
    np.testing.assert_array_equal(tree.leaves(), [2.5])
    idx, probs = tree.sample(4, np.random.default_rng(1))
    np.testing.assert_array_equal(idx, [0, 0, 0, 0])
    np.testing.assert_array_equal(probs, [1.0] * 4)
    assert np.array_equal(SumTree.from_leaves(tree.leaves()).nodes, tree.nodes)


def test_duplicates_last_write_wins():
    tree = SumTree(4)
    tree.update(np.array([1, 3, 1, 1, 3]), np.array([5.0, 1.0, 0.0, 7.0, 2.0]))
    np.testing.assert_array_equal(tree.leaves(), [0.0, 7.0, 0.0, 2.0])
    assert tree.total == 9.0


def test_zeroing_all_leaves_makes_sampling_fail():
    tree = SumTree(3)
    tree.update(np.array([0, 1, 2]), np.array([1.0, 2.0, 3.0]))
    tree.update(np.array([0, 1, 2]), np.zeros(3))
    assert tree.total == 0.0
    with pytest.raises(ValueError, match="total is 0"):
        tree.sample(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match="total is 0"):
        tree.find(np.array([0.0]))


def test_empty_update_and_sample():
    tree = SumTree(3)
    tree.update(np.array([], dtype=np.int64), np.array([]))
    assert tree.total == 0.0
    tree.update(np.array([2]), np.array([1.0]))
    idx, probs = tree.sample(0, np.random.default_rng(0))
    assert idx.shape == (0,) and probs.shape == (0,)


@pytest.mark.parametrize(
    "indices,values,match",
    [
        ([0, 1], [1.0, -1.0], "must be >= 0"),
        ([0, 1], [1.0, -1e-300], "must be >= 0"),
        ([0, 1], [np.nan, 1.0], "must be finite"),
        ([0], [np.inf], "must be finite"),
        ([2], [-np.inf], "must be finite"),
        ([0, 4], [1.0, 1.0], "out of range"),
        ([-1], [1.0], "out of range"),
        (np.array([0.0, 1.0]), [1.0, 1.0], "integers"),
        ([0, 1], [1.0], "same length"),
    ],
)
def test_invalid_update_raises_and_leaves_tree_unchanged(indices, values, match):
    tree = SumTree(4)
    tree.update(np.array([0, 1, 2, 3]), np.array([1.0, 2.0, 3.0, 4.0]))
    before = tree.nodes.copy()
    with pytest.raises(ValueError, match=match):
        tree.update(np.asarray(indices), np.asarray(values, dtype=np.float64))
    assert np.array_equal(tree.nodes, before)


@pytest.mark.parametrize("capacity", [0, -3, 2.5, True])
def test_invalid_capacity(capacity):
    with pytest.raises(ValueError, match="capacity"):
        SumTree(capacity)


@pytest.mark.parametrize(
    "leaves,match",
    [([], "empty"), ([1.0, -2.0], ">= 0"), ([np.nan], "finite"), ([[1.0]], "1-D")],
)
def test_invalid_from_leaves(leaves, match):
    with pytest.raises(ValueError, match=match):
        SumTree.from_leaves(np.array(leaves))


def test_invalid_find_targets_and_get_indices():
    tree = SumTree.from_leaves(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="NaN"):
        tree.find(np.array([np.nan]))
    with pytest.raises(ValueError, match=">= 0"):
        tree.find(np.array([-0.5]))
    with pytest.raises(ValueError, match="out of range"):
        tree.get(np.array([2]))


def test_nodes_view_is_read_only():
    tree = SumTree.from_leaves(np.array([1.0, 2.0]))
    with pytest.raises(ValueError):
        tree.nodes[1] = 0.0
    leaves = tree.leaves()
    leaves[0] = 100.0  # a copy: the tree must not change
    assert tree.total == 3.0


def test_long_history_of_mixed_magnitudes_is_bit_identical_after_restore():
    # Delta updates (node += new - old) would accumulate round-off here; the
    # recompute-from-children invariant keeps the tree a function of the leaves.
    rng = np.random.default_rng(7)
    tree = SumTree(300)
    for _ in range(200):
        idx = rng.integers(0, 300, size=32)
        vals = 10.0 ** rng.uniform(-8, 8, size=32) * (rng.random(32) > 0.1)
        tree.update(idx, vals)
    rebuilt = SumTree.from_leaves(tree.leaves())
    assert np.array_equal(rebuilt.nodes, tree.nodes)
    assert rebuilt.total == tree.total


# --------------------------------------------------------------------------
# Sampling distribution
# --------------------------------------------------------------------------


def test_sample_uses_one_uniform_per_draw():
    tree = SumTree.from_leaves(np.array([0.5, 0.0, 3.0, 1.5, 0.0, 2.0, 0.25]))
    idx, probs = tree.sample(50, np.random.default_rng(3))
    expected_idx = tree.find(np.random.default_rng(3).random(50) * tree.total)
    np.testing.assert_array_equal(idx, expected_idx)
    assert idx.dtype == np.int64 and probs.dtype == np.float64
    np.testing.assert_array_equal(probs, tree.get(idx) / tree.total)


def test_sample_frequencies_match_value_over_total():
    rng = np.random.default_rng(12345)
    capacity = 37
    leaves = rng.pareto(1.5, size=capacity) + 0.01
    leaves[[3, 10, 36]] = 0.0  # zero leaves, incl. the last one
    tree = SumTree.from_leaves(leaves)
    counts = np.zeros(capacity, dtype=np.int64)
    for _ in range(50):
        idx, probs = tree.sample(2000, rng)
        np.testing.assert_array_equal(probs, leaves[idx] / tree.total)
        counts += np.bincount(idx, minlength=capacity)
    assert counts[[3, 10, 36]].sum() == 0
    stat, p_value, dof = chi2_goodness_of_fit(counts, leaves / leaves.sum())
    assert dof >= 20
    assert p_value > 1e-3, (stat, dof)
    # Power check: the same counts against uniform probabilities must fail.
    _, p_uniform, _ = chi2_goodness_of_fit(counts, (leaves > 0) / np.count_nonzero(leaves))
    assert p_uniform < 1e-6


# Known values of the chi-squared survival function (95% quantiles from
# standard tables, and the closed forms sf(x; 2) = exp(-x / 2),
# sf(x; 1) = erfc(sqrt(x / 2))), which check the scipy-free helper itself.
@pytest.mark.parametrize(
    "x,dof,expected",
    [
        (3.841458820694124, 1, 0.05),
        (18.307038053275146, 10, 0.05),
        (124.34211340400407, 100, 0.05),
        (0.0, 5, 1.0),
        (1.0, 2, math.exp(-0.5)),
        (40.0, 2, math.exp(-20.0)),
        (0.3, 1, math.erfc(math.sqrt(0.15))),
        (50.0, 1, math.erfc(5.0)),
    ],
)
def test_chi2_sf_known_values(x, dof, expected):
    assert chi2_sf(x, dof) == pytest.approx(expected, rel=1e-9)


@given(st.integers(1, 37), st.lists(st.tuples(st.integers(0, 36), st.floats(0, 1e6)),
                                    min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_one_leaf_updates_equal_batched_updates_bit_for_bit(capacity, writes):
    # update() walks up with scalars for a single index and level by level for
    # several; both must give exactly the tree of the leaves.
    writes = [(i % capacity, v) for i, v in writes]
    one_by_one, batched = SumTree(capacity), SumTree(capacity)
    for i, v in writes:
        one_by_one.update(np.array([i]), np.array([v]))
    idx = np.array([i for i, _ in writes])
    batched.update(idx, np.array([v for _, v in writes]))  # last write wins
    assert np.array_equal(one_by_one.nodes, batched.nodes)
    assert np.array_equal(one_by_one.nodes, SumTree.from_leaves(one_by_one.leaves()).nodes)

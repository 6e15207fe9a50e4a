"""A vectorised sum-tree for proportional prioritised replay.

The tree stores ``capacity`` non-negative leaf values ``p_0 .. p_{n-1}`` and
answers, in ``O(log n)`` per element of a batch:

* ``total = sum_i p_i`` (the root),
* ``find(u)``: the leaf ``i`` with ``prefix(i) <= u < prefix(i + 1)`` where
  ``prefix(i) = p_0 + ... + p_{i-1}``, so that ``u ~ U[0, total)`` draws leaf
  ``i`` with probability ``P(i) = p_i / total`` (Schaul et al., 2016, "Prioritized
  Experience Replay", section 3.3; R2D2 uses ``p_i`` = the eta-mixed priority
  raised to ``priority_exponent``).

Layout (heap order, 1-based, padded to ``P = 2**ceil(log2(capacity))`` leaves)::

    depth 0                 [1]                    node k has children
    depth 1          [2]           [3]             2k (left) and 2k + 1 (right)
    depth 2       [4]   [5]     [6]   [7]
    leaves      P+0 P+1 P+2 P+3 ...                leaf i lives at node P + i;
                                                   leaves i >= capacity are 0.

Invariant (relied on by replay snapshots for bit-identical sampling after a
restore): every internal node is *always* recomputed as ``left + right`` from
its two children, never updated by adding a delta. Because float64 addition is
deterministic, the whole ``nodes`` array is therefore a pure function of the
leaves: ``SumTree.from_leaves(t.leaves())`` rebuilds a tree whose node array is
``np.array_equal`` to ``t``'s, and so draws exactly the same samples from the
same random numbers. Delta updates (``node += new - old``) would instead let
round-off accumulate along the history of writes, which a snapshot of the
leaves cannot reproduce.

``update`` keeps this cheap: it writes the touched leaves, then walks up one
level at a time, recomputing only the distinct parents of the nodes touched on
the level below (``np.unique`` per level), so a batch of ``B`` updates costs
``O(B log n)`` vectorised work.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["SumTree"]


def _as_leaf_values(values: np.ndarray, name: str) -> np.ndarray:
    """Converts to a 1-D float64 array and checks every entry is finite and >= 0.

    Args:
      values: array-like of leaf values.
      name: argument name used in error messages.

    Returns:
      ``<float64>[N]`` copy-free view when possible.

    Raises:
      ValueError: if any value is NaN, infinite or negative.
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = int(np.flatnonzero(~finite)[0])
        raise ValueError(
            f"{name} must be finite; got {arr[bad]!r} at position {bad}")
    negative = arr < 0.0
    if negative.any():
        bad = int(np.flatnonzero(negative)[0])
        raise ValueError(
            f"{name} must be >= 0; got {arr[bad]!r} at position {bad}")
    return arr


class SumTree:
    """Sum-tree over ``capacity`` non-negative float64 leaves.

    Attributes:
      capacity: number of leaves (any positive int).
    """

    def __init__(self, capacity: int) -> None:
        """Creates a tree with ``capacity`` leaves, all zero.

        Args:
          capacity: number of leaves, a positive int (not necessarily a power
            of two; the tree pads internally with zero leaves).

        Raises:
          ValueError: if ``capacity`` is not a positive integer.
        """
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
            raise ValueError(f"capacity must be an int; got {capacity!r}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self.capacity: int = int(capacity)
        #: Number of levels below the root; the padded leaf count is 2**depth.
        self._depth: int = max(0, (self.capacity - 1).bit_length())
        self._num_padded: int = 1 << self._depth
        # Index 0 is unused; the root is node 1 and leaf i is node P + i.
        self._nodes: np.ndarray = np.zeros(self.num_nodes(self.capacity), dtype=np.float64)

    @staticmethod
    def num_nodes(capacity: int) -> int:
        """Length of the node array of a tree with ``capacity`` leaves: twice the
        leaf count padded to a power of two (8 bytes each)."""
        return 2 << max(0, (int(capacity) - 1).bit_length())

    # ------------------------------------------------------------------ access
    @property
    def nodes(self) -> np.ndarray:
        """Read-only view of the heap array ``<float64>[2P]`` (index 0 unused)."""
        view = self._nodes.view()
        view.flags.writeable = False
        return view

    @property
    def total(self) -> float:
        """Sum of all leaf values (the root node)."""
        return float(self._nodes[1])

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        """Validates leaf indices and returns them as ``<int64>[N]``."""
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers; got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        out_of_range = (idx < 0) | (idx >= self.capacity)
        if out_of_range.any():
            bad = int(idx[np.flatnonzero(out_of_range)[0]])
            raise ValueError(
                f"index {bad} out of range for capacity {self.capacity}")
        return idx

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Leaf values at ``indices``.

        Args:
          indices: ``<int>[N]`` leaf indices in ``[0, capacity)``.

        Returns:
          ``<float64>[N]`` the leaf values (a copy).
        """
        idx = self._check_indices(indices)
        return self._nodes[self._num_padded + idx]

    def leaves(self) -> np.ndarray:
        """Copy of all leaf values, ``<float64>[capacity]``."""
        start = self._num_padded
        return self._nodes[start:start + self.capacity].copy()

    # ------------------------------------------------------------------ update
    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Sets ``p[indices] = values`` and recomputes the affected ancestors.

        Everything is validated before anything is written, so on error the
        tree is unchanged. If an index occurs several times the last write
        wins (made explicit here, not left to numpy's fancy assignment order).

        Args:
          indices: ``<int>[N]`` leaf indices in ``[0, capacity)``.
          values: ``<float>[N]`` new leaf values, finite and ``>= 0``.

        Raises:
          ValueError: on a non-integer or out-of-range index, a shape mismatch,
            or a NaN / infinite / negative value.
        """
        idx = self._check_indices(indices)
        vals = _as_leaf_values(values, "values")
        if idx.shape != vals.shape:
            raise ValueError(
                f"indices and values must have the same length; got "
                f"{idx.shape[0]} and {vals.shape[0]}")
        if idx.size == 0:
            return
        tree = self._nodes
        if idx.size == 1:  # one leaf (a chunk's sequence): walk up with scalars
            node = int(idx[0]) + self._num_padded
            tree[node] = vals[0]
            node >>= 1
            while node:
                # The same float64 sum of the same children as below.
                tree[node] = tree[2 * node] + tree[2 * node + 1]
                node >>= 1
            return
        # Last write wins: the first occurrence in the reversed array is the
        # last occurrence in the original one.
        unique_idx, first_in_reversed = np.unique(idx[::-1], return_index=True)
        unique_vals = vals[::-1][first_in_reversed]
        nodes = unique_idx + self._num_padded
        tree[nodes] = unique_vals
        for _ in range(self._depth):
            # Sorted and unique stays sorted under >> 1, so duplicates are
            # neighbours: drop them without sorting again.
            nodes = nodes >> 1
            if nodes.size > 1:
                nodes = nodes[np.concatenate(([True], nodes[1:] != nodes[:-1]))]
            # Recomputed from the children, never adjusted by a delta; see the
            # module docstring for why this matters.
            tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]

    def _rebuild(self) -> None:
        """Recomputes every internal node from the leaves, level by level."""
        tree = self._nodes
        for level in range(self._depth - 1, -1, -1):
            nodes = np.arange(1 << level, 2 << level)
            tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]

    @classmethod
    def from_leaves(cls, leaves: np.ndarray) -> "SumTree":
        """Builds a tree whose leaves are ``leaves``.

        The result is bit-identical (``np.array_equal`` on ``nodes``) to any
        tree that has reached the same leaves through ``update`` calls.

        Args:
          leaves: ``<float>[capacity]`` leaf values, finite and ``>= 0``,
            ``capacity >= 1``.

        Returns:
          The new tree.

        Raises:
          ValueError: on an empty array or a NaN / infinite / negative value.
        """
        arr = np.asarray(leaves)
        if arr.ndim != 1:
            raise ValueError(f"leaves must be 1-D; got shape {arr.shape}")
        vals = _as_leaf_values(arr, "leaves")
        if vals.size == 0:
            raise ValueError("leaves must not be empty")
        tree = cls(vals.size)
        tree._nodes[tree._num_padded:tree._num_padded + vals.size] = vals
        tree._rebuild()
        return tree

    # ---------------------------------------------------------------- sampling
    def find(self, targets: np.ndarray) -> np.ndarray:
        """Vectorised prefix-sum descent.

        For each target ``u`` returns the leaf ``i`` with
        ``prefix(i) <= u < prefix(i + 1)``, computed by walking down from the
        root: go left if ``u < left``, else subtract ``left`` and go right.
        The walk never enters a zero-mass subtree, so a zero-valued leaf is
        never returned; in particular ``u >= total`` (which float round-off in
        ``rng.random() * total`` or in the subtractions can produce) yields
        the last positive leaf instead of padding.

        Args:
          targets: ``<float>[N]`` values in ``[0, total)``; values ``>= total``
            are allowed and clamp to the last positive leaf.

        Returns:
          ``<int64>[N]`` leaf indices, each with a positive value.

        Raises:
          ValueError: if the tree total is 0, or a target is NaN or negative.
        """
        if not self._nodes[1] > 0.0:
            raise ValueError("cannot search a sum-tree whose total is 0")
        u = np.array(targets, dtype=np.float64).reshape(-1)
        if np.isnan(u).any():
            raise ValueError("targets must not be NaN")
        if (u < 0.0).any():
            raise ValueError(f"targets must be >= 0; got min {u.min()!r}")
        tree = self._nodes
        node = np.ones(u.shape, dtype=np.int64)
        for _ in range(self._depth):
            left_child = 2 * node
            left = tree[left_child]
            right = tree[left_child + 1]
            # Enter a child only if it has mass: a positive parent always has
            # at least one positive child, so this keeps every step positive.
            go_left = (left > 0.0) & ((u < left) | ~(right > 0.0))
            u = np.where(go_left, u, u - left)
            node = np.where(go_left, left_child, left_child + 1)
        return node - self._num_padded

    def sample(self, k: int,
               rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """Draws ``k`` iid leaves with ``P(i) = p_i / total``.

        Uses exactly ``rng.random(k)`` (one uniform per draw), so the draws
        are a deterministic function of the rng state and the leaves.

        Args:
          k: number of draws, ``>= 0``.
          rng: numpy random generator.

        Returns:
          ``(indices <int64>[k], probabilities <float64>[k])`` where
          ``probabilities = p[indices] / total``.

        Raises:
          ValueError: if ``total == 0`` or ``k < 0``.
        """
        if k < 0:
            raise ValueError(f"k must be >= 0; got {k}")
        total = float(self._nodes[1])
        if not total > 0.0:
            raise ValueError("cannot sample from a sum-tree whose total is 0")
        indices = self.find(rng.random(k) * total)
        probabilities = self._nodes[self._num_padded + indices] / total
        return indices.astype(np.int64, copy=False), probabilities

    def __repr__(self) -> str:
        return f"SumTree(capacity={self.capacity}, total={self.total!r})"

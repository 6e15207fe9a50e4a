"""Regression tests for the bugs found while making the embedded default learn.

Each test names the bug it guards against.
"""
from __future__ import annotations

import pytest

from r2d2_hpc.job.runner import torch_threads


@pytest.mark.parametrize("role, cores, ranks, expected", [
    # 4 ranks on a 2-core laptop: the learner must not run 2 threads (torch's
    # default); docs/decisions.md, "Torch threads per rank".
    ("learner", 2, 4, 1),
    ("replay", 2, 4, 1),
    ("actor", 2, 4, 1),
    # A big node: the learner gets its share, actors always 1.
    ("learner", 64, 4, 16),
    ("actor", 64, 4, 1),
    ("learner", 8, 3, 2),
    # Degenerate inputs never give 0 threads.
    ("learner", 1, 1, 1),
    ("learner", 0, 0, 1),
])
def test_torch_threads_is_the_fair_share_of_the_node(role, cores, ranks, expected):
    assert torch_threads(role, cores, ranks) == expected

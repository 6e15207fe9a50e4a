"""Ape-X exploration: the per-env epsilons and the buckets their returns are logged in."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.agent.exploration import apex_epsilon, env_epsilons, epsilon_buckets


@pytest.mark.parametrize("num_envs, buckets, expected", [
    # env j (0 = greediest) -> floor(buckets * j / N)
    (6, 3, [0, 0, 1, 1, 2, 2]),
    (3, 3, [0, 1, 2]),
    (4, 2, [0, 0, 1, 1]),
    (5, 3, [0, 0, 1, 1, 2]),
    (1, 3, [0]),
])
def test_epsilon_buckets_table(num_envs, buckets, expected):
    all_eps = np.asarray(apex_epsilon(np.arange(num_envs), num_envs))  # decreasing
    greedy_first = np.sort(all_eps)
    got = epsilon_buckets(greedy_first, all_eps, buckets)
    np.testing.assert_array_equal(got, expected)
    # order of the episodes does not matter
    perm = np.random.default_rng(0).permutation(num_envs)
    np.testing.assert_array_equal(epsilon_buckets(greedy_first[perm], all_eps, buckets),
                                  np.asarray(expected)[perm])


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 64), st.integers(1, 5), st.integers(0, 2**31))
def test_epsilon_buckets_property(num_envs, buckets, seed):
    all_eps = np.asarray(apex_epsilon(np.arange(num_envs), num_envs), np.float64)
    rng = np.random.default_rng(seed)
    env = rng.integers(0, num_envs, size=20)
    got = epsilon_buckets(all_eps[env], all_eps, buckets)
    # actor env index i has the (N-1-i)-th smallest epsilon
    np.testing.assert_array_equal(got, (num_envs - 1 - env) * buckets // num_envs)
    # greedier envs never land in a more exploring bucket
    order = np.argsort(all_eps[env], kind="stable")
    assert (np.diff(got[order]) >= 0).all()


@pytest.mark.parametrize("num_actors, num_envs", [(1, 1), (2, 4), (3, 5)])
def test_env_epsilons_are_apex_epsilons_over_the_global_env_index(num_actors, num_envs):
    total = num_actors * num_envs
    every = env_epsilons(total)
    for a in range(num_actors):
        mine = every[a * num_envs:(a + 1) * num_envs]
        np.testing.assert_array_equal(
            mine, apex_epsilon(a * num_envs + np.arange(num_envs), total))
    assert every[0] == 0.4 and (total == 1 or every[-1] == pytest.approx(0.4 ** 8))

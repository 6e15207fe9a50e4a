"""Tests for r2d2_hpc.seeding: the one seed derivation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from r2d2_hpc.seeding import ROLE_CODES, SEED_LIMIT, derive_seed


def test_same_arguments_same_seed() -> None:
    assert derive_seed(3, "actor", 5) == derive_seed(3, "actor", 5)
    assert derive_seed(3, "evaluation", 0, 7) == derive_seed(3, "evaluation", 0, 7)


def test_roles_indices_and_base_seeds_give_distinct_seeds() -> None:
    # the old formulas collided by arithmetic (seed * a + b * index); these are all different
    keys = list(itertools.product(range(4), ROLE_CODES, range(8)))
    seeds = [derive_seed(base, role, index) for base, role, index in keys]
    assert len(set(seeds)) == len(keys)
    assert derive_seed(0, "actor", 1) != derive_seed(0, "actor", 1, 0)


def test_the_seed_is_seed_sequences_spawn_key_word() -> None:
    word = np.random.SeedSequence(42, spawn_key=(ROLE_CODES["replay"], 3)).generate_state(
        1, np.uint32)[0]
    assert derive_seed(42, "replay", 3) == int(word) % SEED_LIMIT


def test_seeds_fit_numpy_torch_and_ale() -> None:
    seeds = [derive_seed(2**40, role, i) for role in ROLE_CODES for i in range(50)]
    assert all(0 <= s < 2**31 for s in seeds)  # ALE's random_seed is an int32
    for s in seeds[:5]:
        np.random.default_rng(s)
        np.random.RandomState(s)  # the legacy seeding takes 32-bit seeds only
        torch.Generator().manual_seed(s)


@pytest.mark.parametrize("args", [(0, "critic", 0), (-1, "actor", 0), (0, "actor", -2),
                                  (0, "actor", 0, -1)])
def test_unknown_roles_and_negative_parts_are_refused(args) -> None:
    with pytest.raises(ValueError):
        derive_seed(*args)

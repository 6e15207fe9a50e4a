"""Demonstration episodes for tests: masked-CartPole-shaped random play (R2D3)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from r2d2_hpc.replay.demos import DemoEpisodes


def random_demos(episodes: Sequence[int] = (50, 70), env: str = "cartpole_masked",
                 frame_shape: Sequence[int] = (2,), num_actions: int = 2,
                 action: Optional[np.ndarray] = None, reward: Optional[np.ndarray] = None,
                 seed: int = 0) -> DemoEpisodes:
    """Episodes of the given lengths, each ending in a terminal step; built unchecked, so a
    test can write bad values to a file (``action``, ``reward`` replace the random ones)."""
    rng = np.random.default_rng(seed)
    n = int(sum(episodes))
    first = np.zeros(n, bool)
    first[np.cumsum((0,) + tuple(episodes))[:-1]] = True
    discount = np.ones(n, np.float32)
    discount[np.cumsum(episodes) - 1] = 0.0
    return DemoEpisodes(env, 1, num_actions,
                        rng.normal(size=(n,) + tuple(frame_shape)).astype(np.float32),
                        (rng.integers(0, 2, n) if action is None else action).astype(np.int32),
                        np.ones(n, np.float32) if reward is None else reward, discount, first)

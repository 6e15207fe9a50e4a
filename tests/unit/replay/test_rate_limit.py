"""The sample/insert ratio (RateLimiter): hand-written table of when a shard inserts and samples."""
from __future__ import annotations

import pytest

from r2d2_hpc.replay.rate_limit import RateLimiter


@pytest.mark.parametrize("ratio, min_fill, slack, count, inserted, sampled, may_insert", [
    (0.0, 10, 0.0, 50, 1000, 0, True),        # r = 0: never limited
    (2.0, 10, 4.0, 9, 100, 0, True),          # below the minimum fill: insert freely
    (2.0, 10, 4.0, 10, 2, 0, True),           # 2 * 2 = 4 <= 0 + 4
    (2.0, 10, 4.0, 10, 3, 0, False),          # 2 * 3 = 6 > 0 + 4: the actors wait
    (2.0, 10, 4.0, 10, 3, 2, True),           # 6 <= 2 + 4
    (0.5, 0, 0.0, 1, 10, 5, True),            # min_fill 0 counts as 1
    (0.5, 0, 0.0, 0, 10, 0, True),            # empty: insert
])
def test_may_insert_table(ratio, min_fill, slack, count, inserted, sampled, may_insert):
    limiter = RateLimiter(ratio, min_fill, slack)
    assert limiter.may_insert(count, inserted, sampled) is may_insert


@pytest.mark.parametrize("ratio, slack, k, inserted, sampled, may_sample", [
    (0.0, 0.0, 64, 0, 10_000, True),          # r = 0: never limited
    (2.0, 4.0, 4, 10, 20, True),              # 20 + 4 = 24 <= 2 * 10 + 4
    (2.0, 4.0, 5, 10, 20, False),             # 25 > 24: the learner waits
    (0.25, 16.0, 16, 64, 16, True),           # 32 <= 16 + 16
    (0.25, 16.0, 16, 64, 17, False),
])
def test_may_sample_table(ratio, slack, k, inserted, sampled, may_sample):
    assert RateLimiter(ratio, 10, slack).may_sample(k, inserted, sampled) is may_sample


@pytest.mark.parametrize("min_fill, count, filled", [(10, 9, False), (10, 10, True),
                                                     (0, 0, False), (0, 1, True)])
def test_filled(min_fill, count, filled):
    assert RateLimiter(1.0, min_fill, 0.0).filled(count) is filled

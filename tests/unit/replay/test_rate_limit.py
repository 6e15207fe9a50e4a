"""The sample/insert ratio (RateLimiter): hand-written table of when a shard inserts and samples."""
from __future__ import annotations

import pytest

from r2d2_hpc.replay.rate_limit import RateLimiter, SampleDecision


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


@pytest.mark.parametrize("ratio, min_fill, slack, k, count, mass, inserted, sampled, decision", [
    (2.0, 10, 4.0, 4, 9, 5.0, 100, 0, SampleDecision.WAIT_FILL),   # below the minimum fill
    (2.0, 10, 4.0, 4, 10, 0.0, 100, 0, SampleDecision.WAIT_FILL),  # filled, but no mass
    (0.0, 10, 0.0, 4, 9, 5.0, 0, 10**6, SampleDecision.WAIT_FILL),  # r = 0 still needs fill
    (2.0, 10, 4.0, 4, 10, 5.0, 10, 20, SampleDecision.SAMPLE),     # 24 <= 2 * 10 + 4
    (2.0, 10, 4.0, 5, 10, 5.0, 10, 20, SampleDecision.WAIT_RATE),  # 25 > 24: too far behind
    (0.0, 10, 0.0, 64, 10, 5.0, 0, 10**6, SampleDecision.SAMPLE),  # r = 0: never limited
])
def test_sample_decision_table(ratio, min_fill, slack, k, count, mass, inserted, sampled,
                               decision):
    limiter = RateLimiter(ratio, min_fill, slack)
    assert limiter.sample_decision(k, count, mass, inserted, sampled) is decision


def test_both_directions_with_one_limiter():
    """r = 1, slack 2: actors that run ahead are held back, then the learner is."""
    limiter = RateLimiter(1.0, 4, 2.0)
    # the actors inserted 10, the learner sampled 5: inserting waits (10 > 5 + 2)
    assert not limiter.may_insert(count=10, inserted=10, sampled=5)
    assert limiter.sample_decision(4, 10, 1.0, inserted=10, sampled=5) is SampleDecision.SAMPLE
    # the learner caught up and ran ahead: inserting goes on, sampling waits
    assert limiter.may_insert(count=10, inserted=10, sampled=9)
    assert limiter.sample_decision(4, 10, 1.0, inserted=10, sampled=9) \
        is SampleDecision.WAIT_RATE

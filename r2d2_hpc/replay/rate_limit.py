"""The sample/insert ratio of a replay shard (Reverb's SampleToInsertRatio).

With ``replay.samples_per_insert = r > 0`` and ``slack`` = one batch per
request a learner keeps in flight:

* sampling ``k`` sequences waits while ``sampled + k > r * inserted + slack``
  (a learner cannot over-sample a slow actor fleet);
* once the minimum fill is reached, inserting waits while
  ``r * inserted > sampled + slack`` (actors cannot run away from a slow
  learner: the shard stops taking chunks, their bounded send pools fill, and
  they wait, giving the CPU to the learner).

Nothing is limited below the minimum fill, and ``r = 0`` turns the limit off.
A shard serves a request only once it holds the minimum fill and some
priority mass, and then only within the ratio (:meth:`RateLimiter.sample_decision`).
"""
from __future__ import annotations

import enum
from typing import NamedTuple

__all__ = ["RateLimiter", "SampleDecision"]


class SampleDecision(enum.Enum):
    """Whether a shard serves the sample request at the head of its queue now."""

    SAMPLE = "sample"
    """Serve it."""
    WAIT_FILL = "wait_fill"
    """Below the minimum fill, or no priority mass to sample by: wait for the actors."""
    WAIT_RATE = "wait_rate"
    """The learner would run ahead of the samples_per_insert ratio: wait for inserts."""


class RateLimiter(NamedTuple):
    """When a shard may take in chunks and serve samples.

    Attributes:
      samples_per_insert: ``r``; 0 = no limit.
      min_fill: sequences the shard must hold before it serves samples.
      slack: sequences either side may run ahead (one batch per request in flight).
    """

    samples_per_insert: float
    min_fill: int
    slack: float

    def filled(self, count: int) -> bool:
        """True once the shard holds at least ``max(1, min_fill)`` sequences."""
        return count >= max(1, self.min_fill)

    def may_insert(self, count: int, inserted: int, sampled: int) -> bool:
        """False while inserting would run ahead of the ratio.

        Args:
          count: sequences the shard holds.
          inserted: sequences inserted so far.
          sampled: sequences sampled so far.
        """
        r = self.samples_per_insert
        if r <= 0 or not self.filled(count):
            return True
        return r * inserted <= sampled + self.slack

    def may_sample(self, k: int, inserted: int, sampled: int) -> bool:
        """False while sampling ``k`` more would run ahead of the ratio (fill not checked)."""
        r = self.samples_per_insert
        return r <= 0 or sampled + k <= r * inserted + self.slack

    def sample_decision(self, k: int, count: int, total_priority: float, inserted: int,
                        sampled: int) -> SampleDecision:
        """Whether a shard serves a request for ``k`` sequences now.

        Args:
          k: sequences requested.
          count: sequences the shard holds.
          total_priority: the shard's priority mass.
          inserted: sequences inserted so far.
          sampled: sequences sampled so far.
        """
        if not self.filled(count) or not total_priority > 0:
            return SampleDecision.WAIT_FILL
        if not self.may_sample(k, inserted, sampled):
            return SampleDecision.WAIT_RATE
        return SampleDecision.SAMPLE

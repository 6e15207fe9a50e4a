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
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["RateLimiter"]


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

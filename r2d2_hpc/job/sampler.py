"""A learner's prioritized sampling over every replay shard, and its priorities sent back.

:class:`ShardedSampler` is the learner rank's message-facing part of sampling;
the math stays pure in :mod:`r2d2_hpc.replay.sampling` and the one host copy
in :class:`~r2d2_hpc.replay.assembly.BatchAssembler`. Per learner tick::

    receive()   SHARD_STATS  -> stats[s] (mass, count, max priority), counters[s]
                SAMPLE_REPLY -> its rows of the request's batch buffer, and the
                                shard's stats at sampling time
    fill()      while fewer than ``samples_in_flight`` requests are out and
                some shard has mass: n ~ allocate_batch(stats, B), one
                SAMPLE_REQUEST of n_s sequences to each shard with n_s > 0
    ready()     the oldest request, once all of its shares arrived:
                P(i) = global_probabilities(local p_i, shard of i, stats)
                w_i  = (N * P(i)) ** -beta / max_k w_k      N = global_count(stats)

With demonstrations (R2D3, ``replay.demo_ratio`` = rho > 0) each shard also
reports its demo table's stats, and a request is split first:
``n_demo ~ Binomial(B, rho)``, the agent part allocated over the agent tables'
masses and the demo part over the demo tables' (``sampling.allocate_split``);
a shard answers with its agent rows, then its demo rows. Probabilities and IS
weights are computed within each table (its own ``P``, ``N`` and max), as
R2D3 keeps two separate prioritized replays, so a demo item's weight does not
depend on the agent replay's size.

where ``stats`` are the replying shards' stats at sampling time and the latest
reported ones of the others. Requests complete in the order they were made,
so a batch does not depend on message timing.

After the step, :func:`send_priorities` returns each sampled key's new
priority to the shard the key names (``replay.layout.keys_by_shard``): one
PRIORITY_UPDATE per owner shard, never by the key's position in the batch.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, NamedTuple, Optional, Sequence

import numpy as np

from r2d2_hpc.agent.losses import importance_weights
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.messages import NO_TABLE, demo_stats_of, sequence_batch_of, shard_stats_of
from r2d2_hpc.replay.assembly import Allocator, BatchAssembler
from r2d2_hpc.replay.layout import keys_by_shard
from r2d2_hpc.replay.sampling import (ShardStats, allocate_split, global_count,
                                      global_probabilities)
from r2d2_hpc.types import SequenceBatch

__all__ = ["ReadyBatch", "ShardCounters", "ShardedSampler", "send_priorities"]

#: Seconds a SAMPLE_REQUEST or PRIORITY_UPDATE send may wait for the shard.
SEND_TIMEOUT_S = 60.0


class ShardCounters(NamedTuple):
    """A shard's running counters, as its latest SHARD_STATS gives them."""

    inserted_sequences: int
    sampled_sequences: int
    observations_stored: int


class ReadyBatch(NamedTuple):
    """A sampled batch and its importance weights.

    Attributes:
      batch: ``SequenceBatch`` ``[T, B, ...]``, views of the assembler's buffer,
        valid until the next batch is taken.
      weights: ``<float32>[B]`` ``(N P(i))^-beta / max_k (N P(k))^-beta``, within
        each table (agent, demo).
      is_demo: ``<bool>[B]`` rows drawn from the demonstration tables.
    """

    batch: SequenceBatch
    weights: np.ndarray
    is_demo: np.ndarray


class _Share(NamedTuple):
    """One shard's reply to a request: its tables' stats at sampling time and its rows."""

    stats: ShardStats
    demo_stats: ShardStats
    num_sequences: int
    num_demo: int


def send_priorities(ep: Endpoint, shard_ranks: Sequence[int], keys: np.ndarray,
                    priorities: np.ndarray) -> List[int]:
    """Sends each key's priority to the shard the key names: one PRIORITY_UPDATE per shard.

    Args:
      ep: the learner's endpoint.
      shard_ranks: rank of shard ``s`` at position ``s``.
      keys: ``<int64>[B]`` sampled keys (each names its shard).
      priorities: ``<float>[B]`` their new priorities.

    Returns:
      Keys sent to each shard, ``[S]``.

    Raises:
      RuntimeError: if a key names a shard the job does not have.
    """
    sent = [0] * len(shard_ranks)
    for s, mine in keys_by_shard(keys).items():
        if s >= len(shard_ranks):
            raise RuntimeError(f"a sampled key names shard {s} but the job has "
                               f"{len(shard_ranks)}")
        ep.send("PRIORITY_UPDATE", shard_ranks[s], timeout=SEND_TIMEOUT_S,
                keys=keys[mine], priorities=priorities[mine])
        sent[s] += int(mine.size)
    return sent


class ShardedSampler:
    """Keeps batch requests in flight over the shards and hands out ready batches.

    See the module docstring. Attributes:
      stats: each shard's latest :class:`ShardStats` (by shard index).
      counters: each shard's latest :class:`ShardCounters` (zeros until it reports).
      priority_keys_sent: priority keys sent to each shard.
    """

    def __init__(self, ep: Endpoint, shard_ranks: Sequence[int], batch_size: int,
                 samples_in_flight: int, importance_sampling_exponent: float,
                 rng: np.random.Generator, allocate: Allocator = np.empty,
                 name: str = "learner", demo_ratio: float = 0.0) -> None:
        """Args:
          ep: the learner's endpoint.
          shard_ranks: rank of shard ``s`` at position ``s``.
          batch_size: ``B``.
          samples_in_flight: requests kept in flight (``learner.samples_in_flight``).
          importance_sampling_exponent: ``beta`` (R2D2 table 2: 0.6).
          rng: draws the allocation of each batch over the shards.
          allocate: makes the batch buffers (``Learner.host_array``: pinned on CUDA).
          name: who samples, in error messages.
          demo_ratio: R2D3's rho (``replay.demo_ratio``); 0: no demonstrations.
        """
        self.ep = ep
        self.shard_ranks = list(shard_ranks)
        self.batch_size = int(batch_size)
        self.samples_in_flight = int(samples_in_flight)
        self.beta = float(importance_sampling_exponent)
        self.rng = rng
        self.name = name
        self.demo_ratio = float(demo_ratio)
        self.stats: List[ShardStats] = [NO_TABLE for _ in self.shard_ranks]
        self.demo_stats: List[ShardStats] = [NO_TABLE for _ in self.shard_ranks]
        #: Rows handed out in ready batches, and how many of them were demo items.
        self.rows_sampled = 0
        self.demo_rows_sampled = 0
        self.counters: List[ShardCounters] = [ShardCounters(0, 0, 0) for _ in self.shard_ranks]
        self.priority_keys_sent = [0] * len(self.shard_ranks)
        #: The batch's one host copy: replies go straight into reused buffers.
        self.assembler = BatchAssembler(batch_size, allocate)
        #: request id -> shard rank -> its reply (None until it arrives), oldest first
        self.requests: "OrderedDict[int, Dict[int, Optional[_Share]]]" = OrderedDict()
        self._next_request = 0

    def _shard(self, rank: int) -> int:
        return self.shard_ranks.index(rank)

    def receive(self) -> None:
        """Takes in what arrived: SHARD_STATS, then SAMPLE_REPLYs (into their rows)."""
        for msg in self.ep.poll("SHARD_STATS"):
            s = self._shard(msg.source)
            f = msg.fields
            self.stats[s] = shard_stats_of(f)
            self.demo_stats[s] = demo_stats_of(f)
            self.counters[s] = ShardCounters(int(f["inserted_sequences"]),
                                             int(f["sampled_sequences"]),
                                             int(f["observations_stored"]))
        self.ep.release("SHARD_STATS")
        for msg in self.ep.poll("SAMPLE_REPLY"):
            rid = int(msg.fields["request_id"])
            shares = self.requests.get(rid)
            if shares is None or msg.source not in shares:
                raise RuntimeError(f"{self.name}: unexpected SAMPLE_REPLY "
                                   f"{rid} from rank {msg.source}")
            self.assembler.add(rid, msg.source, sequence_batch_of(msg.fields))
            shares[msg.source] = _Share(shard_stats_of(msg.fields), demo_stats_of(msg.fields),
                                        int(msg.fields["num_sequences"]),
                                        int(msg.fields["num_demo"]))
        self.ep.release("SAMPLE_REPLY")

    def fill(self) -> int:
        """Requests batches until ``samples_in_flight`` are out or no shard has mass.

        Returns:
          Requests made.
        """
        made = 0
        while len(self.requests) < self.samples_in_flight and self._can_sample():
            self._request()
            made += 1
        return made

    def _can_sample(self) -> bool:
        """Some agent table has mass, and some demo table too when demos are drawn
        (else the split would not be exact)."""
        return (any(s.total_priority > 0 for s in self.stats)
                and (self.demo_ratio == 0 or any(s.total_priority > 0 for s in self.demo_stats)))

    def _request(self) -> None:
        agent, demo = allocate_split(self.stats, self.demo_stats, self.batch_size,
                                     self.demo_ratio, self.rng)
        rid = self._next_request
        self._next_request += 1
        plan = [(self.shard_ranks[s], int(a + d), int(d))
                for s, (a, d) in enumerate(zip(agent, demo)) if a + d > 0]
        self.assembler.expect(rid, [(rank, k) for rank, k, _ in plan])  # rows, in this order
        shares: Dict[int, Optional[_Share]] = {}
        for rank, k, d in plan:
            shares[rank] = None
            self.ep.send("SAMPLE_REQUEST", rank, timeout=SEND_TIMEOUT_S, request_id=rid,
                         num_sequences=k, num_demo=d)
        self.requests[rid] = shares

    def ready(self) -> Optional[ReadyBatch]:
        """The oldest request's batch and weights once every share arrived, else None."""
        if not self.requests:
            return None
        rid, shares = next(iter(self.requests.items()))
        if any(v is None for v in shares.values()):
            return None
        del self.requests[rid]
        batch = self.assembler.take(rid)
        # Each reply carries its shard's stats at sampling time; the other
        # shards' masses are the latest reported.
        stats, demo_stats = list(self.stats), list(self.demo_stats)
        shard_ids: List[int] = []
        is_demo: List[bool] = []
        for rank, share in shares.items():
            assert share is not None
            s = self._shard(rank)
            stats[s], demo_stats[s] = share.stats, share.demo_stats
            shard_ids += [s] * share.num_sequences
            is_demo += [False] * (share.num_sequences - share.num_demo) + [True] * share.num_demo
        ids, demo = np.asarray(shard_ids, np.int64), np.asarray(is_demo, bool)
        weights = np.empty(ids.size, np.float32)
        for rows, table in ((~demo, stats), (demo, demo_stats)):
            if rows.any():
                probs = global_probabilities(batch.probs[rows], ids[rows], table)
                weights[rows] = importance_weights(probs, max(1, global_count(table)),
                                                   self.beta)
        self.rows_sampled += int(ids.size)
        self.demo_rows_sampled += int(demo.sum())
        return ReadyBatch(batch, weights, demo)

    def send_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        """:func:`send_priorities`, counted in ``priority_keys_sent``."""
        try:
            sent = send_priorities(self.ep, self.shard_ranks, keys, priorities)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name}: {exc}") from None
        self.priority_keys_sent = [a + b for a, b in zip(self.priority_keys_sent, sent)]

"""The sharded batch sampler on the in-memory transport: requests, assembly, IS weights by
hand, and priorities routed to the shard each key names."""
from __future__ import annotations

from typing import List, Tuple

import numpy as np
import pytest

from r2d2_hpc.comm.memory_endpoint import InMemoryEndpoint, InMemoryHub
from r2d2_hpc.comm.messages import declare_messages, sample_reply_arrays
from r2d2_hpc.job.sampler import ShardCounters, ShardedSampler, send_priorities
from r2d2_hpc.replay.demo_table import concat_batches
from r2d2_hpc.replay.layout import demo_table_index, make_keys, split_keys
from r2d2_hpc.replay.sampling import ShardStats
from r2d2_hpc.types import SequenceBatch
from tests.helpers.fakes import NUM_ACTIONS, OBS_SHAPE, random_sequence_batch, select_columns, \
    tiny_config

LEARNER, SHARD_RANKS = 0, (1, 2)


class FixedAllocation:
    """An rng whose one multinomial draw is fixed; it records the probabilities it got."""

    def __init__(self, counts: List[int]) -> None:
        self.counts = counts
        self.pvals: List[np.ndarray] = []

    def multinomial(self, n: int, pvals: np.ndarray) -> np.ndarray:
        assert n == sum(self.counts)
        self.pvals.append(np.asarray(pvals))
        return np.asarray(self.counts)


def _setup(counts: List[int], in_flight: int = 1, beta: float = 0.5
           ) -> Tuple[ShardedSampler, List[InMemoryEndpoint], FixedAllocation]:
    cfg = tiny_config()  # B = 5, T = 9, obs (5,), H = 8
    messages = declare_messages(cfg, OBS_SHAPE, np.float32, cfg.network.lstm_size,
                                num_params=4, num_actions=NUM_ACTIONS)
    hub = InMemoryHub(messages, 3)
    rng = FixedAllocation(counts)
    sampler = ShardedSampler(hub.endpoint(LEARNER), SHARD_RANKS, cfg.learner.batch_size,
                             in_flight, beta, rng)  # type: ignore[arg-type]
    return sampler, [hub.endpoint(r) for r in SHARD_RANKS], rng


def _share(shard: int, local_probs: List[float], seed: int) -> SequenceBatch:
    """A shard's reply: random sequences, keys naming ``shard``, the given local probs."""
    k = len(local_probs)
    batch = select_columns(random_sequence_batch(tiny_config(), seed=seed), np.arange(k))
    keys = make_keys(shard, np.arange(10, 10 + k), np.zeros(k, np.int64))
    return batch._replace(keys=keys, probs=np.asarray(local_probs, np.float64))


def _stats(ep: InMemoryEndpoint, mass: float, count: int, max_p: float,
           inserted: int = 0, sampled: int = 0, observations: int = 0) -> None:
    ep.send("SHARD_STATS", LEARNER, total_priority=mass, count=count, max_priority=max_p,
            inserted_sequences=inserted, sampled_sequences=sampled,
            observations_stored=observations, demo_total_priority=0.0, demo_count=0,
            demo_max_priority=0.0)


def test_no_request_before_any_shard_has_mass():
    sampler, shards, _ = _setup([3, 2])
    assert sampler.fill() == 0 and sampler.ready() is None
    assert all(ep.poll("SAMPLE_REQUEST") == [] for ep in shards)


def test_shard_stats_and_counters_are_kept_per_shard():
    sampler, shards, _ = _setup([3, 2])
    _stats(shards[1], 1.0, 6, 0.5, inserted=7, sampled=3, observations=40)
    sampler.receive()
    assert sampler.stats == [ShardStats(0.0, 0, 0.0), ShardStats(1.0, 6, 0.5)]
    assert sampler.counters == [ShardCounters(0, 0, 0), ShardCounters(7, 3, 40)]


def test_requests_in_flight_are_allocated_by_mass():
    sampler, shards, rng = _setup([3, 2], in_flight=2)
    _stats(shards[0], 3.0, 4, 1.5)
    _stats(shards[1], 1.0, 6, 0.5)
    sampler.receive()
    assert sampler.fill() == 2 and sampler.fill() == 0  # two in flight, no more
    np.testing.assert_allclose(rng.pvals[0], [0.75, 0.25])  # m_s / M
    for ep, k in zip(shards, (3, 2)):
        got = [(int(m.fields["request_id"]), int(m.fields["num_sequences"]))
               for m in ep.poll("SAMPLE_REQUEST")]
        assert got == [(0, k), (1, k)]


def test_batch_rows_and_importance_weights_by_hand():
    """Two shards reply (the second first) with known local probabilities and their mass
    at sampling time; beta = 0.5.

    shard 0: m = 4 (it grew from 3 since its SHARD_STATS), N_0 = 4, local p = .5 .25 .25
    shard 1: m = 1,                                         N_1 = 6, local p = .5 .1
    M = 5, N = 10; P = local p * m / M = .4 .2 .2 | .1 .02; N P = 4 2 2 | 1 .2
    w = (N P)^-1/2 / max = sqrt(.2 / (N P)) = sqrt(.05) sqrt(.1) sqrt(.1) | sqrt(.2) 1
    """
    sampler, shards, _ = _setup([3, 2])
    _stats(shards[0], 3.0, 4, 1.5)
    _stats(shards[1], 1.0, 6, 0.5)
    sampler.receive()
    sampler.fill()
    a, b = _share(0, [0.5, 0.25, 0.25], seed=1), _share(1, [0.5, 0.1], seed=2)
    shards[1].send("SAMPLE_REPLY", LEARNER, **sample_reply_arrays(0, b, 1.0, 6, 0.5))
    sampler.receive()
    assert sampler.ready() is None  # shard 0's share is missing
    shards[0].send("SAMPLE_REPLY", LEARNER, **sample_reply_arrays(0, a, 4.0, 4, 2.0))
    sampler.receive()
    ready = sampler.ready()
    assert ready is not None and sampler.ready() is None
    # rows in the planned order (shard 0, then shard 1), not the arrival order
    np.testing.assert_array_equal(split_keys(ready.batch.keys).shard, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(ready.batch.obs[:, :3], a.obs)
    np.testing.assert_array_equal(ready.batch.obs[:, 3:], b.obs)
    expected = np.sqrt([0.05, 0.1, 0.1, 0.2, 1.0])
    assert ready.weights.dtype == np.float32
    np.testing.assert_allclose(ready.weights, expected, rtol=1e-6)
    # the reply's stats are used for this batch only: the kept ones are still the reported
    assert sampler.stats[0] == ShardStats(3.0, 4, 1.5)


def test_a_reply_to_no_request_is_an_error():
    sampler, shards, _ = _setup([3, 2])
    shards[0].send("SAMPLE_REPLY", LEARNER,
                   **sample_reply_arrays(7, _share(0, [1.0], seed=3), 1.0, 1, 1.0))
    with pytest.raises(RuntimeError, match="unexpected SAMPLE_REPLY 7 from rank 1"):
        sampler.receive()


def _keys_and_priorities() -> Tuple[np.ndarray, np.ndarray]:
    """Six keys, shards interleaved 1 0 0 1 0 1, and their priorities."""
    owner = np.array([1, 0, 0, 1, 0, 1])
    keys = make_keys(owner, np.arange(6) + 100, np.arange(6))
    return keys, np.arange(6, dtype=np.float64) / 10


def test_each_shard_gets_exactly_the_keys_that_name_it():
    sampler, shards, _ = _setup([3, 2])
    keys, prio = _keys_and_priorities()
    sampler.send_priorities(keys, prio)
    for ep, mine in zip(shards, ([1, 2, 4], [0, 3, 5])):
        (msg,) = ep.poll("PRIORITY_UPDATE")
        np.testing.assert_array_equal(msg.fields["keys"], keys[mine])  # batch order
        np.testing.assert_array_equal(msg.fields["priorities"], prio[mine])
    assert sampler.priority_keys_sent == [3, 3]
    sampler.send_priorities(keys[[0, 3]], prio[[0, 3]])  # shard 1 only: no message to 0
    assert shards[0].poll("PRIORITY_UPDATE") == []
    assert len(shards[1].poll("PRIORITY_UPDATE")) == 1
    assert sampler.priority_keys_sent == [3, 5]


def test_a_key_of_a_shard_the_job_lacks_is_refused():
    sampler, _, _ = _setup([3, 2])
    keys = make_keys(np.array([0, 2]), np.array([1, 2]), np.zeros(2, np.int64))
    with pytest.raises(RuntimeError, match="names shard 2 but the job has 2"):
        send_priorities(sampler.ep, SHARD_RANKS, keys, np.ones(2))


def test_batches_come_out_in_request_order():
    sampler, shards, _ = _setup([5, 0], in_flight=2)  # all from shard 0
    _stats(shards[0], 1.0, 5, 1.0)
    sampler.receive()
    sampler.fill()
    share = _share(0, [0.2] * 5, seed=4)
    shards[0].send("SAMPLE_REPLY", LEARNER, **sample_reply_arrays(1, share, 1.0, 5, 1.0))
    sampler.receive()
    assert sampler.ready() is None  # request 1 is complete, request 0 is not
    shards[0].send("SAMPLE_REPLY", LEARNER, **sample_reply_arrays(0, share, 1.0, 5, 1.0))
    sampler.receive()
    assert sampler.ready() is not None and sampler.ready() is not None
    assert sampler.ready() is None and not sampler.requests


class FixedSplit:
    """An rng whose binomial draw (the demo count) and multinomial draws (agent part,
    then demo part) are fixed."""

    def __init__(self, num_demo: int, agent: List[int], demo: List[int]) -> None:
        self.num_demo, self.draws = num_demo, [agent, demo]
        self.calls: List[Tuple[int, np.ndarray]] = []

    def binomial(self, n: int, p: float) -> int:
        self.calls.append((n, np.asarray(p)))
        return self.num_demo

    def multinomial(self, n: int, pvals: np.ndarray) -> np.ndarray:
        self.calls.append((n, np.asarray(pvals)))
        counts = self.draws.pop(0)
        assert n == sum(counts)
        return np.asarray(counts)


def _stats_with_demo(ep: InMemoryEndpoint, agent: ShardStats, demo: ShardStats) -> None:
    ep.send("SHARD_STATS", LEARNER, total_priority=agent.total_priority, count=agent.count,
            max_priority=agent.max_priority, inserted_sequences=0, sampled_sequences=0,
            observations_stored=0, demo_total_priority=demo.total_priority,
            demo_count=demo.count, demo_max_priority=demo.max_priority)


def test_r2d3_split_rows_and_weights_within_each_table_by_hand():
    """B = 5, rho = .25: the split draws 2 demo rows; agent 3 = (2, 1), demo 2 = (0, 2).

    agent: shard masses 3, 1 (M = 4), N = 10; local p = .5 .5 | .5; P = .375 .375 | .125
           N P = 3.75 3.75 1.25; beta = .5: w = sqrt(1.25 / N P) = sqrt(1/3) sqrt(1/3) 1
    demo:  shard masses 0.5, 2 (M = 2.5), N = 7; shard 1's local p = .25 .75:
           P = .2 .6, N P = 1.4 4.2: w = sqrt(1.4 / N P) = 1, sqrt(1/3)
    Rows: shard 0's 2 agent rows, then shard 1's agent row and its 2 demo rows.
    """
    cfg = tiny_config()
    messages = declare_messages(cfg, OBS_SHAPE, np.float32, cfg.network.lstm_size,
                                num_params=4, num_actions=NUM_ACTIONS)
    hub = InMemoryHub(messages, 3)
    rng = FixedSplit(2, [2, 1], [0, 2])
    sampler = ShardedSampler(hub.endpoint(LEARNER), SHARD_RANKS, 5, 1, 0.5,
                             rng, demo_ratio=0.25)  # type: ignore[arg-type]
    shards = [hub.endpoint(r) for r in SHARD_RANKS]
    _stats_with_demo(shards[0], ShardStats(3.0, 4, 1.0), ShardStats(0.0, 0, 0.0))
    sampler.receive()
    assert sampler.fill() == 0  # no demo table has mass yet: the split could not be exact
    _stats_with_demo(shards[0], ShardStats(3.0, 4, 1.0), ShardStats(0.5, 3, 1.0))
    _stats_with_demo(shards[1], ShardStats(1.0, 6, 1.0), ShardStats(2.0, 4, 1.0))
    sampler.receive()
    assert sampler.fill() == 1
    assert rng.calls[0][0] == 5 and float(rng.calls[0][1]) == 0.25
    np.testing.assert_allclose(rng.calls[1][1], [0.75, 0.25])  # agent masses
    np.testing.assert_allclose(rng.calls[2][1], [0.2, 0.8])    # demo masses
    got = [[(int(m.fields["num_sequences"]), int(m.fields["num_demo"]))
            for m in ep.poll("SAMPLE_REQUEST")] for ep in shards]
    assert got == [[(2, 0)], [(3, 2)]]
    a = _share(0, [0.5, 0.5], seed=1)
    b_agent = _share(1, [0.5], seed=2)
    b_demo = _share(demo_table_index(1), [0.25, 0.75], seed=3)
    b = concat_batches([b_agent, b_demo])
    shards[0].send("SAMPLE_REPLY", LEARNER, **sample_reply_arrays(
        0, a, 3.0, 4, 1.0, 0, ShardStats(0.5, 3, 1.0)))
    shards[1].send("SAMPLE_REPLY", LEARNER, **sample_reply_arrays(
        0, b, 1.0, 6, 1.0, 2, ShardStats(2.0, 4, 1.0)))
    sampler.receive()
    ready = sampler.ready()
    assert ready is not None
    np.testing.assert_array_equal(ready.is_demo, [False, False, False, True, True])
    np.testing.assert_allclose(ready.weights, np.sqrt([1 / 3, 1 / 3, 1, 1, 1 / 3]), rtol=1e-6)
    assert (sampler.rows_sampled, sampler.demo_rows_sampled) == (5, 2)
    # the demo keys' priorities go back to the rank that owns their table
    sampler.send_priorities(ready.batch.keys, np.arange(5.0))
    (msg,) = shards[1].poll("PRIORITY_UPDATE")
    np.testing.assert_array_equal(msg.fields["keys"], ready.batch.keys[2:])
    assert sampler.priority_keys_sent == [2, 3]

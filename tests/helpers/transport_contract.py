"""The Endpoint contract, written once and run on both transports.

Each ``body_*`` function is what one rank does; a harness runs it on every
rank: ``tests/integration/test_mpi_endpoint.py`` under ``mpiexec -n 2`` (or 4) with one
:class:`~r2d2_hpc.comm.mpi_endpoint.MPIEndpoint` per process, and
``tests/unit/comm/test_memory_endpoint.py`` with one thread per virtual rank of an
:class:`~r2d2_hpc.comm.memory_endpoint.InMemoryHub`. Rank 0 plays the learner (publisher,
collector), every other rank an actor. ``barrier()`` is a barrier with a
timeout, so a bug fails instead of hanging.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from r2d2_hpc.comm.endpoint import Endpoint, Received
from r2d2_hpc.comm.messages import Command, Messages, TAGS, declare_messages
from r2d2_hpc.comm.wire import Layout
from r2d2_hpc.config import Config, LearnerConfig, ReplayConfig

#: Every wait in a contract test gives up after this many seconds.
TIMEOUT = 15.0

Barrier = Callable[[], None]
Body = Callable[[Endpoint, int, int, Barrier], None]


def contract_messages(frame=(5, 6), max_chunk_steps: Optional[int] = None,
                      num_params: int = 17) -> Messages:
    """Tiny R2D2 messages: L = 5, P = 2, batch 4, H = 4, 17 params, A = 3."""
    cfg = Config(replay=ReplayConfig(burn_in=2, trace_length=3, sequence_period=2,
                                     capacity_observations=1000, min_fill_sequences=1),
                 learner=LearnerConfig(batch_size=4, n_step=2))
    return declare_messages(cfg, frame, np.uint8, 4, num_params, 3, obs_shape=(2, *frame),
                            max_chunk_steps=max_chunk_steps)


#: STEP_CHUNKs of up to 16 x 256 x 256 bytes (1 MiB): far above any MPI's eager
#: limit, so a send cannot complete before the receiver posts its receive.
def big_messages() -> Messages:
    return contract_messages(frame=(256, 256), max_chunk_steps=16)


def arrays_for(layout: Layout, counts: Dict[str, int], seed: int) -> Dict[str, np.ndarray]:
    """Deterministic pseudo-random values of every field (same on every rank)."""
    return random_arrays(layout, counts, np.random.default_rng(seed))


def random_arrays(layout: Layout, counts: Dict[str, int], rng: np.random.Generator,
                  float_scale: float = 1.0) -> Dict[str, np.ndarray]:
    """Random values of every field: the full range of integer dtypes (negatives
    included), booleans, and normal floats times ``float_scale``."""
    out = {}
    for f in layout.fields:
        shape = f.resolve(counts)
        if f.dtype == np.bool_:
            out[f.name] = rng.random(shape) < 0.5
        elif f.dtype.kind in "iu":
            info = np.iinfo(f.dtype)
            out[f.name] = rng.integers(info.min, info.max, size=shape, dtype=f.dtype,
                                       endpoint=True)
        else:
            out[f.name] = (rng.standard_normal(shape) * float_scale).astype(f.dtype)
    return out


def count_cases(layout: Layout) -> List[Dict[str, int]]:
    """Counts all 0, all at the maximum, and one in between."""
    return [{v.name: 0 for v in layout.vars},
            {v.name: v.maximum for v in layout.vars},
            {v.name: v.maximum // 2 + (i % 2) for i, v in enumerate(layout.vars)}]


def assert_same(fields: Dict[str, np.ndarray], want: Dict[str, np.ndarray], what: str) -> None:
    assert set(fields) == set(want), what
    for k, v in want.items():
        got = fields[k]
        assert got.dtype == np.asarray(v).dtype and got.shape == np.shape(v), f"{what}.{k}"
        np.testing.assert_array_equal(got, v, err_msg=f"{what}.{k}")


def collect(ep: Endpoint, name: str, count: int, check: Callable[[Received], None],
            timeout: float = TIMEOUT) -> None:
    """Receives exactly ``count`` ``name`` messages, checking each while its views live."""
    got = 0
    deadline = time.monotonic() + timeout
    while got < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {got} of {count} {name} messages arrived within {timeout} s"
        for msg in ep.wait(name, min(left, 1.0)):
            check(msg)
            got += 1
    assert got == count, f"{got} {name} messages arrived, expected {count}"
    time.sleep(0.05)
    extra = ep.poll(name)
    assert extra == [], f"{len(extra)} unexpected extra {name} message(s)"


# --------------------------------------------------------------------------- #
# Bodies.

SENT_NAMES = [n for n in TAGS if n != "PARAMS"]


def body_every_message_round_trips(ep: Endpoint, rank: int, size: int, barrier: Barrier) -> None:
    """Rank 0 sends every message type (counts 0, max, middle) to rank 1: identical."""
    cases = [(name, i, c) for name in SENT_NAMES
             for i, c in enumerate(count_cases(ep.messages.get(name)))]
    if rank == 0:
        for name, i, counts in cases:
            ep.send(name, 1, timeout=TIMEOUT,
                    **arrays_for(ep.messages.get(name), counts, seed=TAGS[name] * 10 + i))
        assert ep.flush(TIMEOUT)
    elif rank == 1:
        for name in SENT_NAMES:
            layout = ep.messages.get(name)
            expected = [arrays_for(layout, c, seed=TAGS[name] * 10 + i)
                        for i, c in enumerate(count_cases(layout))]

            def check(msg: Received, expected=expected, name=name) -> None:
                assert msg.source == 0
                assert_same(msg.fields, expected.pop(0), name)

            collect(ep, name, len(expected), check)
    barrier()


def body_backpressure_in_order(ep: Endpoint, rank: int, size: int, barrier: Barrier,
                               count: int = 40) -> None:
    """Every rank > 0 sends ``count`` 1 MiB chunks to rank 0 through a 2-deep pool.

    Rank 0 starts receiving only after 0.3 s, so each sender must wait for room
    (stalls > 0); all arrive, none lost or duplicated, in order per source.
    """
    layout = ep.messages.STEP_CHUNK
    n_max = layout.vars[0].maximum
    frame = next(f for f in layout.fields if f.name == "obs").shape[1:]

    base = arrays_for(layout, {"steps": n_max, "sequences": 1}, 7)

    def chunk(i: int) -> Dict[str, Any]:
        a = dict(base)
        a["stream_id"] = np.int64(rank)
        a["first_step_index"] = np.int64(i)
        a["obs"] = np.full((n_max, *frame), (rank * 31 + i) % 251, np.uint8)
        return a

    if rank == 0:
        time.sleep(0.3)
        nxt = {src: 0 for src in range(1, size)}

        def check(msg: Received) -> None:
            src = msg.source
            i = int(msg.fields["first_step_index"])
            assert int(msg.fields["stream_id"]) == src
            assert i == nxt[src], f"from rank {src}: got message {i}, expected {nxt[src]}"
            assert (msg.fields["obs"] == (src * 31 + i) % 251).all()
            nxt[src] += 1

        collect(ep, "STEP_CHUNK", count * (size - 1), check)
        assert nxt == {src: count for src in range(1, size)}
    else:
        for i in range(count):
            ep.send("STEP_CHUNK", 0, timeout=TIMEOUT, **chunk(i))
        assert ep.flush(TIMEOUT)
        assert ep.stalls("STEP_CHUNK") > 0, "the pool never filled: no backpressure exercised"
    barrier()


def body_params_end_newest(ep: Endpoint, rank: int, size: int, barrier: Barrier,
                           versions: int = 8) -> None:
    """Rank 0 publishes versions 1..8 back to back; every other rank ends with 8.

    Subscribers never block: ``latest_params`` returns None at once before any
    publication, versions only increase, and params views are read-only.
    """
    actors = list(range(1, size))
    P = ep.messages.PARAMS.fields[2].shape[0]
    if rank == 0:
        barrier()  # subscribers first check that nothing is there
        for v in range(1, versions + 1):
            t = time.monotonic()
            sent = ep.publish_params(v, 10 * v, np.full(P, v, np.float32), actors)
            assert 0 <= sent <= len(actors)
            assert time.monotonic() - t < 1.0, "publish_params blocked"
        assert ep.flush(TIMEOUT)
    else:
        t = time.monotonic()
        assert ep.latest_params(0) is None
        assert time.monotonic() - t < 1.0, "latest_params blocked"
        barrier()
        seen: List[int] = []
        deadline = time.monotonic() + TIMEOUT
        while not seen or seen[-1] != versions:
            assert time.monotonic() < deadline, f"newest version never arrived: saw {seen}"
            t = time.monotonic()
            up = ep.latest_params(0)
            assert time.monotonic() - t < 1.0, "latest_params blocked"
            if up is None:
                ep.progress()
                time.sleep(0.001)
                continue
            assert not seen or up.version >= seen[-1], f"version went back: {seen} then {up}"
            assert up.learner_step == 10 * up.version
            assert up.params.dtype == np.float32 and up.params.shape == (P,)
            assert (up.params == up.version).all()
            assert not up.params.flags.writeable
            seen.append(up.version)
        time.sleep(0.05)
        assert ep.latest_params(0) is None, "a version arrived after the newest"
    barrier()


def body_control_and_reports(ep: Endpoint, rank: int, size: int, barrier: Barrier) -> None:
    """CONTROL from rank 0 reaches every rank once; every actor's report reaches rank 0."""
    others = list(range(1, size))
    if rank == 0:
        ep.send_to_all("CONTROL", others, timeout=TIMEOUT, command=Command.CHECKPOINT,
                       argument=7)
        sources: List[int] = []

        def check(msg: Received) -> None:
            sources.append(msg.source)
            assert int(msg.fields["env_steps"]) == 1000 * msg.source
            assert msg.fields["episode_return"].tolist() == [float(msg.source)] * msg.source
            assert msg.fields["action_counts"].tolist() == [msg.source, 0, 1]

        collect(ep, "ACTOR_REPORT", len(others), check)
        assert sorted(sources) == others
    else:
        def check(msg: Received) -> None:
            assert msg.source == 0
            assert Command(int(msg.fields["command"])) is Command.CHECKPOINT
            assert int(msg.fields["argument"]) == 7

        collect(ep, "CONTROL", 1, check)
        e = rank
        ep.send("ACTOR_REPORT", 0, timeout=TIMEOUT, env_steps=1000 * rank, params_version=3,
                episode_return=np.full(e, float(rank)), episode_length=np.arange(e),
                episode_epsilon=np.full(e, 0.4), action_counts=np.array([rank, 0, 1]))
        assert ep.flush(TIMEOUT)
    barrier()


def body_send_copies_and_poll_never_blocks(ep: Endpoint, rank: int, size: int,
                                           barrier: Barrier) -> None:
    """``send`` copies (changing the arrays after it returns changes nothing);
    ``poll`` returns at once and ``wait`` returns [] at its timeout."""
    if rank == 0:
        keys = np.arange(4, dtype=np.int64)
        prios = np.full(4, 0.5)
        ep.send("PRIORITY_UPDATE", 1, timeout=TIMEOUT, keys=keys, priorities=prios)
        keys[:] = -1
        prios[:] = -1.0
        assert ep.flush(TIMEOUT)
    elif rank == 1:
        def check(msg: Received) -> None:
            assert msg.fields["keys"].tolist() == [0, 1, 2, 3]
            assert msg.fields["priorities"].tolist() == [0.5] * 4

        collect(ep, "PRIORITY_UPDATE", 1, check)
    t = time.monotonic()
    assert ep.poll("SHARD_STATS") == []
    assert time.monotonic() - t < 1.0, "poll blocked"
    t = time.monotonic()
    assert ep.wait("SAMPLE_REQUEST", 0.2) == []
    waited = time.monotonic() - t
    assert 0.19 <= waited < 3.0, f"wait(0.2) returned after {waited:.3f} s"
    barrier()


def body_views_live_until_next_poll(ep: Endpoint, rank: int, size: int, barrier: Barrier) -> None:
    """Two SHARD_STATS in a row: the first batch's values hold until the next poll."""
    if rank == 0:
        for c in (5, 6):
            ep.send("SHARD_STATS", 1, timeout=TIMEOUT, total_priority=float(c), count=c,
                    max_priority=1.0, inserted_sequences=c, sampled_sequences=0,
                    observations_stored=10 * c, demo_total_priority=0.0, demo_count=0,
                    demo_max_priority=0.0)
        assert ep.flush(TIMEOUT)
    elif rank == 1:
        seen: List[int] = []

        def check(msg: Received) -> None:
            seen.append(int(msg.fields["count"]))
            assert int(msg.fields["observations_stored"]) == 10 * seen[-1]
            time.sleep(0.01)  # others may arrive meanwhile; these views must not change
            assert int(msg.fields["count"]) == seen[-1]

        collect(ep, "SHARD_STATS", 2, check)
        assert seen == [5, 6]
    barrier()


def body_params_flow_while_actors_only_progress(ep: Endpoint, rank: int, size: int,
                                                barrier: Barrier) -> None:
    """4 MB versions 2 and 3 reach actors that call only ``progress`` (as while they
    shut down): the publisher's flush completes, and ``latest_params`` then returns 3."""
    actors = list(range(1, size))
    P = ep.messages.PARAMS.fields[2].shape[0]
    if rank == 0:
        ep.publish_params(1, 1, np.full(P, 1, np.float32), actors)
        barrier()  # every actor acts with version 1
        for v in (2, 3):
            ep.publish_params(v, v, np.full(P, v, np.float32), actors)
        assert ep.flush(TIMEOUT), "sends to actors that only call progress() never completed"
        ep.send_to_all("CONTROL", actors, timeout=TIMEOUT, command=Command.STOP, argument=0)
    else:
        deadline = time.monotonic() + TIMEOUT
        up = None
        while up is None:
            assert time.monotonic() < deadline, "version 1 never arrived"
            up = ep.latest_params(0)
        assert up.version == 1
        barrier()
        while not ep.poll("CONTROL"):
            assert time.monotonic() < deadline, "rank 0's flush never completed"
            ep.progress()
            time.sleep(0.001)
        assert (up.params == 1).all(), "the view in use changed while newer versions arrived"
        newest = ep.latest_params(0)
        assert newest is not None and newest.version == 3 and (newest.params == 3).all()
    barrier()


def messages_for(body: Body) -> Messages:
    """The layouts a body needs (large ones where a send must not complete eagerly)."""
    if body is body_backpressure_in_order:
        return big_messages()
    if body is body_params_flow_while_actors_only_progress:
        return contract_messages(num_params=1 << 20)
    return contract_messages()


ALL_BODIES: List[Body] = [
    body_params_flow_while_actors_only_progress,
    body_every_message_round_trips,
    body_backpressure_in_order,
    body_params_end_newest,
    body_control_and_reports,
    body_send_copies_and_poll_never_blocks,
    body_views_live_until_next_poll,
]

"""MPI transport: pools, parameter publication, the Endpoint contract, topology split.

Tests marked ``mpi`` run under ``mpiexec -n 2 python -m pytest --with-mpi -m mpi``
(``tests/run_all.sh``) and are also correct at ``-n 4`` (ranks > 1 act as extra
actors/senders). The unmarked tests run in the plain pytest pass on
``MPI.COMM_SELF`` (a rank sending to itself), as mpi4py's own tests do. Every
wait has a timeout; a barrier that times out aborts the job so a bug fails
instead of hanging.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest

from r2d2_hpc.comm.endpoint import Backoff
from r2d2_hpc.comm.messages import Command, declare_messages
from r2d2_hpc.comm.mpi_endpoint import MPIEndpoint
from r2d2_hpc.comm.mpi_pools import ParamPublisher, ParamSubscriber, RecvPool, SendPool
from r2d2_hpc.comm.topology import TopologyError, split_communicators
from r2d2_hpc.comm.wire import Layout, MessageError
from r2d2_hpc.config import Config, TopologyConfig
from tests.helpers.transport_contract import (
    ALL_BODIES,
    SENT_NAMES,
    TIMEOUT,
    arrays_for,
    assert_same,
    big_messages,
    body_backpressure_in_order,
    contract_messages,
    count_cases,
    messages_for,
)

MPI = pytest.importorskip("mpi4py.MPI")


def timed_barrier(comm: Any) -> Callable[[], None]:
    """A barrier that aborts the whole job after TIMEOUT seconds instead of hanging."""

    def barrier() -> None:
        req = comm.Ibarrier()
        backoff = Backoff(TIMEOUT)
        while not req.Test():
            if backoff.expired():
                sys.stderr.write(f"rank {comm.Get_rank()}: barrier timed out after {TIMEOUT} s; "
                                 f"another rank failed or hangs; aborting\n")
                sys.stderr.flush()
                MPI.COMM_WORLD.Abort(1)
            backoff.sleep()

    return barrier


@pytest.fixture
def comm():
    """A private duplicate of the world, freed after the test."""
    c = MPI.COMM_WORLD.Dup()
    yield c
    c.Free()


def paired_big_params(num_params: int = 2_000_000):
    """PARAMS of 8 MB: a rendezvous-size message on every MPI."""
    return declare_messages(Config(), (4,), np.float32, 4, num_params, 3).PARAMS


# --------------------------------------------------------------------------- #
# The shared Endpoint contract.

ENDPOINT_SETUP: Dict[str, Dict[str, Any]] = {
    body_backpressure_in_order.__name__: dict(send_depth=2, recv_depth=3),
}


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("body", ALL_BODIES, ids=lambda b: b.__name__)
def test_endpoint_contract(body, comm):
    kw = ENDPOINT_SETUP.get(body.__name__, {})
    messages = messages_for(body)
    ep = MPIEndpoint(MPI.COMM_WORLD, messages, **kw)
    try:
        body(ep, comm.Get_rank(), comm.Get_size(), timed_barrier(comm))
    finally:
        ep.close()


# --------------------------------------------------------------------------- #
# Pools directly.

@pytest.mark.mpi(min_size=2)
def test_pools_carry_every_message_type_identically(comm):
    messages = contract_messages()
    rank = comm.Get_rank()
    names = SENT_NAMES + ["PARAMS"]
    if rank == 0:
        pools = {n: SendPool(comm, messages.get(n), size=2) for n in names}
        for n in names:
            layout = messages.get(n)
            for i, counts in enumerate(count_cases(layout)):
                buf = pools[n].acquire(timeout=TIMEOUT)
                used = layout.pack(buf, **arrays_for(layout, counts, seed=i))
                assert used == layout.size(**counts)
                pools[n].send(buf, 1, used)
        for p in pools.values():
            assert p.flush(TIMEOUT) and p.close() == 0
    elif rank == 1:
        for n in names:
            layout = messages.get(n)
            cases = count_cases(layout)
            with RecvPool(comm, layout, source=0, depth=2) as pool:
                i = 0  # a poll may return several messages: each checked in order
                deadline = time.monotonic() + TIMEOUT
                while i < len(cases):
                    assert time.monotonic() < deadline, f"{n} #{i} never arrived"
                    for msg in pool.wait(0.5):
                        assert msg.source == 0 and msg.nbytes == layout.size(**cases[i])
                        assert_same(msg.fields, arrays_for(layout, cases[i], seed=i), n)
                        i += 1
    timed_barrier(comm)()


@pytest.mark.mpi(min_size=2)
def test_mixed_sizes_many_sources_arrive_in_order_per_source(comm):
    """Alternating 1 MiB and tiny chunks on one tag: a tiny one matched later may
    complete first; delivery must still follow the send order of each source."""
    layout = big_messages().STEP_CHUNK
    rank, size = comm.Get_rank(), comm.Get_size()
    count = 30
    big = arrays_for(layout, {"steps": layout.vars[0].maximum, "sequences": 0}, 1)
    small = arrays_for(layout, {"steps": 0, "sequences": 0}, 2)
    if rank == 0:
        nxt = {s: 0 for s in range(1, size)}
        with RecvPool(comm, layout, depth=4) as pool:
            deadline = time.monotonic() + TIMEOUT
            while sum(nxt.values()) < count * (size - 1):
                assert time.monotonic() < deadline, f"lost messages: {nxt}"
                for msg in pool.wait(0.5):
                    i = int(msg.fields["first_step_index"])
                    assert i == nxt[msg.source], f"rank {msg.source}: {i} before {nxt[msg.source]}"
                    want_steps = layout.vars[0].maximum if i % 2 == 0 else 0
                    assert msg.fields["obs"].shape[0] == want_steps
                    nxt[msg.source] += 1
            time.sleep(0.05)
            assert pool.poll() == [] and pool.received == count * (size - 1)
    else:
        with SendPool(comm, layout, size=3) as pool:
            for i in range(count):
                a = dict(big if i % 2 == 0 else small, first_step_index=np.int64(i))
                pool.send_message(0, timeout=TIMEOUT, **a)
            assert pool.flush(TIMEOUT)
    timed_barrier(comm)()


@pytest.mark.mpi(min_size=2)
def test_bad_messages_on_the_wire_are_rejected_and_the_pool_recovers(comm):
    messages = contract_messages()
    control = messages.CONTROL
    rank = comm.Get_rank()
    if rank == 0:
        # a message of another type that fits CONTROL's buffer (a SAMPLE_REQUEST is
        # larger now; a larger one would be an MPI truncation, not a type mismatch)
        other = Layout("SAMPLE_REQUEST", messages.SAMPLE_REQUEST.tag, control.fields,
                       version=control.version)
        wrong_type = other.new_buffer()
        other.pack(wrong_type, command=1, argument=2)
        old = Layout("CONTROL", control.tag, control.fields, version=control.version + 1)
        wrong_version = old.new_buffer()
        old.pack(wrong_version, command=1, argument=2)
        good = control.new_buffer()
        control.pack(good, command=Command.STOP, argument=5)
        for buf in (wrong_type, wrong_version, good):
            comm.Send([buf, MPI.BYTE], 1, control.tag)
    elif rank == 1:
        errors: List[str] = []
        got: List[int] = []
        with RecvPool(comm, control, depth=1) as pool:
            deadline = time.monotonic() + TIMEOUT
            while not got:
                assert time.monotonic() < deadline, f"good message never came; errors {errors}"
                try:
                    got += [int(m.fields["argument"]) for m in pool.wait(0.2)]
                except MessageError as exc:
                    errors.append(str(exc))
        assert got == [5]
        assert len(errors) == 2
        assert "from rank 0" in errors[0] and "expected a CONTROL message" in errors[0]
        assert "got SAMPLE_REQUEST" in errors[0]
        assert "layout version is 2, this rank's is 1" in errors[1]
    timed_barrier(comm)()


# --------------------------------------------------------------------------- #
# Parameters.

@pytest.mark.mpi(min_size=2)
def test_publisher_skips_an_actor_still_receiving_then_sends_it_the_newest(comm):
    """Version 1 (8 MB) cannot complete before the actors post a receive, so
    version 2 skips them without blocking; each actor still ends with version 2."""
    layout = paired_big_params()
    P = layout.fields[2].shape[0]
    rank, size = comm.Get_rank(), comm.Get_size()
    barrier = timed_barrier(comm)
    if rank == 0:
        pub = ParamPublisher(comm, layout, range(1, size))
        assert pub.publish(1, 10, np.full(P, 1.0, np.float32)) == size - 1
        t = time.monotonic()
        assert pub.publish(2, 20, np.full(P, 2.0, np.float32)) == 0
        assert time.monotonic() - t < 1.0
        assert pub.skipped == size - 1 and pub.busy
        barrier()  # now the actors subscribe
        assert pub.flush(TIMEOUT)
        assert pub.close() == 0
        barrier()
    else:
        barrier()
        sub = ParamSubscriber(comm, layout, source=0)
        seen = []
        deadline = time.monotonic() + TIMEOUT
        while not seen or seen[-1] != 2:
            assert time.monotonic() < deadline, f"saw {seen}"
            up = sub.latest()
            if up is not None:
                assert up.params[0] == up.version and up.params[-1] == up.version
                assert up.learner_step == 10 * up.version
                seen.append(up.version)
            else:
                time.sleep(0.001)
        assert seen in ([1, 2], [2])
        barrier()
        assert sub.latest() is None
        sub.close()


# --------------------------------------------------------------------------- #
# Topology split.

@pytest.mark.mpi(min_size=2)
def test_split_with_too_few_ranks_raises_on_every_rank(comm):
    size = comm.Get_size()
    with pytest.raises(TopologyError, match=f"at least {size + 2} MPI ranks"):
        split_communicators(comm, TopologyConfig(learners=size, replay_shards=1))
    timed_barrier(comm)()  # nobody is stuck in a collective


@pytest.mark.mpi(min_size=3)
def test_split_gives_learners_their_own_communicator(comm):
    size = comm.Get_size()
    topo = TopologyConfig(learners=size - 2, replay_shards=1)
    comms = split_communicators(comm, topo)
    info = comms.role_info
    if info.role == "learner":
        assert comms.learners.Get_size() == size - 2
        assert comms.learners.Get_rank() == info.index
        assert comms.learners.allreduce(comm.Get_rank()) == sum(range(size - 2))
    else:
        assert comms.learners is None
    assert comms.world is comm
    comms.free()


# --------------------------------------------------------------------------- #
# COMM_SELF: the same pools with a rank sending to itself (plain pytest pass).

def test_self_pools_round_trip_every_message():
    comm = MPI.COMM_SELF
    messages = contract_messages()
    for name in SENT_NAMES + ["PARAMS"]:
        layout = messages.get(name)
        cases = count_cases(layout)
        with RecvPool(comm, layout, source=0, depth=len(cases)) as rpool, \
                SendPool(comm, layout, size=len(cases)) as spool:
            for i, counts in enumerate(cases):
                spool.send_message(0, timeout=TIMEOUT, **arrays_for(layout, counts, seed=i))
            got = []
            deadline = time.monotonic() + TIMEOUT
            while len(got) < len(cases):
                assert time.monotonic() < deadline
                for msg in rpool.wait(0.5):
                    assert_same(msg.fields, arrays_for(layout, cases[len(got)], seed=len(got)),
                                name)
                    got.append(msg.source)
            assert got == [0] * len(cases)
            assert spool.flush(TIMEOUT)


def test_self_send_pool_backpressure_times_out_then_recovers():
    comm = MPI.COMM_SELF
    layout = paired_big_params()
    P = layout.fields[2].shape[0]
    pool = SendPool(comm, layout, size=1)
    pool.send_message(0, timeout=1.0, version=1, learner_step=0, params=np.zeros(P, np.float32))
    assert pool.in_flight == 1
    assert pool.try_acquire() is None
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="all 1 send buffers still in flight"):
        pool.acquire(timeout=0.1)
    assert 0.09 <= time.monotonic() - t < 2.0
    assert pool.stalls == 1
    rpool = RecvPool(comm, layout, source=0, depth=1)
    rpool.match()  # the receiver takes the message: the first send can complete
    buf = pool.acquire(timeout=TIMEOUT)
    pool.release(buf)
    msgs = rpool.wait(TIMEOUT)
    assert [int(m.fields["version"]) for m in msgs] == [1]
    assert pool.close() == 0
    assert rpool.close() == 0


def test_self_close_cancels_unmatched_requests_without_hanging():
    comm = MPI.COMM_SELF
    layout = paired_big_params()
    P = layout.fields[2].shape[0]
    rpool = RecvPool(comm, contract_messages().CONTROL, depth=3)
    t = time.monotonic()
    assert rpool.close() == 0
    assert time.monotonic() - t < 2.0
    with pytest.raises(RuntimeError, match="closed"):
        rpool.poll()
    spool = SendPool(comm, layout, size=2)
    spool.send_message(0, version=1, learner_step=0, params=np.zeros(P, np.float32))
    t = time.monotonic()
    assert spool.close(timeout=0.1) == 1  # never matched: cancelled (or abandoned)
    assert time.monotonic() - t < 3.0


def test_self_send_pool_rejects_foreign_buffers_and_bad_sizes():
    layout = contract_messages().CONTROL
    with SendPool(MPI.COMM_SELF, layout, size=1) as pool:
        with pytest.raises(ValueError, match="not lent"):
            pool.send(layout.new_buffer(), 0, layout.nbytes)
        buf = pool.acquire()
        with pytest.raises(ValueError, match="outside"):
            pool.send(buf, 0, layout.nbytes + 1)
        buf = pool.acquire(timeout=0.1)  # the failed send gave the buffer back
        pool.release(buf)
        with pytest.raises(MessageError, match="missing field"):
            pool.send_message(0, command=1)
        assert pool.try_acquire() is not None  # a failed pack gave it back too


def test_self_params_publish_and_subscribe():
    comm = MPI.COMM_SELF
    layout = contract_messages().PARAMS
    sub = ParamSubscriber(comm, layout, source=0)
    assert sub.latest() is None
    pub = ParamPublisher(comm, layout, [0])
    for v in (1, 2, 3):
        pub.publish(v, v, np.full(17, v, np.float32))
    # one thread plays both sides: the subscriber's calls let the publisher's sends match
    versions = []
    deadline = time.monotonic() + TIMEOUT
    while pub.busy or not versions or versions[-1] != 3:
        assert time.monotonic() < deadline, f"saw {versions}"
        up = sub.latest()
        if up is not None:
            versions.append(up.version)
            assert (up.params == up.version).all()
        pub.progress()
    assert versions == sorted(versions) and versions[-1] == 3
    with pytest.raises(ValueError):
        up.params[0] = 1.0  # read-only view
    assert sub.latest() is None and up.params[0] == 3.0  # still valid after a None
    pub.close()
    sub.close()
    with pytest.raises(RuntimeError, match="closed"):
        sub.latest()


def test_self_endpoint_send_poll_and_params():
    messages = contract_messages()
    with MPIEndpoint(MPI.COMM_SELF, messages) as ep:
        assert ep.poll("CONTROL") == []
        ep.send("CONTROL", 0, command=Command.STOP, argument=3)
        msgs = ep.wait("CONTROL", TIMEOUT)
        assert [(m.source, int(m.fields["argument"])) for m in msgs] == [(0, 3)]
        assert ep.publish_params(4, 40, np.ones(17, np.float32), [0]) == 1
        deadline = time.monotonic() + TIMEOUT
        up = None
        while up is None and time.monotonic() < deadline:
            up = ep.latest_params(0)
        assert up is not None and up.version == 4 and up.learner_step == 40
        with pytest.raises(ValueError, match="publish_params"):
            ep.send("PARAMS", 0, version=1, learner_step=1, params=np.ones(17))
        with pytest.raises(ValueError, match="outside"):
            ep.send("CONTROL", 1, command=1, argument=0)
        assert ep.flush(TIMEOUT)


# --------------------------------------------------------------------------- #
# Delivery order when completions are out of order. MPICH's shared-memory path
# happens to complete receives in matching order, so this case is driven by a
# fake MPI whose matched probes take messages in arrival order (as the standard
# requires) but whose receives complete in any order (as a large rendezvous
# message matched before a small eager one may).

class _FakeRequest:
    def __init__(self, active=False):
        self.active, self.done = active, False

    def __bool__(self):
        return self.active


class _FakeStatus:
    def __init__(self):
        self.source, self.count = -1, 0

    def Get_source(self):
        return self.source

    def Get_count(self, datatype):
        return self.count


class _FakeMPI:
    ANY_SOURCE = -1
    BYTE = "byte"
    REQUEST_NULL = _FakeRequest()
    Status = _FakeStatus

    class Request:
        @staticmethod
        def Testsome(reqs, statuses=None):
            idx = [i for i, r in enumerate(reqs) if r.active and r.done]
            for i in idx:
                reqs[i].active = False
            return idx if any(r.active for r in reqs) or idx else None


class _FakeMessage:
    def __init__(self, comm, data):
        self.comm, self.data = comm, data

    def Irecv(self, spec):
        spec[0][:self.data.size] = self.data
        req = _FakeRequest(active=True)
        self.comm.requests.append(req)
        return req


class _FakeComm:
    def __init__(self):
        self.queue: List[Tuple[np.ndarray, int]] = []
        self.requests: List[_FakeRequest] = []

    def Improbe(self, source, tag, status):
        if not self.queue:
            return None
        data, status.source = self.queue.pop(0)
        status.count = data.size
        return _FakeMessage(self, data)

    def deliver(self, data: np.ndarray, source: int) -> None:
        """A message arrives (in MPI's queue until probed)."""
        self.queue.append((data, source))


def test_recv_pool_delivers_in_matching_order_when_completions_are_not(monkeypatch):
    import r2d2_hpc.comm.mpi_pools as transport

    monkeypatch.setattr(transport, "_mpi", lambda: _FakeMPI)
    layout = contract_messages().CONTROL
    fake = _FakeComm()
    pool = RecvPool(fake, layout, depth=3)

    def message(i: int) -> np.ndarray:
        buf = layout.new_buffer()
        return buf[:layout.pack(buf, command=1, argument=i)]

    for i in range(4):
        fake.deliver(message(i), source=1)
    assert pool.poll() == []  # three probed (the depth), none transferred yet
    reqs = fake.requests
    assert len(reqs) == 3 and len(fake.queue) == 1  # the 4th waits in MPI's queue
    reqs[2].done = reqs[1].done = True  # later messages complete first
    assert pool.poll() == []  # held back: message 0 is matched but still in transfer
    reqs[0].done = True
    assert [int(m.fields["argument"]) for m in pool.poll()] == [0, 1, 2]
    # the freed buffers take the next messages, still in matching order
    assert pool.poll() == [] and len(fake.requests) == 4
    for i in range(4, 6):
        fake.deliver(message(i), source=2)
    assert pool.poll() == [] and len(fake.requests) == 6
    more = fake.requests[3:]
    more[1].done = True
    assert pool.poll() == []
    more[0].done = True
    assert [int(m.fields["argument"]) for m in pool.poll()] == [3, 4]
    more[2].done = True
    assert [(m.source, int(m.fields["argument"])) for m in pool.poll()] == [(2, 5)]

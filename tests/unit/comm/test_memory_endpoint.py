"""The in-memory endpoint (serial mode): the shared contract in threads, plus its own rules."""
from __future__ import annotations

import threading
import time
from typing import Any, Dict, List

import numpy as np
import pytest

from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.memory_endpoint import InMemoryHub
from r2d2_hpc.comm.messages import Command
from r2d2_hpc.comm.wire import MessageError
from tests.helpers.transport_contract import (
    ALL_BODIES,
    TIMEOUT,
    body_backpressure_in_order,
    contract_messages,
    messages_for,
)


def run_ranks(hub: InMemoryHub, body, size: int) -> None:
    """Runs ``body`` as every virtual rank, one thread each; re-raises the first error."""
    barrier = threading.Barrier(size, timeout=TIMEOUT)
    errors: List[BaseException] = []

    def target(rank: int) -> None:
        try:
            body(hub.endpoint(rank), rank, size, barrier.wait)
        except BaseException as exc:  # report, and free the others from the barrier
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=target, args=(r,), daemon=True) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT * 2)
    assert not any(t.is_alive() for t in threads), "a rank hangs"
    real = [e for e in errors if not isinstance(e, threading.BrokenBarrierError)]
    if real or errors:
        raise (real or errors)[0]


HUB_SETUP: Dict[str, Dict[str, Any]] = {
    body_backpressure_in_order.__name__: dict(capacity={"STEP_CHUNK": 2}),
}


@pytest.mark.parametrize("size", [2, 4])
@pytest.mark.parametrize("body", ALL_BODIES, ids=lambda b: b.__name__)
def test_endpoint_contract(body, size):
    messages = messages_for(body)
    hub = InMemoryHub(messages, size, **HUB_SETUP.get(body.__name__, {}))
    run_ranks(hub, body, size)


def test_serial_loop_never_blocks_with_unbounded_queues():
    hub = InMemoryHub(contract_messages(), 2)
    a, b = hub.endpoint(0), hub.endpoint(1)
    assert isinstance(a, Endpoint)
    for i in range(500):
        a.send("CONTROL", 1, command=Command.STOP, argument=i)
    got = [int(m.fields["argument"]) for m in b.poll("CONTROL")]
    assert got == list(range(500))
    assert a.stalls("CONTROL") == 0 and a.flush(0.0)


def test_full_queue_try_send_false_and_send_times_out():
    hub = InMemoryHub(contract_messages(), 2, capacity=2)
    a, b = hub.endpoint(0), hub.endpoint(1)
    assert a.try_send("CONTROL", 1, command=1, argument=0)
    a.send("CONTROL", 1, command=1, argument=1)
    assert not a.try_send("CONTROL", 1, command=1, argument=2)
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="rank 1's queue stayed full"):
        a.send("CONTROL", 1, timeout=0.1, command=1, argument=2)
    assert 0.09 <= time.monotonic() - t < 2.0
    assert a.stalls("CONTROL") == 1
    assert [int(m.fields["argument"]) for m in b.poll("CONTROL")] == [0, 1]
    assert a.try_send("CONTROL", 1, command=1, argument=2)  # room again


def test_views_are_poisoned_when_their_lifetime_ends():
    hub = InMemoryHub(contract_messages(), 2)
    a, b = hub.endpoint(0), hub.endpoint(1)
    a.send("PRIORITY_UPDATE", 1, keys=np.arange(3), priorities=np.ones(3))
    (msg,) = b.poll("PRIORITY_UPDATE")
    keys = msg.fields["keys"]
    assert keys.tolist() == [0, 1, 2]
    assert b.poll("PRIORITY_UPDATE") == []  # the next poll ends the views' lifetime
    assert keys.tolist() == [-1, -1, -1]  # 0xFF bytes: what a reused MPI buffer would show
    a.send("CONTROL", 1, command=1, argument=4)
    (ctl,) = b.poll("CONTROL")
    b.release("CONTROL")
    assert int(ctl.fields["argument"]) == -1
    hub2 = InMemoryHub(contract_messages(), 2, poison=False)
    hub2.endpoint(0).send("CONTROL", 1, command=1, argument=4)
    (kept,) = hub2.endpoint(1).poll("CONTROL")
    hub2.endpoint(1).release("CONTROL")
    assert int(kept.fields["argument"]) == 4


def test_params_newest_wins_and_old_view_survives_a_none():
    hub = InMemoryHub(contract_messages(), 3)
    learner, actor1, actor2 = hub.endpoint(0), hub.endpoint(1), hub.endpoint(2)
    assert actor1.latest_params(0) is None
    for v in (1, 2, 3):
        assert learner.publish_params(v, 10 * v, np.full(17, v, np.float32), [1, 2]) == 2
    up = actor1.latest_params(0)
    assert (up.version, up.learner_step) == (3, 30) and (up.params == 3).all()
    assert actor1.latest_params(0) is None
    assert (up.params == 3).all()
    with pytest.raises(ValueError):
        up.params[0] = 0.0
    learner.publish_params(4, 40, np.full(17, 4, np.float32), [1])
    assert actor1.latest_params(0).version == 4
    assert actor2.latest_params(0).version == 3  # actor 2 was not a destination of v4


def test_misuse_is_rejected_clearly():
    hub = InMemoryHub(contract_messages(), 2)
    a = hub.endpoint(0)
    with pytest.raises(ValueError, match="publish_params"):
        a.send("PARAMS", 1, version=1, learner_step=0, params=np.zeros(17))
    with pytest.raises(ValueError, match="publish_params"):
        a.poll("PARAMS")
    with pytest.raises(ValueError, match=r"destination rank 2 outside \[0, 2\)"):
        a.send("CONTROL", 2, command=1, argument=0)
    with pytest.raises(MessageError, match="unknown message 'CONTROLS'"):
        a.send("CONTROLS", 1, command=1, argument=0)
    with pytest.raises(MessageError, match="missing field"):
        a.send("CONTROL", 1, command=1)
    with pytest.raises(ValueError, match="rank 5 outside"):
        hub.endpoint(5)
    a.close()
    with pytest.raises(RuntimeError, match="closed"):
        a.send("CONTROL", 1, command=1, argument=0)


def test_a_corrupt_message_is_reported_and_the_others_still_arrive():
    messages = contract_messages()
    hub = InMemoryHub(messages, 2)
    a, b = hub.endpoint(0), hub.endpoint(1)
    a.send("CONTROL", 1, command=1, argument=1)
    bad = messages.SAMPLE_REQUEST.new_buffer()
    n = messages.SAMPLE_REQUEST.pack(bad, request_id=0, num_sequences=1, num_demo=0)
    hub.queue(1, "CONTROL").append((0, bad[:n]))  # a wrong message on the CONTROL queue
    a.send("CONTROL", 1, command=1, argument=2)
    with pytest.raises(MessageError, match="from rank 0.*expected a CONTROL.*got SAMPLE_REQUEST"):
        b.poll("CONTROL")
    assert [int(m.fields["argument"]) for m in b.poll("CONTROL")] == [1, 2]

"""MPI request pools: receives by matched probe, bounded synchronous sends, the parameter
broadcast. :class:`~r2d2_hpc.comm.mpi_endpoint.MPIEndpoint` is built from them; the
contract they keep is :class:`~r2d2_hpc.comm.endpoint.Endpoint`'s.

MPI implementation
------------------
:class:`RecvPool` takes arrived messages with matched probes (``Improbe``) into
``depth`` max-size buffers and receives each with ``Imrecv``; it delivers them
in probing order, which is MPI's matching order, hence per-source order, only
the prefix whose transfers completed (a small message may finish before a
large one matched earlier). Sends are *synchronous-mode* ``Issend``s: one
completes only when the receiver has matched it (probed it), not when MPI
copied a small message eagerly into the receiver's unexpected-message queue. So a full
pool means the receiver really is behind (true backpressure: a slow shard
cannot accumulate unbounded unexpected messages), and a rank whose sends all
completed knows they were all received (what the shutdown barrier relies
on). :class:`SendPool` bounds the ``Issend``s in flight (backpressure:
memory never grows) and sends only the packed bytes; receivers learn the size
from the status and the header. :class:`ParamPublisher` and
:class:`ParamSubscriber` carry the parameters.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from r2d2_hpc.comm.endpoint import Backoff, ParamsUpdate, Received, poll_with_backoff
from r2d2_hpc.comm.heartbeat import waiting_on_peer
from r2d2_hpc.comm.wire import Layout, MessageError

__all__ = ["ParamPublisher", "ParamSubscriber", "RecvPool", "SendPool"]

#: Requests and buffers given up on by ``close`` after their timeout: kept
#: referenced so MPI never writes into or reads from freed memory.
_ABANDONED: List[Any] = []


def _mpi() -> Any:
    from mpi4py import MPI  # imported lazily: serial runs need no MPI

    return MPI


def _wait_requests(MPI: Any, reqs: List[Any], timeout: float) -> Tuple[List[Any], List[bool]]:
    """Tests ``reqs`` until all complete or ``timeout``; returns (statuses, completed)."""
    statuses = [MPI.Status() for _ in reqs]
    done = [False] * len(reqs)
    backoff = Backoff(timeout)
    while True:
        for i, req in enumerate(reqs):
            if not done[i] and req.Test(statuses[i]):
                done[i] = True
        if all(done) or backoff.expired():
            return statuses, done
        backoff.sleep()


def _cancel_sends(MPI: Any, pending: List[Any], bufs: List[np.ndarray], layout: Layout,
                  timeout: float) -> int:
    """Cancels sends still in flight at close (waiting at most 1 s), keeps those
    that never completed referenced with their buffers, and returns the pool's
    buffers to its layout; returns how many sends were pending."""
    for req in pending:
        req.Cancel()
    _, done = _wait_requests(MPI, pending, min(timeout, 1.0))
    for ok, req in zip(done, pending):
        if not ok:
            _ABANDONED.append((req, bufs))
    for buf in bufs:
        layout.drop_pool_buffer(buf)
    return len(pending)


# --------------------------------------------------------------------------- #
# Receive and send pools.

class RecvPool:
    """``depth`` buffers for one message type, filled by matched probes; never blocks in ``poll``.

    Each ``poll`` (and the endpoint's ``progress``) takes the messages that have
    arrived with ``Improbe`` while a buffer is free and starts an ``Imrecv`` of
    each into it. A matched probe removes the message from MPI's queue, so the
    order of the probes is the matching order (per-source order); the messages
    are delivered in it, only the prefix whose transfers completed (a large
    message probed first may finish after a small one probed later). Buffers of
    messages returned by ``poll`` are free again at the start of the next
    ``poll``/``wait`` or on ``release()``; their views stay valid until then.

    Why probes and not receives kept posted: under MPICH 5's UCX network module
    (``MPIR_CVAR_NOLOCAL=1``, the path between nodes) an ``MPI_ANY_SOURCE``
    receive posted after a message arrived never matches it (synchronous sends
    then never complete); a matched probe does (``docs/decisions.md``).

    Args:
      comm: an mpi4py communicator.
      layout: the message type; each buffer has ``layout.nbytes`` bytes.
      source: the only rank to receive from, or None for any source.
      depth: messages taken from MPI and not yet released (buffered on this side).
      tag: MPI tag; defaults to ``layout.tag``.
    """

    def __init__(self, comm: Any, layout: Layout, source: Optional[int] = None, depth: int = 4,
                 tag: Optional[int] = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        MPI = self._MPI = _mpi()
        self.comm = comm
        self.layout = layout
        self.tag = layout.tag if tag is None else int(tag)
        self._source = MPI.ANY_SOURCE if source is None else int(source)
        self._bufs = [layout.pool_buffer() for _ in range(depth)]
        self._reqs: List[Any] = [MPI.REQUEST_NULL] * depth
        self._statuses = [MPI.Status() for _ in range(depth)]
        self._probe_status = MPI.Status()
        self._done = [False] * depth
        self._src = [0] * depth
        self._cnt = [0] * depth
        self._free: Deque[int] = deque(range(depth))
        self._order: Deque[int] = deque()  # matched, not yet delivered, in matching order
        self._held: List[int] = []  # delivered, not yet released
        self._closed = False
        self._error: Optional[MessageError] = None  # an oversized message, raised by poll
        self.received = 0

    @property
    def depth(self) -> int:
        return len(self._bufs)

    def release(self) -> None:
        """Frees the buffers of the messages returned so far (their views die)."""
        if self._closed:
            return
        self._free.extend(self._held)
        self._held.clear()

    def match(self) -> None:
        """Takes arrived messages from MPI into free buffers (``Improbe`` + ``Imrecv``),
        which completes their senders' synchronous sends; never blocks, never raises
        for a bad message (a message larger than the layout's largest is received
        into a scratch buffer, dropped, and reported by the next ``poll``)."""
        if self._closed:
            return
        MPI, st = self._MPI, self._probe_status
        while self._free:
            msg = self.comm.Improbe(self._source, self.tag, st)
            if msg is None:
                return
            src, count = st.Get_source(), st.Get_count(MPI.BYTE)
            if count > self.layout.nbytes:
                msg.Recv([np.empty(count, np.uint8), MPI.BYTE])
                self._error = self._error or MessageError(
                    f"message from rank {src} with tag {self.tag}: {count} bytes, more than "
                    f"the largest {self.layout.name} ({self.layout.nbytes} bytes); dropped")
                continue
            i = self._free.popleft()
            self._src[i], self._cnt[i], self._done[i] = src, count, False
            self._reqs[i] = msg.Irecv([self._bufs[i], MPI.BYTE])
            self._order.append(i)

    def _test(self) -> None:
        self.match()
        idx = self._MPI.Request.Testsome(self._reqs, self._statuses)
        for i in idx or ():
            self._done[i] = True

    def poll(self) -> List[Received]:
        """Returns the messages that arrived, in arrival order; never blocks.

        Raises:
          MessageError: for a message that does not fit the layout; the messages
            before it are returned by the next ``poll``, the bad one is dropped.
        """
        if self._closed:
            raise RuntimeError(f"{self.layout.name} receive pool is closed")
        self.release()
        self._test()
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        out: List[Received] = []
        for p, i in enumerate(self._order):
            if not self._done[i]:
                break
            try:
                fields = self.layout.unpack(self._bufs[i], self._cnt[i])
            except MessageError as exc:
                del self._order[p]
                self._free.append(i)
                raise MessageError(f"message from rank {self._src[i]} with tag {self.tag}: "
                                   f"{exc}") from exc
            out.append(Received(self._src[i], fields, self._cnt[i]))
        for _ in out:
            self._held.append(self._order.popleft())
        self.received += len(out)
        return out

    def wait(self, timeout: float) -> List[Received]:
        """Polls with growing sleeps until something arrives or ``timeout`` seconds pass.

        Returns:
          The messages, or an empty list on timeout.
        """
        return poll_with_backoff(self.poll, timeout)

    def close(self, timeout: float = 5.0) -> int:
        """Waits (at most ``timeout``) for the transfers already matched and frees
        the buffers. Messages not yet matched stay in MPI's queue (their senders'
        synchronous sends never complete).

        Returns:
          Messages matched but never returned by ``poll``.
        """
        if self._closed:
            return 0
        self._closed = True
        pending = [self._reqs[i] for i in self._order if not self._done[i]]
        statuses, done = _wait_requests(self._MPI, pending, timeout)
        if not all(done):
            _ABANDONED.append((pending, self._bufs))
        dropped = len(self._order)
        self._order.clear()
        self._held.clear()
        if all(done):
            for buf in self._bufs:
                self.layout.drop_pool_buffer(buf)
        return dropped

    cancel = close

    def __enter__(self) -> "RecvPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class SendPool:
    """At most ``size`` nonblocking sends in flight for one message type.

    A buffer is lent by ``acquire``, filled (``layout.pack`` or ``layout.prepare``)
    and handed back by ``send``; it is lent again only after its send completed.

    Args:
      comm: an mpi4py communicator.
      layout: the message type; each buffer has ``layout.nbytes`` bytes.
      size: number of buffers, i.e. sends in flight before ``acquire`` waits.
      tag: MPI tag; defaults to ``layout.tag``.
      while_waiting: called between tries while ``acquire`` waits; the endpoint
        passes its receive pools' ``match``, so two ranks each waiting to send to
        the other still take each other's messages (receives are matched only
        when a rank probes, see :class:`RecvPool`).

    Attributes:
      stalls: number of ``acquire`` calls that found every buffer in flight.
      sent: number of sends started.
    """

    def __init__(self, comm: Any, layout: Layout, size: int, tag: Optional[int] = None,
                 while_waiting: Optional[Callable[[], None]] = None) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        MPI = self._MPI = _mpi()
        self.comm = comm
        self.layout = layout
        self.tag = layout.tag if tag is None else int(tag)
        self._bufs = [layout.pool_buffer() for _ in range(size)]
        self._reqs: List[Any] = [MPI.REQUEST_NULL] * size
        self._free: List[int] = list(range(size - 1, -1, -1))
        self._lent: Dict[int, int] = {}  # id(buffer) -> slot
        self._in_flight = 0
        self._closed = False
        self._while_waiting = while_waiting
        self.stalls = 0
        self.sent = 0

    @property
    def size(self) -> int:
        return len(self._bufs)

    @property
    def in_flight(self) -> int:
        """Sends started and not yet completed."""
        return self._in_flight

    def _reclaim(self) -> None:
        if self._in_flight:
            idx = self._MPI.Request.Testsome(self._reqs)
            if idx:
                self._free.extend(idx)
                self._in_flight -= len(idx)

    def try_acquire(self) -> Optional[np.ndarray]:
        """A free buffer, or None if all are in flight; never blocks."""
        if self._closed:
            raise RuntimeError(f"{self.layout.name} send pool is closed")
        if not self._free:
            self._reclaim()
        if not self._free:
            return None
        i = self._free.pop()
        self._lent[id(self._bufs[i])] = i
        return self._bufs[i]

    def acquire(self, timeout: Optional[float] = None) -> np.ndarray:
        """A free buffer; waits (backpressure) while all are in flight.

        Args:
          timeout: most seconds to wait; None waits until a send completes.

        Raises:
          TimeoutError: if no buffer became free within ``timeout``.
        """
        buf = self.try_acquire()
        if buf is not None:
            return buf
        self.stalls += 1
        backoff = Backoff(timeout)
        # Waiting on a receiver is not this rank being stuck: heartbeats keep
        # flowing (a receiver that is stuck is named by its own watcher).
        with waiting_on_peer():
            while True:
                if backoff.expired():
                    raise TimeoutError(
                        f"{self.layout.name}: all {self.size} send buffers still in flight "
                        f"after {timeout} s; the receiver is not receiving (is it polling "
                        f"this message?)")
                backoff.sleep()
                if self._while_waiting is not None:
                    self._while_waiting()
                buf = self.try_acquire()
                if buf is not None:
                    return buf

    def _take(self, buf: np.ndarray) -> int:
        i = self._lent.pop(id(buf), None)
        if i is None or self._bufs[i] is not buf:
            raise ValueError(f"{self.layout.name}: buffer was not lent by this pool's acquire()")
        return i

    def send(self, buf: np.ndarray, dest: int, nbytes: int) -> None:
        """Starts sending the first ``nbytes`` bytes of a lent buffer to ``dest``."""
        i = self._take(buf)
        if not self.layout.min_nbytes <= nbytes <= self.layout.nbytes:
            self._free.append(i)
            raise ValueError(f"{self.layout.name}: nbytes {nbytes} outside "
                             f"[{self.layout.min_nbytes}, {self.layout.nbytes}]")
        self._reqs[i] = self.comm.Issend([buf[:nbytes], self._MPI.BYTE], int(dest), self.tag)
        self._in_flight += 1
        self.sent += 1

    def release(self, buf: np.ndarray) -> None:
        """Returns a lent buffer without sending it."""
        self._free.append(self._take(buf))

    def send_message(self, dest: int, timeout: Optional[float] = None, **arrays: Any) -> int:
        """acquire + ``layout.pack`` + send; returns the bytes sent."""
        buf = self.acquire(timeout)
        return self._pack_and_send(buf, dest, arrays)

    def try_send_message(self, dest: int, **arrays: Any) -> bool:
        """Like send_message but returns False instead of waiting for a buffer."""
        buf = self.try_acquire()
        if buf is None:
            return False
        self._pack_and_send(buf, dest, arrays)
        return True

    def _pack_and_send(self, buf: np.ndarray, dest: int, arrays: Mapping[str, Any]) -> int:
        try:
            n = self.layout.pack(buf, **arrays)
        except BaseException:
            self.release(buf)
            raise
        self.send(buf, dest, n)
        return n

    def flush(self, timeout: float) -> bool:
        """Waits until every send completed; False if some are still in flight at ``timeout``."""
        return poll_with_backoff(self._drained, timeout)

    def _drained(self) -> bool:
        self._reclaim()
        return not self._in_flight

    def close(self, timeout: float = 1.0) -> int:
        """Flushes for at most ``timeout``, then cancels what is left.

        Returns:
          Sends that did not complete (cancelled or abandoned).
        """
        if self._closed:
            return 0
        self.flush(timeout)
        self._closed = True
        return _cancel_sends(self._MPI, [r for r in self._reqs if r], self._bufs, self.layout,
                             timeout)

    def __enter__(self) -> "SendPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------- #
# Parameters.

class ParamPublisher:
    """Learner 0's side of parameter publication; never blocks.

    ``depth`` buffers (2: double-buffered) in a ring. Version ``v+1`` is written
    only into a buffer no send is still reading. An actor whose previous
    version is still in flight is skipped for ``v+1``; it is owed the newest
    version, which it is sent as soon as its old send completes (checked in
    ``publish``, ``progress`` and ``flush``), so every actor ends with the
    newest version without the learner ever waiting for a slow one.

    Args:
      comm: an mpi4py communicator.
      layout: the PARAMS layout.
      dests: ranks of the subscribers (the actors).
      depth: number of parameter buffers.
      tag: MPI tag; defaults to ``layout.tag``.

    Attributes:
      skipped: (actor, version) pairs not sent at ``publish`` time.
      published: versions written (not counting those skipped for every actor).
    """

    def __init__(self, comm: Any, layout: Layout, dests: Sequence[int], depth: int = 2,
                 tag: Optional[int] = None) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._MPI = _mpi()
        self.comm = comm
        self.layout = layout
        self.tag = layout.tag if tag is None else int(tag)
        self.dests = tuple(int(d) for d in dests)
        self._bufs = [layout.pool_buffer() for _ in range(depth)]
        self._users = [0] * depth  # sends in flight per buffer
        self._inflight: Dict[int, Tuple[int, Any]] = {}  # dest -> (buffer, request)
        self._owed: List[int] = []  # dests skipped for the newest version
        self._newest: Optional[Tuple[int, int]] = None  # (buffer, nbytes) of the newest version
        self._next = 0
        self.skipped = 0
        self.published = 0

    def _isend(self, dest: int, slot: int, nbytes: int) -> None:
        req = self.comm.Issend([self._bufs[slot][:nbytes], self._MPI.BYTE], dest, self.tag)
        self._inflight[dest] = (slot, req)
        self._users[slot] += 1

    def progress(self) -> None:
        """Frees completed sends and sends the newest version to actors owed it."""
        if self._inflight:
            dests = list(self._inflight)
            idx = self._MPI.Request.Testsome([self._inflight[d][1] for d in dests])
            for j in idx or ():
                slot, _ = self._inflight.pop(dests[j])
                self._users[slot] -= 1
        if self._owed and self._newest is not None:
            still = []
            for d in self._owed:
                if d in self._inflight:
                    still.append(d)
                else:
                    self._isend(d, *self._newest)
            self._owed = still

    @property
    def busy(self) -> bool:
        """True while sends are in flight or some actor is owed the newest version."""
        return bool(self._inflight or self._owed)

    def publish(self, version: int, learner_step: int, params: np.ndarray) -> int:
        """Starts sending a version to every actor not still receiving an older one.

        Returns:
          Number of actors this version was sent to now (0 if every buffer is
          busy: then the version is dropped and the previous one stays newest).
        """
        self.progress()
        depth = len(self._bufs)
        slot = next((s % depth for s in range(self._next, self._next + depth)
                     if self._users[s % depth] == 0), None)
        if slot is None:
            self.skipped += len(self.dests)
            return 0
        self._next = slot + 1
        n = self.layout.pack(self._bufs[slot], version=version, learner_step=learner_step,
                             params=params)
        self._newest = (slot, n)
        self._owed = []
        sent = 0
        for d in self.dests:
            if d in self._inflight:
                self.skipped += 1
                self._owed.append(d)
                continue
            self._isend(d, slot, n)
            sent += 1
        self.published += 1
        return sent

    def flush(self, timeout: float) -> bool:
        """Waits until no send is in flight and no actor is owed; False at ``timeout``."""
        return poll_with_backoff(self._drained, timeout)

    def _drained(self) -> bool:
        self.progress()
        return not self.busy

    def close(self, timeout: float = 1.0) -> int:
        """Flushes for at most ``timeout``, then cancels; returns sends not completed."""
        self.flush(timeout)
        self._owed = []
        pending = [req for _, req in self._inflight.values()]
        self._inflight.clear()
        return _cancel_sends(self._MPI, pending, self._bufs, self.layout, timeout)


class ParamSubscriber:
    """An actor's side of parameter publication: one receive always posted.

    Three buffers: the one whose view ``latest`` returned last (the actor keeps
    acting with it), the newest version received but not yet returned, and the
    one the next version arrives in. ``progress`` (called by the endpoint's
    ``progress``/``flush``) keeps receiving without returning anything, so the
    publisher's sends complete even while the actor does not ask for new
    parameters (e.g. while it shuts down).

    Args:
      comm: an mpi4py communicator.
      layout: the PARAMS layout.
      source: the publisher's rank.
      tag: MPI tag; defaults to ``layout.tag``.

    Attributes:
      version: the version ``latest`` returned last (-1 before the first).
      received: PARAMS messages received (returned or superseded).
    """

    def __init__(self, comm: Any, layout: Layout, source: int, tag: Optional[int] = None) -> None:
        MPI = self._MPI = _mpi()
        self.comm = comm
        self.layout = layout
        self.source = int(source)
        self.tag = layout.tag if tag is None else int(tag)
        self._bufs = [layout.pool_buffer() for _ in range(3)]
        self._status = MPI.Status()
        self._held: Optional[int] = None  # buffer of the last returned version
        self._pending: Optional[Tuple[int, Dict[str, np.ndarray]]] = None  # newest, unreturned
        self._slot = 0
        self._req = self._post(0)
        self.version = -1
        self.received = 0

    def _post(self, slot: int) -> Any:
        self._slot = slot
        return self.comm.Irecv([self._bufs[slot], self._MPI.BYTE], self.source, self.tag)

    def progress(self) -> None:
        """Receives every version that arrived, keeping only the newest; never blocks.

        Raises:
          MessageError: if a message on the PARAMS tag is not a valid PARAMS message.
        """
        if not self._req:
            raise RuntimeError("parameter subscriber is closed")
        while self._req.Test(self._status):
            slot = self._slot
            n = self._status.Get_count(self._MPI.BYTE)
            try:
                fields = self.layout.unpack(self._bufs[slot], n)
            except MessageError as exc:
                self._req = self._post(slot)
                raise MessageError(f"parameters from rank {self.source}: {exc}") from exc
            self.received += 1
            self._pending = (slot, fields)  # an older pending version is superseded
            free = next(i for i in range(3) if i != slot and i != self._held)
            self._req = self._post(free)

    def latest(self) -> Optional[ParamsUpdate]:
        """The newest version that arrived since the last call, or None; never blocks.

        Returns:
          ParamsUpdate with a read-only params view, valid until a later call
          returns a newer version (a call returning None leaves it valid).

        Raises:
          MessageError: if a message on the PARAMS tag is not a valid PARAMS message.
        """
        self.progress()
        if self._pending is None:
            return None
        slot, fields = self._pending
        self._pending = None
        self._held = slot
        params = fields["params"].view()
        params.flags.writeable = False
        self.version = int(fields["version"])
        return ParamsUpdate(self.version, int(fields["learner_step"]), params)

    def close(self, timeout: float = 5.0) -> None:
        """Cancels the posted receive and waits (at most ``timeout``) for it."""
        if self._req:
            self._req.Cancel()
            _, done = _wait_requests(self._MPI, [self._req], timeout)
            if not done[0]:
                _ABANDONED.append((self._req, self._bufs))
            self._req = self._MPI.REQUEST_NULL
        for buf in self._bufs:
            self.layout.drop_pool_buffer(buf)

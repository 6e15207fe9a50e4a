"""The endpoint: what a rank's role loop uses to talk to the other ranks.

Role loops (actor, replay shard, learner) talk only to an :class:`Endpoint`:

    ep.send("STEP_CHUNK", shard_rank, stream_id=..., obs=..., ...)
    for msg in ep.poll("SAMPLE_REQUEST"): ... msg.source, msg.fields["num_sequences"] ...
    ep.publish_params(version, learner_step, flat_params, actor_ranks)
    update = ep.latest_params(source=0)

Two implementations share that interface:
:class:`~r2d2_hpc.comm.mpi_endpoint.MPIEndpoint` (pools of
preallocated buffers, mpi4py UPPERCASE nonblocking calls, no pickle) and
:class:`~r2d2_hpc.comm.memory_endpoint.InMemoryEndpoint` (one process, queues of copies; ``r2d2-train --serial``
and tests), so role code is the same for both.

Endpoint contract
-----------------
* **Ownership.** ``send`` copies the arrays into a transport buffer before it
  returns; the caller may reuse or change them at once.
* **Lifetime of received data.** The ``fields`` of a :class:`Received` are views
  into a transport buffer. They stay valid until the next ``poll``/``wait`` of
  the *same message name* on that endpoint, or ``release(name)``; copy what you
  keep longer. (The in-memory endpoint overwrites old buffers with 0xFF bytes at
  that point, so serial runs catch the same misuse that would corrupt data over
  MPI.) ``latest_params`` returns a read-only view valid until a later call
  returns a newer version (a call returning None leaves it valid).
* **Ordering.** Messages of one name from one source arrive in the order they
  were sent, none lost or duplicated. There is no order between different
  names, nor between different sources.
* **Parameters** are not queued: a subscriber sees the newest version that
  reached it, and the publisher skips an actor still receiving an older version
  and sends it the newest one once that completes (during later
  ``publish_params``/``progress``/``flush`` calls): every actor ends with the
  newest version, and the learner never waits for a slow actor.
* **What blocks.** ``poll``, ``try_send``, ``publish_params``, ``latest_params``
  and ``progress`` never block. ``send`` blocks only while every buffer of that
  message type is in flight (MPI) or the destination's queue is full (in-memory
  with a ``capacity``), at most ``timeout`` seconds (None: until there is
  room), then raises TimeoutError.
  ``wait``, ``flush`` and ``close`` take a timeout and always return.
* **Progress.** MPI moves large messages only inside MPI calls; a rank that
  computes for long without polling should call ``progress()`` now and then.
  ``progress()`` also keeps receiving parameter versions (the newest waits
  for ``latest_params``), so a rank that stopped asking for parameters, e.g.
  while it shuts down, does not hold up the publisher's ``flush``.
* **Errors.** A received message that is not what its tag promises raises
  :class:`~r2d2_hpc.comm.wire.MessageError` naming the source rank and the cause.
"""
from __future__ import annotations

import abc
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, TypeVar

import numpy as np

from r2d2_hpc.comm.messages import Messages
from r2d2_hpc.comm.wire import Layout

__all__ = ["Backoff", "Endpoint", "ParamsUpdate", "Received", "poll_with_backoff"]

T = TypeVar("T")


class Received(NamedTuple):
    """One received message.

    Attributes:
      source: the sender's rank.
      fields: field name -> view into the transport's buffer (see the lifetime rule).
      nbytes: bytes that arrived.
    """

    source: int
    fields: Dict[str, np.ndarray]
    nbytes: int


class ParamsUpdate(NamedTuple):
    """A parameter version as a subscriber sees it.

    Attributes:
      version: the publisher's version number (increasing).
      learner_step: the learner step the parameters come from.
      params: read-only ``<float32>[P]`` view.
    """

    version: int
    learner_step: int
    params: np.ndarray


class Backoff:
    """Sleeps that grow from ``first`` to ``cap`` seconds until a deadline.

    Args:
      timeout: seconds until :meth:`expired` is True; None never expires.
      first: the first sleep.
      cap: the longest sleep.
    """

    def __init__(self, timeout: Optional[float], first: float = 2e-5, cap: float = 2e-3) -> None:
        self._deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self._delay = first
        self._cap = cap

    def expired(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def sleep(self) -> None:
        delay = self._delay
        if self._deadline is not None:
            delay = min(delay, max(0.0, self._deadline - time.monotonic()))
        time.sleep(delay)
        self._delay = min(self._cap, self._delay * 2)


def poll_with_backoff(fetch: Callable[[], T], timeout: Optional[float]) -> T:
    """Calls ``fetch`` with growing sleeps between (see :class:`Backoff`) until
    it returns something truthy or ``timeout`` seconds pass; returns its last result."""
    backoff = Backoff(timeout)
    while True:
        got = fetch()
        if got or backoff.expired():
            return got
        backoff.sleep()


# --------------------------------------------------------------------------- #
# The interface.

_RESERVED = ("name", "dest", "timeout")


class Endpoint(abc.ABC):
    """What role loops use to talk to other ranks (see the module docstring's contract).

    Attributes:
      messages: the run's message layouts.
      rank: this endpoint's rank.
      size: number of ranks.
    """

    messages: Messages
    rank: int
    size: int

    def _init_common(self, messages: Messages, rank: int, size: int) -> None:
        self.messages = messages
        self.rank = int(rank)
        self.size = int(size)
        for layout in messages:
            clash = [f.name for f in layout.fields if f.name in _RESERVED]
            if clash:
                raise ValueError(f"{layout.name}: field name(s) {clash} clash with send()")

    def _layout(self, name: str, params_ok: bool = False) -> Layout:
        layout = self.messages.get(name)
        if name == "PARAMS" and not params_ok:
            raise ValueError("PARAMS travel through publish_params / latest_params, "
                             "not send / poll")
        return layout

    def _check_dest(self, dest: int) -> int:
        if not 0 <= int(dest) < self.size:
            raise ValueError(f"destination rank {dest} outside [0, {self.size})")
        return int(dest)

    @abc.abstractmethod
    def send(self, name: str, dest: int, /, *, timeout: Optional[float] = None,
             **arrays: Any) -> None:
        """Sends one ``name`` message to ``dest``; the arrays are copied before it returns.

        Raises:
          TimeoutError: if there was no room for ``timeout`` seconds.
          MessageError: if the arrays do not fit the layout.
        """

    @abc.abstractmethod
    def try_send(self, name: str, dest: int, /, **arrays: Any) -> bool:
        """Like ``send`` but returns False at once when there is no room."""

    @abc.abstractmethod
    def poll(self, name: str) -> List[Received]:
        """The ``name`` messages that arrived (per-source order); never blocks."""

    @abc.abstractmethod
    def release(self, name: str) -> None:
        """Ends the lifetime of the views returned by the last poll of ``name``."""

    @abc.abstractmethod
    def publish_params(self, version: int, learner_step: int, params: np.ndarray,
                       dests: Sequence[int]) -> int:
        """Offers a parameter version to ``dests`` (same ranks every call); never blocks.

        Returns:
          Number of ranks it was sent to (actors still receiving an older version
          are skipped).
        """

    @abc.abstractmethod
    def latest_params(self, source: int) -> Optional[ParamsUpdate]:
        """The newest parameters from ``source`` since the last call, or None."""

    @abc.abstractmethod
    def stalls(self, name: str) -> int:
        """How many sends of ``name`` had to wait for room."""

    def progress(self) -> None:
        """Lets the transport move data in flight (sends, receives, parameter
        versions, which wait for ``latest_params``); never blocks."""

    def listen(self, *names: str) -> None:
        """Starts receiving ``names`` now rather than at their first poll."""

    def flush(self, timeout: float) -> bool:
        """Waits until every send completed; False if some remain at ``timeout``."""
        return True

    def close(self, timeout: float = 1.0) -> None:
        """Flushes (at most ``timeout``) and frees everything."""

    def send_to_all(self, name: str, dests: Sequence[int], /, *,
                    timeout: Optional[float] = None, **arrays: Any) -> None:
        """``send`` to each of ``dests`` (e.g. a CONTROL command)."""
        for d in dests:
            self.send(name, d, timeout=timeout, **arrays)

    def wait(self, name: str, timeout: float) -> List[Received]:
        """Polls with growing sleeps until a ``name`` message arrives or ``timeout``.

        Returns:
          The messages, or an empty list on timeout.
        """
        return poll_with_backoff(lambda: self.poll(name), timeout)

    def __enter__(self) -> "Endpoint":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""The endpoint of a serial run: every rank in one process, queues of copies between them.

Same contract as over MPI (:class:`~r2d2_hpc.comm.endpoint.Endpoint`): messages
are packed with the same layouts, so shape and dtype errors are the same, and
released receive buffers are overwritten so that a view kept past its lifetime
shows up in a serial run as it would corrupt data over MPI.
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from r2d2_hpc.comm.endpoint import Endpoint, ParamsUpdate, Received
from r2d2_hpc.comm.messages import Messages
from r2d2_hpc.comm.wire import MessageError, aligned_empty

__all__ = ["InMemoryEndpoint", "InMemoryHub"]


class InMemoryHub:
    """The in-memory "network" of a serial run: queues of copies between ranks.

    Thread-safe, so roles may also run in threads (as the contract tests do).

    Args:
      messages: the run's layouts.
      size: number of (virtual) ranks.
      capacity: undelivered messages a (destination, message) queue holds before
        ``send`` waits; None = unbounded (a single-threaded loop must not wait),
        an int for all, or a mapping name -> capacity (others unbounded).
      poison: overwrite released receive buffers with 0xFF (catches views kept
        past their lifetime, which over MPI would read reused buffers).
    """

    def __init__(self, messages: Messages, size: int,
                 capacity: Union[None, int, Mapping[str, int]] = None, poison: bool = True) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.messages = messages
        self.size = int(size)
        self._capacity = capacity
        self.poison = poison
        self.cond = threading.Condition()
        self.queues: Dict[Tuple[int, str], Deque[Tuple[int, np.ndarray]]] = {}
        self.params: Dict[Tuple[int, int], Tuple[int, np.ndarray]] = {}  # (dest, src) -> (seq, buf)
        self._param_seq = 0

    def capacity(self, name: str) -> Optional[int]:
        if self._capacity is None or isinstance(self._capacity, int):
            return self._capacity
        return self._capacity.get(name)

    def queue(self, dest: int, name: str) -> Deque[Tuple[int, np.ndarray]]:
        q = self.queues.get((dest, name))
        if q is None:
            q = self.queues[(dest, name)] = deque()
        return q

    def next_param_seq(self) -> int:
        self._param_seq += 1
        return self._param_seq

    def endpoint(self, rank: int) -> "InMemoryEndpoint":
        """The endpoint of virtual rank ``rank``."""
        return InMemoryEndpoint(self, rank)


class InMemoryEndpoint(Endpoint):
    """Endpoint of one virtual rank of an :class:`InMemoryHub`; same contract as MPI.

    Messages are packed with the same layouts (so shape and dtype errors are the
    same) into private buffers; parameters are a newest-wins mailbox.
    """

    def __init__(self, hub: InMemoryHub, rank: int) -> None:
        self._init_common(hub.messages, rank, hub.size)
        if not 0 <= rank < hub.size:
            raise ValueError(f"rank {rank} outside [0, {hub.size})")
        self.hub = hub
        self._held: Dict[str, List[np.ndarray]] = {}
        self._stalls: Dict[str, int] = {}
        self._seen: Dict[int, int] = {}  # source -> last params sequence returned
        self._closed = False

    def _pack(self, name: str, arrays: Mapping[str, Any]) -> np.ndarray:
        layout = self._layout(name)
        buf = aligned_empty(layout.nbytes)
        n = layout.pack(buf, **arrays)
        return buf[:n]

    def _put(self, name: str, dest: int, arrays: Mapping[str, Any], timeout: Optional[float],
             wait: bool) -> bool:
        if self._closed:
            raise RuntimeError("endpoint is closed")
        dest = self._check_dest(dest)
        buf = self._pack(name, arrays)
        cap = self.hub.capacity(name)
        with self.hub.cond:
            q = self.hub.queue(dest, name)
            if cap is not None and len(q) >= cap:
                if not wait:
                    return False
                self._stalls[name] = self._stalls.get(name, 0) + 1
                ok = self.hub.cond.wait_for(lambda: len(q) < cap, timeout)
                if not ok:
                    raise TimeoutError(f"{name}: rank {dest}'s queue stayed full ({cap} "
                                       f"messages) for {timeout} s; it is not polling {name}")
            q.append((self.rank, buf))
            self.hub.cond.notify_all()
        return True

    def send(self, name: str, dest: int, /, *, timeout: Optional[float] = None,
             **arrays: Any) -> None:
        self._put(name, dest, arrays, timeout, wait=True)

    def try_send(self, name: str, dest: int, /, **arrays: Any) -> bool:
        return self._put(name, dest, arrays, None, wait=False)

    def release(self, name: str) -> None:
        for buf in self._held.pop(name, ()):
            if self.hub.poison:
                buf.fill(0xFF)

    def poll(self, name: str) -> List[Received]:
        layout = self._layout(name)
        self.release(name)
        with self.hub.cond:
            q = self.hub.queue(self.rank, name)
            items = list(q)
            q.clear()
            if items:
                self.hub.cond.notify_all()
        out = []
        for p, (source, buf) in enumerate(items):
            try:
                fields = layout.unpack(buf)
            except MessageError as exc:
                with self.hub.cond:  # like MPI: drop the bad one, deliver the others later
                    q.extendleft(reversed(items[:p] + items[p + 1:]))
                raise MessageError(f"message from rank {source}: {exc}") from exc
            out.append(Received(source, fields, buf.size))
        self._held[name] = [b for _, b in items]
        return out

    def publish_params(self, version: int, learner_step: int, params: np.ndarray,
                       dests: Sequence[int]) -> int:
        dests = [self._check_dest(d) for d in dests]
        buf = self._pack_params(version, learner_step, params)
        with self.hub.cond:
            seq = self.hub.next_param_seq()
            for d in dests:
                self.hub.params[(d, self.rank)] = (seq, buf)
            self.hub.cond.notify_all()
        return len(dests)

    def _pack_params(self, version: int, learner_step: int, params: np.ndarray) -> np.ndarray:
        layout = self.messages.PARAMS
        buf = aligned_empty(layout.nbytes)
        n = layout.pack(buf, version=version, learner_step=learner_step, params=params)
        return buf[:n]

    def latest_params(self, source: int) -> Optional[ParamsUpdate]:
        with self.hub.cond:
            entry = self.hub.params.get((self.rank, self._check_dest(source)))
        if entry is None or entry[0] == self._seen.get(source):
            return None
        seq, buf = entry
        self._seen[source] = seq
        fields = self.messages.PARAMS.unpack(buf)
        params = fields["params"].view()
        params.flags.writeable = False
        return ParamsUpdate(int(fields["version"]), int(fields["learner_step"]), params)

    def stalls(self, name: str) -> int:
        return self._stalls.get(name, 0)

    def close(self, timeout: float = 1.0) -> None:
        self._closed = True

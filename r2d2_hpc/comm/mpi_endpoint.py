"""The endpoint over MPI: one pool per message type, created on first use.

:class:`MPIEndpoint` keeps :class:`~r2d2_hpc.comm.endpoint.Endpoint`'s contract
with the pools of :mod:`r2d2_hpc.comm.mpi_pools` (receives by matched probe,
bounded synchronous-mode sends, the newest-wins parameter broadcast) on a
duplicate of the communicator it is given, so its tags never meet other traffic.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from r2d2_hpc.comm.endpoint import Endpoint, ParamsUpdate, Received, poll_with_backoff
from r2d2_hpc.comm.messages import Messages
from r2d2_hpc.comm.mpi_pools import ParamPublisher, ParamSubscriber, RecvPool, SendPool

__all__ = ["DepthSpec", "MPIEndpoint"]

#: Pool depth: one int for every message type, or a mapping name -> depth.
DepthSpec = Union[int, Mapping[str, int]]


def _depth(spec: DepthSpec, name: str, default: int) -> int:
    if isinstance(spec, int):
        return spec
    return int(spec.get(name, default))


class MPIEndpoint(Endpoint):
    """Endpoint over MPI point-to-point messages.

    Creating and closing it are collective over ``comm`` (it works on a
    duplicate, ``comm.Dup()``, so its tags never meet other traffic).

    Args:
      comm: an mpi4py communicator (the job's world, passed in).
      messages: the run's layouts (identical on every rank).
      send_depth: sends in flight per message type before ``send`` waits; an
        int for all or a mapping name -> depth (others: 8).
      recv_depth: messages taken per message type before they are polled; int or
        mapping (others: 4).
      param_depth: parameter buffers of the publisher (2 = double-buffered).
      dup: duplicate ``comm`` (default); False uses it as is (not collective).
    """

    def __init__(self, comm: Any, messages: Messages, *, send_depth: DepthSpec = 8,
                 recv_depth: DepthSpec = 4, param_depth: int = 2, dup: bool = True) -> None:
        self._init_common(messages, comm.Get_rank(), comm.Get_size())
        self.comm = comm.Dup() if dup else comm
        self._owns_comm = dup
        self._send_depth = send_depth
        self._recv_depth = recv_depth
        self._param_depth = param_depth
        self._send: Dict[str, SendPool] = {}
        self._recv: Dict[str, RecvPool] = {}
        self._publisher: Optional[ParamPublisher] = None
        self._subscribers: Dict[int, ParamSubscriber] = {}
        self._closed = False

    def _send_pool(self, name: str) -> SendPool:
        pool = self._send.get(name)
        if pool is None:
            pool = SendPool(self.comm, self._layout(name), _depth(self._send_depth, name, 8),
                            while_waiting=self._match_arrived)
            self._send[name] = pool
        return pool

    def _recv_pool(self, name: str) -> RecvPool:
        pool = self._recv.get(name)
        if pool is None:
            pool = RecvPool(self.comm, self._layout(name),
                            depth=_depth(self._recv_depth, name, 4))
            self._recv[name] = pool
        return pool

    def _match_arrived(self) -> None:
        """Takes the messages that arrived for every receive pool (see ``SendPool``)."""
        for rpool in self._recv.values():
            rpool.match()

    def send(self, name: str, dest: int, /, *, timeout: Optional[float] = None,
             **arrays: Any) -> None:
        self._send_pool(name).send_message(self._check_dest(dest), timeout, **arrays)

    def try_send(self, name: str, dest: int, /, **arrays: Any) -> bool:
        return self._send_pool(name).try_send_message(self._check_dest(dest), **arrays)

    def poll(self, name: str) -> List[Received]:
        return self._recv_pool(name).poll()

    def release(self, name: str) -> None:
        if name in self._recv:
            self._recv[name].release()

    def listen(self, *names: str) -> None:
        for name in names:
            self._recv_pool(name)

    def publish_params(self, version: int, learner_step: int, params: np.ndarray,
                       dests: Sequence[int]) -> int:
        dests = tuple(self._check_dest(d) for d in dests)
        if self._publisher is None:
            self._publisher = ParamPublisher(self.comm, self.messages.PARAMS, dests,
                                             depth=self._param_depth)
        elif self._publisher.dests != dests:
            raise ValueError(f"publish_params: dests changed from {self._publisher.dests} "
                             f"to {dests}")
        return self._publisher.publish(version, learner_step, params)

    def latest_params(self, source: int) -> Optional[ParamsUpdate]:
        sub = self._subscribers.get(source)
        if sub is None:
            sub = ParamSubscriber(self.comm, self.messages.PARAMS, self._check_dest(source))
            self._subscribers[source] = sub
        return sub.latest()

    def stalls(self, name: str) -> int:
        pool = self._send.get(name)
        return 0 if pool is None else pool.stalls

    def progress(self) -> None:
        for pool in self._send.values():
            pool._reclaim()
        for rpool in self._recv.values():
            rpool._test()
        if self._publisher is not None:
            self._publisher.progress()
        for sub in self._subscribers.values():
            sub.progress()

    def flush(self, timeout: float) -> bool:
        return poll_with_backoff(self._drained, timeout)

    def _drained(self) -> bool:
        self.progress()
        return not (any(p.in_flight for p in self._send.values()) or (
            self._publisher is not None and self._publisher.busy))

    def close(self, timeout: float = 1.0) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush(timeout)
        for pool in self._send.values():
            pool.close(timeout)
        if self._publisher is not None:
            self._publisher.close(timeout)
        for rpool in self._recv.values():
            rpool.close()
        for sub in self._subscribers.values():
            sub.close()
        if self._owns_comm:
            self.comm.Free()

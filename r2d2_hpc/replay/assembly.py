"""One learner batch from the shards' replies, copied once into a reused buffer.

A global batch of ``B`` sequences is allocated over the shards
(:func:`~r2d2_hpc.replay.sampling.allocate_batch`); shard ``s`` replies with its
share, a ``SequenceBatch`` of ``k_s`` sequences (``[T, k_s, ...]`` and
``[k_s, ...]``), whose arrays are views into a receive buffer that is reused
once the message is released. :class:`BatchAssembler` copies each reply, as
it arrives, straight to its rows of a batch buffer: the planned order, not
the arrival order, fixes the rows, so the batch does not depend on timing::

    expect(r, [(shard 1, 3), (shard 2, 5)])   plan: shard 1 -> rows [0, 3), shard 2 -> [3, 8)
    add(r, 2, reply)                          reply[:, 0:5] -> buffer[:, 3:8]   (one copy)
    add(r, 1, reply)                          reply[:, 0:3] -> buffer[:, 0:3]
    take(r)                                   SequenceBatch of views of buffer, [T, 8, ...]

That copy is the only one on the host: the learner uses the buffer as its
batch (on a CUDA learner the buffers are page-locked, ``allocate``, so the
device copy reads them directly).

Buffers are reused: a request gets a free buffer at ``expect``; the views
``take`` returns stay valid until the next ``take``, which frees the buffer of
the batch before. With ``q`` requests in flight at most ``q + 1`` buffers exist.
"""
from __future__ import annotations

from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple

import numpy as np

from r2d2_hpc.types import TIME_MAJOR_FIELDS, SequenceBatch

#: Allocates an uninitialised host array: ``(shape, dtype) -> ndarray`` (default ``np.empty``).
Allocator = Callable[[Tuple[int, ...], np.dtype], np.ndarray]


def batch_axis(name: str) -> int:
    """Axis of the batch dimension ``B`` of ``SequenceBatch`` field ``name``."""
    return 1 if name in TIME_MAJOR_FIELDS else 0


class _Plan(NamedTuple):
    """Where the parts of one request go."""

    buffer: int
    rows: Dict[int, Tuple[int, int]]  # source -> (first row, number of rows)
    pending: Set[int]                 # sources whose part has not arrived
    total: int


class BatchAssembler:
    """Assembles batches from per-shard parts into reused buffers (see the module docstring).

    Attributes:
      batch_size: ``B``, rows of each buffer (the most rows one request may plan).
      bytes_copied: bytes copied into buffers so far (every part's ``nbytes``).
      batches: batches taken so far.
    """

    def __init__(self, batch_size: int, allocate: Allocator = np.empty) -> None:
        """Args:
          batch_size: ``B``.
          allocate: makes each buffer field; e.g. page-locked memory for a CUDA learner.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self._allocate = allocate
        self._buffers: List[Optional[SequenceBatch]] = []  # shaped by the first part
        self._free: List[int] = []
        self._plans: Dict[int, _Plan] = {}
        self._taken: Optional[int] = None
        self.bytes_copied = 0
        self.batches = 0

    @property
    def num_buffers(self) -> int:
        """Buffers made so far."""
        return len(self._buffers)

    def expect(self, request_id: int, parts: Sequence[Tuple[int, int]]) -> None:
        """Plans request ``request_id``: ``(source, rows)`` parts, their rows in this order.

        Raises:
          ValueError: on a known request id, no parts, a repeated source, a
            part of no rows, or more than ``batch_size`` rows in total.
        """
        sources = [int(s) for s, _ in parts]
        counts = [int(k) for _, k in parts]
        if (request_id in self._plans or not parts or len(set(sources)) != len(sources)
                or min(counts) < 1 or sum(counts) > self.batch_size):
            raise ValueError(f"request {request_id}: invalid plan {list(parts)} (a known id, "
                             f"a repeated source, or not 1..{self.batch_size} rows)")
        if self._free:
            buffer = self._free.pop()
        else:
            buffer = len(self._buffers)
            self._buffers.append(None)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
        rows = {s: (starts[i], counts[i]) for i, s in enumerate(sources)}
        self._plans[request_id] = _Plan(buffer, rows, set(sources), int(starts[-1]))

    def add(self, request_id: int, source: int, part: SequenceBatch) -> None:
        """Copies ``source``'s part of request ``request_id`` to its rows.

        Args:
          request_id: a request given to ``expect`` and not yet taken.
          source: one of its sources, whose part has not arrived yet.
          part: ``SequenceBatch`` with as many sequences as planned for ``source``.

        Raises:
          ValueError: for an unknown request or source, a part that arrived
            already, or a part whose shapes or dtypes do not fit.
        """
        plan = self._plans.get(request_id)
        if plan is None or source not in plan.pending:
            raise ValueError(f"request {request_id}: unexpected part from source {source}")
        first, count = plan.rows[source]
        buf = self._buffers[plan.buffer]
        if buf is None:
            buf = self._buffers[plan.buffer] = self._allocate_like(part)
        _check_part(part, buf, count, f"request {request_id}, source {source}")
        for name, dst, src in zip(SequenceBatch._fields, buf, part):
            rows = (slice(None),) * batch_axis(name) + (slice(first, first + count),)
            np.copyto(dst[rows], src)
            self.bytes_copied += int(np.asarray(src).nbytes)
        plan.pending.discard(source)

    def ready(self, request_id: int) -> bool:
        """True when every part of request ``request_id`` arrived."""
        plan = self._plans.get(request_id)
        return plan is not None and not plan.pending

    def take(self, request_id: int) -> SequenceBatch:
        """The assembled batch of request ``request_id`` (views, valid until the next ``take``).

        Raises:
          ValueError: for an unknown request or one with parts missing.
        """
        plan = self._plans.get(request_id)
        if plan is None or plan.pending:
            missing = sorted(plan.pending) if plan is not None else "all (unknown request)"
            raise ValueError(f"request {request_id} is not complete: missing parts {missing}")
        del self._plans[request_id]
        if self._taken is not None:
            self._free.append(self._taken)
        self._taken = plan.buffer
        self.batches += 1
        buf = self._buffers[plan.buffer]
        assert buf is not None  # every part arrived, the first one allocated it
        if plan.total == self.batch_size:
            return buf
        return SequenceBatch(*(a[(slice(None),) * batch_axis(n) + (slice(0, plan.total),)]
                               for n, a in zip(SequenceBatch._fields, buf)))

    def _allocate_like(self, part: SequenceBatch) -> SequenceBatch:
        """A buffer with ``batch_size`` rows, each field shaped and typed as ``part``'s."""
        fields = []
        for name, arr in zip(SequenceBatch._fields, part):
            shape = list(np.shape(arr))
            shape[batch_axis(name)] = self.batch_size
            fields.append(self._allocate(tuple(shape), np.asarray(arr).dtype))
        return SequenceBatch(*fields)


def _check_part(part: SequenceBatch, buf: SequenceBatch, count: int, where: str) -> None:
    """Raises ValueError unless every field of ``part`` fits ``count`` rows of ``buf``."""
    for name, dst, src in zip(SequenceBatch._fields, buf, part):
        src = np.asarray(src)
        axis = batch_axis(name)
        others = src.shape[:axis] + src.shape[axis + 1:]
        fits = (src.dtype == dst.dtype and src.ndim == dst.ndim and src.shape[axis] == count
                and others == dst.shape[:axis] + dst.shape[axis + 1:])
        if not fits:
            raise ValueError(f"{where}: {name} is {src.dtype}{list(src.shape)}, expected "
                             f"{dst.dtype} with {count} rows on axis {axis} of {list(dst.shape)}")

"""Where each actor stream's steps live in a shard's ring.

Each actor environment is a *stream* whose steps are numbered consecutively.
A shard writes steps in arrival order at ``abs % C`` (``abs`` counts every
step it ever wrote), so one stream's steps sit in *runs*: ``(first step
number, abs of that step, count)``. :meth:`Stream.lookup` turns step numbers
into ``abs`` through those runs, which is how overlapping sequences share ring
rows; :func:`sequence_rows` does it for whole sequences (the ``pos`` of the
layout's diagram). :func:`encode_streams` is the table form a
:class:`ShardState` and a snapshot hold (``STREAM_FIELDS`` and ``RUN_FIELDS``
as int64 vectors).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from r2d2_hpc.replay.layout import RUN_FIELDS, ShardSpec

__all__ = ["Stream", "StreamIndex", "encode_streams", "sequence_rows"]

#: One run: steps ``step_lo + i`` live at ``abs_lo + i`` for ``i < n``.
Run = Tuple[int, int, int]


@dataclass
class Stream:
    """Insert bookkeeping of one actor stream."""

    next_step: int
    """Number of the next step the stream will send."""
    epoch_first: int
    """First step number since the stream's last reset (an episode start)."""
    runs: List[Run] = field(default_factory=list)
    """``(step_lo, abs_lo, n)``: steps ``step_lo + i`` live at ``abs_lo + i``."""

    def append(self, start: int, abs_lo: int, n: int) -> None:
        """Records ``n`` new steps numbered from ``start``, written from ``abs_lo`` on."""
        runs = self.runs
        if runs and runs[-1][0] + runs[-1][2] == start and runs[-1][1] + runs[-1][2] == abs_lo:
            lo, alo, m = runs[-1]
            runs[-1] = (lo, alo, m + n)
        else:
            runs.append((start, abs_lo, n))
        self.next_step = start + n

    def lookup(self, steps: np.ndarray, oldest_abs: int) -> np.ndarray:
        """``abs`` of each step number; -1 where not stored or older than ``oldest_abs``.

        Args:
          steps: ``<int64>[...]`` step numbers (any negative number: not a step).
          oldest_abs: the oldest ``abs`` still in the ring (``write - C``).

        Returns:
          ``<int64>[...]`` of the same shape.
        """
        out = np.full(steps.shape, -1, np.int64)
        if not self.runs:
            return out
        runs = np.asarray(self.runs, np.int64)
        i = np.searchsorted(runs[:, 0], steps, side="right") - 1
        ic = np.maximum(i, 0)
        off = steps - runs[ic, 0]
        a = runs[ic, 1] + off
        ok = (i >= 0) & (off < runs[ic, 2]) & (a >= oldest_abs)
        out[ok] = a[ok]
        return out


def sequence_rows(spec: ShardSpec, stream: Stream, first_ring: np.ndarray, write: int,
                  starts: np.ndarray, lens: np.ndarray
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ring rows of ``M`` sequences of ``stream`` (see the layout's ``pos`` diagram).

    Args:
      spec: the shard's layout (``frame_stack`` k, ``sequence_length`` T,
        ``capacity_observations`` C, ``stack_fill``).
      stream: the sequences' stream.
      first_ring: ``<bool>[C + 1]`` the ring's ``first`` flags (row C: the sentinel).
      write: ``abs`` of the next step the ring will write.
      starts: ``<int64>[M]`` first step numbers (already checked against the stream).
      lens: ``<int64>[M]`` valid lengths.

    Returns:
      ``(pos <int64>[M, span], oldest <int64>[M], kept <bool>[M])``: ``kept`` is
      False where a step (or a frame the first stack needs) was overwritten.

    Raises:
      ValueError: if a sequence crosses an episode start.
    """
    m = starts.shape[0]
    k1, C = spec.frame_stack - 1, spec.capacity_observations
    offs = np.arange(-k1, spec.sequence_length, dtype=np.int64)
    steps = starts[:, None] + offs[None, :]                       # [M, span]
    in_seq = (offs[None, :] >= 0) & (offs[None, :] < lens[:, None])
    absv = stream.lookup(np.where(in_seq | (offs[None, :] < 0), steps, -1), write - C)
    kept = ~((absv < 0) & in_seq).any(axis=1)                   # all own steps stored
    rows = np.where(absv >= 0, absv % C, C)
    inner = in_seq & (offs[None, :] > 0) & kept[:, None]
    crossing = inner & first_ring[rows]
    if crossing.any():
        i, j = np.argwhere(crossing)[0]
        raise ValueError(f"add_sequences: length: sequence {i} (start_step {starts[i]}, "
                         f"length {lens[i]}) crosses the episode start at step "
                         f"{steps[i, j]}")
    pos = np.where(in_seq, rows, C).astype(np.int64)
    oldest = np.where(in_seq, absv, np.iinfo(np.int64).max).min(axis=1)
    # Walk back from the start while the episode continues: the stack of
    # step 0 needs step start-j iff none of steps start-j+1 .. start is first.
    need = kept.copy()
    at_first = first_ring[pos[:, k1]]
    fill = pos[:, k1].copy() if spec.stack_fill == "first" else np.full(m, C, np.int64)
    for j in range(1, k1 + 1):
        col = k1 - j
        need &= ~at_first
        a = absv[:, col]
        missing = need & (a < 0)
        kept &= ~missing
        need &= ~missing
        r = np.where(need, a % C, C)
        pos[:, col] = np.where(need, r, fill)
        if spec.stack_fill == "first":
            fill = np.where(need, r, fill)
        oldest = np.where(need, np.minimum(oldest, a), oldest)
        at_first = np.where(need, first_ring[r], at_first)
    return pos, oldest, kept


class StreamIndex:
    """Every stream a shard has seen, by id."""

    def __init__(self) -> None:
        self._streams: Dict[int, Stream] = {}

    def get(self, stream_id: int) -> Optional[Stream]:
        """The stream, or None if it never sent a step."""
        return self._streams.get(stream_id)

    def restart(self, stream_id: int, start: int) -> Stream:
        """A fresh stream whose next step is ``start`` (a new stream or an actor restart)."""
        stream = Stream(next_step=start, epoch_first=start)
        self._streams[stream_id] = stream
        return stream

    def forget_before(self, limit: int) -> None:
        """Drops runs whose steps all have ``abs < limit`` (overwritten)."""
        for st in self._streams.values():
            while st.runs and st.runs[0][1] + st.runs[0][2] <= limit:
                st.runs.pop(0)

    def positions(self) -> Dict[int, Tuple[int, int]]:
        """``{stream_id: (epoch_first, next_step)}`` for every known stream."""
        return {s: (st.epoch_first, st.next_step) for s, st in self._streams.items()}

    def __iter__(self) -> Iterator[int]:
        return iter(self._streams)

    def table(self) -> Dict[str, np.ndarray]:
        """The index as ``STREAM_FIELDS`` and ``RUN_FIELDS`` vectors (:func:`encode_streams`)."""
        ids = sorted(self._streams)
        st = [self._streams[i] for i in ids]
        runs = [(i, *r) for i in ids for r in self._streams[i].runs]
        return encode_streams(ids, [s.next_step for s in st], [s.epoch_first for s in st], runs)

    @classmethod
    def from_table(cls, streams: Mapping[str, np.ndarray]) -> "StreamIndex":
        """Inverse of :meth:`table`.

        Raises:
          ValueError: on a run of a stream the table does not list.
        """
        index = cls()
        for sid, nxt, ef in zip(streams["stream_id"].tolist(), streams["next_step"].tolist(),
                                streams["epoch_first"].tolist()):
            index._streams[sid] = Stream(next_step=nxt, epoch_first=ef)
        for sid, lo, alo, n in zip(*(streams[f].tolist() for f in RUN_FIELDS)):
            if sid not in index._streams:
                raise ValueError(f"streams: run of unknown stream {sid}")
            index._streams[sid].runs.append((lo, alo, n))
        return index


def encode_streams(stream_ids: Sequence[int], next_steps: Sequence[int],
                   epoch_firsts: Sequence[int],
                   runs: Sequence[Tuple[int, int, int, int]]) -> Dict[str, np.ndarray]:
    """The stream table of a ``ShardState``.

    Args:
      stream_ids: stream ids, sorted.
      next_steps: each stream's next step number.
      epoch_firsts: each stream's first step since its last reset.
      runs: ``(stream_id, step_lo, abs_lo, n)`` rows, sorted by stream then step.

    Returns:
      ``STREAM_FIELDS`` and ``RUN_FIELDS`` as ``<int64>`` vectors.
    """
    ra = np.asarray(runs, np.int64).reshape(-1, 4)
    return {"stream_id": np.asarray(stream_ids, np.int64),
            "next_step": np.asarray(next_steps, np.int64),
            "epoch_first": np.asarray(epoch_firsts, np.int64),
            "run_stream": ra[:, 0].copy(), "run_step_lo": ra[:, 1].copy(),
            "run_abs_lo": ra[:, 2].copy(), "run_n": ra[:, 3].copy()}

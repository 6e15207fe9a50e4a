"""A replay shard: prioritized sequence replay that stores every observation once.

R2D2 (Kapturowski et al., 2019) replays fixed-length sequences of
``sequence_length = burn_in + trace_length`` steps (paper: 40 + 80 = 120) that
start every ``sequence_period`` steps (paper: 40), so each step lies in three
sequences; with 4-frame stacks every frame would appear in twelve stacks. A
shard therefore never copies steps into sequences. It keeps

* a **step ring** of ``capacity_observations`` rows: row ``r`` holds one step's
  newest frame ``o_t`` (only the newest one when frames are stacked), ``a_t``,
  ``r_t``, ``discount_t`` and ``first_t``. Steps are written in arrival order
  at ``abs % C`` where ``abs`` counts every step ever written (``write``);
* a **sequence table** of ``capacity_sequences`` slots: per sequence the ring
  rows it references (``pos``), its valid length, stream id, first step
  number, the stored LSTM state at its start, ``prev_action``/``prev_reward``
  before its first step, the raw priority, a generation counter and a
  sum-tree leaf ``priority ** priority_exponent``.

How a sequence references the ring (frame_stack k = 3, sequence_length T = 4;
``S`` marks the stream's steps, ``x`` another stream's, ``*`` an episode
start; ``C`` in ``pos`` is the sentinel row, an all-zero frame)::

    ring row:   0    1    2    3    4    5    6    7    8    9
    step:      S10* S11  x    x    S12  S13  S14  x    S15  S16
                ^    ^              ^    ^    ^         ^
    sequence (stream S, start_step 12, length 4):
      pos = [ 0,  1 | 4,  5,  6,  8 ]       k-1 = 2 stack rows, then T step rows
             pre-start   t=0 t=1 t=2 t=3
      stack(t) = frames[pos[t : t + k]]     e.g. stack(0) = rows 0, 1, 4
    sequence (stream S, start_step 11, length 2, T = 4):
      pos = [ C,  0 | 1,  4,  C,  C ]       step 10 starts the episode, so the
                                            row before it is the fill (zeros);
                                            t >= length is padding (all C)

The ``k - 1`` pre-start rows are the frames the first stack needs; they are
looked up when the sequence is inserted, following ``first`` flags backwards
so that a stack never reaches across an episode start: before the episode's
first frame the stack holds zeros (``stack_fill="zeros"``, the default) or
repeats that first frame (``stack_fill="first"``). Sample-time stacking is then
a single fancy-indexing gather ``frames[idx]`` with ``idx`` of shape
``[T, B, k]`` built by a sliding window over ``pos``.

Eviction is FIFO and can never leave a live sequence pointing at overwritten
rows: each sequence stores ``oldest``, the smallest ``abs`` it references
(pre-start rows included), and before ``add_steps`` overwrites the steps with
``abs < write + N - C`` every live sequence with ``oldest`` below that bound is
evicted (its sum-tree leaf set to 0). Sequence slots are themselves reused in
FIFO order (slot = insertion counter mod capacity_sequences). A sequence
whose steps were already overwritten when it arrives (possible only when the
ring is small compared to how far actors lag) is not stored: its key is -1
and ``num_dropped_sequences`` counts it.

The insert protocol follows what an actor stream sends. Each actor environment
is a *stream* with an integer id, always routed to the same shard
(``shard_for_stream``); its steps are numbered consecutively. ``add_steps``
appends new steps; ``add_sequences`` declares sequences over steps already
added. A stream remembers, per contiguous *run* of its steps in the ring,
``(first step number, abs of that step, count)``, which is how a step number
is turned into a ring row. Overlapping sequences thus share rows and every
step travels to the shard once. An ``add_steps`` call whose
``first_step_index`` is not the stream's next step number is accepted only if
it starts an episode (``first[0]``); it then *resets* the stream (an actor
restart): old runs are forgotten (already stored sequences keep their rows)
and later sequences may reference only the new steps.

Keys are ``generation << 32 | slot``. A slot's generation is incremented every
time it receives a new sequence, so ``update_priorities`` recognises keys
whose slot was evicted (not live) or reused (other generation) since they
were sampled and drops them silently; keys that were never issued raise.

Every public mutator validates all of its inputs before it changes anything,
so a ``ValueError`` (which names the offending field) leaves the shard exactly
as it was.

The complete state is an explicit record (``ShardState``): ring fields,
sequence fields, per-slot fields, stream tables, counters and the RNG state.
``r2d2_hpc.replay.snapshot`` maps it to HDF5 files; the ring and the sequence
table are split into fixed *segments* whose versions (``mutation`` counter at
their last write) let a snapshot rewrite only what changed.
"""
from __future__ import annotations

import dataclasses
import math
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

import numpy as np

from r2d2_hpc.replay.sampling import ShardStats
from r2d2_hpc.replay.sumtree import SumTree
from r2d2_hpc.types import SequenceBatch

__all__ = [
    "STEP_FIELDS", "SEQUENCE_FIELDS", "SLOT_FIELDS", "STREAM_FIELDS", "RUN_FIELDS",
    "ShardSpec", "ShardState", "ReplayShard", "ShardSource", "make_keys", "split_keys",
    "shard_for_stream", "build_resharded", "reshard",
]

#: Fields of the step ring, ``[capacity_observations, ...]``.
STEP_FIELDS: Tuple[str, ...] = ("frames", "action", "reward", "discount", "first")
#: Large per-sequence fields, written once when a sequence is inserted.
SEQUENCE_FIELDS: Tuple[str, ...] = ("pos", "length", "start_step", "state_h", "state_c",
                                    "prev_action", "prev_reward")
#: Small per-slot fields, ``[capacity_sequences]``.
SLOT_FIELDS: Tuple[str, ...] = ("stream", "oldest", "priority", "generation", "live",
                                "tree_leaves")
#: Per-stream table, one row per known stream (sorted by id).
STREAM_FIELDS: Tuple[str, ...] = ("stream_id", "next_step", "epoch_first")
#: Runs of consecutive steps of one stream stored at consecutive ``abs``.
RUN_FIELDS: Tuple[str, ...] = ("run_stream", "run_step_lo", "run_abs_lo", "run_n")

_SLOT_BITS = 32
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_STACK_FILLS = ("zeros", "first")
_OBS_DTYPES = ("uint8", "float32")
#: Default segment sizes aim at this many bytes per segment file.
_STEP_SEGMENT_BYTES = 8 << 20
_SEQUENCE_SEGMENT_BYTES = 4 << 20
#: Priority given to new sequences before any priority has been seen.
INITIAL_MAX_PRIORITY = 1.0


def make_keys(slots: np.ndarray, generations: np.ndarray) -> np.ndarray:
    """Packs replay keys ``generation << 32 | slot``.

    Args:
      slots: ``<int>[N]`` slot indices, ``< 2**32``.
      generations: ``<int>[N]`` slot generations, ``< 2**31``.

    Returns:
      ``<int64>[N]`` keys.
    """
    return (np.asarray(generations, np.int64) << _SLOT_BITS) | np.asarray(slots, np.int64)


def split_keys(keys: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Inverse of ``make_keys``.

    Args:
      keys: ``<int64>[N]`` non-negative keys.

    Returns:
      ``(slots <int64>[N], generations <int64>[N])``.
    """
    k = np.asarray(keys, np.int64)
    return k & _SLOT_MASK, k >> _SLOT_BITS


def shard_for_stream(stream_id: int, num_shards: int) -> int:
    """The shard that owns an actor stream: ``stream_id mod num_shards``.

    Actors route every message of a stream to this shard, and re-sharding uses
    the same rule, so a stream's overlapping steps stay deduplicated together.

    Args:
      stream_id: non-negative stream id.
      num_shards: number of replay shards, ``>= 1``.

    Returns:
      The shard index in ``[0, num_shards)``.
    """
    return int(stream_id) % int(num_shards)


# ----------------------------------------------------------------------------
# Layout and state records
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSpec:
    """Immutable layout of a shard (everything but its contents)."""

    frame_shape: Tuple[int, ...]
    """Shape of one stored frame, e.g. (84, 84) for Atari or (D,) for vectors."""
    obs_dtype: str
    """'uint8' (frames) or 'float32' (vector observations)."""
    frame_stack: int
    """Frames per observation k; 1 = no stacking (paper: 4, as Ape-X)."""
    stack_fill: str
    """Stack slots before an episode's first frame: 'zeros' or 'first' (repeat it)."""
    capacity_observations: int
    """Rows of the step ring (each one stored frame)."""
    capacity_sequences: int
    """Sequence slots."""
    sequence_length: int
    """Stored steps per sequence, burn_in + trace_length (paper: 40 + 80 = 120)."""
    state_size: int
    """LSTM units H of the stored recurrent state (paper: 512)."""
    priority_exponent: float
    """alpha: the sum-tree holds priority ** alpha (paper Table 2: 0.9)."""
    segment_observations: int
    """Ring rows per snapshot segment."""
    segment_sequences: int
    """Sequence slots per snapshot segment."""

    @property
    def obs_shape(self) -> Tuple[int, ...]:
        """Shape of one observation: ``(k, *frame_shape)``, or ``frame_shape`` if k = 1."""
        if self.frame_stack == 1:
            return tuple(self.frame_shape)
        return (self.frame_stack,) + tuple(self.frame_shape)

    @property
    def span(self) -> int:
        """Ring rows referenced per sequence: ``frame_stack - 1 + sequence_length``."""
        return self.frame_stack - 1 + self.sequence_length

    @property
    def frame_bytes(self) -> int:
        """Bytes of one stored frame."""
        return int(np.prod(self.frame_shape, dtype=np.int64)) * np.dtype(self.obs_dtype).itemsize

    @property
    def num_step_segments(self) -> int:
        """Number of ring segments."""
        return -(-self.capacity_observations // self.segment_observations)

    @property
    def num_sequence_segments(self) -> int:
        """Number of sequence-table segments."""
        return -(-self.capacity_sequences // self.segment_sequences)

    def step_segment_rows(self, segment: int) -> Tuple[int, int]:
        """Ring rows ``[lo, hi)`` of a segment."""
        lo = segment * self.segment_observations
        return lo, min(self.capacity_observations, lo + self.segment_observations)

    def sequence_segment_rows(self, segment: int) -> Tuple[int, int]:
        """Sequence slots ``[lo, hi)`` of a segment."""
        lo = segment * self.segment_sequences
        return lo, min(self.capacity_sequences, lo + self.segment_sequences)

    def field_layout(self) -> Dict[str, Tuple[Tuple[int, ...], np.dtype]]:
        """Row shape and dtype of every ring and sequence field."""
        h = (self.state_size,)
        return {
            "frames": (tuple(self.frame_shape), np.dtype(self.obs_dtype)),
            "action": ((), np.dtype(np.int64)),
            "reward": ((), np.dtype(np.float32)),
            "discount": ((), np.dtype(np.float32)),
            "first": ((), np.dtype(np.bool_)),
            "pos": ((self.span,), np.dtype(np.int32)),
            "length": ((), np.dtype(np.int32)),
            "start_step": ((), np.dtype(np.int64)),
            "state_h": (h, np.dtype(np.float32)),
            "state_c": (h, np.dtype(np.float32)),
            "prev_action": ((), np.dtype(np.int64)),
            "prev_reward": ((), np.dtype(np.float32)),
            "stream": ((), np.dtype(np.int64)),
            "oldest": ((), np.dtype(np.int64)),
            "priority": ((), np.dtype(np.float64)),
            "generation": ((), np.dtype(np.int64)),
            "live": ((), np.dtype(np.bool_)),
            "tree_leaves": ((), np.dtype(np.float64)),
        }

    def to_dict(self) -> Dict[str, Any]:
        """JSON-able dict (inverse of ``from_dict``)."""
        d = dataclasses.asdict(self)
        d["frame_shape"] = list(self.frame_shape)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ShardSpec":
        """Rebuilds and validates a spec from ``to_dict`` output.

        Raises:
          ValueError: on missing/unknown keys or invalid values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        if set(d) != names:
            raise ValueError(f"spec: expected keys {sorted(names)}, got {sorted(d)}")
        kw = dict(d)
        kw["frame_shape"] = tuple(int(x) for x in d["frame_shape"])
        spec = cls(**kw)
        errors = spec.errors()
        if errors:
            raise ValueError("invalid replay shard spec: " + "; ".join(errors))
        return spec

    def errors(self) -> List[str]:
        """Every problem with this spec, each naming its field (empty if valid)."""
        e: List[str] = []

        def pos_int(name: str, value: Any) -> bool:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                e.append(f"{name}: must be a positive int, got {value!r}")
                return False
            return True

        if not self.frame_shape or not all(
                isinstance(x, (int, np.integer)) and x >= 1 for x in self.frame_shape):
            e.append(f"frame_shape: must be a non-empty tuple of positive ints, "
                     f"got {self.frame_shape!r}")
        if self.obs_dtype not in _OBS_DTYPES:
            e.append(f"obs_dtype: must be one of {_OBS_DTYPES}, got {self.obs_dtype!r}")
        if self.stack_fill not in _STACK_FILLS:
            e.append(f"stack_fill: must be one of {_STACK_FILLS}, got {self.stack_fill!r}")
        valid = {n: pos_int(n, getattr(self, n)) for n in (
            "frame_stack", "capacity_observations", "capacity_sequences", "sequence_length",
            "state_size", "segment_observations", "segment_sequences")}
        if not (isinstance(self.priority_exponent, (float, int)) and
                math.isfinite(self.priority_exponent) and self.priority_exponent >= 0):
            e.append(f"priority_exponent: must be a finite float >= 0, "
                     f"got {self.priority_exponent!r}")
        if valid["frame_stack"] and valid["sequence_length"] and \
                valid["capacity_observations"]:
            if self.capacity_observations < self.span:
                e.append(f"capacity_observations: {self.capacity_observations} cannot hold one "
                         f"sequence ({self.span} rows = frame_stack - 1 + sequence_length)")
        if valid["capacity_observations"] and self.capacity_observations >= 2 ** 31 - 1:
            e.append(f"capacity_observations: {self.capacity_observations} must be < 2**31-1")
        if valid["capacity_sequences"] and self.capacity_sequences >= 2 ** 31:
            e.append(f"capacity_sequences: {self.capacity_sequences} must be < 2**31")
        return e


@dataclass
class ShardState:
    """Explicit record of everything a shard holds (what snapshots save).

    ``steps`` fields are ``[capacity_observations, ...]``, ``sequences`` and
    ``slots`` fields ``[capacity_sequences, ...]`` (layout in
    ``ShardSpec.field_layout``); ``streams`` holds ``STREAM_FIELDS`` and
    ``RUN_FIELDS`` as ``<int64>`` vectors. ``counters``: ``write``,
    ``seq_write``, ``max_priority``, ``num_dropped_sequences``, ``mutation``,
    ``snapshot_id``, ``snapshot_uid``. Arrays returned by
    ``ReplayShard.get_state`` are views of the live storage; call ``copy()``
    to keep them.
    """

    spec: ShardSpec
    steps: Dict[str, np.ndarray]
    sequences: Dict[str, np.ndarray]
    slots: Dict[str, np.ndarray]
    streams: Dict[str, np.ndarray]
    counters: Dict[str, Union[int, float, str]]
    rng_state: Dict[str, Any]
    step_segment_versions: np.ndarray
    sequence_segment_versions: np.ndarray

    def copy(self) -> "ShardState":
        """Deep copy (arrays copied)."""
        cp = lambda d: {k: np.array(v, copy=True) for k, v in d.items()}  # noqa: E731
        return ShardState(self.spec, cp(self.steps), cp(self.sequences), cp(self.slots),
                          cp(self.streams), dict(self.counters), _copy_json(self.rng_state),
                          self.step_segment_versions.copy(),
                          self.sequence_segment_versions.copy())

    def equals(self, other: "ShardState") -> bool:
        """Exact equality of every array, counter and the RNG state."""
        if self.spec != other.spec or self.counters != other.counters:
            return False
        if self.rng_state != other.rng_state:
            return False
        for a, b in ((self.steps, other.steps), (self.sequences, other.sequences),
                     (self.slots, other.slots), (self.streams, other.streams)):
            if a.keys() != b.keys():
                return False
            for k in a:
                if a[k].dtype != b[k].dtype or not np.array_equal(a[k], b[k]):
                    return False
        return (np.array_equal(self.step_segment_versions, other.step_segment_versions) and
                np.array_equal(self.sequence_segment_versions, other.sequence_segment_versions))


def _copy_json(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _copy_json(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_copy_json(v) for v in d]
    return d


@dataclass
class _Stream:
    """Insert bookkeeping of one actor stream."""

    next_step: int
    """Number of the next step the stream will send."""
    epoch_first: int
    """First step number since the stream's last reset (an episode start)."""
    runs: List[Tuple[int, int, int]] = field(default_factory=list)
    """``(step_lo, abs_lo, n)``: steps ``step_lo + i`` live at ``abs_lo + i``."""


# ----------------------------------------------------------------------------
# Input validation helpers (all raise ValueError naming the field)
# ----------------------------------------------------------------------------


def _int_scalar(where: str, name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: {name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{where}: {name}: must be >= {minimum}, got {value}")
    return int(value)


def _array(where: str, name: str, value: Any, shape: Tuple[int, ...], kind: str) -> np.ndarray:
    """Checks shape and dtype kind ('i' integer, 'f' float, 'b' bool) of an array-like."""
    arr = np.asarray(value)
    if arr.shape != tuple(shape):
        raise ValueError(f"{where}: {name}: expected shape {tuple(shape)}, got {arr.shape}")
    ok = {"i": arr.dtype.kind in "iu", "f": arr.dtype.kind == "f", "b": arr.dtype == np.bool_}
    if not ok[kind]:
        want = {"i": "an integer", "f": "a floating", "b": "a bool"}[kind]
        raise ValueError(f"{where}: {name}: expected {want} dtype, got {arr.dtype}")
    return arr


def _finite_f32(where: str, name: str, arr: np.ndarray) -> np.ndarray:
    out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        i = np.unravel_index(int(np.flatnonzero(bad.reshape(-1))[0]), out.shape)
        raise ValueError(f"{where}: {name}: must be finite (as float32), "
                         f"got {arr[i]!r} at index {tuple(int(x) for x in i)}")
    return out


def _priorities(where: str, name: str, value: Any, n: int) -> np.ndarray:
    arr = _array(where, name, value, (n,), "f").astype(np.float64)
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: {name}: must be finite and >= 0, got {arr[i]!r} at index {i}")
    return arr


# ----------------------------------------------------------------------------
# The shard
# ----------------------------------------------------------------------------


class ReplayShard:
    """Prioritized sequence replay over a step ring (see the module docstring).

    Attributes:
      spec: the shard's layout.
    """

    def __init__(self, frame_shape: Sequence[int], *, capacity_observations: int,
                 capacity_sequences: int, sequence_length: int, state_size: int,
                 obs_dtype: Union[str, np.dtype, type] = np.uint8, frame_stack: int = 1,
                 stack_fill: str = "zeros", priority_exponent: float = 0.9, seed: int = 0,
                 segment_observations: Optional[int] = None,
                 segment_sequences: Optional[int] = None) -> None:
        """Allocates an empty shard.

        Args:
          frame_shape: shape of one stored frame, e.g. ``(84, 84)`` or ``(D,)``.
          capacity_observations: rows of the step ring (stored frames).
          capacity_sequences: sequence slots (paper layout: one per
            ``sequence_period`` observations).
          sequence_length: steps per sequence, burn-in + trace (paper: 120).
          state_size: LSTM units of the stored state (paper: 512).
          obs_dtype: ``uint8`` (frames) or ``float32`` (vector observations).
          frame_stack: frames per observation; 1 = no stacking (paper: 4).
          stack_fill: stack slots before an episode's first frame hold
            ``"zeros"`` or repeat the ``"first"`` frame.
          priority_exponent: alpha; the tree stores ``p ** alpha`` (paper: 0.9).
          seed: seed of the shard's own ``np.random.Generator`` (PCG64).
          segment_observations: ring rows per snapshot segment (default: about
            8 MiB of frames).
          segment_sequences: sequence slots per snapshot segment (default:
            about 4 MiB).

        Raises:
          ValueError: listing every invalid argument.
        """
        try:
            dtype_name = np.dtype(obs_dtype).name
        except TypeError:
            dtype_name = str(obs_dtype)
        shape = tuple(frame_shape)
        frame_bytes = (int(np.prod(shape, dtype=np.int64)) *
                       (np.dtype(dtype_name).itemsize if dtype_name in _OBS_DTYPES else 1))
        if segment_observations is None and isinstance(capacity_observations, int):
            segment_observations = max(1, min(capacity_observations,
                                              _STEP_SEGMENT_BYTES // max(1, frame_bytes)))
        if segment_sequences is None and isinstance(capacity_sequences, int):
            row = (frame_stack - 1 + sequence_length) * 4 + 8 * state_size + 40 \
                if isinstance(frame_stack, int) and isinstance(sequence_length, int) and \
                isinstance(state_size, int) else 1
            segment_sequences = max(1, min(capacity_sequences,
                                           _SEQUENCE_SEGMENT_BYTES // max(1, row)))
        spec = ShardSpec(shape, dtype_name, frame_stack, stack_fill, capacity_observations,
                         capacity_sequences, sequence_length, state_size,
                         float(priority_exponent) if isinstance(priority_exponent, (int, float))
                         else priority_exponent, segment_observations, segment_sequences)
        errors = spec.errors()
        if errors:
            raise ValueError("ReplayShard: " + "; ".join(errors))
        self._allocate(spec, seed)

    @classmethod
    def from_spec(cls, spec: ShardSpec, seed: int = 0) -> "ReplayShard":
        """An empty shard with the given layout."""
        errors = spec.errors()
        if errors:
            raise ValueError("ReplayShard: " + "; ".join(errors))
        shard = cls.__new__(cls)
        shard._allocate(spec, seed)
        return shard

    def _allocate(self, spec: ShardSpec, seed: int) -> None:
        self.spec = spec
        C, S = spec.capacity_observations, spec.capacity_sequences
        self._C, self._S = C, S
        self._T, self._k = spec.sequence_length, spec.frame_stack
        self._alpha = float(spec.priority_exponent)
        lay = spec.field_layout()
        # Ring arrays carry one extra all-zero row C: the sentinel that padding
        # and stack fill point at, so sampling is one gather with no masking.
        self._ring: Dict[str, np.ndarray] = {
            n: np.zeros((C + 1,) + lay[n][0], lay[n][1]) for n in STEP_FIELDS}
        self._seq: Dict[str, np.ndarray] = {
            n: np.zeros((S,) + lay[n][0], lay[n][1]) for n in SEQUENCE_FIELDS}
        self._seq["pos"].fill(C)
        self._slot: Dict[str, np.ndarray] = {
            n: np.zeros((S,) + lay[n][0], lay[n][1]) for n in SLOT_FIELDS if n != "tree_leaves"}
        self._tree = SumTree(S)
        self._streams: Dict[int, _Stream] = {}
        self._write = 0
        self._seq_write = 0
        self._count = 0
        self._max_priority = INITIAL_MAX_PRIORITY
        self._num_dropped = 0
        self._mutation = 0
        self._snapshot_id = 0
        self._snapshot_uid = ""
        self._step_versions = np.zeros(spec.num_step_segments, np.int64)
        self._seq_versions = np.zeros(spec.num_sequence_segments, np.int64)
        self._rng = np.random.default_rng(seed)

    # ------------------------------------------------------------------ info
    @property
    def count(self) -> int:
        """Number of live sequences."""
        return self._count

    def __len__(self) -> int:
        return self._count

    @property
    def num_steps(self) -> int:
        """Number of ring rows holding a step (``min(write, capacity)``)."""
        return min(self._write, self._C)

    @property
    def total_steps_written(self) -> int:
        """Steps ever written (the ``abs`` of the next step)."""
        return self._write

    @property
    def num_dropped_sequences(self) -> int:
        """Sequences not stored because their steps had already been overwritten."""
        return self._num_dropped

    @property
    def max_priority(self) -> float:
        """Largest raw priority ever given (initially 1.0); new sequences without one get it."""
        return self._max_priority

    @property
    def rng(self) -> np.random.Generator:
        """The shard's own generator (used by ``sample`` when none is passed)."""
        return self._rng

    def streams(self) -> Dict[int, Tuple[int, int]]:
        """``{stream_id: (epoch_first, next_step)}`` for every known stream."""
        return {s: (st.epoch_first, st.next_step) for s, st in self._streams.items()}

    def stats(self) -> ShardStats:
        """Totals for exact cross-shard sampling.

        Returns:
          ``ShardStats(total_priority = sum of live p ** alpha, count = live
          sequences, max_priority = max raw priority ever given)``.
        """
        return ShardStats(total_priority=self._tree.total, count=self._count,
                          max_priority=self._max_priority)

    def storage_bytes(self) -> Dict[str, int]:
        """Bytes allocated per storage group (ring, sequences, slots, tree)."""
        return {
            "ring": sum(a.nbytes for a in self._ring.values()),
            "sequences": sum(a.nbytes for a in self._seq.values()),
            "slots": sum(a.nbytes for a in self._slot.values()),
            "tree": int(self._tree.nodes.nbytes),
        }

    # ----------------------------------------------------------------- insert
    def add_steps(self, stream_id: int, first_step_index: int, obs: np.ndarray,
                  action: np.ndarray, reward: np.ndarray, discount: np.ndarray,
                  first: np.ndarray) -> None:
        """Appends ``N`` consecutive steps of one actor stream to the ring.

        Args:
          stream_id: non-negative stream id.
          first_step_index: number of ``obs[0]`` in the stream. Must equal the
            stream's next step number, unless ``first[0]`` is True, which
            (re)starts the stream there (a new stream, or an actor restart).
          obs: ``<obs_dtype>[N, *frame_shape]`` newest frame of each step.
          action: ``<int>[N]`` ``a_t >= 0``.
          reward: ``<float>[N]`` ``r_t`` (finite).
          discount: ``<float>[N]`` ``discount_t`` in [0, 1] (0 if the episode
            terminated after ``a_t``).
          first: ``<bool>[N]`` True where step t starts an episode.

        Raises:
          ValueError: naming the field, with the shard unchanged.
        """
        w = "add_steps"
        sid = _int_scalar(w, "stream_id", stream_id)
        start = _int_scalar(w, "first_step_index", first_step_index)
        if not isinstance(obs, np.ndarray):
            raise ValueError(f"{w}: obs: expected a numpy array, got {type(obs).__name__}")
        if obs.ndim != 1 + len(self.spec.frame_shape) or obs.shape[1:] != self.spec.frame_shape:
            want = ", ".join(map(str, self.spec.frame_shape))
            raise ValueError(f"{w}: obs: expected shape (N, {want}), got {obs.shape}")
        if obs.dtype != np.dtype(self.spec.obs_dtype):
            raise ValueError(f"{w}: obs: expected dtype {self.spec.obs_dtype}, got {obs.dtype}")
        n = obs.shape[0]
        if n < 1:
            raise ValueError(f"{w}: obs: expected at least one step, got 0")
        if n > self._C:
            raise ValueError(f"{w}: obs: {n} steps exceed capacity_observations {self._C}")
        act = _array(w, "action", action, (n,), "i")
        if (act < 0).any():
            raise ValueError(f"{w}: action: must be >= 0, got {act.min()}")
        if act.dtype == np.uint64 and (act > np.iinfo(np.int64).max).any():
            raise ValueError(f"{w}: action: values exceed int64")
        rew = _finite_f32(w, "reward", _array(w, "reward", reward, (n,), "f"))
        disc = _finite_f32(w, "discount", _array(w, "discount", discount, (n,), "f"))
        if ((disc < 0) | (disc > 1)).any():
            bad_d = disc[(disc < 0) | (disc > 1)][0]
            raise ValueError(f"{w}: discount: must lie in [0, 1], got {bad_d}")
        fst = _array(w, "first", first, (n,), "b")
        if obs.dtype.kind == "f" and not np.isfinite(obs).all():
            raise ValueError(f"{w}: obs: must be finite")
        stream = self._streams.get(sid)
        reset = stream is None or start != stream.next_step
        if reset and not fst[0]:
            if stream is None:
                raise ValueError(f"{w}: first: stream {sid} is new, so its first step must "
                                 f"start an episode (first[0] = True)")
            raise ValueError(f"{w}: first_step_index: stream {sid} expects step "
                             f"{stream.next_step}, got {start}; only an episode start "
                             f"(first[0] = True) may restart a stream")

        # ---- everything validated: mutate.
        C = self._C
        new_write = self._write + n
        limit = new_write - C  # steps with abs < limit get overwritten
        if limit > 0:
            doomed = self._slot["live"] & (self._slot["oldest"] < limit)
            if doomed.any():
                self._evict(np.flatnonzero(doomed))
        r0 = self._write % C
        n1 = min(n, C - r0)
        for name, src in (("frames", obs), ("action", act), ("reward", rew),
                          ("discount", disc), ("first", fst)):
            dst = self._ring[name]
            dst[r0:r0 + n1] = src[:n1]
            if n1 < n:
                dst[:n - n1] = src[n1:]
        self._mutation += 1
        g = self.spec.segment_observations
        self._step_versions[r0 // g:(r0 + n1 - 1) // g + 1] = self._mutation
        if n1 < n:
            self._step_versions[0:(n - n1 - 1) // g + 1] = self._mutation
        if reset:
            stream = _Stream(next_step=start, epoch_first=start)
            self._streams[sid] = stream
        assert stream is not None
        runs = stream.runs
        if runs and runs[-1][0] + runs[-1][2] == start and runs[-1][1] + runs[-1][2] == self._write:
            lo, alo, m = runs[-1]
            runs[-1] = (lo, alo, m + n)
        else:
            runs.append((start, self._write, n))
        stream.next_step = start + n
        self._write = new_write
        if limit > 0:
            for st in self._streams.values():
                while st.runs and st.runs[0][1] + st.runs[0][2] <= limit:
                    st.runs.pop(0)

    def _lookup(self, stream: _Stream, steps: np.ndarray) -> np.ndarray:
        """``abs`` of each step number of ``stream``; -1 where not stored (or overwritten)."""
        out = np.full(steps.shape, -1, np.int64)
        if not stream.runs:
            return out
        runs = np.asarray(stream.runs, np.int64)
        i = np.searchsorted(runs[:, 0], steps, side="right") - 1
        ic = np.maximum(i, 0)
        off = steps - runs[ic, 0]
        a = runs[ic, 1] + off
        ok = (i >= 0) & (off < runs[ic, 2]) & (a >= self._write - self._C)
        out[ok] = a[ok]
        return out

    def add_sequences(self, stream_id: int, start_step: np.ndarray, length: np.ndarray,
                      state_h: np.ndarray, state_c: np.ndarray, prev_action: np.ndarray,
                      prev_reward: np.ndarray,
                      priority: Optional[np.ndarray] = None) -> np.ndarray:
        """Declares ``M`` sequences over steps of ``stream_id`` already added.

        Sequence ``m`` covers steps ``start_step[m] .. start_step[m] +
        length[m] - 1``; steps ``length[m] .. sequence_length - 1`` are padding.
        It must not contain an episode start after its first step.

        Args:
          stream_id: the stream whose steps the sequences reference.
          start_step: ``<int>[M]`` step number of each sequence's first step.
          length: ``<int>[M]`` valid steps, ``1 <= length <= sequence_length``.
          state_h: ``<float>[M, H]`` LSTM h before the first step.
          state_c: ``<float>[M, H]`` LSTM c before the first step.
          prev_action: ``<int>[M]`` action before the first step (0 at an
            episode start).
          prev_reward: ``<float>[M]`` reward before the first step.
          priority: ``<float>[M]`` raw priorities ``p >= 0`` (the tree stores
            ``p ** alpha``), or None for the largest priority seen so far.

        Returns:
          ``<int64>[M]`` keys, -1 for a sequence not stored because some of its
          steps (or the frames its first stack needs) were already overwritten.

        Raises:
          ValueError: naming the field, with the shard unchanged.
        """
        w = "add_sequences"
        sid = _int_scalar(w, "stream_id", stream_id)
        stream = self._streams.get(sid)
        if stream is None:
            raise ValueError(f"{w}: stream_id: unknown stream {sid} (add its steps first)")
        starts = np.asarray(start_step)
        if starts.ndim != 1 or starts.shape[0] < 1:
            raise ValueError(f"{w}: start_step: expected shape (M,) with M >= 1, "
                             f"got {starts.shape}")
        m = starts.shape[0]
        if m > self._S:
            raise ValueError(f"{w}: start_step: {m} sequences exceed capacity_sequences {self._S}")
        starts = _array(w, "start_step", starts, (m,), "i").astype(np.int64)
        lens = _array(w, "length", length, (m,), "i").astype(np.int64)
        H = self.spec.state_size
        h = _finite_f32(w, "state_h", _array(w, "state_h", state_h, (m, H), "f"))
        c = _finite_f32(w, "state_c", _array(w, "state_c", state_c, (m, H), "f"))
        pa = _array(w, "prev_action", prev_action, (m,), "i")
        if (pa < 0).any():
            raise ValueError(f"{w}: prev_action: must be >= 0, got {pa.min()}")
        pr = _finite_f32(w, "prev_reward", _array(w, "prev_reward", prev_reward, (m,), "f"))
        prio = None if priority is None else _priorities(w, "priority", priority, m)
        bad = (lens < 1) | (lens > self._T)
        if bad.any():
            raise ValueError(f"{w}: length: must lie in [1, {self._T}], got "
                             f"{lens[bad][0]} at index {int(np.flatnonzero(bad)[0])}")
        bad = starts < stream.epoch_first
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{w}: start_step: {starts[i]} (index {i}) precedes step "
                             f"{stream.epoch_first} where stream {sid} last (re)started")
        bad = starts + lens > stream.next_step
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{w}: start_step: sequence {i} (steps {starts[i]}.."
                             f"{starts[i] + lens[i] - 1}) references steps stream {sid} has "
                             f"not sent (next step is {stream.next_step})")

        k1, C = self._k - 1, self._C
        offs = np.arange(-k1, self._T, dtype=np.int64)
        steps = starts[:, None] + offs[None, :]                       # [M, span]
        in_seq = (offs[None, :] >= 0) & (offs[None, :] < lens[:, None])
        absv = self._lookup(stream, np.where(in_seq | (offs[None, :] < 0), steps, -1))
        kept = ~((absv < 0) & in_seq).any(axis=1)                   # all own steps stored
        rows = np.where(absv >= 0, absv % C, C)
        first_ring = self._ring["first"]
        inner = in_seq & (offs[None, :] > 0) & kept[:, None]
        crossing = inner & first_ring[rows]
        if crossing.any():
            i, j = np.argwhere(crossing)[0]
            raise ValueError(f"{w}: length: sequence {i} (start_step {starts[i]}, length "
                             f"{lens[i]}) crosses the episode start at step {steps[i, j]}")
        pos = np.where(in_seq, rows, C).astype(np.int64)
        oldest = np.where(in_seq, absv, np.iinfo(np.int64).max).min(axis=1)
        # Walk back from the start while the episode continues: the stack of
        # step 0 needs step start-j iff none of steps start-j+1 .. start is first.
        need = kept.copy()
        at_first = first_ring[pos[:, k1]]
        fill = pos[:, k1].copy() if self.spec.stack_fill == "first" else np.full(m, C, np.int64)
        for j in range(1, k1 + 1):
            col = k1 - j
            need &= ~at_first
            a = absv[:, col]
            missing = need & (a < 0)
            kept &= ~missing
            need &= ~missing
            r = np.where(need, a % C, C)
            pos[:, col] = np.where(need, r, fill)
            if self.spec.stack_fill == "first":
                fill = np.where(need, r, fill)
            oldest = np.where(need, np.minimum(oldest, a), oldest)
            at_first = np.where(need, first_ring[r], at_first)

        # ---- everything validated: mutate.
        keys = np.full(m, -1, np.int64)
        idx = np.flatnonzero(kept)
        n = idx.size
        self._num_dropped += m - n
        if n == 0:
            return keys
        slots = (self._seq_write + np.arange(n, dtype=np.int64)) % self._S
        live = self._slot["live"]
        if live[slots].any():
            # their leaves are overwritten by the tree update below
            self._evict(slots[live[slots]], update_tree=False)
        if prio is None:
            p = np.full(n, self._max_priority)
        else:
            p = prio[idx]
            self._max_priority = max(self._max_priority, float(p.max()))
        seq, sl = self._seq, self._slot
        seq["pos"][slots] = pos[idx]
        seq["length"][slots] = lens[idx]
        seq["start_step"][slots] = starts[idx]
        seq["state_h"][slots] = h[idx]
        seq["state_c"][slots] = c[idx]
        seq["prev_action"][slots] = pa[idx]
        seq["prev_reward"][slots] = pr[idx]
        sl["stream"][slots] = sid
        sl["oldest"][slots] = oldest[idx]
        sl["priority"][slots] = p
        sl["generation"][slots] += 1
        sl["live"][slots] = True
        self._tree.update(slots, self._leaf(p))
        self._count += n
        self._seq_write += n
        self._mutation += 1
        self._seq_versions[np.unique(slots // self.spec.segment_sequences)] = self._mutation
        keys[idx] = make_keys(slots, sl["generation"][slots])
        return keys

    def _leaf(self, p: np.ndarray) -> np.ndarray:
        """Sum-tree leaf of raw priorities: ``p ** alpha``."""
        return np.power(np.asarray(p, np.float64), self._alpha)

    def _evict(self, slots: np.ndarray, update_tree: bool = True) -> None:
        self._slot["live"][slots] = False
        self._slot["priority"][slots] = 0.0
        if update_tree:
            self._tree.update(slots, np.zeros(slots.size))
        self._count -= int(slots.size)

    # --------------------------------------------------------------- priority
    def _check_keys(self, where: str, keys: Any) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        arr = np.asarray(keys)
        if arr.ndim != 1:
            raise ValueError(f"{where}: keys: expected shape (K,), got {arr.shape}")
        if arr.size and arr.dtype.kind not in "iu":
            raise ValueError(f"{where}: keys: expected an integer dtype, got {arr.dtype}")
        k = arr.astype(np.int64)
        slots, gens = split_keys(k)
        unknown = (k < 0) | (slots >= self._S) | (gens < 1)
        unknown[~unknown] = gens[~unknown] > self._slot["generation"][slots[~unknown]]
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise ValueError(f"{where}: keys: unknown key {int(k[i])} at index {i} "
                             f"(slot {int(slots[i])}, generation {int(gens[i])}) was never "
                             f"issued by this shard")
        current = (self._slot["generation"][slots] == gens) & self._slot["live"][slots]
        return slots, gens, current

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> int:
        """Sets new raw priorities; keys of evicted or reused slots are dropped.

        If a key occurs more than once, its last priority wins.

        Args:
          keys: ``<int64>[K]`` keys from ``add_sequences`` or ``sample``.
          priorities: ``<float>[K]`` raw priorities ``p >= 0``.

        Returns:
          The number of keys applied (stale ones are not counted).

        Raises:
          ValueError: on a key this shard never issued, a shape/dtype mismatch,
            or a NaN / infinite / negative priority; the shard is unchanged.
        """
        w = "update_priorities"
        slots, _, current = self._check_keys(w, keys)
        p = _priorities(w, "priorities", priorities, slots.size)
        if not current.any():
            return 0
        s, p = slots[current], p[current]
        uniq, first_rev = np.unique(s[::-1], return_index=True)
        pu = p[::-1][first_rev]
        self._slot["priority"][uniq] = pu
        self._tree.update(uniq, self._leaf(pu))
        self._max_priority = max(self._max_priority, float(pu.max()))
        return int(current.sum())

    # --------------------------------------------------------------- sampling
    def sample(self, batch_size: int, rng: Optional[np.random.Generator] = None, *,
               obs_out: Optional[np.ndarray] = None) -> SequenceBatch:
        """Draws ``batch_size`` sequences iid with ``P(i) = p_i**alpha / sum_j p_j**alpha``.

        Args:
          batch_size: B, ``>= 1``.
          rng: generator to draw with; the shard's own (snapshotted) one if None.
          obs_out: optional ``<obs_dtype>[T, B, *obs_shape]`` C-contiguous buffer
            that receives the observations (and is returned as ``obs``).
            Reusing one buffer (e.g. pinned memory) avoids faulting in a fresh
            217 MB array per Atari batch; the caller must be done with the
            previous batch's ``obs`` before sampling into it again.

        Returns:
          ``SequenceBatch`` with ``[T, B, ...]`` arrays, ``obs`` of shape
          ``[T, B, *obs_shape]`` (stacks rebuilt), and shard-local ``probs``.

        Raises:
          ValueError: if ``batch_size < 1``, ``obs_out`` does not fit, or no
            live sequence has positive priority (nothing is drawn then).
        """
        b = _int_scalar("sample", "batch_size", batch_size, minimum=1)
        self._check_obs_out("sample", obs_out, b)
        if self._count == 0 or not self._tree.total > 0.0:
            raise ValueError("sample: the shard holds no sequence with positive priority")
        slots, probs = self._tree.sample(b, self._rng if rng is None else rng)
        return self._gather(slots, probs, obs_out)

    def _check_obs_out(self, where: str, obs_out: Optional[np.ndarray], b: int) -> None:
        if obs_out is None:
            return
        shape = (self._T, b) + self.spec.obs_shape
        if not isinstance(obs_out, np.ndarray) or obs_out.shape != shape or \
                obs_out.dtype != np.dtype(self.spec.obs_dtype) or \
                not obs_out.flags.c_contiguous or not obs_out.flags.writeable:
            got = (f"{obs_out.dtype}{obs_out.shape}" if isinstance(obs_out, np.ndarray)
                   else type(obs_out).__name__)
            raise ValueError(f"{where}: obs_out: expected a writeable C-contiguous "
                             f"{self.spec.obs_dtype} array of shape {shape}, got {got}")

    def read(self, keys: np.ndarray) -> SequenceBatch:
        """The stored sequences of live keys (no randomness); ``probs`` are current.

        Args:
          keys: ``<int64>[B]`` live keys.

        Returns:
          ``SequenceBatch`` like ``sample``.

        Raises:
          ValueError: on an unknown, evicted or reused key.
        """
        slots, _, current = self._check_keys("read", keys)
        if slots.size == 0:
            raise ValueError("read: keys: expected at least one key")
        if not current.all():
            i = int(np.flatnonzero(~current)[0])
            raise ValueError(f"read: keys: key {int(np.asarray(keys)[i])} at index {i} was "
                             f"evicted or its slot reused")
        total = self._tree.total
        probs = self._tree.get(slots) / total if total > 0 else np.zeros(slots.size)
        return self._gather(slots, probs)

    def _gather(self, slots: np.ndarray, probs: np.ndarray,
                obs_out: Optional[np.ndarray] = None) -> SequenceBatch:
        T, k, C = self._T, self._k, self._C
        pos = self._seq["pos"][slots]                                 # [B, span]
        lens = self._seq["length"][slots]
        mask = np.arange(T)[:, None] < lens[None, :]                  # [T, B]
        step_rows = np.ascontiguousarray(pos[:, k - 1:].T)            # [T, B]
        if k > 1:
            idx = np.lib.stride_tricks.sliding_window_view(pos, k, axis=1)  # [B, T, k]
            idx = idx.transpose(1, 0, 2).copy()
            idx[~mask] = C
        else:
            idx = step_rows
        # np.take with mode="clip" writes straight into `out` (mode="raise"
        # would buffer it); every index is already in [0, C].
        shape = idx.shape + self.spec.frame_shape
        obs = obs_out if obs_out is not None else np.empty(shape, self._ring["frames"].dtype)
        np.take(self._ring["frames"], idx, axis=0, out=obs, mode="clip")
        ring = self._ring
        action = ring["action"][step_rows]
        reward = ring["reward"][step_rows]
        prev_action = np.empty_like(action)
        prev_action[0] = self._seq["prev_action"][slots]
        prev_action[1:] = action[:-1]
        prev_reward = np.empty_like(reward)
        prev_reward[0] = self._seq["prev_reward"][slots]
        prev_reward[1:] = reward[:-1]
        return SequenceBatch(
            obs=obs, action=action, reward=reward, discount=ring["discount"][step_rows],
            first=ring["first"][step_rows], mask=mask, prev_action=prev_action,
            prev_reward=prev_reward, state_h=self._seq["state_h"][slots],
            state_c=self._seq["state_c"][slots],
            keys=make_keys(slots, self._slot["generation"][slots]),
            probs=np.asarray(probs, np.float64))

    def live_keys(self) -> np.ndarray:
        """Keys of every live sequence, in slot order."""
        slots = np.flatnonzero(self._slot["live"])
        return make_keys(slots, self._slot["generation"][slots])

    def sequence_info(self, keys: np.ndarray) -> Dict[str, np.ndarray]:
        """Stream id, start step, length and raw priority of live keys.

        Raises:
          ValueError: on an unknown, evicted or reused key.
        """
        slots, _, current = self._check_keys("sequence_info", keys)
        if not current.all():
            raise ValueError("sequence_info: keys: some keys were evicted or reused")
        return {"stream": self._slot["stream"][slots].copy(),
                "start_step": self._seq["start_step"][slots].copy(),
                "length": self._seq["length"][slots].copy(),
                "priority": self._slot["priority"][slots].copy()}

    # ------------------------------------------------------------------ state
    def get_state(self) -> ShardState:
        """The explicit state record; arrays are views of live storage (no copy)."""
        C = self._C
        slots = dict(self._slot)
        slots["tree_leaves"] = self._tree.leaves()
        return ShardState(
            spec=self.spec,
            steps={n: a[:C] for n, a in self._ring.items()},
            sequences=dict(self._seq),
            slots={n: slots[n] for n in SLOT_FIELDS},
            streams=self._stream_table(),
            counters=self._counters(),
            rng_state=_copy_json(self._rng.bit_generator.state),
            step_segment_versions=self._step_versions,
            sequence_segment_versions=self._seq_versions)

    def _counters(self) -> Dict[str, Union[int, float, str]]:
        return {"write": self._write, "seq_write": self._seq_write,
                "max_priority": self._max_priority, "num_dropped_sequences": self._num_dropped,
                "mutation": self._mutation, "snapshot_id": self._snapshot_id,
                "snapshot_uid": self._snapshot_uid}

    def _stream_table(self) -> Dict[str, np.ndarray]:
        ids = sorted(self._streams)
        st = [self._streams[i] for i in ids]
        runs = [(i, *r) for i in ids for r in self._streams[i].runs]
        ra = np.asarray(runs, np.int64).reshape(-1, 4)
        return {"stream_id": np.asarray(ids, np.int64),
                "next_step": np.asarray([s.next_step for s in st], np.int64),
                "epoch_first": np.asarray([s.epoch_first for s in st], np.int64),
                "run_stream": ra[:, 0].copy(), "run_step_lo": ra[:, 1].copy(),
                "run_abs_lo": ra[:, 2].copy(), "run_n": ra[:, 3].copy()}

    def storage_views(self) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """Writable views ``(steps, sequences)`` of the ring and sequence table.

        Used by restore code to read snapshot segments straight into place;
        call ``load_index`` afterwards.
        """
        C = self._C
        return {n: a[:C] for n, a in self._ring.items()}, dict(self._seq)

    def load_index(self, slots: Dict[str, np.ndarray], streams: Dict[str, np.ndarray],
                   counters: Dict[str, Any], rng_state: Dict[str, Any],
                   step_segment_versions: np.ndarray,
                   sequence_segment_versions: np.ndarray) -> None:
        """Installs the small part of a ``ShardState`` (the ring and sequence
        table having been filled through ``storage_views``).

        Raises:
          ValueError: naming the first inconsistent field; the shard may then
            hold a partial state and should be discarded.
        """
        spec, S, C = self.spec, self._S, self._C
        lay = spec.field_layout()
        for n in SLOT_FIELDS:
            a = slots.get(n)
            if a is None:
                raise ValueError(f"slots: missing field {n!r}")
            if a.shape != (S,) or a.dtype != lay[n][1]:
                raise ValueError(f"slots: {n}: expected {lay[n][1]}{(S,)}, got {a.dtype}{a.shape}")
        for n in STREAM_FIELDS + RUN_FIELDS:
            a = streams.get(n)
            if a is None or a.ndim != 1 or a.dtype != np.int64:
                raise ValueError(f"streams: {n}: expected an int64 vector")
        if len({streams[n].shape for n in STREAM_FIELDS}) != 1 or \
                len({streams[n].shape for n in RUN_FIELDS}) != 1:
            raise ValueError("streams: field lengths disagree")
        want = {"write", "seq_write", "max_priority", "num_dropped_sequences", "mutation",
                "snapshot_id", "snapshot_uid"}
        if set(counters) != want:
            raise ValueError(f"counters: expected {sorted(want)}, got {sorted(counters)}")
        if step_segment_versions.shape != (spec.num_step_segments,) or \
                sequence_segment_versions.shape != (spec.num_sequence_segments,):
            raise ValueError("segment versions: wrong length")
        pos = self._seq["pos"]
        if pos.size and (pos.min() < 0 or pos.max() > C):
            raise ValueError(f"sequences: pos: values must lie in [0, {C}]")
        leaves = slots["tree_leaves"]
        live = slots["live"]
        tree = SumTree.from_leaves(leaves)  # validates finite, >= 0
        if (leaves[~live] != 0).any():
            raise ValueError("slots: tree_leaves: non-zero leaf of a dead slot")
        rng = np.random.Generator(getattr(np.random, rng_state["bit_generator"])())
        rng.bit_generator.state = rng_state
        for n in SLOT_FIELDS:
            if n != "tree_leaves":
                self._slot[n][...] = slots[n]
        self._tree = tree
        self._rng = rng
        self._streams = {}
        for sid, nxt, ef in zip(streams["stream_id"].tolist(), streams["next_step"].tolist(),
                                streams["epoch_first"].tolist()):
            self._streams[sid] = _Stream(next_step=nxt, epoch_first=ef)
        for sid, lo, alo, n in zip(*(streams[f].tolist() for f in RUN_FIELDS)):
            if sid not in self._streams:
                raise ValueError(f"streams: run of unknown stream {sid}")
            self._streams[sid].runs.append((lo, alo, n))
        self._write = int(counters["write"])
        self._seq_write = int(counters["seq_write"])
        self._max_priority = float(counters["max_priority"])
        self._num_dropped = int(counters["num_dropped_sequences"])
        self._mutation = int(counters["mutation"])
        self._snapshot_id = int(counters["snapshot_id"])
        self._snapshot_uid = str(counters["snapshot_uid"])
        self._count = int(live.sum())
        self._step_versions[...] = step_segment_versions
        self._seq_versions[...] = sequence_segment_versions

    def set_state(self, state: ShardState) -> None:
        """Replaces the whole content with a copy of ``state`` (same spec).

        Raises:
          ValueError: on a different spec or an inconsistent record.
        """
        if state.spec != self.spec:
            raise ValueError("set_state: spec differs from this shard's")
        steps, seqs = self.storage_views()
        lay = self.spec.field_layout()
        for group, dst in ((state.steps, steps), (state.sequences, seqs)):
            for n, d in dst.items():
                a = group[n]
                if a.shape != d.shape or a.dtype != lay[n][1]:
                    raise ValueError(f"set_state: {n}: expected {d.dtype}{d.shape}, got "
                                     f"{a.dtype}{a.shape}")
        for group, dst in ((state.steps, steps), (state.sequences, seqs)):
            for n, d in dst.items():
                d[...] = group[n]
        self.load_index({n: np.array(a) for n, a in state.slots.items()},
                        {n: np.array(a) for n, a in state.streams.items()},
                        dict(state.counters), _copy_json(state.rng_state),
                        state.step_segment_versions, state.sequence_segment_versions)

    def mark_snapshot(self, snapshot_id: int, snapshot_uid: str) -> None:
        """Records the snapshot this state was last saved as (snapshot code only)."""
        self._snapshot_id = int(snapshot_id)
        self._snapshot_uid = str(snapshot_uid)

    def __repr__(self) -> str:
        s = self.spec
        return (f"ReplayShard(frame_shape={s.frame_shape}, frame_stack={s.frame_stack}, "
                f"capacity_observations={s.capacity_observations}, "
                f"capacity_sequences={s.capacity_sequences}, count={self._count}, "
                f"steps={self.num_steps})")


# ----------------------------------------------------------------------------
# Re-sharding
# ----------------------------------------------------------------------------


class ShardSource(Protocol):
    """Read access to one shard's state (in memory or a snapshot on disk)."""

    spec: ShardSpec

    def slot_table(self) -> Dict[str, np.ndarray]:
        """``SLOT_FIELDS`` arrays."""

    def stream_table(self) -> Dict[str, np.ndarray]:
        """``STREAM_FIELDS`` and ``RUN_FIELDS`` arrays."""

    def counters(self) -> Dict[str, Any]:
        """The counters of ``ShardState``."""

    def read_sequences(self, slots: np.ndarray) -> Dict[str, np.ndarray]:
        """``SEQUENCE_FIELDS`` rows of the given (sorted) slots."""

    def read_steps(self, rows: np.ndarray) -> Dict[str, np.ndarray]:
        """``STEP_FIELDS`` rows of the given (sorted) ring rows, all in one segment."""


class _MemorySource:
    """``ShardSource`` over a shard in memory."""

    def __init__(self, shard: ReplayShard) -> None:
        self._state = shard.get_state()
        self.spec = shard.spec

    def slot_table(self) -> Dict[str, np.ndarray]:
        return self._state.slots

    def stream_table(self) -> Dict[str, np.ndarray]:
        return self._state.streams

    def counters(self) -> Dict[str, Any]:
        return self._state.counters

    def read_sequences(self, slots: np.ndarray) -> Dict[str, np.ndarray]:
        return {n: a[slots] for n, a in self._state.sequences.items()}

    def read_steps(self, rows: np.ndarray) -> Dict[str, np.ndarray]:
        return {n: a[rows] for n, a in self._state.steps.items()}


def _abs_of_rows(rows: np.ndarray, write: int, capacity: int) -> np.ndarray:
    """``abs`` of the step in each ring row: the largest ``a < write`` with ``a % C == row``."""
    return write - 1 - np.mod(write - 1 - rows, capacity)


def build_resharded(sources: Sequence[ShardSource], shard_index: int, num_shards: int, *,
                    capacity_observations: Optional[int] = None,
                    capacity_sequences: Optional[int] = None, seed: int = 0,
                    strict: bool = True,
                    assign: Callable[[int, int], int] = shard_for_stream) -> ReplayShard:
    """Builds shard ``shard_index`` of ``num_shards`` from the contents of ``sources``.

    Keeps every live sequence whose stream maps to ``shard_index``
    (``assign(stream, num_shards)``) with its priority and stored state, the
    ring rows those sequences reference, and each such stream's live steps and
    step numbering (so its actor can continue). Ring rows are copied in the
    order they were written, interleaved across sources by how many steps ago
    they were written, so the FIFO order of eviction is preserved. New keys are
    issued: every slot's generation starts above all source generations, so no
    key from before the re-shard can match.

    Args:
      sources: shards to read (``_MemorySource`` or a snapshot source), all of
        one layout but possibly different capacities.
      shard_index: which target shard to build, in ``[0, num_shards)``.
      num_shards: number of target shards.
      capacity_observations: ring rows of the new shard (default: the sources'
        total divided by ``num_shards``, rounded up).
      capacity_sequences: slots of the new shard (same default rule).
      seed: seed of the new shard's generator.
      strict: raise if the new shard cannot hold everything; else keep the
        newest steps/sequences and count the others in ``num_dropped_sequences``.
      assign: stream -> shard rule (default ``shard_for_stream``).

    Returns:
      The new shard.

    Raises:
      ValueError: on incompatible sources, bad indices, or (strict) overflow.
    """
    if not sources:
        raise ValueError("build_resharded: sources: need at least one source")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"build_resharded: shard_index: {shard_index} not in [0, {num_shards})")
    base = sources[0].spec
    same = ("frame_shape", "obs_dtype", "frame_stack", "stack_fill", "sequence_length",
            "state_size", "priority_exponent")
    for i, src in enumerate(sources):
        for f in same:
            if getattr(src.spec, f) != getattr(base, f):
                raise ValueError(f"build_resharded: source {i}: {f} {getattr(src.spec, f)!r} "
                                 f"differs from source 0's {getattr(base, f)!r}")
    cap_obs = capacity_observations or -(-sum(s.spec.capacity_observations for s in sources)
                                         // num_shards)
    cap_seq = capacity_sequences or -(-sum(s.spec.capacity_sequences for s in sources)
                                      // num_shards)
    spec = dataclasses.replace(
        base, capacity_observations=int(max(cap_obs, base.span)),
        capacity_sequences=int(cap_seq),
        segment_observations=min(base.segment_observations, int(max(cap_obs, base.span))),
        segment_sequences=min(base.segment_sequences, int(cap_seq)))
    target = ReplayShard.from_spec(spec, seed)
    C2, S2 = spec.capacity_observations, spec.capacity_sequences

    # ---- what each source contributes
    sel_slots, seq_rows, seq_age, stream_tabs, row_sets, row_age = [], [], [], [], [], []
    max_gen, max_prio = 0, INITIAL_MAX_PRIORITY
    for src in sources:
        C, S = src.spec.capacity_observations, src.spec.capacity_sequences
        sl, stt, cnt = src.slot_table(), src.stream_table(), src.counters()
        write, seq_write = int(cnt["write"]), int(cnt["seq_write"])
        max_gen = max(max_gen, int(sl["generation"].max()))
        max_prio = max(max_prio, float(cnt["max_priority"]))
        mine = np.array([assign(int(s), num_shards) == shard_index for s in sl["stream"]],
                        dtype=bool) if S else np.zeros(0, bool)
        slots = np.flatnonzero(sl["live"] & mine)
        seqs = src.read_sequences(slots)
        sel_slots.append(slots)
        seq_rows.append(seqs)
        last = seq_write - 1 - np.mod(seq_write - 1 - slots, S)
        seq_age.append(seq_write - last)
        keep_stream = np.array([assign(int(s), num_shards) == shard_index
                                for s in stt["stream_id"]], dtype=bool)
        keep_run = np.isin(stt["run_stream"], stt["stream_id"][keep_stream])
        stream_tabs.append(({n: stt[n][keep_stream] for n in STREAM_FIELDS},
                            {n: stt[n][keep_run] for n in RUN_FIELDS}))
        need = [seqs["pos"][seqs["pos"] < C].reshape(-1).astype(np.int64)]
        oldest_live = write - C
        for alo, n in zip(stt["run_abs_lo"][keep_run].tolist(), stt["run_n"][keep_run].tolist()):
            a = np.arange(max(alo, oldest_live), alo + n, dtype=np.int64)
            need.append(a % C)
        rows = np.unique(np.concatenate(need)) if need else np.zeros(0, np.int64)
        row_sets.append(rows)
        row_age.append(write - _abs_of_rows(rows, write, C))

    # ---- place rows: oldest first across sources; keep the newest C2
    src_of = np.concatenate([np.full(r.size, i) for i, r in enumerate(row_sets)])
    ages = np.concatenate(row_age) if row_age else np.zeros(0, np.int64)
    order = np.lexsort((src_of, -ages))        # by age descending, then source
    total_rows = ages.size
    dropped_rows = max(0, total_rows - C2)
    if dropped_rows and strict:
        raise ValueError(f"build_resharded: capacity_observations: shard {shard_index} needs "
                         f"{total_rows} ring rows but holds {C2}")
    new_row = np.full(total_rows, -1, np.int64)
    new_row[order[dropped_rows:]] = np.arange(total_rows - dropped_rows)
    offsets = np.cumsum([0] + [r.size for r in row_sets])
    remaps = []
    tsteps, tseqs = target.storage_views()
    for i, src in enumerate(sources):
        C = src.spec.capacity_observations
        rows = row_sets[i]
        nr = new_row[offsets[i]:offsets[i + 1]]
        remap = np.full(C + 1, -1, np.int64)
        remap[C] = C2
        remap[rows] = nr
        remaps.append(remap)
        keep = nr >= 0
        rows_k, nr_k = rows[keep], nr[keep]
        seg = rows_k // src.spec.segment_observations
        for s in np.unique(seg):
            part = seg == s
            data = src.read_steps(rows_k[part])
            for n in STEP_FIELDS:
                tsteps[n][nr_k[part]] = data[n]
    n_rows = total_rows - dropped_rows

    # ---- sequences: remap rows, drop those that lost rows, keep the newest S2
    new_pos, ok = [], []
    for i in range(len(sources)):
        npos = remaps[i][seq_rows[i]["pos"].astype(np.int64)]
        new_pos.append(npos)
        ok.append((npos >= 0).all(axis=1))
    okc = np.concatenate(ok) if ok else np.zeros(0, bool)
    lost = int((~okc).sum())
    sage = np.concatenate(seq_age)
    ssrc = np.concatenate([np.full(s.size, i) for i, s in enumerate(sel_slots)])
    cand = np.flatnonzero(okc)
    cand = cand[np.lexsort((ssrc[cand], -sage[cand]))]       # oldest first
    over = max(0, cand.size - S2)
    if (lost or over) and strict:
        raise ValueError(f"build_resharded: capacity_sequences: shard {shard_index} needs "
                         f"{cand.size + lost} slots (and all their rows) but holds {S2} slots, "
                         f"{C2} rows")
    cand = cand[over:]
    seq_off = np.cumsum([0] + [s.size for s in sel_slots])
    gen = max_gen + 1
    tslot = {n: np.zeros((S2,), spec.field_layout()[n][1]) for n in SLOT_FIELDS}
    tslot["generation"][:] = gen - 1
    src_idx = np.searchsorted(seq_off, cand, side="right") - 1
    for i in range(len(sources)):
        pick = src_idx == i
        if not pick.any():
            continue
        tgt = np.flatnonzero(pick)
        local = cand[pick] - seq_off[i]
        for n in SEQUENCE_FIELDS:
            if n == "pos":
                tseqs[n][tgt] = new_pos[i][local]
            else:
                tseqs[n][tgt] = seq_rows[i][n][local]
        sl = sources[i].slot_table()
        orig = sel_slots[i][local]
        for n in ("stream", "priority", "tree_leaves"):
            tslot[n][tgt] = sl[n][orig]
    m = cand.size
    tslot["live"][:m] = True
    tslot["generation"][:m] = gen
    p = tseqs["pos"][:m].astype(np.int64)
    tslot["oldest"][:m] = np.where(p < C2, p, np.iinfo(np.int64).max).min(axis=1)

    # ---- streams: keep the copy whose newest step is most recent
    chosen: Dict[int, Tuple[int, int, int, int]] = {}
    for i, (st_t, _) in enumerate(stream_tabs):
        write = int(sources[i].counters()["write"])
        for sid, nxt, ef in zip(st_t["stream_id"].tolist(), st_t["next_step"].tolist(),
                                st_t["epoch_first"].tolist()):
            runs = stream_tabs[i][1]
            mine = runs["run_stream"] == sid
            newest = int((runs["run_abs_lo"][mine] + runs["run_n"][mine]).max()) - write \
                if mine.any() else -(1 << 62)
            if sid not in chosen or newest > chosen[sid][3]:
                chosen[sid] = (i, nxt, ef, newest)
    runs_out: List[Tuple[int, int, int, int]] = []
    for sid in sorted(chosen):
        i, _, _, _ = chosen[sid]
        C = sources[i].spec.capacity_observations
        write = int(sources[i].counters()["write"])
        runs = stream_tabs[i][1]
        mine = runs["run_stream"] == sid
        for lo, alo, n in zip(runs["run_step_lo"][mine].tolist(), runs["run_abs_lo"][mine].tolist(),
                              runs["run_n"][mine].tolist()):
            skip = max(0, write - C - alo)
            st_num = np.arange(lo + skip, lo + n, dtype=np.int64)
            tr = remaps[i][np.arange(alo + skip, alo + n, dtype=np.int64) % C]
            good = tr >= 0
            st_num, tr = st_num[good], tr[good]
            if st_num.size == 0:
                continue
            brk = np.flatnonzero(np.diff(tr) != 1) + 1
            for a, b in zip(np.r_[0, brk], np.r_[brk, tr.size]):
                runs_out.append((sid, int(st_num[a]), int(tr[a]), int(b - a)))
    runs_out.sort(key=lambda r: (r[0], r[1]))
    ra = np.asarray(runs_out, np.int64).reshape(-1, 4)
    ids = sorted(chosen)
    streams = {"stream_id": np.asarray(ids, np.int64),
               "next_step": np.asarray([chosen[s][1] for s in ids], np.int64),
               "epoch_first": np.asarray([chosen[s][2] for s in ids], np.int64),
               "run_stream": ra[:, 0].copy(), "run_step_lo": ra[:, 1].copy(),
               "run_abs_lo": ra[:, 2].copy(), "run_n": ra[:, 3].copy()}
    vs = np.zeros(spec.num_step_segments, np.int64)
    vs[: -(-n_rows // spec.segment_observations)] = 1
    vq = np.zeros(spec.num_sequence_segments, np.int64)
    vq[: -(-m // spec.segment_sequences)] = 1
    counters = {"write": n_rows, "seq_write": m, "max_priority": max_prio,
                "num_dropped_sequences": lost + over, "mutation": 1, "snapshot_id": 0,
                "snapshot_uid": ""}
    target.load_index(tslot, streams, counters, target.rng.bit_generator.state, vs, vq)
    return target


def reshard(shards: Sequence[ReplayShard], num_shards: int, *, seed: int = 0,
            strict: bool = True, **kwargs: Any) -> List[ReplayShard]:
    """Redistributes in-memory shards over ``num_shards`` new ones by stream id.

    Args:
      shards: the current shards.
      num_shards: S', the number of new shards.
      seed: new shard ``i`` is seeded with ``seed + i``.
      strict: see ``build_resharded``.
      **kwargs: ``capacity_observations``, ``capacity_sequences``, ``assign``.

    Returns:
      The ``num_shards`` new shards.
    """
    sources = [_MemorySource(s) for s in shards]
    return [build_resharded(sources, i, num_shards, seed=seed + i, strict=strict, **kwargs)
            for i in range(num_shards)]


def new_snapshot_uid() -> str:
    """A fresh random snapshot id (does not touch any shard's generator)."""
    return uuid.uuid4().hex

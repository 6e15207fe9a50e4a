"""The storage layout of a replay shard: field tables, keys, the spec and the state record.

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

Keys are ``generation << 32 | slot``. A slot's generation is incremented every
time it receives a new sequence, so ``update_priorities`` recognises keys
whose slot was evicted (not live) or reused (other generation) since they
were sampled and drops them silently; keys that were never issued raise.

The complete state is an explicit record (``ShardState``): ring fields,
sequence fields, per-slot fields, stream tables, counters and the RNG state.
``r2d2_hpc.replay.snapshot`` maps it to HDF5 files; the ring and the sequence
table are split into fixed *segments* whose versions (``mutation`` counter at
their last write) let a snapshot rewrite only what changed.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

import numpy as np

__all__ = [
    "STEP_FIELDS", "SEQUENCE_FIELDS", "SLOT_FIELDS", "STREAM_FIELDS", "RUN_FIELDS",
    "COUNTER_NAMES", "INITIAL_MAX_PRIORITY", "OBS_DTYPES", "STACK_FILLS",
    "STEP_SEGMENT_BYTES", "SEQUENCE_SEGMENT_BYTES", "ShardSpec",
    "ShardState", "copy_json", "make_keys", "split_keys",
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
#: ``ShardSpec.stack_fill`` choices: what a stack holds before an episode's first frame.
STACK_FILLS: Tuple[str, ...] = ("zeros", "first")
#: ``ShardSpec.obs_dtype`` choices.
OBS_DTYPES: Tuple[str, ...] = ("uint8", "float32")
#: Default segment sizes aim at this many bytes per segment file.
STEP_SEGMENT_BYTES = 8 << 20
SEQUENCE_SEGMENT_BYTES = 4 << 20
#: Priority given to new sequences before any priority has been seen.
INITIAL_MAX_PRIORITY = 1.0
#: Keys of ``ShardState.counters``.
COUNTER_NAMES: Tuple[str, ...] = ("write", "seq_write", "max_priority", "num_dropped_sequences",
                                  "mutation", "snapshot_id", "snapshot_uid")


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
        if self.obs_dtype not in OBS_DTYPES:
            e.append(f"obs_dtype: must be one of {OBS_DTYPES}, got {self.obs_dtype!r}")
        if self.stack_fill not in STACK_FILLS:
            e.append(f"stack_fill: must be one of {STACK_FILLS}, got {self.stack_fill!r}")
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
    ``ReplayShard.state()`` are views of the live storage; call ``copy()``
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
                          cp(self.streams), dict(self.counters), copy_json(self.rng_state),
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


def copy_json(d: Any) -> Any:
    """A copy of nested JSON data (dicts and lists copied, leaves shared)."""
    if isinstance(d, dict):
        return {k: copy_json(v) for k, v in d.items()}
    if isinstance(d, list):
        return [copy_json(v) for v in d]
    return d

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

A key names a sequence and the shard that issued it, in one non-negative int64
(:func:`make_keys` packs it, :func:`split_keys` unpacks it)::

    bit:   63 | 62 ........ 51 | 50 ............ 26 | 25 ......... 0
            0 |  shard (12)    |  generation (25)   |  slot (26)

A slot's generation is incremented every time it receives a new sequence, so
``update_priorities`` recognises keys whose slot was evicted (not live) or
reused (other generation) since they were sampled and drops them silently; a
key of this shard that was never issued raises. The shard field lets a learner
send each new priority to the shard that owns the key, and lets a shard refuse
a key it did not issue: ``update_priorities`` drops it and counts it in
``misrouted_updates`` (:func:`match_keys` sorts keys into these cases). The
key holds the generation modulo ``2**25``: a stale key would pass for a current
one only if its slot were refilled a multiple of ``2**25`` times between the
sample and the update. Keys are never saved: a restored shard issues them from
its slots' generations and the shard index it is restored as.

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
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from r2d2_hpc.replay.sumtree import SumTree

__all__ = [
    "STEP_FIELDS", "SEQUENCE_FIELDS", "SLOT_FIELDS", "STREAM_FIELDS", "RUN_FIELDS",
    "COUNTER_NAMES", "INITIAL_MAX_PRIORITY", "OBS_DTYPES", "STACK_FILLS",
    "STEP_SEGMENT_BYTES", "SEQUENCE_SEGMENT_BYTES", "ShardSpec",
    "ShardState", "shard_spec", "copy_json", "make_keys", "split_keys", "keys_by_shard",
    "match_keys", "KeyFields", "KeyMatch", "KEY_SHARD_BITS", "KEY_GENERATION_BITS",
    "KEY_SLOT_BITS", "MAX_SHARDS", "DEMO_TABLE_BIT", "MAX_REPLAY_SHARDS", "demo_table_index",
    "is_demo_key", "sequence_windows",
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

#: Bits of a replay key, low to high: slot, generation (mod 2**25), owner shard.
KEY_SLOT_BITS = 26
KEY_GENERATION_BITS = 25
KEY_SHARD_BITS = 12
#: Values of the key's shard field (a table's ``shard_index``).
MAX_SHARDS = 1 << KEY_SHARD_BITS
#: The shard field's top bit marks a demonstration table (R2D3): replay rank ``s``
#: owns agent table ``s`` and demo table ``s | DEMO_TABLE_BIT``.
DEMO_TABLE_BIT = MAX_SHARDS >> 1
#: Replay shards a job may have.
MAX_REPLAY_SHARDS = DEMO_TABLE_BIT
_SLOT_MASK = (1 << KEY_SLOT_BITS) - 1
_GENERATION_MASK = (1 << KEY_GENERATION_BITS) - 1
_SHARD_SHIFT = KEY_SLOT_BITS + KEY_GENERATION_BITS
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


class KeyFields(NamedTuple):
    """The fields of replay keys (``split_keys``), each ``<int64>[N]``."""

    shard: np.ndarray
    """The shard that issued the key."""
    slot: np.ndarray
    """The sequence slot in that shard."""
    generation: np.ndarray
    """The slot's generation when the key was issued, modulo ``2**KEY_GENERATION_BITS``."""


def make_keys(shard: Union[int, np.ndarray], slots: np.ndarray,
              generations: np.ndarray) -> np.ndarray:
    """Packs replay keys ``shard << 51 | (generation mod 2**25) << 26 | slot``.

    Args:
      shard: the issuing shard, ``0 <= shard < MAX_SHARDS`` (a scalar or ``<int>[N]``).
      slots: ``<int>[N]`` slot indices, ``< 2**26``.
      generations: ``<int>[N]`` slot generations, ``>= 0`` (only the low 25 bits are kept).

    Returns:
      ``<int64>[N]`` non-negative keys.
    """
    return ((np.asarray(shard, np.int64) << _SHARD_SHIFT)
            | ((np.asarray(generations, np.int64) & _GENERATION_MASK) << KEY_SLOT_BITS)
            | np.asarray(slots, np.int64))


def split_keys(keys: np.ndarray) -> KeyFields:
    """Inverse of ``make_keys``.

    Args:
      keys: ``<int64>[N]`` non-negative keys.

    Returns:
      ``KeyFields(shard, slot, generation)``, each ``<int64>[N]``.
    """
    k = np.asarray(keys, np.int64)
    return KeyFields(k >> _SHARD_SHIFT, k & _SLOT_MASK,
                     (k >> KEY_SLOT_BITS) & _GENERATION_MASK)


def demo_table_index(shard: int) -> int:
    """The ``shard_index`` of replay rank ``shard``'s demonstration table."""
    return int(shard) | DEMO_TABLE_BIT


def is_demo_key(keys: np.ndarray) -> np.ndarray:
    """``<bool>[N]``: which keys a demonstration table issued."""
    return (split_keys(keys).shard & DEMO_TABLE_BIT) != 0


def keys_by_shard(keys: np.ndarray) -> Dict[int, np.ndarray]:
    """Which keys each replay rank owns: where a learner sends each new priority
    (a rank's demonstration table's keys go to that rank too).

    Args:
      keys: ``<int64>[B]`` non-negative keys (e.g. a sampled batch's).

    Returns:
      ``{shard: <int64>[n] positions in keys}`` for every shard named, shards
      increasing, positions in batch order.
    """
    owner = split_keys(keys).shard & (DEMO_TABLE_BIT - 1)
    return {int(s): np.flatnonzero(owner == s) for s in np.unique(owner)}


def sequence_windows(episode_start: int, last_step: int, sequence_length: int,
                     period: int) -> List[Tuple[int, int]]:
    """All windows of one episode as ``(start, valid length)``, in start order.

    ``start = episode_start + k period`` for every ``start <= last_step``;
    ``length = min(sequence_length, last_step - start + 1)``. (No drop rule
    applied; a reference for tests and the module docstring's picture.)

    Args:
      episode_start: number of the episode's first step.
      last_step: number of its last step.
      sequence_length: ``L = burn_in + trace_length``.
      period: ``sequence_period``.

    Returns:
      ``[(start, length), ...]``.
    """
    return [(s, min(sequence_length, last_step - s + 1))
            for s in range(episode_start, last_step + 1, period)]


class KeyMatch(NamedTuple):
    """Keys sorted against one shard's slots (``match_keys``), each ``[K]``."""

    slots: np.ndarray
    """``<int64>`` the slot each owned key names (0 for keys of other shards)."""
    owned: np.ndarray
    """``<bool>`` the key names this shard."""
    current: np.ndarray
    """``<bool>`` owned, and its slot still holds the sequence it was issued for."""


def match_keys(where: str, keys: Any, shard_index: int, generation: np.ndarray,
               live: np.ndarray) -> KeyMatch:
    """Sorts keys against a shard: another shard's, stale, or current.

    Args:
      where: the calling method, for error messages.
      keys: ``<int>[K]`` keys.
      shard_index: the shard's index.
      generation: ``<int64>[S]`` the shard's slot generations.
      live: ``<bool>[S]`` which slots hold a sequence.

    Returns:
      A ``KeyMatch``.

    Raises:
      ValueError: on a shape or dtype mismatch, a negative key, or a key of
        this shard that it never issued (a slot beyond its capacity, or a
        generation the slot has not reached).
    """
    arr = np.asarray(keys)
    if arr.ndim != 1:
        raise ValueError(f"{where}: keys: expected shape (K,), got {arr.shape}")
    if arr.size and arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: keys: expected an integer dtype, got {arr.dtype}")
    k = arr.astype(np.int64)
    f = split_keys(k)
    owned = (k >= 0) & (f.shard == shard_index)
    in_range = owned & (f.slot < generation.shape[0])
    slots = np.where(in_range, f.slot, 0)
    g = generation[slots]
    # Until a slot's generation wraps past 2**25, a key beyond it was never issued.
    unissued = (g <= _GENERATION_MASK) & ((f.generation < 1) | (f.generation > g))
    unknown = (k < 0) | (owned & ~in_range) | (in_range & unissued)
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise ValueError(f"{where}: keys: unknown key {int(k[i])} at index {i} (slot "
                         f"{int(f.slot[i])}, generation {int(f.generation[i])}) was never "
                         f"issued by shard {shard_index}")
    current = in_range & ((g & _GENERATION_MASK) == f.generation) & live[slots]
    return KeyMatch(slots, owned, current)


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

    def storage_bytes(self) -> Dict[str, int]:
        """Bytes a shard of this layout allocates per storage group, computed
        without allocating (the replay memory check): the step ring has
        ``capacity_observations + 1`` rows (the last is the all-zero sentinel),
        the sequence and slot tables ``capacity_sequences`` rows, the sum-tree
        ``SumTree.num_nodes`` float64 nodes. ``ReplayShard.storage_bytes``
        reports the same groups from its arrays (a test holds them equal).
        """
        lay = self.field_layout()

        def rows(names: Sequence[str], n: int) -> int:
            return sum(n * int(np.prod(lay[f][0], dtype=np.int64)) * lay[f][1].itemsize
                       for f in names)

        return {
            "ring": rows(STEP_FIELDS, self.capacity_observations + 1),
            "sequences": rows(SEQUENCE_FIELDS, self.capacity_sequences),
            "slots": rows([f for f in SLOT_FIELDS if f != "tree_leaves"],
                          self.capacity_sequences),
            "tree": 8 * SumTree.num_nodes(self.capacity_sequences),
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
        if valid["capacity_sequences"] and self.capacity_sequences > 1 << KEY_SLOT_BITS:
            e.append(f"capacity_sequences: {self.capacity_sequences} must be <= "
                     f"2**{KEY_SLOT_BITS} (a replay key holds the slot in {KEY_SLOT_BITS} bits)")
        return e



def shard_spec(frame_shape: Sequence[int], *, capacity_observations: int,
               capacity_sequences: int, sequence_length: int, state_size: int,
               obs_dtype: Union[str, np.dtype, type] = np.uint8, frame_stack: int = 1,
               stack_fill: str = "zeros", priority_exponent: float = 0.9,
               segment_observations: Optional[int] = None,
               segment_sequences: Optional[int] = None) -> ShardSpec:
    """The layout of a shard, unvalidated (``ReplayShard``'s arguments; the
    segment sizes default to about 8 MiB of frames and 4 MiB of sequences).
    ``ShardSpec.errors()`` lists what is wrong with it."""
    try:
        dtype_name = np.dtype(obs_dtype).name
    except TypeError:
        dtype_name = str(obs_dtype)
    shape = tuple(frame_shape)
    frame_bytes = (int(np.prod(shape, dtype=np.int64)) *
                   (np.dtype(dtype_name).itemsize if dtype_name in OBS_DTYPES else 1))
    if segment_observations is None and isinstance(capacity_observations, int):
        segment_observations = max(1, min(capacity_observations,
                                          STEP_SEGMENT_BYTES // max(1, frame_bytes)))
    if segment_sequences is None and isinstance(capacity_sequences, int):
        row = (frame_stack - 1 + sequence_length) * 4 + 8 * state_size + 40 \
            if isinstance(frame_stack, int) and isinstance(sequence_length, int) and \
            isinstance(state_size, int) else 1
        segment_sequences = max(1, min(capacity_sequences,
                                       SEQUENCE_SEGMENT_BYTES // max(1, row)))
    return ShardSpec(shape, dtype_name, frame_stack, stack_fill, capacity_observations,
                     capacity_sequences, sequence_length, state_size,
                     float(priority_exponent) if isinstance(priority_exponent, (int, float))
                     else priority_exponent, segment_observations, segment_sequences)


@dataclass
class ShardState:
    """Explicit record of everything a shard holds (what snapshots save).

    ``steps`` fields are ``[capacity_observations, ...]``, ``sequences`` and
    ``slots`` fields ``[capacity_sequences, ...]`` (layout in
    ``ShardSpec.field_layout``); ``streams`` holds ``STREAM_FIELDS`` and
    ``RUN_FIELDS`` as ``<int64>`` vectors. ``counters``: ``write``,
    ``seq_write``, ``max_priority``, ``num_dropped_sequences``, ``mutation``,
    ``snapshot_id``, ``snapshot_uid``. ``shard_index`` is the shard's
    identity (the owner its keys name). Arrays returned by
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
    shard_index: int

    def copy(self) -> "ShardState":
        """Deep copy (arrays copied)."""
        cp = lambda d: {k: np.array(v, copy=True) for k, v in d.items()}  # noqa: E731
        return ShardState(self.spec, cp(self.steps), cp(self.sequences), cp(self.slots),
                          cp(self.streams), dict(self.counters), copy_json(self.rng_state),
                          self.step_segment_versions.copy(),
                          self.sequence_segment_versions.copy(), self.shard_index)

    def equals(self, other: "ShardState") -> bool:
        """Exact equality of every array, counter, the RNG state and the shard index."""
        if self.spec != other.spec or self.counters != other.counters or \
                self.shard_index != other.shard_index:
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

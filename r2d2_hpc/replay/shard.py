"""A replay shard: prioritized sequence replay that stores every observation once.

A shard keeps a step ring (each step's newest frame, once) and a table of
sequences that reference ring rows, with a sum-tree over the sequences'
priorities; :mod:`r2d2_hpc.replay.layout` draws how a sequence references the
ring and defines the keys (which name the shard that issued them) and the
state record. A shard knows its index in the job (``shard_index``): its keys
carry it, and ``update_priorities`` drops and counts (``misrouted_updates``)
keys that name another shard.

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
(``replay.routing.shard_for_stream``); its steps are numbered consecutively. ``add_steps``
appends new steps; ``add_sequences`` declares sequences over steps already
added. A stream remembers, per contiguous *run* of its steps in the ring,
``(first step number, abs of that step, count)``, which is how a step number
is turned into a ring row. Overlapping sequences thus share rows and every
step travels to the shard once. An ``add_steps`` call whose
``first_step_index`` is not the stream's next step number is accepted only if
it starts an episode (``first[0]``); it then *resets* the stream (an actor
restart): old runs are forgotten (already stored sequences keep their rows)
and later sequences may reference only the new steps.

Every public mutator validates all of its inputs before it changes anything,
so a ``ValueError`` (which names the offending field) leaves the shard exactly
as it was.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from r2d2_hpc.replay.checks import (check_index, check_int, check_priorities, check_sequences,
                                    check_steps)
from r2d2_hpc.replay.layout import (INITIAL_MAX_PRIORITY, MAX_SHARDS, SEQUENCE_FIELDS,
                                    SLOT_FIELDS, STEP_FIELDS, KeyMatch, ShardSpec, ShardState,
                                    copy_json, make_keys, match_keys, shard_spec)
from r2d2_hpc.replay.sampling import ShardStats
from r2d2_hpc.replay.streams import StreamIndex, sequence_rows
from r2d2_hpc.replay.sumtree import SumTree
from r2d2_hpc.types import SequenceBatch

__all__ = ["ReplayShard"]


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
                 segment_sequences: Optional[int] = None, shard_index: int = 0) -> None:
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
          shard_index: which shard of the job this is, ``[0, MAX_SHARDS)``; its
            keys name it, and it refuses priority updates for other shards' keys.

        Raises:
          ValueError: listing every invalid argument.
        """
        spec = shard_spec(frame_shape, capacity_observations=capacity_observations,
                          capacity_sequences=capacity_sequences,
                          sequence_length=sequence_length, state_size=state_size,
                          obs_dtype=obs_dtype, frame_stack=frame_stack, stack_fill=stack_fill,
                          priority_exponent=priority_exponent,
                          segment_observations=segment_observations,
                          segment_sequences=segment_sequences)
        errors = spec.errors() + _shard_index_errors(shard_index)
        if errors:
            raise ValueError("ReplayShard: " + "; ".join(errors))
        self._allocate(spec, seed, shard_index)

    @classmethod
    def from_spec(cls, spec: ShardSpec, seed: int = 0, shard_index: int = 0) -> "ReplayShard":
        """An empty shard with the given layout (and identity, see ``__init__``)."""
        errors = spec.errors() + _shard_index_errors(shard_index)
        if errors:
            raise ValueError("ReplayShard: " + "; ".join(errors))
        shard = cls.__new__(cls)
        shard._allocate(spec, seed, shard_index)
        return shard

    def _allocate(self, spec: ShardSpec, seed: int, shard_index: int) -> None:
        self.spec = spec
        self._shard_index = int(shard_index)
        self._misrouted = 0
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
        self._streams = StreamIndex()
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
    def shard_index(self) -> int:
        """Which shard of the job this is: the owner its keys name."""
        return self._shard_index

    @property
    def misrouted_updates(self) -> int:
        """Priority-update keys dropped because they name another shard.

        Always 0 when learners route by key; anything else is a routing bug
        upstream. A count of this process's traffic, not saved in snapshots.
        """
        return self._misrouted

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
    def num_evicted_sequences(self) -> int:
        """Sequences stored and since evicted (their steps overwritten or their slot
        reused): every sequence this shard's layout ever stored, less the live ones."""
        return self._seq_write - self._count

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
        return self._streams.positions()

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
        sid = check_int(w, "stream_id", stream_id)
        start = check_int(w, "first_step_index", first_step_index)
        obs, act, rew, disc, fst = check_steps(self.spec, obs, action, reward, discount, first)
        n = obs.shape[0]
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
            stream = self._streams.restart(sid, start)
        assert stream is not None
        stream.append(start, self._write, n)
        self._write = new_write
        if limit > 0:
            self._streams.forget_before(limit)

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
        sid = check_int(w, "stream_id", stream_id)
        stream = self._streams.get(sid)
        if stream is None:
            raise ValueError(f"{w}: stream_id: unknown stream {sid} (add its steps first)")
        starts, lens, h, c, pa, pr, prio = check_sequences(
            self.spec, start_step, length, state_h, state_c, prev_action, prev_reward, priority)
        m = starts.shape[0]
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
        pos, oldest, kept = sequence_rows(self.spec, stream, self._ring["first"], self._write,
                                          starts, lens)

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
        keys[idx] = make_keys(self._shard_index, slots, sl["generation"][slots])
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
    def _match(self, where: str, keys: Any, owned_only: bool) -> KeyMatch:
        """``match_keys`` against this shard; with ``owned_only`` another shard's key raises."""
        m = match_keys(where, keys, self._shard_index, self._slot["generation"],
                       self._slot["live"])
        if owned_only and not m.owned.all():
            i = int(np.flatnonzero(~m.owned)[0])
            k = int(np.asarray(keys)[i])
            raise ValueError(f"{where}: keys: key {k} at index {i} belongs to another shard, "
                             f"not to shard {self._shard_index}")
        return m

    def update_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> int:
        """Sets new raw priorities; keys of evicted or reused slots are dropped.

        Keys that name another shard are dropped too, and counted in
        ``misrouted_updates``. If a key occurs more than once, its last
        priority wins.

        Args:
          keys: ``<int64>[K]`` keys from ``add_sequences`` or ``sample``.
          priorities: ``<float>[K]`` raw priorities ``p >= 0``.

        Returns:
          The number of keys applied (stale and misrouted ones are not counted).

        Raises:
          ValueError: on a key of this shard that it never issued, a negative
            key, a shape/dtype mismatch, or a NaN / infinite / negative
            priority; the shard (and its counter) is unchanged.
        """
        w = "update_priorities"
        m = self._match(w, keys, owned_only=False)
        p = check_priorities(w, "priorities", priorities, m.slots.size)
        self._misrouted += int((~m.owned).sum())
        current = m.current
        if not current.any():
            return 0
        s, p = m.slots[current], p[current]
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
        b = check_int("sample", "batch_size", batch_size, minimum=1)
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
          ValueError: on an unknown, evicted or reused key, or another shard's.
        """
        m = self._match("read", keys, owned_only=True)
        slots, current = m.slots, m.current
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
            keys=make_keys(self._shard_index, slots, self._slot["generation"][slots]),
            probs=np.asarray(probs, np.float64))

    def live_keys(self) -> np.ndarray:
        """Keys of every live sequence, in slot order."""
        slots = np.flatnonzero(self._slot["live"])
        return make_keys(self._shard_index, slots, self._slot["generation"][slots])

    def sequence_info(self, keys: np.ndarray) -> Dict[str, np.ndarray]:
        """Stream id, start step, length and raw priority of live keys.

        Raises:
          ValueError: on an unknown, evicted or reused key, or another shard's.
        """
        m = self._match("sequence_info", keys, owned_only=True)
        slots, current = m.slots, m.current
        if not current.all():
            raise ValueError("sequence_info: keys: some keys were evicted or reused")
        return {"stream": self._slot["stream"][slots].copy(),
                "start_step": self._seq["start_step"][slots].copy(),
                "length": self._seq["length"][slots].copy(),
                "priority": self._slot["priority"][slots].copy()}

    # ------------------------------------------------------------------ state
    def state(self) -> ShardState:
        """The explicit state record; arrays are views of live storage (no copy)."""
        C = self._C
        slots = dict(self._slot)
        slots["tree_leaves"] = self._tree.leaves()
        return ShardState(
            spec=self.spec,
            steps={n: a[:C] for n, a in self._ring.items()},
            sequences=dict(self._seq),
            slots={n: slots[n] for n in SLOT_FIELDS},
            streams=self._streams.table(),
            counters=self._counters(),
            rng_state=copy_json(self._rng.bit_generator.state),
            step_segment_versions=self._step_versions,
            sequence_segment_versions=self._seq_versions,
            shard_index=self._shard_index)

    def _counters(self) -> Dict[str, Union[int, float, str]]:
        return {"write": self._write, "seq_write": self._seq_write,
                "max_priority": self._max_priority, "num_dropped_sequences": self._num_dropped,
                "mutation": self._mutation, "snapshot_id": self._snapshot_id,
                "snapshot_uid": self._snapshot_uid}

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
        check_index(self.spec, slots, streams, counters, step_segment_versions,
                    sequence_segment_versions, self._seq["pos"])
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
        self._streams = StreamIndex.from_table(streams)
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

    def load_state(self, state: ShardState) -> None:
        """Replaces the whole content with a copy of ``state`` (same spec and shard index).

        Raises:
          ValueError: on a different spec or shard index, or an inconsistent record.
        """
        if state.spec != self.spec:
            raise ValueError("load_state: spec differs from this shard's")
        if state.shard_index != self._shard_index:
            raise ValueError(f"load_state: shard_index: the state is shard "
                             f"{state.shard_index}'s, this is shard {self._shard_index}")
        steps, seqs = self.storage_views()
        lay = self.spec.field_layout()
        for group, dst in ((state.steps, steps), (state.sequences, seqs)):
            for n, d in dst.items():
                a = group[n]
                if a.shape != d.shape or a.dtype != lay[n][1]:
                    raise ValueError(f"load_state: {n}: expected {d.dtype}{d.shape}, got "
                                     f"{a.dtype}{a.shape}")
        for group, dst in ((state.steps, steps), (state.sequences, seqs)):
            for n, d in dst.items():
                d[...] = group[n]
        self.load_index({n: np.array(a) for n, a in state.slots.items()},
                        {n: np.array(a) for n, a in state.streams.items()},
                        dict(state.counters), copy_json(state.rng_state),
                        state.step_segment_versions, state.sequence_segment_versions)

    def mark_snapshot(self, snapshot_id: int, snapshot_uid: str) -> None:
        """Records the snapshot this state was last saved as (snapshot code only)."""
        self._snapshot_id = int(snapshot_id)
        self._snapshot_uid = str(snapshot_uid)

    def __repr__(self) -> str:
        s = self.spec
        return (f"ReplayShard(shard_index={self._shard_index}, "
                f"frame_shape={s.frame_shape}, frame_stack={s.frame_stack}, "
                f"capacity_observations={s.capacity_observations}, "
                f"capacity_sequences={s.capacity_sequences}, count={self._count}, "
                f"steps={self.num_steps})")


def _shard_index_errors(shard_index: Any) -> List[str]:
    """``shard_index`` must fit the key's shard field."""
    if isinstance(shard_index, bool) or not isinstance(shard_index, (int, np.integer)) or \
            not 0 <= shard_index < MAX_SHARDS:
        return [f"shard_index: must be an int in [0, {MAX_SHARDS}), got {shard_index!r}"]
    return []

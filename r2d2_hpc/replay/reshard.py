"""Re-sharding: rebuild replay shard ``i`` of ``S'`` from the contents of ``S`` shards.

A requeued job may get another number of replay ranks. Every live sequence is
kept with its priority and stored state, on the shard its stream now routes to
(``replay.routing.shard_for_stream``, the rule the actors send by; the caller
passes the new job's ``num_envs``); the ring rows those
sequences reference and each stream's step numbering come along, so actors
continue where they were. Sources are shards in memory or snapshots on disk
(:class:`ShardSource`), read one segment at a time.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, NamedTuple, Optional, Protocol, Sequence, Tuple

import numpy as np

from r2d2_hpc.replay.layout import (INITIAL_MAX_PRIORITY, RUN_FIELDS, SEQUENCE_FIELDS,
                                    SLOT_FIELDS, STEP_FIELDS, STREAM_FIELDS, ShardSpec)
from r2d2_hpc.replay.routing import shard_for_stream
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.replay.streams import encode_streams
from r2d2_hpc.seeding import derive_seed

__all__ = ["MemorySource", "ShardSource", "build_resharded", "reshard"]


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


class MemorySource:
    """``ShardSource`` over a shard in memory."""

    def __init__(self, shard: ReplayShard) -> None:
        self._state = shard.state()
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


class _Contribution(NamedTuple):
    """What one source gives the new shard: its sequences, rows and streams."""

    slots: np.ndarray
    """Source slots of the live sequences whose streams route to the new shard."""
    sequences: Dict[str, np.ndarray]
    """``SEQUENCE_FIELDS`` of those slots."""
    seq_age: np.ndarray
    """How many insertions ago each was inserted (FIFO order across sources)."""
    streams: Dict[str, np.ndarray]
    """``STREAM_FIELDS`` rows of the streams that route to the new shard."""
    runs: Dict[str, np.ndarray]
    """``RUN_FIELDS`` rows of those streams."""
    rows: np.ndarray
    """Source ring rows needed (by the sequences or the streams' live steps), sorted."""
    row_age: np.ndarray
    """How many steps ago each of ``rows`` was written."""


def _check_sources(sources: Sequence[ShardSource], shard_index: int, num_shards: int) -> None:
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


def _target_spec(sources: Sequence[ShardSource], num_shards: int,
                 capacity_observations: Optional[int],
                 capacity_sequences: Optional[int]) -> ShardSpec:
    """The new shard's layout: the sources' own, with the new capacities."""
    base = sources[0].spec
    cap_obs = capacity_observations or -(-sum(s.spec.capacity_observations for s in sources)
                                         // num_shards)
    cap_seq = capacity_sequences or -(-sum(s.spec.capacity_sequences for s in sources)
                                      // num_shards)
    return dataclasses.replace(
        base, capacity_observations=int(max(cap_obs, base.span)),
        capacity_sequences=int(cap_seq),
        segment_observations=min(base.segment_observations, int(max(cap_obs, base.span))),
        segment_sequences=min(base.segment_sequences, int(cap_seq)))


def _contribution(src: ShardSource, shard_index: int, num_shards: int,
                  num_envs: int) -> _Contribution:
    """Reads what ``src`` contributes to shard ``shard_index`` (its streams that
    ``shard_for_stream(stream, num_envs, num_shards)`` puts there)."""
    C, S = src.spec.capacity_observations, src.spec.capacity_sequences
    sl, stt, cnt = src.slot_table(), src.stream_table(), src.counters()
    write, seq_write = int(cnt["write"]), int(cnt["seq_write"])
    mine = np.array([shard_for_stream(s, num_envs, num_shards) == shard_index
                     for s in sl["stream"].tolist()], dtype=bool) if S else np.zeros(0, bool)
    slots = np.flatnonzero(sl["live"] & mine)
    seqs = src.read_sequences(slots)
    last = seq_write - 1 - np.mod(seq_write - 1 - slots, S)
    keep_stream = np.array([shard_for_stream(s, num_envs, num_shards) == shard_index
                            for s in stt["stream_id"].tolist()], dtype=bool)
    keep_run = np.isin(stt["run_stream"], stt["stream_id"][keep_stream])
    need = [seqs["pos"][seqs["pos"] < C].reshape(-1).astype(np.int64)]
    oldest_live = write - C
    for alo, n in zip(stt["run_abs_lo"][keep_run].tolist(), stt["run_n"][keep_run].tolist()):
        need.append(np.arange(max(alo, oldest_live), alo + n, dtype=np.int64) % C)
    rows = np.unique(np.concatenate(need))
    return _Contribution(slots, seqs, seq_write - last,
                         {n: stt[n][keep_stream] for n in STREAM_FIELDS},
                         {n: stt[n][keep_run] for n in RUN_FIELDS},
                         rows, write - _abs_of_rows(rows, write, C))


def _place_rows(target: ReplayShard, sources: Sequence[ShardSource],
                parts: Sequence[_Contribution], strict: bool,
                shard_index: int) -> Tuple[List[np.ndarray], int]:
    """Copies the needed ring rows into ``target``, oldest first, keeping the newest C'.

    Returns:
      ``(remaps, n_rows)``: per source ``<int64>[C + 1]`` old row -> new row (-1:
      dropped; the sentinel row C -> C'), and the rows written.
    """
    C2 = target.spec.capacity_observations
    src_of = np.concatenate([np.full(p.rows.size, i) for i, p in enumerate(parts)])
    ages = np.concatenate([p.row_age for p in parts])
    order = np.lexsort((src_of, -ages))        # by age descending, then source
    total_rows = ages.size
    dropped_rows = max(0, total_rows - C2)
    if dropped_rows and strict:
        raise ValueError(f"build_resharded: capacity_observations: shard {shard_index} needs "
                         f"{total_rows} ring rows but holds {C2}")
    new_row = np.full(total_rows, -1, np.int64)
    new_row[order[dropped_rows:]] = np.arange(total_rows - dropped_rows)
    offsets = np.cumsum([0] + [p.rows.size for p in parts])
    remaps = []
    tsteps, _ = target.storage_views()
    for i, src in enumerate(sources):
        C = src.spec.capacity_observations
        rows = parts[i].rows
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
    return remaps, total_rows - dropped_rows


def _place_sequences(target: ReplayShard, sources: Sequence[ShardSource],
                     parts: Sequence[_Contribution], remaps: Sequence[np.ndarray],
                     strict: bool, shard_index: int
                     ) -> Tuple[Dict[str, np.ndarray], int, int]:
    """Copies the sequences that kept all their rows into ``target``, newest S' of them.

    New keys: every slot's generation starts above all source generations.

    Returns:
      ``(slot table, sequences placed, sequences dropped)``.
    """
    spec = target.spec
    C2, S2 = spec.capacity_observations, spec.capacity_sequences
    new_pos = [remaps[i][p.sequences["pos"].astype(np.int64)] for i, p in enumerate(parts)]
    okc = np.concatenate([(npos >= 0).all(axis=1) for npos in new_pos])
    lost = int((~okc).sum())
    sage = np.concatenate([p.seq_age for p in parts])
    ssrc = np.concatenate([np.full(p.slots.size, i) for i, p in enumerate(parts)])
    cand = np.flatnonzero(okc)
    cand = cand[np.lexsort((ssrc[cand], -sage[cand]))]       # oldest first
    over = max(0, cand.size - S2)
    if (lost or over) and strict:
        raise ValueError(f"build_resharded: capacity_sequences: shard {shard_index} needs "
                         f"{cand.size + lost} slots (and all their rows) but holds {S2} slots, "
                         f"{C2} rows")
    cand = cand[over:]
    seq_off = np.cumsum([0] + [p.slots.size for p in parts])
    gen = 1 + max(int(src.slot_table()["generation"].max()) for src in sources)
    tslot = {n: np.zeros((S2,), spec.field_layout()[n][1]) for n in SLOT_FIELDS}
    tslot["generation"][:] = gen - 1
    _, tseqs = target.storage_views()
    src_idx = np.searchsorted(seq_off, cand, side="right") - 1
    for i in range(len(sources)):
        pick = src_idx == i
        if not pick.any():
            continue
        tgt = np.flatnonzero(pick)
        local = cand[pick] - seq_off[i]
        for n in SEQUENCE_FIELDS:
            tseqs[n][tgt] = new_pos[i][local] if n == "pos" else parts[i].sequences[n][local]
        sl = sources[i].slot_table()
        orig = parts[i].slots[local]
        for n in ("stream", "priority", "tree_leaves"):
            tslot[n][tgt] = sl[n][orig]
    m = cand.size
    tslot["live"][:m] = True
    tslot["generation"][:m] = gen
    p = tseqs["pos"][:m].astype(np.int64)
    tslot["oldest"][:m] = np.where(p < C2, p, np.iinfo(np.int64).max).min(axis=1)
    return tslot, m, lost + over


def _merge_streams(sources: Sequence[ShardSource], parts: Sequence[_Contribution],
                   remaps: Sequence[np.ndarray]) -> Dict[str, np.ndarray]:
    """The new shard's stream table; a stream found in several sources keeps the copy
    whose newest step is most recent, its runs remapped to the new rows."""
    chosen: Dict[int, Tuple[int, int, int, int]] = {}
    for i, part in enumerate(parts):
        write = int(sources[i].counters()["write"])
        runs = part.runs
        for sid, nxt, ef in zip(part.streams["stream_id"].tolist(),
                                part.streams["next_step"].tolist(),
                                part.streams["epoch_first"].tolist()):
            mine = runs["run_stream"] == sid
            newest = int((runs["run_abs_lo"][mine] + runs["run_n"][mine]).max()) - write \
                if mine.any() else -(1 << 62)
            if sid not in chosen or newest > chosen[sid][3]:
                chosen[sid] = (i, nxt, ef, newest)
    runs_out: List[Tuple[int, int, int, int]] = []
    for sid in sorted(chosen):
        i = chosen[sid][0]
        C = sources[i].spec.capacity_observations
        write = int(sources[i].counters()["write"])
        runs = parts[i].runs
        mine = runs["run_stream"] == sid
        for lo, alo, n in zip(runs["run_step_lo"][mine].tolist(),
                              runs["run_abs_lo"][mine].tolist(), runs["run_n"][mine].tolist()):
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
    ids = sorted(chosen)
    return encode_streams(ids, [chosen[s][1] for s in ids], [chosen[s][2] for s in ids],
                          runs_out)


def build_resharded(sources: Sequence[ShardSource], shard_index: int, num_shards: int, *,
                    num_envs: int, capacity_observations: Optional[int] = None,
                    capacity_sequences: Optional[int] = None, seed: int = 0,
                    strict: bool = True) -> ReplayShard:
    """Builds shard ``shard_index`` of ``num_shards`` from the contents of ``sources``.

    Keeps every live sequence whose stream maps to ``shard_index``
    (``replay.routing.shard_for_stream(stream, num_envs, num_shards)``, the
    rule the actors send by) with its priority and stored state, the
    ring rows those sequences reference, and each such stream's live steps and
    step numbering (so its actor can continue). Ring rows are copied in the
    order they were written, interleaved across sources by how many steps ago
    they were written, so the FIFO order of eviction is preserved. New keys are
    issued: they name ``shard_index`` as their owner, and every slot's
    generation starts above all source generations, so no key from before the
    re-shard can match (another shard's key is refused as misrouted, this
    index's old keys are stale).

    Args:
      sources: shards to read (``MemorySource`` or a snapshot source), all of
        one layout but possibly different capacities.
      shard_index: which target shard to build, in ``[0, num_shards)``.
      num_shards: number of target shards.
      num_envs: environments per actor in the job the shard is built for
        (``actor.num_envs``): a stream's actor, hence its shard, depends on it.
      capacity_observations: ring rows of the new shard (default: the sources'
        total divided by ``num_shards``, rounded up).
      capacity_sequences: slots of the new shard (same default rule).
      seed: seed of the new shard's generator.
      strict: raise if the new shard cannot hold everything; else keep the
        newest steps/sequences and count the others in ``num_dropped_sequences``.

    Returns:
      The new shard.

    Raises:
      ValueError: on incompatible sources, bad indices, or (strict) overflow.
    """
    _check_sources(sources, shard_index, num_shards)
    spec = _target_spec(sources, num_shards, capacity_observations, capacity_sequences)
    target = ReplayShard.from_spec(spec, seed, shard_index=shard_index)
    parts = [_contribution(src, shard_index, num_shards, num_envs) for src in sources]
    remaps, n_rows = _place_rows(target, sources, parts, strict, shard_index)
    slots, m, dropped = _place_sequences(target, sources, parts, remaps, strict, shard_index)
    streams = _merge_streams(sources, parts, remaps)
    vs = np.zeros(spec.num_step_segments, np.int64)
    vs[: -(-n_rows // spec.segment_observations)] = 1
    vq = np.zeros(spec.num_sequence_segments, np.int64)
    vq[: -(-m // spec.segment_sequences)] = 1
    max_prio = max([INITIAL_MAX_PRIORITY] + [float(src.counters()["max_priority"])
                                             for src in sources])
    counters = {"write": n_rows, "seq_write": m, "max_priority": max_prio,
                "num_dropped_sequences": dropped, "mutation": 1, "snapshot_id": 0,
                "snapshot_uid": ""}
    target.load_index(slots, streams, counters, target.rng.bit_generator.state, vs, vq)
    return target


def reshard(shards: Sequence[ReplayShard], num_shards: int, *, num_envs: int, seed: int = 0,
            strict: bool = True, **kwargs: Any) -> List[ReplayShard]:
    """Redistributes in-memory shards over ``num_shards`` new ones by the routing rule.

    Args:
      shards: the current shards.
      num_shards: S', the number of new shards.
      num_envs: environments per actor (see ``build_resharded``).
      seed: new shard ``i`` is seeded with ``derive_seed(seed, "replay", i)``, the
        seed a job with ``cfg.seed = seed`` gives its shard ``i``.
      strict: see ``build_resharded``.
      **kwargs: ``capacity_observations``, ``capacity_sequences``.

    Returns:
      The ``num_shards`` new shards.
    """
    sources = [MemorySource(s) for s in shards]
    return [build_resharded(sources, i, num_shards, num_envs=num_envs,
                            seed=derive_seed(seed, "replay", i),
                            strict=strict, **kwargs)
            for i in range(num_shards)]

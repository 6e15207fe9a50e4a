"""Incremental HDF5 snapshots of a replay shard, restore, and re-sharding restore.

A shard's state (``ShardState``) has a large part that changes slowly and in
place -- the step ring (frames) and the per-sequence payload (ring rows, LSTM
states) -- and a small part that changes all the time (priorities, generations,
sum-tree leaves, stream tables, counters, RNG state). A snapshot directory
holds one immutable HDF5 file per written *segment* of the large part and one
small index file::

    shard_dir/
      index.h5                    written last; the only file a reader starts from
      steps_00000_00000007.h5     ring rows [0, G) as of snapshot 7
      steps_00001_00000009.h5     ring rows [G, 2G) as of snapshot 9
      seqs_00000_00000009.h5      sequence slots [0, Q) as of snapshot 9
      ...

    ring rows   |--seg 0--|--seg 1--|--seg 2--|--seg 3--|   G rows per segment
    versions       v=5       v=9       v=0       v=3        mutation count at last write
    index.h5 lists: seg 0 -> steps_00000_00000007.h5 (version 5, size, crc32)
                    seg 1 -> steps_00001_00000009.h5 (version 9, size, crc32)
                    seg 2 -> (never written: restored as zeros)

Saving (``save_snapshot``):

1. If the directory's current ``index.h5`` is the snapshot this shard was last
   saved as or restored from (same ``snapshot_uid``), every segment whose
   version is unchanged reuses the file that index lists. Otherwise (another
   shard's files, a corrupt index, ``full=True``) everything is written.
2. Each changed segment is written to ``<name>.tmp`` (datasets chunked by
   ``storage.h5tree``, each chunk with a fletcher32 checksum), fsync'ed, its crc32
   and size recorded, and ``os.replace``'d to a name that carries the new
   snapshot id, so no file the current index references is ever touched. The
   fsync/crc32/rename of one file runs on a helper thread while the next file
   is written (both release the GIL; h5py serialises HDF5 calls anyway).
3. ``index.h5`` (meta JSON, per-slot arrays, stream tables, the segment list
   with file names, versions, sizes and crc32s) is written to
   ``index.h5.tmp`` and ``os.replace``'d: this is the commit point. A crash
   before it leaves the previous snapshot intact; a crash after it leaves a
   complete new one.
4. Only then are segment files that the new index does not reference (and
   stale ``.tmp`` files) removed.

So the cost of a snapshot is the index (``O(capacity_sequences)`` small
numbers) plus the segments written since the previous snapshot: after a small
change it is a few segment files, not the whole ring.

Restoring (``load_snapshot``) checks every segment file's size and crc32 before
reading it, HDF5 verifies the fletcher32 checksums while reading, and every
dataset's shape and dtype are checked against the layout; any problem raises
``SnapshotError`` naming the file and what is wrong. The restored state --
contents, priorities, sum-tree leaves (hence the tree, which is a pure function
of its leaves), generations, counters, stream tables and the RNG state -- is
identical to the saved one, so sampling continues bit-identically. The index
records which shard of the job was saved (``shard_index``, the owner its keys
name; format version 2), and a shard is restored as that shard. A version 1
snapshot, written before keys named their shard, still loads when the caller
says which shard it is (``load_snapshot(..., shard_index=i)``, as the
checkpoint restore does).

``load_resharded`` builds shard ``i`` of ``S'`` from the snapshots of ``S``
shards (a requeued job may get another allocation), reading only the segments
it needs, one at a time; streams are placed by the rule the actors send by
(``replay.routing.shard_for_stream``, given the new job's ``num_envs``).
"""
from __future__ import annotations

import os
import re
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np

from r2d2_hpc.replay.layout import (RUN_FIELDS, SEQUENCE_FIELDS, SLOT_FIELDS, STEP_FIELDS,
                                    STREAM_FIELDS, ShardSpec)
from r2d2_hpc.replay.reshard import build_resharded
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.storage.files import commit_file, crc32_file, fsync_path
from r2d2_hpc.storage.h5tree import Tree, open_file, read_meta, write_file

__all__ = ["SnapshotError", "SnapshotReport", "SnapshotSource", "save_snapshot",
           "load_snapshot", "load_resharded", "live_sequences", "read_index_meta",
           "INDEX_FILE", "FORMAT", "FORMAT_V1"]

#: File name of the index in a snapshot directory.
INDEX_FILE = "index.h5"
#: Format tag stored in the index meta. Version 2 records the shard's index
#: (``shard_index``, the owner its keys name); version 1 did not.
FORMAT = "r2d2_hpc.replay.snapshot/2"
#: Older formats ``SnapshotSource`` still reads.
FORMAT_V1 = "r2d2_hpc.replay.snapshot/1"
_SEGMENT_RE = re.compile(r"^(steps|seqs)_(\d{5,})_(\d{8,})\.h5$")


class SnapshotError(ValueError):
    """A snapshot file is missing, truncated, corrupted or inconsistent."""


@dataclass(frozen=True)
class SnapshotReport:
    """What one ``save_snapshot`` call did."""

    directory: str
    snapshot_id: int
    incremental: bool
    """True if unchanged segments were reused from the previous snapshot."""
    files_written: Tuple[str, ...]
    """Base names of the files written (segments, then the index)."""
    bytes_written: int
    """Total size of the files written."""
    files_removed: Tuple[str, ...]
    """Base names of unreferenced files removed after the commit."""
    segments_reused: int
    seconds: float


# ----------------------------------------------------------------------------
# Low-level file helpers
# ----------------------------------------------------------------------------


def new_snapshot_uid() -> str:
    """A fresh random snapshot id (does not touch any shard's generator)."""
    return uuid.uuid4().hex


def _read_array(f: h5py.File, path: str, name: str, shape: Optional[Tuple[int, ...]],
                dtype: Optional[np.dtype], out: Optional[np.ndarray] = None) -> np.ndarray:
    """Reads dataset ``name``, checking shape/dtype; errors name the file."""
    try:
        ds = f[name]
    except KeyError:
        raise SnapshotError(f"{path}: missing dataset {name!r}") from None
    if not isinstance(ds, h5py.Dataset):
        raise SnapshotError(f"{path}: {name!r} is not a dataset")
    if shape is not None and ds.shape != tuple(shape):
        raise SnapshotError(f"{path}: dataset {name!r} has shape {ds.shape}, expected "
                            f"{tuple(shape)}")
    if dtype is not None and ds.dtype != np.dtype(dtype):
        raise SnapshotError(f"{path}: dataset {name!r} has dtype {ds.dtype}, expected "
                            f"{np.dtype(dtype)}")
    try:
        if out is not None:
            if ds.shape[0]:
                ds.read_direct(out)
            return out
        return ds[...]
    except (OSError, ValueError, RuntimeError) as e:
        raise SnapshotError(f"{path}: dataset {name!r} is corrupted ({e})") from None


def _open(path: str) -> h5py.File:
    return open_file(path, SnapshotError)


def _read_meta(f: h5py.File, path: str) -> Dict[str, Any]:
    try:
        return read_meta(f)
    except KeyError:
        raise SnapshotError(f"{path}: missing dataset 'meta'") from None
    except ValueError as e:
        raise SnapshotError(f"{path}: {e}") from None


def _verify_file(path: str, entry: Dict[str, Any]) -> None:
    if not os.path.exists(path):
        raise SnapshotError(f"{path}: segment file listed in {INDEX_FILE} is missing")
    size = os.path.getsize(path)
    if size != entry["nbytes"]:
        raise SnapshotError(f"{path}: size {size} bytes, but {INDEX_FILE} records "
                            f"{entry['nbytes']} (truncated or overwritten)")
    crc = crc32_file(path)
    if crc != entry["crc32"]:
        raise SnapshotError(f"{path}: crc32 {crc:#010x} does not match {entry['crc32']:#010x} "
                            f"recorded in {INDEX_FILE} (corrupted)")


def _write_h5(path: str, tree: Tree, meta: Dict[str, Any]) -> str:
    """Writes ``tree`` + ``meta`` to ``path + '.tmp'`` and returns that name."""
    tmp = path + ".tmp"
    write_file(tmp, meta, tree)
    return tmp


def _saved_shard_index(meta: Dict[str, Any], path: str) -> Optional[int]:
    """The shard index an index meta records (None for format version 1).

    Raises:
      SnapshotError: on an unknown format or a bad index.
    """
    fmt = meta.get("format")
    if fmt == FORMAT_V1:
        return None
    if fmt != FORMAT:
        raise SnapshotError(f"{path}: unknown format {fmt!r}, expected {FORMAT!r} "
                            f"(or {FORMAT_V1!r})")
    index = meta.get("shard_index")
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise SnapshotError(f"{path}: shard_index: expected an int >= 0, got {index!r}")
    return index


def read_index_meta(directory: str) -> Optional[Dict[str, Any]]:
    """The meta of a snapshot directory's current index, or None if absent/unreadable."""
    path = os.path.join(directory, INDEX_FILE)
    if not os.path.exists(path):
        return None
    try:
        with _open(path) as f:
            return _read_meta(f, path)
    except SnapshotError:
        return None


def live_sequences(directory: str) -> int:
    """Live sequences of the snapshot in ``directory`` (-1 if its index cannot be read)."""
    path = os.path.join(directory, INDEX_FILE)
    try:
        with _open(path) as f:
            return int(np.count_nonzero(_read_array(f, path, "slots/live", None, None)))
    except SnapshotError:
        return -1


# ----------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------


def save_snapshot(shard: ReplayShard, directory: str, *, full: bool = False,
                  fsync: bool = True) -> SnapshotReport:
    """Writes an (incremental) snapshot of ``shard`` into ``directory``.

    Args:
      shard: the shard to save; afterwards it records this snapshot as its
        latest, so the next save into the same directory is incremental.
      directory: the shard's snapshot directory (created if missing).
      full: write every segment even if an unchanged copy exists.
      fsync: fsync files before renaming them (and the directory after).

    Returns:
      A ``SnapshotReport``.
    """
    t0 = time.perf_counter()
    os.makedirs(directory, exist_ok=True)
    state = shard.state()
    spec = state.spec
    counters = state.counters
    prev = read_index_meta(directory)
    reuse = (not full and prev is not None and prev.get("format") == FORMAT and
             counters["snapshot_uid"] != "" and
             prev.get("snapshot_uid") == counters["snapshot_uid"] and
             prev.get("spec") == spec.to_dict())
    prev_id = int(prev.get("snapshot_id", 0)) if prev is not None else 0
    new_id = max(prev_id, int(counters["snapshot_id"])) + 1
    new_uid = new_snapshot_uid()
    written: List[str] = []
    nbytes = 0
    reused = 0

    # HDF5 writes run on this thread (h5py serialises them anyway); fsync, crc32
    # and rename of each finished file overlap with writing the next one.
    pending: List[Tuple[Dict[str, Any], Future]] = []

    def segment_table(kind: str, versions: np.ndarray, rows_of, fields: Sequence[str],
                      source: Dict[str, np.ndarray], pool: ThreadPoolExecutor
                      ) -> List[Dict[str, Any]]:
        nonlocal reused
        old = {e["segment"]: e for e in prev.get(kind, [])} if reuse and prev else {}
        table = []
        for seg in np.flatnonzero(versions > 0).tolist():
            version = int(versions[seg])
            e = old.get(seg)
            if e is not None and e["version"] == version and \
                    os.path.exists(os.path.join(directory, e["file"])) and \
                    os.path.getsize(os.path.join(directory, e["file"])) == e["nbytes"]:
                table.append(e)
                reused += 1
                continue
            lo, hi = rows_of(seg)
            name = f"{kind}_{seg:05d}_{new_id:08d}.h5"
            path = os.path.join(directory, name)
            tmp = _write_h5(path, {n: source[n][lo:hi] for n in fields},
                            {"kind": kind, "segment": seg, "lo": lo, "hi": hi,
                             "version": version})
            entry = {"segment": seg, "file": name, "version": version}
            pending.append((entry, pool.submit(commit_file, tmp, path, fsync)))
            written.append(name)
            table.append(entry)
        return table

    with ThreadPoolExecutor(max_workers=1) as pool:
        steps_table = segment_table("steps", state.step_segment_versions,
                                    spec.step_segment_rows, STEP_FIELDS, state.steps, pool)
        seqs_table = segment_table("seqs", state.sequence_segment_versions,
                                   spec.sequence_segment_rows, SEQUENCE_FIELDS,
                                   state.sequences, pool)
        for entry, fut in pending:
            entry["nbytes"], entry["crc32"] = fut.result()
            nbytes += entry["nbytes"]
    new_counters = dict(counters, snapshot_id=new_id, snapshot_uid=new_uid)
    meta = {"format": FORMAT, "snapshot_id": new_id, "snapshot_uid": new_uid,
            "shard_index": state.shard_index, "spec": spec.to_dict(),
            "counters": new_counters, "rng_state": state.rng_state,
            "steps": steps_table, "seqs": seqs_table,
            "step_segment_versions": state.step_segment_versions.tolist(),
            "sequence_segment_versions": state.sequence_segment_versions.tolist()}
    tree = {"slots": {n: state.slots[n] for n in SLOT_FIELDS},
            "streams": {n: state.streams[n] for n in STREAM_FIELDS + RUN_FIELDS}}
    index_path = os.path.join(directory, INDEX_FILE)
    size, _ = commit_file(_write_h5(index_path, tree, meta), index_path, fsync)
    written.append(INDEX_FILE)
    nbytes += size
    if fsync:
        fsync_path(directory)
    shard.mark_snapshot(new_id, new_uid)

    keep = {e["file"] for e in steps_table + seqs_table} | {INDEX_FILE}
    removed = []
    for name in sorted(os.listdir(directory)):
        if name in keep:
            continue
        if _SEGMENT_RE.match(name) or name.endswith(".h5.tmp"):
            os.remove(os.path.join(directory, name))
            removed.append(name)
    return SnapshotReport(directory, new_id, reuse, tuple(written), nbytes, tuple(removed),
                          reused, time.perf_counter() - t0)


# ----------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------


class SnapshotSource:
    """Read access to a snapshot directory (index eagerly, segments on demand).

    Implements ``r2d2_hpc.replay.reshard.ShardSource``.

    Attributes:
      shard_index: the index of the shard saved (None for a version 1 snapshot).

    Raises (constructor):
      SnapshotError: if the index is missing, unreadable or inconsistent.
    """

    def __init__(self, directory: str, verify: bool = True) -> None:
        self.directory = directory
        self.verify = verify
        path = os.path.join(directory, INDEX_FILE)
        self._index_path = path
        with _open(path) as f:
            meta = _read_meta(f, path)
            self.shard_index = _saved_shard_index(meta, path)
            try:
                self.spec = ShardSpec.from_dict(meta["spec"])
            except (KeyError, TypeError, ValueError) as e:
                raise SnapshotError(f"{path}: invalid spec ({e})") from None
            lay = self.spec.field_layout()
            S = self.spec.capacity_sequences
            self._slots = {n: _read_array(f, path, f"slots/{n}", (S,), lay[n][1])
                           for n in SLOT_FIELDS}
            self._streams = {}
            for n in STREAM_FIELDS + RUN_FIELDS:
                a = _read_array(f, path, f"streams/{n}", None, np.int64)
                if a.ndim != 1:
                    raise SnapshotError(f"{path}: dataset 'streams/{n}' must be 1-D")
                self._streams[n] = a
        try:
            self._counters = dict(meta["counters"])
            self._rng_state = meta["rng_state"]
            self._steps_table = {int(e["segment"]): e for e in meta["steps"]}
            self._seqs_table = {int(e["segment"]): e for e in meta["seqs"]}
            self._step_versions = np.asarray(meta["step_segment_versions"], np.int64)
            self._seq_versions = np.asarray(meta["sequence_segment_versions"], np.int64)
        except (KeyError, TypeError, ValueError) as e:
            raise SnapshotError(f"{path}: incomplete meta ({e!r})") from None
        for kind, table, count in (("steps", self._steps_table, self.spec.num_step_segments),
                                   ("seqs", self._seqs_table, self.spec.num_sequence_segments)):
            for seg, e in table.items():
                if not 0 <= seg < count or not _SEGMENT_RE.match(str(e.get("file", ""))):
                    raise SnapshotError(f"{path}: bad {kind} segment entry {e!r}")

    def _identity(self, expected: Optional[int]) -> int:
        """The index to restore the shard as: the saved one, checked against ``expected``."""
        if self.shard_index is None:
            if expected is None:
                raise SnapshotError(f"{self._index_path}: format {FORMAT_V1!r} does not record "
                                    f"which shard was saved; pass shard_index to restore it")
            return int(expected)
        if expected is not None and int(expected) != self.shard_index:
            raise SnapshotError(f"{self._index_path}: holds shard {self.shard_index}, "
                                f"expected shard {expected}")
        return self.shard_index

    def slot_table(self) -> Dict[str, np.ndarray]:
        return self._slots

    def stream_table(self) -> Dict[str, np.ndarray]:
        return self._streams

    def counters(self) -> Dict[str, Any]:
        return self._counters

    def _read_segment(self, kind: str, seg: int, fields: Sequence[str],
                      out: Optional[Dict[str, np.ndarray]] = None,
                      verified: bool = False) -> Dict[str, np.ndarray]:
        """Reads one segment (into ``out`` views if given; zeros if never written)."""
        spec = self.spec
        lay = spec.field_layout()
        table = self._steps_table if kind == "steps" else self._seqs_table
        lo, hi = spec.step_segment_rows(seg) if kind == "steps" else \
            spec.sequence_segment_rows(seg)
        e = table.get(seg)
        if e is None:
            if out is not None:
                return out
            arrays = {n: np.zeros((hi - lo,) + lay[n][0], lay[n][1]) for n in fields}
            if "pos" in arrays:
                arrays["pos"].fill(spec.capacity_observations)
            return arrays
        path = os.path.join(self.directory, e["file"])
        if self.verify and not verified:
            _verify_file(path, e)
        result = {}
        with _open(path) as f:
            m = _read_meta(f, path)
            if (m.get("kind"), m.get("segment"), m.get("lo"), m.get("hi")) != (kind, seg, lo, hi):
                raise SnapshotError(f"{path}: holds {m.get('kind')} segment {m.get('segment')} "
                                    f"rows [{m.get('lo')}, {m.get('hi')}), expected {kind} "
                                    f"segment {seg} rows [{lo}, {hi})")
            for n in fields:
                shape = (hi - lo,) + lay[n][0]
                result[n] = _read_array(f, path, n, shape, lay[n][1],
                                        None if out is None else out[n])
        return result

    def read_sequences(self, slots: np.ndarray) -> Dict[str, np.ndarray]:
        lay = self.spec.field_layout()
        out = {n: np.zeros((slots.size,) + lay[n][0], lay[n][1]) for n in SEQUENCE_FIELDS}
        seg = slots // self.spec.segment_sequences
        for s in np.unique(seg).tolist():
            part = seg == s
            data = self._read_segment("seqs", s, SEQUENCE_FIELDS)
            lo, _ = self.spec.sequence_segment_rows(s)
            for n in SEQUENCE_FIELDS:
                out[n][part] = data[n][slots[part] - lo]
        return out

    def read_steps(self, rows: np.ndarray) -> Dict[str, np.ndarray]:
        seg = np.unique(rows // self.spec.segment_observations)
        if seg.size != 1:
            raise ValueError("read_steps: rows must lie in one segment")
        s = int(seg[0])
        data = self._read_segment("steps", s, STEP_FIELDS)
        lo, _ = self.spec.step_segment_rows(s)
        return {n: data[n][rows - lo] for n in STEP_FIELDS}

    def restore(self, seed: int = 0, shard_index: Optional[int] = None) -> ReplayShard:
        """The saved shard, exactly (RNG state included).

        A helper thread checks each segment file's size and crc32 one file
        ahead of the HDF5 read (which then finds the file in the page cache).

        Args:
          seed: unused by the result (the saved generator state is restored).
          shard_index: which shard the caller expects; required for a version 1
            snapshot, which does not record it.

        Raises:
          SnapshotError: on a bad file, if ``shard_index`` differs from the saved
            one, or if neither names the shard.
        """
        shard = ReplayShard.from_spec(self.spec, seed, shard_index=self._identity(shard_index))
        steps, seqs = shard.storage_views()
        plan = [("steps", seg, steps, STEP_FIELDS, self.spec.step_segment_rows(seg))
                for seg in range(self.spec.num_step_segments)]
        plan += [("seqs", seg, seqs, SEQUENCE_FIELDS, self.spec.sequence_segment_rows(seg))
                 for seg in range(self.spec.num_sequence_segments)]
        with ThreadPoolExecutor(max_workers=1) as pool:
            checks: Dict[Tuple[str, int], Future] = {}
            if self.verify:
                for kind, seg, _, _, _ in plan:
                    table = self._steps_table if kind == "steps" else self._seqs_table
                    e = table.get(seg)
                    if e is not None:
                        checks[(kind, seg)] = pool.submit(
                            _verify_file, os.path.join(self.directory, e["file"]), e)
            try:
                for kind, seg, views, fields, (lo, hi) in plan:
                    check = checks.get((kind, seg))
                    if check is not None:
                        check.result()
                    self._read_segment(kind, seg, fields, {n: views[n][lo:hi] for n in views},
                                       verified=True)
            finally:
                for f in checks.values():
                    f.cancel()
        try:
            shard.load_index(self._slots, self._streams, self._counters, self._rng_state,
                             self._step_versions, self._seq_versions)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SnapshotError(f"{self._index_path}: inconsistent index ({e})") from None
        return shard


def load_snapshot(directory: str, *, verify: bool = True,
                  shard_index: Optional[int] = None) -> ReplayShard:
    """Restores the shard saved in ``directory``.

    Args:
      directory: a directory written by ``save_snapshot``.
      verify: check every segment file's size and crc32 before reading it.
      shard_index: the shard the caller expects (checked against the saved
        index); required for a version 1 snapshot, which does not record it.

    Returns:
      The shard, identical to the one saved (sampling continues bit-identically).

    Raises:
      SnapshotError: naming the file that is missing, truncated or corrupted,
        or holds another shard than ``shard_index``.
    """
    return SnapshotSource(directory, verify).restore(shard_index=shard_index)


def load_resharded(directories: Sequence[str], shard_index: int, num_shards: int, *,
                   num_envs: int, capacity_observations: Optional[int] = None,
                   capacity_sequences: Optional[int] = None, seed: int = 0,
                   strict: bool = True, verify: bool = True) -> ReplayShard:
    """Builds shard ``shard_index`` of ``num_shards`` from the snapshots of other shards.

    Every sequence whose stream maps to ``shard_index``
    (``replay.routing.shard_for_stream(stream, num_envs, num_shards)``, the rule
    the actors send by) is kept with its priority; see
    ``r2d2_hpc.replay.reshard.build_resharded`` for the details and the capacity
    defaults (the sources' total divided by ``num_shards``).

    Args:
      directories: snapshot directories of the old shards (any number).
      shard_index: which new shard to build.
      num_shards: S', the number of new shards.
      num_envs: environments per actor in the new job (``actor.num_envs``).
      capacity_observations: ring rows of the new shard.
      capacity_sequences: sequence slots of the new shard.
      seed: seed of the new shard's generator.
      strict: raise instead of dropping the oldest data if it does not fit.
      verify: check segment sizes and crc32s.

    Returns:
      The new shard.

    Raises:
      SnapshotError: on a missing, truncated or corrupted file.
      ValueError: on incompatible shards or (strict) insufficient capacity.
    """
    sources = [SnapshotSource(d, verify) for d in directories]
    return build_resharded(sources, shard_index, num_shards, num_envs=num_envs,
                           capacity_observations=capacity_observations,
                           capacity_sequences=capacity_sequences, seed=seed, strict=strict)

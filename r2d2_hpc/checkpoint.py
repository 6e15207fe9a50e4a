"""Coordinated checkpoints of an R2D2 job: layout, writers, commit, validation, resume.

A checkpoint is the state of every rank of the job at one learner step, in
HDF5 files (every dataset chunked with a fletcher32 checksum per chunk) under
the run directory::

    RUN_DIR/checkpoints/
      ckpt-000000012500/             complete: MANIFEST.json is in and the dir was renamed
        MANIFEST.json                written last; every file with its size and crc32
        learner.h5                   learner 0: online + target params, Adam state,
                                     step, params version, RNG states, counters
                                     (env steps/frames), effective config, job shapes
        actors.h5                    actor counters, one row per actor
        shard-0/index.h5             replay shard 0's snapshot (r2d2_hpc.replay.snapshot):
        shard-0/steps_00000_...h5      small index + immutable segment files
        shard-1/...
      ckpt-000000012500.1/           a second checkpoint at the same step (rare)
      .partial-ckpt-000000015000/    being written; readers ignore it
      .trash-ckpt-000000002500/      being deleted by pruning; readers ignore it

What a rank saves is an explicit record: ``Learner.state()`` (a nested dict of
arrays and scalars) maps one to one onto HDF5 groups, datasets and JSON
attributes (:func:`write_tree` / :func:`read_tree`), so a round trip is bit for
bit; a replay shard is its ``ShardState`` as written by ``save_snapshot``.

Protocol (who calls what; the lead is learner 0, rank 0)::

    lead                                         replay shard rank i
    ----                                         -------------------
    path = layout.begin(step)   # fresh .partial dir
    tell every shard: CHECKPOINT(step)  ─────▶  path = layout.partial_path(step)
    layout.write_learner(path, ...)              layout.write_shard(path, i, shard)
    layout.write_actors(path, counters)          tell the lead: done (or failed)
    wait until every shard is done   ◀─────────
    info = layout.commit(path, step, num_shards)   # manifest, rename, prune

``commit`` writes ``MANIFEST.json`` (temp file + ``os.replace``) inside the
partial directory, fsyncs it, and only then renames the directory to
``ckpt-<step>``: the rename is the commit point. A process killed at any
moment (``kill -9``, a second signal, a node failure) leaves either the
previous checkpoints untouched plus an ignored ``.partial-`` directory, or a
new complete checkpoint. ``begin`` and ``prune`` remove leftovers. The run
directory must be on a file system every rank sees (the cluster's shared or
parallel file system).

Why the replay is hard-linked, not re-written. A replay snapshot is
incremental: ``save_snapshot`` rewrites only the segments that changed since
the shard's last snapshot *in the same directory*. ``write_shard`` therefore
first hard-links every file of the shard's previous snapshot (the newest
committed checkpoint whose ``shard-i/index.h5`` carries the shard's current
``snapshot_uid``) into the new ``shard-i/`` directory, then calls
``save_snapshot`` there. Unchanged segments are reused through the links,
changed ones are written under new names (the snapshot never opens an existing
file for writing; the index is replaced by rename), and links to files the new
index no longer references are simply unlinked. So a checkpoint costs the
learner file + the changed segments + one small index per shard, each
checkpoint directory is self-contained (any of the ``keep`` can be restored,
copied or deleted on its own), and disk use is one replay plus what changed.
A persistent ``RUN_DIR/replay/shard-i`` directory would be cheaper by nothing
and could not keep ``keep`` checkpoints, since each snapshot deletes the
segments the previous index referenced. Where the file system refuses hard
links (``EXDEV``/``EPERM``), the files are copied instead (then a checkpoint
costs the whole replay; ``ShardWriteReport.copied_bytes`` says so). The price
of sharing: a file damaged on disk after it was written is damaged in every
checkpoint that links it, so validation then rejects all of them (each is
reported); ``CheckpointLayout(link=False)`` writes every checkpoint in full
for installations that prefer independent copies.

Validation. ``MANIFEST.json`` carries a crc32 of its own body; each file entry
has the file's size and crc32 (the learner and actor files are checksummed
when written, replay segments take the crc32 their snapshot index recorded
right after the write, so commit costs nothing per unchanged byte).
:func:`validate` checks sizes (cheap: catches truncation) and, with
``deep=True``, every file's crc32 (catches bit flips), in a few threads.
:func:`find_latest_valid` walks complete checkpoints from the newest, reports
each invalid one once by name with what is wrong, and returns the newest valid
one (``None`` for a fresh start).

Resume. The lead calls :func:`resume_point` (find + :func:`compatibility_errors`
against the new config; :class:`CheckpointIncompatible` names every field that
differs, old vs new, and the entry point exits 2), broadcasts the
``CheckpointInfo`` (a plain picklable record), then: learners
``read_learner(info)`` -> ``Learner.load_state(ckpt.state)`` plus counters;
shard ``i`` of ``S'`` ``restore_shard(info, i, S', num_envs=cfg.actor.num_envs,
spec=<the ShardSpec it would start with>)``, which is an exact
``load_snapshot`` when ``S' == S`` and the layout is unchanged, and otherwise a
re-sharding restore that keeps every sequence (streams are placed by
``topology.shard_for_stream_id``, the rule actors route by); actors restart
their episodes and continue their counters from :func:`read_actors`.

Preemption. :class:`PreemptionFlag` turns SIGUSR1/SIGTERM into a flag that the
rank loops poll (the handler never raises, so a second signal during a
checkpoint changes nothing); after the coordinated checkpoint every rank exits
with :data:`EXIT_REQUEUE` (3), which ``slurm/*.sh`` answer with ``scontrol
requeue``; the requeued job resumes from the run directory by itself.
:class:`CheckpointSchedule` decides when a periodic checkpoint is due
(``checkpoint.interval_seconds`` / ``interval_steps``).
"""
from __future__ import annotations

import datetime
import errno
import json
import os
import re
import shutil
import signal
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import h5py
import numpy as np

from r2d2_hpc.config import CheckpointConfig, Config, ConfigError
from r2d2_hpc.replay.layout import ShardSpec
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.storage.files import crc32_file as _crc32_file, fsync_path as _fsync_path
from r2d2_hpc.replay.snapshot import (INDEX_FILE, SnapshotError, SnapshotReport,
                                      load_resharded, load_snapshot, save_snapshot)

__all__ = [
    "EXIT_REQUEUE", "FORMAT", "MANIFEST", "LEARNER_FILE", "ACTORS_FILE",
    "CheckpointError", "CheckpointIncompatible", "CheckpointInfo", "CheckpointLayout",
    "FileEntry", "ShardWriteReport", "LearnerCheckpoint", "CheckpointSchedule",
    "PreemptionFlag", "write_tree", "read_tree", "validate", "open_checkpoint",
    "list_checkpoints", "find_latest_valid", "read_learner", "read_actors", "restore_shard",
    "compatibility_errors", "resume_point", "shard_fill",
]

#: Exit code of every rank after the checkpoint a preemption signal asked for:
#: "checkpointed, requeue me". ``slurm/*.sh`` requeue the job on it.
EXIT_REQUEUE = 3
#: Format tag of MANIFEST.json and the HDF5 files' meta.
FORMAT = "r2d2_hpc.checkpoint/1"
#: The manifest's file name; written last.
MANIFEST = "MANIFEST.json"
LEARNER_FILE = "learner.h5"
ACTORS_FILE = "actors.h5"
CHECKPOINTS_DIR = "checkpoints"
_CKPT_RE = re.compile(r"^ckpt-(\d{12})(?:\.(\d+))?$")
_PARTIAL_PREFIX = ".partial-"
#: Invalid checkpoints found on resume are renamed to this prefix + their name.
CORRUPT_PREFIX = "corrupt-"
_TRASH_PREFIX = ".trash-"
_SNAPSHOT_FILE_RE = re.compile(r"^(index\.h5|(steps|seqs)_\d{5,}_\d{8,}\.h5)$")
_CHUNK_BYTES = 256 << 10
_SCALAR_ATTR = "r2d2_0d"
_JSON_ATTR = "r2d2_json"

#: Config fields a checkpoint cannot be resumed with a different value of:
#: they change the network's parameter shapes, the observation or action
#: spaces, what the stored replay sequences mean, or the task itself.
FROZEN_FIELDS: Tuple[str, ...] = (
    "env.name", "env.game", "env.frame_stack", "env.screen_size", "env.full_action_space",
    "network.torso", "network.mlp_hidden", "network.core", "network.lstm_size",
    "network.use_prev_action", "network.use_prev_reward", "network.dueling",
    "network.head_hidden", "network.res_link",
    "replay.burn_in", "replay.trace_length", "replay.priority_exponent",
)
#: Job shapes (``ranks.common.JobSpec`` fields) that must match on resume.
FROZEN_SPEC_FIELDS: Tuple[str, ...] = ("obs_shape", "frame_shape", "obs_dtype", "num_actions",
                                       "state_size", "num_params", "frame_stack")

#: Replay layout fields that must agree for the replay to be restored at all.
_RESHARD_FROZEN = ("frame_shape", "obs_dtype", "frame_stack", "stack_fill", "sequence_length",
                   "state_size", "priority_exponent")

Tree = Mapping[str, Any]
Report = Callable[[str], None]


class CheckpointError(ValueError):
    """A checkpoint is missing, incomplete, truncated or corrupted; the message names it."""


class CheckpointIncompatible(ValueError):
    """The newest checkpoint cannot be resumed with this config.

    Attributes:
      errors: one line per differing field: ``name: checkpoint has X, this run has Y``.
      checkpoint: the checkpoint's path.
    """

    def __init__(self, errors: Sequence[str], checkpoint: str) -> None:
        self.errors = list(errors)
        self.checkpoint = checkpoint
        lines = [f"cannot resume from {checkpoint}: {len(self.errors)} setting(s) differ from "
                 f"the checkpoint's and cannot change on resume:"]
        lines += [f"  - {e}" for e in self.errors]
        lines.append("resume with the checkpoint's values (r2d2-ckpt inspect "
                     f"{checkpoint} --config FILE shows every difference) or start a new "
                     "run directory (--run-dir)")
        super().__init__("\n".join(lines))


# --------------------------------------------------------------------------- #
# Files: checksums, fsync, atomic writes.

@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint as the manifest lists it."""

    path: str
    """Path relative to the checkpoint directory, '/'-separated."""
    nbytes: int
    crc32: int

    def to_dict(self) -> Dict[str, int]:
        return {"nbytes": self.nbytes, "crc32": self.crc32}


def crc32_file(path: str) -> int:
    """zlib crc32 of a whole file, read in blocks (the replay snapshot's own helper)."""
    return _crc32_file(path)


_fsync = _fsync_path


def write_json_atomic(path: str, data: Any, fsync: bool = False, **dump_kw: Any) -> None:
    """Writes ``data`` as JSON (``indent=1`` plus ``dump_kw``) to a temp file
    beside ``path``, optionally fsyncs it, then ``os.replace``s it into place:
    readers see the old file or the whole new one, never a part."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, **dump_kw)
        fh.write("\n")
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.replace(tmp, path)


def _body_crc(body: Mapping[str, Any]) -> int:
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


# --------------------------------------------------------------------------- #
# Nested dicts <-> HDF5.

def _as_array(value: Any) -> Optional[np.ndarray]:
    """``value`` as a numpy array if it is one (or a tensor / numpy scalar), else None."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        return value.detach().cpu().numpy()
    return None


def _write_array(group: h5py.Group, name: str, arr: np.ndarray) -> None:
    """A chunked dataset with a fletcher32 checksum per chunk (0-d arrays as shape (1,))."""
    scalar = arr.ndim == 0
    arr = np.ascontiguousarray(arr).reshape(arr.shape or (1,))  # ascontiguousarray: ndim >= 1
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"{group.name}/{name}: cannot store dtype {arr.dtype} (numbers only)")
    if arr.size == 0:
        ds = group.create_dataset(name, shape=arr.shape, dtype=arr.dtype,
                                  maxshape=(None,) * arr.ndim, chunks=(1,) * arr.ndim,
                                  fletcher32=True)
    else:
        row = max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
        rows = max(1, min(arr.shape[0], _CHUNK_BYTES // row))
        ds = group.create_dataset(name, data=arr, chunks=(rows,) + arr.shape[1:],
                                  fletcher32=True)
    if scalar:
        ds.attrs[_SCALAR_ATTR] = True


def write_tree(group: h5py.Group, tree: Tree) -> None:
    """Writes a nested dict into an HDF5 group, exactly.

    Mapping: a dict -> a subgroup; a numpy array, numpy scalar or tensor -> a
    dataset of the same dtype and shape (chunked, fletcher32); any other value
    (int, float, str, bool, None, lists of those, e.g. a numpy generator's
    ``bit_generator.state``) -> one entry of the group's JSON attribute.
    Keys must be non-empty strings without '/'.

    Args:
      group: an open, writable HDF5 group.
      tree: the nested dict.

    Raises:
      TypeError: on a key or value that cannot be stored, naming it.
    """
    plain: Dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "/" in key or key == ".":
            raise TypeError(f"{group.name}: key {key!r} must be a non-empty string without '/'")
        if isinstance(value, Mapping):
            write_tree(group.create_group(key), value)
            continue
        arr = _as_array(value)
        if arr is not None:
            _write_array(group, key, arr)
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{group.name}/{key}: {type(value).__name__} is neither an array, "
                            f"a dict nor JSON-serialisable ({exc})") from None
        plain[key] = value
    if plain:
        group.attrs[_JSON_ATTR] = json.dumps(plain, sort_keys=True)


def read_tree(group: h5py.Group) -> Dict[str, Any]:
    """Reads what :func:`write_tree` wrote (0-d arrays come back as 0-d arrays).

    Raises:
      OSError/ValueError from h5py when a chunk's fletcher32 checksum fails.
    """
    out: Dict[str, Any] = {}
    raw = group.attrs.get(_JSON_ATTR)
    if raw is not None:
        out.update(json.loads(raw if isinstance(raw, str) else bytes(raw).decode()))
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = read_tree(item)
        else:
            arr = item[...]
            if item.attrs.get(_SCALAR_ATTR, False):
                arr = arr.reshape(())
            out[key] = arr
    return out


def _write_meta(f: h5py.File, meta: Mapping[str, Any]) -> None:
    _write_array(f, "meta", np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8))


def _read_meta(f: h5py.File, path: str) -> Dict[str, Any]:
    try:
        raw = f["meta"][...]
        meta = json.loads(raw.tobytes().decode())
    except KeyError:
        raise CheckpointError(f"{path}: no 'meta' dataset (not a checkpoint file)") from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: meta is corrupted ({exc})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format')!r}, expected "
                              f"{FORMAT!r}")
    return meta


def _open_h5(path: str) -> h5py.File:
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: file is missing")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: not a readable HDF5 file, truncated or corrupted "
                              f"({exc})") from None


def _index_meta(shard_dir: str) -> Optional[Dict[str, Any]]:
    """The JSON meta of a snapshot's index.h5, or None if absent or unreadable."""
    path = os.path.join(shard_dir, INDEX_FILE)
    if not os.path.exists(path):
        return None
    try:
        with h5py.File(path, "r") as f:
            return json.loads(f["meta"][...].tobytes().decode())
    except (OSError, ValueError, RuntimeError, KeyError):
        return None


# --------------------------------------------------------------------------- #
# Records.

@dataclass(frozen=True)
class ShardWriteReport:
    """What ``write_shard`` did (for logs and the benchmark)."""

    shard_index: int
    snapshot: SnapshotReport
    linked_from: str
    """The checkpoint whose files were hard-linked in ('' for a full write)."""
    linked_files: int
    copied_bytes: int
    """Bytes copied because hard links were refused (0 where links work)."""
    seconds: float

    @property
    def bytes_written(self) -> int:
        """Bytes this checkpoint wrote for the shard (changed segments + index + copies)."""
        return self.snapshot.bytes_written + self.copied_bytes


@dataclass(frozen=True)
class CheckpointInfo:
    """A complete checkpoint: where it is and what its manifest says.

    Plain data (picklable): the lead finds it and broadcasts it to every rank.
    """

    path: str
    manifest: Dict[str, Any]
    deep_verified: bool = False
    """True if every file's crc32 was checked against the manifest."""

    @property
    def name(self) -> str:
        return os.path.basename(self.path)

    @property
    def step(self) -> int:
        """Learner step the checkpoint was taken at."""
        return int(self.manifest["step"])

    @property
    def num_shards(self) -> int:
        return int(self.manifest["num_shards"])

    @property
    def counters(self) -> Dict[str, Any]:
        """The learner's counters (env steps, frames, episodes, ...)."""
        return dict(self.manifest.get("counters", {}))

    @property
    def shards(self) -> List[Dict[str, Any]]:
        """Per shard: capacities, live sequences, stored observations, snapshot id."""
        return list(self.manifest.get("shards", []))

    @property
    def job_spec(self) -> Optional[Dict[str, Any]]:
        return self.manifest.get("job_spec")

    @property
    def config_dict(self) -> Dict[str, Any]:
        return dict(self.manifest.get("config", {}))

    def config(self) -> Config:
        """The run's effective config when the checkpoint was written.

        Raises:
          ConfigError: if this version of the code no longer accepts it.
        """
        return Config.from_dict(self.config_dict, source=os.path.join(self.path, MANIFEST))

    def shard_dir(self, index: int) -> str:
        return os.path.join(self.path, f"shard-{index}")

    @property
    def learner_path(self) -> str:
        return os.path.join(self.path, LEARNER_FILE)

    @property
    def actors_path(self) -> str:
        return os.path.join(self.path, ACTORS_FILE)


@dataclass
class LearnerCheckpoint:
    """What ``learner.h5`` holds."""

    step: int
    state: Dict[str, Any]
    """``Learner.state()`` as saved: pass it to ``Learner.load_state``."""
    counters: Dict[str, Any]
    config: Dict[str, Any]
    """The effective config as a plain dict (``Config.from_dict`` to rebuild it)."""
    job_spec: Optional[Dict[str, Any]]
    extra: Dict[str, Any] = field(default_factory=dict)
    """Anything else the learner rank saved (e.g. its numpy generators' states)."""


def _spec_dict(job_spec: Any) -> Optional[Dict[str, Any]]:
    if job_spec is None:
        return None
    d = job_spec._asdict() if hasattr(job_spec, "_asdict") else dict(job_spec)
    return json.loads(json.dumps({k: list(v) if isinstance(v, tuple) else v
                                  for k, v in d.items()}))


# --------------------------------------------------------------------------- #
# Listing.

def _checkpoints_dir(run_dir: str) -> str:
    return os.path.join(run_dir, CHECKPOINTS_DIR)


def checkpoint_key(name: str) -> Optional[Tuple[int, int]]:
    m = _CKPT_RE.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def list_checkpoints(run_dir: str) -> List[str]:
    """Paths of the committed checkpoint directories of a run, oldest first.

    Committed means renamed from ``.partial-``; whether the files are intact is
    :func:`validate`'s business.
    """
    root = _checkpoints_dir(run_dir)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    keyed = [(k, n) for n in names if (k := checkpoint_key(n)) is not None
             and os.path.isdir(os.path.join(root, n))]
    return [os.path.join(root, n) for _, n in sorted(keyed)]


# --------------------------------------------------------------------------- #
# Writing.

class CheckpointLayout:
    """The checkpoints of one run directory: begin, per-role writers, commit, prune.

    Every rank builds its own (cheap, no I/O); see the module docstring for
    which rank calls what.
    """

    def __init__(self, run_dir: str, keep: int = 3, fsync: bool = True,
                 link: bool = True) -> None:
        """Args:
          run_dir: the run directory (shared by every rank).
          keep: complete checkpoints kept by ``prune`` (``checkpoint.keep``).
          fsync: fsync files and directories before each rename (turn off only
            in tests that do not test crash safety).
          link: hard-link unchanged replay segments from the previous
            checkpoint (default). False writes every shard in full each time:
            checkpoints then share no file, so damage to one file on disk
            cannot reach two checkpoints, at the cost of writing the whole
            replay every time.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.run_dir = run_dir
        self.root = _checkpoints_dir(run_dir)
        self.keep = int(keep)
        self.fsync = bool(fsync)
        self.link = bool(link)
        # (size, mtime_ns) -> crc32 of files this process wrote, so commit need
        # not read them back.
        self._written: Dict[str, Tuple[int, int, int]] = {}

    # ---------------------------------------------------------------- paths
    def partial_path(self, step: int) -> str:
        """The directory every rank writes its part of the checkpoint at ``step`` into."""
        return os.path.join(self.root, f"{_PARTIAL_PREFIX}ckpt-{int(step):012d}")

    def checkpoints(self) -> List[str]:
        """Committed checkpoints, oldest first (see :func:`list_checkpoints`)."""
        return list_checkpoints(self.run_dir)

    # ---------------------------------------------------------------- begin
    def begin(self, step: int) -> str:
        """Lead only: a fresh, empty partial directory for the checkpoint at ``step``.

        Removes leftovers of interrupted checkpoints and prunes first, so call
        it only while no other checkpoint of this run is being written.

        Returns:
          The partial directory's path (``partial_path(step)``).
        """
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        os.makedirs(self.root, exist_ok=True)
        self._remove_leftovers()
        path = self.partial_path(step)
        os.makedirs(path)
        return path

    def _remove_leftovers(self) -> List[str]:
        removed = []
        for name in sorted(os.listdir(self.root)):
            if name.startswith((_PARTIAL_PREFIX, _TRASH_PREFIX)):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
                removed.append(name)
        return removed

    # -------------------------------------------------------------- writers
    def _remember(self, path: str, crc: int) -> FileEntry:
        st = os.stat(path)
        self._written[os.path.abspath(path)] = (st.st_size, st.st_mtime_ns, crc)
        return FileEntry(os.path.basename(path), st.st_size, crc)

    def _write_h5(self, path: str, meta: Mapping[str, Any],
                  trees: Mapping[str, Tree]) -> FileEntry:
        tmp = f"{path}.tmp"
        with h5py.File(tmp, "w") as f:
            _write_meta(f, meta)
            for name, tree in trees.items():
                write_tree(f.create_group(name), tree)
        if self.fsync:
            _fsync(tmp)
        crc = crc32_file(tmp)  # still in the page cache
        os.replace(tmp, path)
        return self._remember(path, crc)

    def write_learner(self, path: str, learner_state: Tree, cfg: Config,
                      counters: Mapping[str, Any], *, step: Optional[int] = None,
                      job_spec: Any = None, extra: Optional[Tree] = None) -> FileEntry:
        """Learner 0: writes ``learner.h5`` into the partial directory ``path``.

        Args:
          path: from ``begin`` (lead) or ``partial_path``.
          learner_state: ``Learner.state()``: online/target params, Adam state,
            ``step_count``, ``params_version``, torch (and CUDA) RNG states.
          cfg: the run's effective config (saved; compared on resume).
          counters: the job's counters, JSON numbers: at least ``env_steps``;
            e.g. ``env_frames``, ``episodes``, ``learner_step``, ``wall_seconds``.
          step: the learner step (default ``learner_state['step_count']``).
          job_spec: ``ranks.common.JobSpec`` (obs shape, actions, ...), checked
            on resume.
          extra: any other state of the learner rank (e.g. ``{"rng": {"alloc":
            generator.bit_generator.state}}``), as a nested dict.

        Returns:
          The file's manifest entry.
        """
        if step is None:
            step = int(learner_state["step_count"])
        meta = {"format": FORMAT, "kind": "learner", "step": int(step),
                "counters": dict(counters), "config": cfg.to_dict(),
                "job_spec": _spec_dict(job_spec)}
        return self._write_h5(os.path.join(path, LEARNER_FILE), meta,
                              {"state": learner_state, "extra": extra or {}})

    def write_actors(self, path: str, counters: Sequence[Mapping[str, Union[int, float]]]
                     ) -> FileEntry:
        """Lead: writes ``actors.h5``: one row of counters per actor.

        Args:
          path: the partial directory.
          counters: ``counters[a]`` is actor ``a``'s dict (e.g. ``env_steps``,
            ``episodes``); a name missing for some actor is 0 there.

        Returns:
          The file's manifest entry.
        """
        names = sorted({k for c in counters for k in c})
        table: Dict[str, np.ndarray] = {}
        for n in names:
            vals = [c.get(n, 0) for c in counters]
            is_int = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                         for v in vals)
            table[n] = np.asarray(vals, np.int64 if is_int else np.float64)
        meta = {"format": FORMAT, "kind": "actors", "num_actors": len(counters),
                "names": names}
        return self._write_h5(os.path.join(path, ACTORS_FILE), meta, {"counters": table})

    def _link_source(self, index: int, uid: str) -> str:
        """The newest committed ``shard-<index>`` whose snapshot is the shard's current one."""
        if not uid:
            return ""
        for ckpt in reversed(self.checkpoints()):
            d = os.path.join(ckpt, f"shard-{index}")
            meta = _index_meta(d)
            if meta is not None and meta.get("snapshot_uid") == uid:
                return d
        return ""

    def write_shard(self, path: str, index: int, shard: ReplayShard, *,
                    full: bool = False) -> ShardWriteReport:
        """Replay shard rank: writes the shard's snapshot into ``path/shard-<index>``.

        Hard-links the shard's previous snapshot in first so that only the
        segments changed since then are written (module docstring).

        Args:
          path: the partial directory (``partial_path(step)``).
          index: the shard's index.
          shard: the shard; afterwards it remembers this snapshot as its latest.
          full: write every segment (no links; also when the layout has
            ``link=False``).

        Returns:
          A ``ShardWriteReport``.
        """
        t0 = time.perf_counter()
        target = os.path.join(path, f"shard-{index}")
        if os.path.exists(target):  # a retry into the same partial dir
            shutil.rmtree(target)
        os.makedirs(target)
        full = full or not self.link
        uid = str(shard.get_state().counters.get("snapshot_uid", ""))
        source = "" if full else self._link_source(index, uid)
        linked, copied = 0, 0
        if source:
            for name in sorted(os.listdir(source)):
                if not _SNAPSHOT_FILE_RE.match(name):
                    continue
                src, dst = os.path.join(source, name), os.path.join(target, name)
                try:
                    os.link(src, dst)
                    linked += 1
                except OSError as exc:
                    if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK,
                                         errno.ENOTSUP, errno.EOPNOTSUPP):
                        raise
                    shutil.copyfile(src, dst)
                    copied += os.path.getsize(dst)
        rep = save_snapshot(shard, target, full=full, fsync=self.fsync)
        return ShardWriteReport(index, rep, os.path.basename(os.path.dirname(source))
                                if source else "", linked, copied, time.perf_counter() - t0)

    # --------------------------------------------------------------- commit
    def _entry(self, ckpt: str, rel: str) -> FileEntry:
        full = os.path.join(ckpt, rel)
        st = os.stat(full)
        known = self._written.get(os.path.abspath(full))
        if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
            return FileEntry(rel, st.st_size, known[2])
        return FileEntry(rel, st.st_size, crc32_file(full))

    def commit(self, path: str, step: int, num_shards: int,
               extra: Optional[Mapping[str, Any]] = None) -> CheckpointInfo:
        """Lead, after every rank wrote its part: manifest, atomic rename, prune.

        Args:
          path: the partial directory from ``begin(step)``.
          step: the learner step (must match ``learner.h5``).
          num_shards: replay shards of the running job; each must have written
            ``shard-<i>/``.
          extra: more JSON data for the manifest (e.g. ``{"reason": "signal"}``).

        Returns:
          The committed checkpoint (``deep_verified`` False: nothing was re-read).

        Raises:
          CheckpointError: naming every missing or unreadable part; nothing is
            committed then.
        """
        problems = []
        for rel in (LEARNER_FILE, ACTORS_FILE):
            if not os.path.isfile(os.path.join(path, rel)):
                problems.append(f"{rel} was not written")
        shard_meta: List[Optional[Dict[str, Any]]] = []
        for i in range(num_shards):
            meta = _index_meta(os.path.join(path, f"shard-{i}"))
            if meta is None:
                problems.append(f"shard-{i}/{INDEX_FILE} was not written or is unreadable")
            shard_meta.append(meta)
        if problems:
            raise CheckpointError(f"{path}: cannot commit: " + "; ".join(problems))
        with _open_h5(os.path.join(path, LEARNER_FILE)) as f:
            lmeta = _read_meta(f, os.path.join(path, LEARNER_FILE))
        if int(lmeta["step"]) != int(step):
            raise CheckpointError(f"{path}: learner.h5 is at step {lmeta['step']}, commit "
                                  f"asked for step {step}")
        with _open_h5(os.path.join(path, ACTORS_FILE)) as f:
            ameta = _read_meta(f, os.path.join(path, ACTORS_FILE))

        files: Dict[str, Dict[str, int]] = {}
        for rel in (LEARNER_FILE, ACTORS_FILE):
            files[rel] = self._entry(path, rel).to_dict()
        shards = []
        for i, meta in enumerate(shard_meta):
            assert meta is not None
            d = f"shard-{i}"
            files[f"{d}/{INDEX_FILE}"] = self._entry(path, f"{d}/{INDEX_FILE}").to_dict()
            for e in list(meta["steps"]) + list(meta["seqs"]):
                files[f"{d}/{e['file']}"] = {"nbytes": int(e["nbytes"]), "crc32": int(e["crc32"])}
            shards.append(shard_fill(meta, os.path.join(path, d)))
        body = {"format": FORMAT, "step": int(step),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "num_shards": int(num_shards), "num_actors": int(ameta["num_actors"]),
                "counters": lmeta["counters"], "config": lmeta["config"],
                "job_spec": lmeta["job_spec"], "shards": shards, "files": files,
                "extra": dict(extra or {})}
        manifest = dict(body, body_crc32=_body_crc(body))
        write_json_atomic(os.path.join(path, MANIFEST), manifest, self.fsync, sort_keys=True)
        if self.fsync:
            _fsync(path)
        final = self._final_name(step)
        os.replace(path, final)  # the commit point
        if self.fsync:
            _fsync(self.root)
        self.prune()
        return CheckpointInfo(final, manifest, deep_verified=False)

    def _final_name(self, step: int) -> str:
        base = os.path.join(self.root, f"ckpt-{int(step):012d}")
        if not os.path.exists(base):
            return base
        k = 1
        while os.path.exists(f"{base}.{k}"):
            k += 1
        return f"{base}.{k}"

    def prune(self) -> List[str]:
        """Deletes all but the ``keep`` newest committed checkpoints, and leftovers.

        Each victim is first renamed to ``.trash-<name>`` (atomic), so a crash
        mid-delete never leaves a half-deleted directory that looks committed.

        Returns:
          Names of the checkpoints deleted.
        """
        ckpts = self.checkpoints()
        victims = ckpts[:max(0, len(ckpts) - self.keep)]
        removed = []
        for p in victims:
            name = os.path.basename(p)
            trash = os.path.join(self.root, f"{_TRASH_PREFIX}{name}")
            if os.path.exists(trash):
                shutil.rmtree(trash, ignore_errors=True)
            os.replace(p, trash)
            shutil.rmtree(trash, ignore_errors=True)
            removed.append(name)
        return removed


def shard_fill(index_meta: Mapping[str, Any], shard_dir: Optional[str] = None
               ) -> Dict[str, Any]:
    """A shard's fill from its snapshot index meta (and live count from index.h5).

    Returns:
      ``{"capacity_observations", "capacity_sequences", "stored_observations",
      "live_sequences", "snapshot_id", "snapshot_uid"}``; ``live_sequences``
      is -1 when the index file cannot be read.
    """
    spec = index_meta["spec"]
    counters = index_meta["counters"]
    live = -1
    if shard_dir is not None:
        try:
            with h5py.File(os.path.join(shard_dir, INDEX_FILE), "r") as f:
                live = int(np.count_nonzero(f["slots/live"][...]))
        except (OSError, ValueError, RuntimeError, KeyError):
            live = -1
    cap_obs = int(spec["capacity_observations"])
    return {"capacity_observations": cap_obs,
            "capacity_sequences": int(spec["capacity_sequences"]),
            "stored_observations": min(int(counters["write"]), cap_obs),
            "live_sequences": live,
            "snapshot_id": int(index_meta["snapshot_id"]),
            "snapshot_uid": str(index_meta["snapshot_uid"])}


# --------------------------------------------------------------------------- #
# Validation and finding.

def _read_manifest(path: str) -> Dict[str, Any]:
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such checkpoint directory")
    if not os.path.isfile(mpath):
        raise CheckpointError(f"{path}: {MANIFEST} is missing (the checkpoint was never "
                              f"completed)")
    try:
        with open(mpath, "r", encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{mpath}: unreadable or not JSON ({exc})") from None
    if not isinstance(manifest, dict) or "body_crc32" not in manifest:
        raise CheckpointError(f"{mpath}: not a checkpoint manifest")
    body = {k: v for k, v in manifest.items() if k != "body_crc32"}
    if _body_crc(body) != manifest["body_crc32"]:
        raise CheckpointError(f"{mpath}: its crc32 does not match its contents (corrupted)")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{mpath}: unknown format {manifest.get('format')!r}, "
                              f"expected {FORMAT!r}")
    for key in ("step", "num_shards", "files", "config"):
        if key not in manifest:
            raise CheckpointError(f"{mpath}: entry {key!r} is missing")
    return manifest


def check_file(path: str, rel: str, entry: Mapping[str, Any], deep: bool) -> Optional[str]:
    full = os.path.join(path, rel)
    if not os.path.isfile(full):
        return f"{rel}: missing"
    size = os.path.getsize(full)
    if size != int(entry["nbytes"]):
        return (f"{rel}: {size} bytes, the manifest records {entry['nbytes']} "
                f"({'truncated' if size < int(entry['nbytes']) else 'overwritten'})")
    if deep:
        crc = crc32_file(full)
        if crc != int(entry["crc32"]):
            return (f"{rel}: crc32 {crc:#010x} does not match {int(entry['crc32']):#010x} "
                    f"recorded in the manifest (corrupted)")
    return None


def validate(path: str, deep: bool = True, threads: int = 4
             ) -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """Checks a checkpoint directory against its manifest.

    Args:
      path: a checkpoint directory.
      deep: also compare every file's crc32 (reads every byte), not just sizes.
      threads: files checked at once (crc32 releases the GIL).

    Returns:
      ``(manifest or None, problems)``: one line per bad file (relative path
      and what is wrong), empty when the checkpoint is intact.
    """
    manifest, problems, _ = validate_files(path, deep, threads)
    return manifest, problems


def validate_files(path: str, deep: bool = True, threads: int = 4
                   ) -> Tuple[Optional[Dict[str, Any]], List[str],
                              List[Tuple[str, Dict[str, Any], Optional[str]]]]:
    """``validate`` plus every manifest file's own result, in one pass over the bytes.

    Returns:
      ``(manifest or None, problems, files)`` with ``files`` the
      ``(relative path, manifest entry, problem or None)`` of every listed
      file, sorted by path (empty without a readable manifest).
    """
    try:
        manifest = _read_manifest(path)
    except CheckpointError as exc:
        return None, [str(exc)], []
    files = manifest["files"]
    problems = []
    need = [LEARNER_FILE, ACTORS_FILE] + [f"shard-{i}/{INDEX_FILE}"
                                          for i in range(int(manifest["num_shards"]))]
    for rel in need:
        if rel not in files:
            problems.append(f"{rel}: not listed in the manifest")
    items = sorted(files.items())
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        results = list(pool.map(lambda kv: check_file(path, kv[0], kv[1], deep), items))
    problems += [r for r in results if r is not None]
    return manifest, problems, [(rel, entry, r) for (rel, entry), r in zip(items, results)]


def open_checkpoint(path: str, deep: bool = True) -> CheckpointInfo:
    """The checkpoint at ``path`` if it validates.

    Raises:
      CheckpointError: naming the checkpoint and every problem found.
    """
    manifest, problems = validate(path, deep)
    if problems or manifest is None:
        raise CheckpointError(f"checkpoint {path} is invalid: " + "; ".join(problems))
    return CheckpointInfo(path, manifest, deep_verified=deep)


def find_latest_valid(run_dir: str, report: Optional[Report] = print,
                      deep: bool = True, quarantine: bool = False
                      ) -> Optional[CheckpointInfo]:
    """The newest complete checkpoint of a run that validates.

    Every invalid checkpoint newer than it is reported once, by name, with
    what is wrong; interrupted (``.partial-``) ones are reported as ignored.

    Args:
      run_dir: the run directory.
      report: called with one line per problem (default ``print``; None = silent).
      deep: check crc32s, not only sizes (see :func:`validate`).
      quarantine: rename each invalid checkpoint to ``corrupt-<name>`` (kept
        for inspection, never restored, not counted by ``keep``), so that a
        resumed run's new checkpoints are not shadowed by it.

    Returns:
      The checkpoint, or None when there is none (a fresh start).
    """
    say = report or (lambda _msg: None)
    root = _checkpoints_dir(run_dir)
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            if name.startswith(_PARTIAL_PREFIX):
                say(f"r2d2 checkpoint: ignoring {name[len(_PARTIAL_PREFIX):]}: interrupted "
                    f"while being written (no manifest)")
    ckpts = list_checkpoints(run_dir)
    for path in reversed(ckpts):
        manifest, problems = validate(path, deep)
        if not problems and manifest is not None:
            return CheckpointInfo(path, manifest, deep_verified=deep)
        older = "using the previous one" if path != ckpts[0] else "no older checkpoint left"
        shown = problems[:5] + ([f"... and {len(problems) - 5} more"] if len(problems) > 5
                                else [])
        moved = ""
        if quarantine:
            base = os.path.join(os.path.dirname(path), CORRUPT_PREFIX + os.path.basename(path))
            dest, k = base, 0
            while os.path.exists(dest):
                k += 1
                dest = f"{base}~{k}"
            os.replace(path, dest)
            moved = f" (moved to {os.path.basename(dest)})"
        say(f"r2d2 checkpoint: {os.path.basename(path)} is corrupt or incomplete: "
            f"{'; '.join(shown)}; {older}{moved}")
    return None


# --------------------------------------------------------------------------- #
# Reading.

def read_learner(info: Union[CheckpointInfo, str]) -> LearnerCheckpoint:
    """Reads ``learner.h5`` of a checkpoint (an info or a checkpoint directory).

    Raises:
      CheckpointError: naming the file when it is unreadable or corrupted.
    """
    path = info.learner_path if isinstance(info, CheckpointInfo) else \
        os.path.join(info, LEARNER_FILE)
    with _open_h5(path) as f:
        meta = _read_meta(f, path)
        try:
            state = read_tree(f["state"])
            extra = read_tree(f["extra"]) if "extra" in f else {}
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: corrupted ({exc})") from None
    return LearnerCheckpoint(int(meta["step"]), state, dict(meta["counters"]),
                             dict(meta["config"]), meta.get("job_spec"), extra)


def read_actors(info: Union[CheckpointInfo, str]) -> List[Dict[str, Any]]:
    """Per-actor counters from ``actors.h5`` (``[a][name]``, Python numbers).

    Raises:
      CheckpointError: naming the file when it is unreadable or corrupted.
    """
    path = info.actors_path if isinstance(info, CheckpointInfo) else \
        os.path.join(info, ACTORS_FILE)
    with _open_h5(path) as f:
        meta = _read_meta(f, path)
        try:
            table = read_tree(f["counters"])
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: corrupted ({exc})") from None
    n = int(meta["num_actors"])
    return [{k: v[a].item() for k, v in table.items()} for a in range(n)]


def restore_shard(info: CheckpointInfo, shard_index: int, num_shards: int, *,
                  num_envs: int, spec: Optional[ShardSpec] = None, seed: int = 0,
                  strict: bool = True, verify: Optional[bool] = None) -> ReplayShard:
    """Replay shard ``shard_index`` of ``num_shards`` from a checkpoint.

    Exact (``load_snapshot``: contents, priorities, RNG; sampling continues
    bit-identically) when the shard count is unchanged and ``spec`` is None or
    equals the saved layout. Otherwise every saved shard is read and the new
    shard keeps every live sequence of the streams that now route to it
    (``topology.shard_for_stream_id(stream, num_envs, num_shards)``, the rule
    actors send by), with its priority; keys are reissued.

    Args:
      info: the checkpoint (from ``find_latest_valid``/``resume_point``).
      shard_index: this shard's index in the new job.
      num_shards: replay shards of the new job.
      num_envs: environments per actor in the new job (``actor.num_envs``).
      spec: the layout the new job's shard would start with (e.g.
        ``make_shard(...).spec``); its capacities are used when re-sharding.
      seed: generator seed of a re-sharded shard (an exact restore keeps the
        saved generator state).
      strict: when re-sharding, raise if the new capacities cannot hold
        everything (else the oldest data is dropped).
      verify: check segment sizes and crc32s while reading (default: only if
        ``info`` was not deep-verified already).

    Returns:
      The shard.

    Raises:
      CheckpointError: a file is missing or corrupted, or the saved layout
        cannot be restored into ``spec`` (the message says which field differs).
    """
    from r2d2_hpc.topology import shard_for_stream_id

    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} not in [0, {num_shards})")
    check = (not info.deep_verified) if verify is None else bool(verify)
    saved = info.num_shards
    meta = _index_meta(info.shard_dir(min(shard_index, saved - 1)))
    if meta is None:
        raise CheckpointError(f"{info.path}: shard-{min(shard_index, saved - 1)}/{INDEX_FILE} "
                              f"is missing or unreadable")
    old = meta.get("spec", {})
    if spec is not None:
        diffs = [f"{f}: checkpoint has {old.get(f)!r}, this run has {v!r}"
                 for f, v in spec.to_dict().items()
                 if f in _RESHARD_FROZEN and old.get(f) != v]
        if diffs:
            raise CheckpointError(f"{info.path}: the replay cannot be restored into this "
                                  f"run's layout: " + "; ".join(diffs))
    try:
        if saved == num_shards and (spec is None or old == spec.to_dict()):
            return load_snapshot(info.shard_dir(shard_index), verify=check)
        return load_resharded(
            [info.shard_dir(i) for i in range(saved)], shard_index, num_shards,
            capacity_observations=spec.capacity_observations if spec else None,
            capacity_sequences=spec.capacity_sequences if spec else None,
            seed=seed, strict=strict, verify=check,
            assign=lambda stream, n: shard_for_stream_id(int(stream), num_envs, n))
    except SnapshotError as exc:
        raise CheckpointError(f"{info.name}: {exc}") from None


# --------------------------------------------------------------------------- #
# Compatibility and resume.

def _get(d: Mapping[str, Any], dotted: str) -> Any:
    node: Any = d
    for k in dotted.split("."):
        if not isinstance(node, Mapping) or k not in node:
            return None
        node = node[k]
    return node


def compatibility_errors(saved: Union[Config, Mapping[str, Any]],
                         new: Union[Config, Mapping[str, Any]],
                         saved_spec: Optional[Any] = None,
                         new_spec: Optional[Any] = None) -> List[str]:
    """Every difference a resume cannot honour, one line per field.

    The frozen fields (:data:`FROZEN_FIELDS`) fix the network's shapes, the
    observation and action spaces and what stored sequences mean; the job
    shapes (:data:`FROZEN_SPEC_FIELDS`, when both are given) catch the rest.
    Everything else may change (learning rate, batch size, replay shards and
    capacity, actors, budgets, intervals, ...).

    Args:
      saved: the checkpoint's config (a Config or its plain dict).
      new: this run's config.
      saved_spec: the checkpoint's job shapes (a dict or JobSpec), optional.
      new_spec: this run's job shapes, optional.

    Returns:
      Lines ``"<field>: checkpoint has <old>, this run has <new>"``; empty when
      the checkpoint can be resumed.
    """
    a = saved.to_dict() if isinstance(saved, Config) else dict(saved)
    b = new.to_dict() if isinstance(new, Config) else dict(new)
    errors = []
    for name in FROZEN_FIELDS:
        x, y = _get(a, name), _get(b, name)
        if x != y:
            errors.append(f"{name}: checkpoint has {x!r}, this run has {y!r}")
    if saved_spec is not None and new_spec is not None:
        sa, sb = _spec_dict(saved_spec) or {}, _spec_dict(new_spec) or {}
        for name in FROZEN_SPEC_FIELDS:
            if name in sa and name in sb and sa[name] != sb[name]:
                errors.append(f"{name}: checkpoint has {sa[name]!r}, this run has {sb[name]!r}")
    return errors


def resume_point(run_dir: str, cfg: Config, job_spec: Any = None,
                 report: Optional[Report] = print, deep: bool = True
                 ) -> Optional[CheckpointInfo]:
    """Lead: the checkpoint to resume from, or None for a fresh start.

    Args:
      run_dir: the run directory.
      cfg: this run's config.
      job_spec: this run's ``JobSpec`` (compared with the saved shapes).
      report: where lines about skipped checkpoints go (each invalid one is
        also renamed ``corrupt-<name>``, see :func:`find_latest_valid`).
      deep: validate crc32s (see :func:`find_latest_valid`).

    Returns:
      The newest valid checkpoint (its ``config()`` may differ from ``cfg`` in
      fields that can change).

    Raises:
      CheckpointIncompatible: naming every field that differs and cannot
        (the entry point prints it and exits 2).
    """
    info = find_latest_valid(run_dir, report, deep, quarantine=True)
    if info is None:
        return None
    errors = compatibility_errors(info.config_dict, cfg, info.job_spec, job_spec)
    if not errors:
        try:
            info.config()
        except ConfigError as exc:
            errors = [f"the checkpoint's config is not valid for this version: {e}"
                      for e in exc.errors]
    if errors:
        raise CheckpointIncompatible(errors, info.path)
    return info


# --------------------------------------------------------------------------- #
# When to checkpoint.

class CheckpointSchedule:
    """Periodic checkpoints every ``interval_steps`` learner steps or ``interval_seconds``.

    Whichever comes first; 0 disables that criterion. Never due at the step
    of the last checkpoint (a learner waiting for replay fill writes nothing new).
    """

    def __init__(self, cfg: CheckpointConfig, step: int = 0,
                 now: Optional[float] = None) -> None:
        self.cfg = cfg
        self.last_step = int(step)
        self.last_time = time.monotonic() if now is None else float(now)

    def due(self, step: int, now: Optional[float] = None) -> bool:
        """True when a periodic checkpoint is due at ``step``."""
        now = time.monotonic() if now is None else now
        c = self.cfg
        by_steps = c.interval_steps > 0 and step - self.last_step >= c.interval_steps
        by_time = c.interval_seconds > 0 and now - self.last_time >= c.interval_seconds
        return bool(by_steps or by_time) and step != self.last_step

    def mark(self, step: int, now: Optional[float] = None) -> None:
        """Records that a checkpoint was written at ``step``."""
        self.last_step = int(step)
        self.last_time = time.monotonic() if now is None else float(now)


class PreemptionFlag:
    """SIGUSR1/SIGTERM -> a flag the rank loop polls (``requested``).

    The handler only counts: it never raises, so a signal that arrives while a
    checkpoint is being written (a second SIGUSR1, SLURM's SIGTERM) cannot
    interrupt or corrupt it. Install it on every rank; before or after
    ``MPI_Init`` both work (the MPICH wheel's libmpi installs a SIGUSR1
    handler at ``MPI_Init`` that swallows the signal but chains to a handler
    installed before it; one installed after replaces it). Without it SIGUSR1
    is silently ignored under MPICH and kills the process elsewhere. The lead
    acts on it (coordinated checkpoint, then every rank exits
    :data:`EXIT_REQUEUE`); a non-lead rank that sees it should tell the lead.

    Usage::

        flag = PreemptionFlag().install()
        ...
        if flag.requested: ...
        flag.uninstall()
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGUSR1, signal.SIGTERM)) -> None:
        self.signals = tuple(signals)
        self.count = 0
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        """True once any of the signals arrived (or ``trigger`` was called)."""
        return self.count > 0

    @property
    def signal_name(self) -> str:
        """Name of the first signal ('' if none)."""
        if self.signum is None:
            return ""
        try:
            return signal.Signals(self.signum).name
        except ValueError:
            return str(self.signum)

    def take(self) -> Optional[int]:
        """The first signal's number if signals arrived since the last ``take``
        (0 if unknown), else None; clears the count (a rank's polling loop)."""
        if not self.count:
            return None
        self.count = 0
        return self.signum or 0

    def trigger(self, signum: int = signal.SIGUSR1) -> None:
        """Raises the flag without a signal (e.g. a peer rank reported one)."""
        self._handle(signum, None)

    def install(self) -> "PreemptionFlag":
        """Installs the handlers (main thread only); returns self."""
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        """Restores the handlers that were there before ``install``."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def __enter__(self) -> "PreemptionFlag":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

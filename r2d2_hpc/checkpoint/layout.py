"""Coordinated checkpoints of an R2D2 job: the directory layout, the writers, commit, prune.

A checkpoint is the state of every rank of the job at one learner step, in
HDF5 files (every dataset chunked with a fletcher32 checksum per chunk) under
the run directory::

    RUN_DIR/checkpoints/
      ckpt-000000012500/             complete: MANIFEST.json is in and the dir was renamed
        MANIFEST.json                written last; every file with its size and crc32
        learner.h5                   learner 0: online + target params, Adam state,
                                     step, params version, RNG states, counters
                                     (env steps/frames), effective config, job shapes
        actors.h5                    each actor's ActorState (counters), one row per actor
        shard-0/index.h5             replay shard 0's snapshot (r2d2_hpc.replay.snapshot):
        shard-0/steps_00000_...h5      small index + immutable segment files
        shard-1/...
        demo-0/index.h5              replay shard 0's demonstration table (R2D3, only
        demo-0/steps_00000_...h5       with replay.demo_files), a snapshot like shard-0
      ckpt-000000012500.1/           a second checkpoint at the same step (rare)
      .partial-ckpt-000000015000/    being written; readers ignore it
      .trash-ckpt-000000002500/      being deleted by pruning; readers ignore it

What a rank saves is an explicit record: ``Learner.state()`` (a
``LearnerState``) and each actor's ``ActorState`` map one to one onto HDF5
groups, datasets and JSON attributes (:mod:`r2d2_hpc.checkpoint.state_files`
owns those files' layout), so a round trip is bit for bit; a replay shard is
its ``ReplayShard.state()`` (a ``ShardState``) as written by ``save_snapshot``.

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

Validation and finding the newest valid checkpoint are in
:mod:`r2d2_hpc.checkpoint.validate`, reading one back in
:mod:`r2d2_hpc.checkpoint.restore`, the resume decision in
:mod:`r2d2_hpc.checkpoint.resume`, signals and the schedule in
:mod:`r2d2_hpc.checkpoint.preemption`.
"""
from __future__ import annotations

import datetime
import errno
import os
import shutil
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from r2d2_hpc.agent.learner import LearnerState
from r2d2_hpc.checkpoint.records import (ACTORS_FILE, FORMAT, LEARNER_FILE, MANIFEST,
                                         PARTIAL_PREFIX, SNAPSHOT_FILE_RE, TRASH_PREFIX,
                                         CheckpointError, CheckpointInfo, FileEntry,
                                         ShardWriteReport, checkpoints_dir, list_checkpoints,
                                         manifest_crc, open_h5, read_meta)
from r2d2_hpc.checkpoint.state_files import write_actors_file, write_learner_file
from r2d2_hpc.config import Config
from r2d2_hpc.replay.layout import demo_table_index
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.replay.snapshot import (INDEX_FILE, live_sequences, read_index_meta,
                                      save_snapshot)
from r2d2_hpc.storage.files import crc32_file, fsync_path, write_json_atomic
from r2d2_hpc.storage.h5tree import Tree
from r2d2_hpc.types import ActorState, JobSpec

__all__ = ["CheckpointLayout", "TABLES", "shard_fill"]

#: A replay rank's tables in a checkpoint: ``shard-<i>`` and (R2D3) ``demo-<i>``.
TABLES = ("shard", "demo")


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
        self.root = checkpoints_dir(run_dir)
        self.keep = int(keep)
        self.fsync = bool(fsync)
        self.link = bool(link)
        # (size, mtime_ns) -> crc32 of files this process wrote, so commit need
        # not read them back.
        self._written: Dict[str, Tuple[int, int, int]] = {}

    # ---------------------------------------------------------------- paths
    def partial_path(self, step: int) -> str:
        """The directory every rank writes its part of the checkpoint at ``step`` into."""
        return os.path.join(self.root, f"{PARTIAL_PREFIX}ckpt-{int(step):012d}")

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

    def discard(self, path: str) -> None:
        """Deletes the partial directory of a checkpoint that failed (what could be)."""
        if os.path.basename(path).startswith(PARTIAL_PREFIX):
            shutil.rmtree(path, ignore_errors=True)

    def _remove_leftovers(self) -> List[str]:
        removed = []
        for name in sorted(os.listdir(self.root)):
            if name.startswith((PARTIAL_PREFIX, TRASH_PREFIX)):
                shutil.rmtree(os.path.join(self.root, name), ignore_errors=True)
                removed.append(name)
        return removed

    # -------------------------------------------------------------- writers
    def _remember(self, path: str, crc: int) -> FileEntry:
        st = os.stat(path)
        self._written[os.path.abspath(path)] = (st.st_size, st.st_mtime_ns, crc)
        return FileEntry(os.path.basename(path), st.st_size, crc)

    def write_learner(self, path: str, state: LearnerState, cfg: Config,
                      counters: Mapping[str, Any], *, step: Optional[int] = None,
                      job_spec: Optional[JobSpec] = None,
                      extra: Optional[Tree] = None) -> FileEntry:
        """Learner 0: writes ``learner.h5`` into the partial directory ``path``.

        Args:
          path: from ``begin`` (lead) or ``partial_path``.
          state: ``Learner.state()``: online/target params, Adam state,
            ``step_count``, ``params_version``, torch (and CUDA) RNG states.
          cfg: the run's effective config (saved; compared on resume).
          counters: the job's counters, JSON numbers: at least ``env_steps``;
            e.g. ``env_frames``, ``episodes``, ``learner_step``, ``wall_seconds``.
          step: the learner step (default ``state.step_count``).
          job_spec: the job's shapes (``r2d2_hpc.types.JobSpec``), checked
            on resume.
          extra: any other state of the learner rank (e.g. ``{"rng": {"alloc":
            generator.bit_generator.state}}``), as a nested dict.

        Returns:
          The file's manifest entry.
        """
        file = os.path.join(path, LEARNER_FILE)
        _, crc = write_learner_file(file, state, cfg, counters, step=step, job_spec=job_spec,
                                    extra=extra, fsync=self.fsync)
        return self._remember(file, crc)

    def write_actors(self, path: str, actors: Sequence[ActorState]) -> FileEntry:
        """Lead: writes ``actors.h5``: each actor's ``ActorState``, in actor order.

        Args:
          path: the partial directory.
          actors: ``actors[a]`` is actor ``a``'s record (its counters).

        Returns:
          The file's manifest entry.
        """
        file = os.path.join(path, ACTORS_FILE)
        _, crc = write_actors_file(file, actors, fsync=self.fsync)
        return self._remember(file, crc)

    def _link_source(self, name: str, uid: str) -> str:
        """The newest committed ``<name>`` (``shard-<i>``, ``demo-<i>``) whose snapshot
        is the table's current one."""
        if not uid:
            return ""
        for ckpt in reversed(self.checkpoints()):
            d = os.path.join(ckpt, name)
            meta = read_index_meta(d)
            if meta is not None and meta.get("snapshot_uid") == uid:
                return d
        return ""

    def write_shard(self, path: str, index: int, shard: ReplayShard, *,
                    full: bool = False, table: str = "shard") -> ShardWriteReport:
        """Replay shard rank: writes the shard's snapshot into ``path/shard-<index>``
        (``table="demo"``: its demonstration table into ``path/demo-<index>``).

        Hard-links the shard's previous snapshot in first so that only the
        segments changed since then are written (module docstring).

        Args:
          path: the partial directory (``partial_path(step)``).
          index: the shard's index (must be ``shard.shard_index``: a restore
            reads ``shard-<i>`` back as shard ``i``).
          shard: the shard; afterwards it remembers this snapshot as its latest.
          full: write every segment (no links; also when the layout has
            ``link=False``).

        Returns:
          A ``ShardWriteReport``.

        Raises:
          ValueError: if ``index`` is not the shard's own index.
        """
        name = f"{table}-{index}"
        own = demo_table_index(index) if table == "demo" else index
        if table not in TABLES or own != shard.shard_index:
            raise ValueError(f"write_shard: index: table {shard.shard_index} cannot be written "
                             f"as {name}")
        t0 = time.perf_counter()
        target = os.path.join(path, name)
        if os.path.exists(target):  # a retry into the same partial dir
            shutil.rmtree(target)
        os.makedirs(target)
        full = full or not self.link
        uid = str(shard.state().counters.get("snapshot_uid", ""))
        source = "" if full else self._link_source(name, uid)
        linked, copied = 0, 0
        if source:
            for name in sorted(os.listdir(source)):
                if not SNAPSHOT_FILE_RE.match(name):
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
               extra: Optional[Mapping[str, Any]] = None,
               demo_tables: bool = False) -> CheckpointInfo:
        """Lead, after every rank wrote its part: manifest, atomic rename, prune.

        Args:
          path: the partial directory from ``begin(step)``.
          step: the learner step (must match ``learner.h5``).
          num_shards: replay shards of the running job; each must have written
            ``shard-<i>/``.
          extra: more JSON data for the manifest (e.g. ``{"reason": "signal"}``).
          demo_tables: each shard also wrote ``demo-<i>/`` (R2D3).

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
        tables = [f"{t}-{i}" for t in (TABLES if demo_tables else TABLES[:1])
                  for i in range(num_shards)]
        shard_meta: List[Optional[Dict[str, Any]]] = []
        for d in tables:
            meta = read_index_meta(os.path.join(path, d))
            if meta is None:
                problems.append(f"{d}/{INDEX_FILE} was not written or is unreadable")
            shard_meta.append(meta)
        if problems:
            raise CheckpointError(f"{path}: cannot commit: " + "; ".join(problems))
        with open_h5(os.path.join(path, LEARNER_FILE)) as f:
            lmeta = read_meta(f, os.path.join(path, LEARNER_FILE))
        if int(lmeta["step"]) != int(step):
            raise CheckpointError(f"{path}: learner.h5 is at step {lmeta['step']}, commit "
                                  f"asked for step {step}")
        with open_h5(os.path.join(path, ACTORS_FILE)) as f:
            ameta = read_meta(f, os.path.join(path, ACTORS_FILE))

        files: Dict[str, Dict[str, int]] = {}
        for rel in (LEARNER_FILE, ACTORS_FILE):
            files[rel] = self._entry(path, rel).to_dict()
        shards, demos = [], []
        for d, meta in zip(tables, shard_meta):
            assert meta is not None
            files[f"{d}/{INDEX_FILE}"] = self._entry(path, f"{d}/{INDEX_FILE}").to_dict()
            for e in list(meta["steps"]) + list(meta["seqs"]):
                files[f"{d}/{e['file']}"] = {"nbytes": int(e["nbytes"]), "crc32": int(e["crc32"])}
            (demos if d.startswith("demo-") else shards).append(
                shard_fill(meta, os.path.join(path, d)))
        body = {"format": FORMAT, "step": int(step),
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "num_shards": int(num_shards), "num_actors": int(ameta["num_actors"]),
                "counters": lmeta["counters"], "config": lmeta["config"],
                "job_spec": lmeta["job_spec"], "shards": shards, "demo_tables": demos,
                "files": files,
                "extra": dict(extra or {})}
        manifest = dict(body, body_crc32=manifest_crc(body))
        write_json_atomic(os.path.join(path, MANIFEST), manifest, self.fsync, sort_keys=True)
        if self.fsync:
            fsync_path(path)
        final = self._final_name(step)
        os.replace(path, final)  # the commit point
        if self.fsync:
            fsync_path(self.root)
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
            trash = os.path.join(self.root, f"{TRASH_PREFIX}{name}")
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
    live = live_sequences(shard_dir) if shard_dir is not None else -1
    cap_obs = int(spec["capacity_observations"])
    return {"capacity_observations": cap_obs,
            "capacity_sequences": int(spec["capacity_sequences"]),
            "stored_observations": min(int(counters["write"]), cap_obs),
            "live_sequences": live,
            "snapshot_id": int(index_meta["snapshot_id"]),
            "snapshot_uid": str(index_meta["snapshot_uid"])}

"""How each saved state record maps onto an HDF5 file: the one owner of these files' layout.

Every file is ``storage.h5tree.write_file``'s: a ``meta`` dataset (JSON) and
a tree of groups. Written to ``<path>.tmp`` and committed with
``storage.files.commit_file`` (fsync, crc32, ``os.replace``)::

    learner.h5 (and the run's learner_final.h5)     actors.h5
      meta     format, kind "learner", step,          meta     format, kind "actors",
               counters, config, job_spec                      num_actors, names
      state/   the LearnerState record:               counters/
        online/<param>      <float32>[...]              env_steps  <int64>[num_actors]
        target/<param>      <float32>[...]              episodes   <int64>[num_actors]
        optimizer/{exp_avg,exp_avg_sq,step}/<param>    (one column per ActorState field)
        torch_rng_state     <uint8>[...]
        cuda_rng_state      (on CUDA only)
        grad_scaler/        (fp16 only; JSON numbers)
        step_count, params_version: JSON attribute
      extra/   anything else of the learner rank

A record's fields map one to one onto entries (``h5tree.record_tree``; a
``None`` field is left out), so a round trip gives the record back bit for
bit. The replay's ``ShardState`` is written by ``replay.snapshot`` (incremental
segment files; see there).

``learner_final.h5`` files of earlier versions (format
``r2d2_hpc.agent.learner_state/1``: the state at the file's root, the config
in an attribute) are still read.
"""
from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import h5py
import numpy as np

from r2d2_hpc.agent.learner import LearnerState
from r2d2_hpc.checkpoint.records import (FORMAT, CheckpointError, LearnerCheckpoint, open_h5,
                                         read_meta, spec_dict)
from r2d2_hpc.config import Config
from r2d2_hpc.storage.files import commit_file
from r2d2_hpc.storage.h5tree import (Tree, read_tree, record_fields, record_tree, tree_record,
                                     write_file)
from r2d2_hpc.types import ActorState, JobSpec

__all__ = ["LEGACY_LEARNER_FORMAT", "read_actors_file", "read_learner_file",
           "write_actors_file", "write_learner_file"]

#: Format of the learner_final.h5 files written before they took the checkpoint format.
LEGACY_LEARNER_FORMAT = "r2d2_hpc.agent.learner_state/1"


def _write(path: str, meta: Mapping[str, Any], tree: Tree, fsync: bool) -> Tuple[int, int]:
    tmp = f"{path}.tmp"
    write_file(tmp, meta, tree)
    return commit_file(tmp, path, fsync)


def write_learner_file(path: str, state: LearnerState, cfg: Config,
                       counters: Mapping[str, Any], *, step: Optional[int] = None,
                       job_spec: Optional[JobSpec] = None, extra: Optional[Tree] = None,
                       fsync: bool = True) -> Tuple[int, int]:
    """Writes a learner file (a checkpoint's ``learner.h5``, the run's ``learner_final.h5``).

    Args:
      path: the file.
      state: ``Learner.state()``.
      cfg: the run's effective config.
      counters: the job's counters, JSON numbers (at least ``env_steps``).
      step: the learner step (default ``state.step_count``).
      job_spec: the job's shapes, compared on resume.
      extra: anything else of the learner rank, a nested dict.
      fsync: fsync before the rename.

    Returns:
      ``(size, crc32)`` of the file.
    """
    meta = {"format": FORMAT, "kind": "learner",
            "step": int(state.step_count if step is None else step),
            "counters": dict(counters), "config": cfg.to_dict(),
            "job_spec": spec_dict(job_spec)}
    return _write(path, meta, {"state": record_tree(state), "extra": dict(extra or {})}, fsync)


def _read_legacy_learner(f: h5py.File) -> LearnerCheckpoint:
    """A learner_final.h5 of format :data:`LEGACY_LEARNER_FORMAT`."""
    attrs = {k: f.attrs[k] for k in f.attrs}
    state = tree_record(LearnerState, read_tree(f))
    extra = {k: json.loads(v) for k, v in attrs.items() if k not in ("format", "config")}
    counters = {k: extra[k] for k in ("env_steps", "learner_step") if k in extra}
    return LearnerCheckpoint(int(state.step_count), state, counters,
                             json.loads(attrs["config"]), None, extra)


def read_learner_file(path: str) -> LearnerCheckpoint:
    """Reads what :func:`write_learner_file` wrote (or a legacy ``learner_final.h5``).

    Raises:
      CheckpointError: naming the file when it is missing, not a learner file,
        unreadable or corrupted (a chunk's fletcher32 fails).
    """
    with open_h5(path) as f:
        try:
            if "meta" not in f and f.attrs.get("format") == LEGACY_LEARNER_FORMAT:
                return _read_legacy_learner(f)
            meta = read_meta(f, path)
            if meta.get("kind") != "learner":
                raise CheckpointError(f"{path}: a {meta.get('kind')!r} file, not a learner file")
            state = tree_record(LearnerState, read_tree(f["state"]))
            extra = read_tree(f["extra"]) if "extra" in f else {}
        except CheckpointError:
            raise
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            raise CheckpointError(f"{path}: corrupted ({exc})") from None
    return LearnerCheckpoint(int(meta["step"]), state, dict(meta["counters"]),
                             dict(meta["config"]), meta.get("job_spec"), extra)


def write_actors_file(path: str, actors: Sequence[ActorState], fsync: bool = True
                      ) -> Tuple[int, int]:
    """Writes ``actors.h5``: one row per actor, one ``<int64>`` column per field.

    Returns:
      ``(size, crc32)`` of the file.
    """
    names = list(ActorState._fields)
    rows = [record_fields(a) for a in actors]
    table = {n: np.asarray([int(r[n]) for r in rows], np.int64) for n in names}
    meta = {"format": FORMAT, "kind": "actors", "num_actors": len(rows), "names": names}
    return _write(path, meta, {"counters": table}, fsync)


def read_actors_file(path: str) -> List[ActorState]:
    """The actors' records from ``actors.h5`` (a field the file lacks takes its default).

    Raises:
      CheckpointError: naming the file when it is unreadable, corrupted, or
        holds a column that is no ``ActorState`` field.
    """
    with open_h5(path) as f:
        meta = read_meta(f, path)
        try:
            table: Dict[str, Any] = read_tree(f["counters"])
            n = int(meta["num_actors"])
            return [tree_record(ActorState, {k: int(v[a]) for k, v in table.items()})
                    for a in range(n)]
        except (OSError, ValueError, RuntimeError, KeyError, IndexError) as exc:
            raise CheckpointError(f"{path}: corrupted ({exc})") from None

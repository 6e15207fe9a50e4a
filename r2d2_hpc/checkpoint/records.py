"""What a checkpoint is made of: file names, records, errors and the files' own meta.

Every checkpoint file (``learner.h5``, ``actors.h5``) carries a ``meta``
dataset (JSON: the format tag, the kind, the step, ...) beside the state it
holds; ``MANIFEST.json`` lists every file with its size and crc32 and carries a
crc32 of its own body. :class:`CheckpointInfo` is the plain, picklable record
of a complete checkpoint that learner 0 finds and broadcasts to every rank.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import h5py

from r2d2_hpc.agent.learner import LearnerState
from r2d2_hpc.config import Config
from r2d2_hpc.replay.snapshot import SnapshotReport
from r2d2_hpc.storage import h5tree

__all__ = [
    "ACTORS_FILE", "CHECKPOINTS_DIR", "CORRUPT_PREFIX", "FORMAT", "LEARNER_FILE", "MANIFEST",
    "CheckpointError", "CheckpointIncompatible", "CheckpointInfo", "FileEntry",
    "LearnerCheckpoint", "Report", "ShardWriteReport", "checkpoint_key", "checkpoints_dir",
    "list_checkpoints", "manifest_crc", "open_h5", "read_meta", "spec_dict",
]

#: Format tag of MANIFEST.json and the HDF5 files' meta.
FORMAT = "r2d2_hpc.checkpoint/1"
#: The manifest's file name; written last.
MANIFEST = "MANIFEST.json"
LEARNER_FILE = "learner.h5"
ACTORS_FILE = "actors.h5"
CHECKPOINTS_DIR = "checkpoints"
#: A committed checkpoint directory's name: ``ckpt-<step, 12 digits>[.<k>]``.
CKPT_RE = re.compile(r"^ckpt-(\d{12})(?:\.(\d+))?$")
#: Prefix of a checkpoint being written (readers ignore it).
PARTIAL_PREFIX = ".partial-"
#: Invalid checkpoints found on resume are renamed to this prefix + their name.
CORRUPT_PREFIX = "corrupt-"
#: Prefix of a checkpoint being deleted by pruning (readers ignore it).
TRASH_PREFIX = ".trash-"
#: Files of a replay snapshot directory (hard-linked between checkpoints).
SNAPSHOT_FILE_RE = re.compile(r"^(index\.h5|(steps|seqs)_\d{5,}_\d{8,}\.h5)$")

#: Where lines about skipped or damaged checkpoints go (``print`` by default).
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


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint as the manifest lists it."""

    path: str
    """Path relative to the checkpoint directory, '/'-separated."""
    nbytes: int
    crc32: int

    def to_dict(self) -> Dict[str, int]:
        return {"nbytes": self.nbytes, "crc32": self.crc32}


def manifest_crc(body: Mapping[str, Any]) -> int:
    """crc32 of a manifest's body (every entry but ``body_crc32``), as JSON with sorted keys."""
    return zlib.crc32(json.dumps(body, sort_keys=True).encode())


def read_meta(f: h5py.File, path: str) -> Dict[str, Any]:
    """The ``meta`` of a checkpoint file; CheckpointError naming ``path`` if absent or foreign."""
    try:
        meta = h5tree.read_meta(f)
    except KeyError:
        raise CheckpointError(f"{path}: no 'meta' dataset (not a checkpoint file)") from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: unknown format {meta.get('format')!r}, expected "
                              f"{FORMAT!r}")
    return meta


def open_h5(path: str) -> h5py.File:
    """Opens a checkpoint file for reading; CheckpointError naming it if missing or damaged."""
    return h5tree.open_file(path, CheckpointError)


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
    def num_demo_tables(self) -> int:
        """Demonstration tables saved (R2D3): one per shard, or 0."""
        return len(self.manifest.get("demo_tables", []))

    def demo_dir(self, index: int) -> str:
        return os.path.join(self.path, f"demo-{index}")

    @property
    def learner_path(self) -> str:
        return os.path.join(self.path, LEARNER_FILE)

    @property
    def actors_path(self) -> str:
        return os.path.join(self.path, ACTORS_FILE)


@dataclass
class LearnerCheckpoint:
    """What a learner file (``learner.h5``, ``learner_final.h5``) holds."""

    step: int
    state: LearnerState
    """``Learner.state()`` as saved: pass it to ``Learner.load_state``."""
    counters: Dict[str, Any]
    config: Dict[str, Any]
    """The effective config as a plain dict (``Config.from_dict`` to rebuild it)."""
    job_spec: Optional[Dict[str, Any]]
    extra: Dict[str, Any] = field(default_factory=dict)
    """Anything else the learner rank saved (e.g. its numpy generators' states)."""


def spec_dict(job_spec: Any) -> Optional[Dict[str, Any]]:
    """A ``JobSpec`` (or its dict) as plain JSON data (tuples as lists); None stays None."""
    if job_spec is None:
        return None
    d = job_spec._asdict() if hasattr(job_spec, "_asdict") else dict(job_spec)
    return json.loads(json.dumps({k: list(v) if isinstance(v, tuple) else v
                                  for k, v in d.items()}))


# --------------------------------------------------------------------------- #
# Listing.

def checkpoints_dir(run_dir: str) -> str:
    """``RUN_DIR/checkpoints``."""
    return os.path.join(run_dir, CHECKPOINTS_DIR)


def checkpoint_key(name: str) -> Optional[Tuple[int, int]]:
    """``(step, k)`` of a committed checkpoint's directory name, None for any other name."""
    m = CKPT_RE.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def list_checkpoints(run_dir: str) -> List[str]:
    """Paths of the committed checkpoint directories of a run, oldest first.

    Committed means renamed from ``.partial-``; whether the files are intact is
    :func:`validate`'s business.
    """
    root = checkpoints_dir(run_dir)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    keyed = [(k, n) for n in names if (k := checkpoint_key(n)) is not None
             and os.path.isdir(os.path.join(root, n))]
    return [os.path.join(root, n) for _, n in sorted(keyed)]

"""Is a checkpoint intact? Sizes and crc32s against its manifest; the newest valid one of a run.

Validation. ``MANIFEST.json`` carries a crc32 of its own body; each file entry
has the file's size and crc32 (the learner and actor files are checksummed
when written, replay segments take the crc32 their snapshot index recorded
right after the write, so commit costs nothing per unchanged byte).
:func:`validate` checks sizes (cheap: catches truncation) and, with
``deep=True``, every file's crc32 (catches bit flips), in a few threads;
``deep`` may also name the files whose crc32 matters (``r2d2-eval`` reads only
``learner.h5``).

Locating. :func:`find_latest_valid` is the one lookup of a run's newest valid
checkpoint: it walks committed checkpoints from the newest, skips
half-written ones (``.partial-`` directories, reported as ignored) and every
one that fails validation (reported once by name with what is wrong), and
returns the newest valid one (``None`` for a fresh start). ``r2d2-train``'s
resume (:func:`r2d2_hpc.checkpoint.resume.resume_point`), ``r2d2-ckpt`` and
``r2d2-eval`` (:func:`locate_checkpoint`) all use it.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Collection, Dict, List, Mapping, Optional, Tuple, Union

from r2d2_hpc.checkpoint.records import (ACTORS_FILE, CHECKPOINTS_DIR, CORRUPT_PREFIX, FORMAT,
                                         LEARNER_FILE, MANIFEST, PARTIAL_PREFIX,
                                         CheckpointError, CheckpointInfo, Report,
                                         checkpoint_key, checkpoints_dir, list_checkpoints,
                                         manifest_crc)
from r2d2_hpc.replay.snapshot import INDEX_FILE
from r2d2_hpc.storage.files import crc32_file

__all__ = ["Deep", "check_file", "checkpoint_target", "find_latest_valid", "locate_checkpoint",
           "open_checkpoint", "validate", "validate_files"]

#: What to crc32: every file (True), none (False: sizes only), or the files named
#: (relative paths; the others by size).
Deep = Union[bool, Collection[str]]


def _deep_for(deep: Deep, rel: str) -> bool:
    return deep if isinstance(deep, bool) else rel in deep


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
    if manifest_crc(body) != manifest["body_crc32"]:
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


def validate(path: str, deep: Deep = True, threads: int = 4
             ) -> Tuple[Optional[Dict[str, Any]], List[str]]:
    """Checks a checkpoint directory against its manifest.

    Args:
      path: a checkpoint directory.
      deep: also compare crc32s (reads every byte) of every file (True), of
        none (False), or of the files named; the others by size.
      threads: files checked at once (crc32 releases the GIL).

    Returns:
      ``(manifest or None, problems)``: one line per bad file (relative path
      and what is wrong), empty when the checkpoint is intact.
    """
    manifest, problems, _ = validate_files(path, deep, threads)
    return manifest, problems


def validate_files(path: str, deep: Deep = True, threads: int = 4
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
        results = list(pool.map(
            lambda kv: check_file(path, kv[0], kv[1], _deep_for(deep, kv[0])), items))
    problems += [r for r in results if r is not None]
    return manifest, problems, [(rel, entry, r) for (rel, entry), r in zip(items, results)]


def open_checkpoint(path: str, deep: Deep = True) -> CheckpointInfo:
    """The checkpoint at ``path`` if it validates.

    Raises:
      CheckpointError: naming the checkpoint and every problem found.
    """
    manifest, problems = validate(path, deep)
    if problems or manifest is None:
        raise CheckpointError(f"checkpoint {path} is invalid: " + "; ".join(problems))
    return CheckpointInfo(path, manifest, deep_verified=deep is True)


def find_latest_valid(run_dir: str, report: Optional[Report] = print,
                      deep: Deep = True, quarantine: bool = False
                      ) -> Optional[CheckpointInfo]:
    """The newest complete checkpoint of a run that validates: the one lookup of it.

    Every invalid checkpoint newer than it is reported once, by name, with
    what is wrong; interrupted (``.partial-``) ones are reported as ignored.

    Args:
      run_dir: the run directory.
      report: called with one line per problem (default ``print``; None = silent).
      deep: which crc32s to check, not only sizes (see :func:`validate`).
      quarantine: rename each invalid checkpoint to ``corrupt-<name>`` (kept
        for inspection, never restored, not counted by ``keep``), so that a
        resumed run's new checkpoints are not shadowed by it.

    Returns:
      The checkpoint, or None when there is none (a fresh start).
    """
    say = report or (lambda _msg: None)
    root = checkpoints_dir(run_dir)
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            if name.startswith(PARTIAL_PREFIX):
                say(f"r2d2 checkpoint: ignoring {name[len(PARTIAL_PREFIX):]}: interrupted "
                    f"while being written (no manifest)")
    ckpts = list_checkpoints(run_dir)
    for path in reversed(ckpts):
        manifest, problems = validate(path, deep)
        if not problems and manifest is not None:
            return CheckpointInfo(path, manifest, deep_verified=deep is True)
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


def checkpoint_target(path: str) -> Tuple[Optional[str], Optional[str]]:
    """What a command-line PATH names: ``(checkpoint dir, None)`` for a checkpoint
    directory (it has a manifest or a ``ckpt-<step>`` name), ``(None, run dir)`` for a
    run directory or its ``checkpoints/``.

    Raises:
      CheckpointError: ``path`` is missing, not a directory, or neither.
    """
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file or directory")
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory (expected a checkpoint or run "
                              f"directory)")
    norm = os.path.normpath(path)
    if os.path.exists(os.path.join(norm, MANIFEST)) or \
            checkpoint_key(os.path.basename(norm)) is not None:
        return norm, None
    run_dir = os.path.dirname(norm) if os.path.basename(norm) == CHECKPOINTS_DIR else norm
    if not os.path.isdir(os.path.join(run_dir, CHECKPOINTS_DIR)):
        raise CheckpointError(f"{path}: neither a checkpoint directory (no {MANIFEST}) "
                              f"nor a run directory (no {CHECKPOINTS_DIR}/)")
    return None, run_dir


def locate_checkpoint(path: str, report: Optional[Report] = print,
                      deep: Deep = True) -> CheckpointInfo:
    """The checkpoint a command-line PATH names, validated (``r2d2-ckpt``, ``r2d2-eval``).

    Args:
      path: a checkpoint directory (then it must validate), or a run directory
        or its ``checkpoints/`` (then its newest valid checkpoint,
        :func:`find_latest_valid`).
      report: where lines about skipped checkpoints go.
      deep: which crc32s to check (see :func:`validate`).

    Raises:
      CheckpointError: ``path`` is missing or neither, the named checkpoint is
        invalid, or the run holds no valid checkpoint.
    """
    ckpt, run_dir = checkpoint_target(path)
    if ckpt is not None:
        return open_checkpoint(ckpt, deep)
    assert run_dir is not None
    info = find_latest_valid(run_dir, report=report, deep=deep)
    if info is None:
        raise CheckpointError(f"{run_dir}: no valid checkpoint")
    return info

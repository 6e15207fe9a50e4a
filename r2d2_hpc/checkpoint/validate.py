"""Is a checkpoint intact? Sizes and crc32s against its manifest; the newest valid one of a run.

Validation. ``MANIFEST.json`` carries a crc32 of its own body; each file entry
has the file's size and crc32 (the learner and actor files are checksummed
when written, replay segments take the crc32 their snapshot index recorded
right after the write, so commit costs nothing per unchanged byte).
:func:`validate` checks sizes (cheap: catches truncation) and, with
``deep=True``, every file's crc32 (catches bit flips), in a few threads.
:func:`find_latest_valid` walks complete checkpoints from the newest, reports
each invalid one once by name with what is wrong, and returns the newest valid
one (``None`` for a fresh start).
"""
from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Mapping, Optional, Tuple

from r2d2_hpc.checkpoint.records import (ACTORS_FILE, CORRUPT_PREFIX, FORMAT, LEARNER_FILE,
                                         MANIFEST, PARTIAL_PREFIX, CheckpointError,
                                         CheckpointInfo, Report, checkpoints_dir,
                                         list_checkpoints, manifest_crc)
from r2d2_hpc.replay.snapshot import INDEX_FILE
from r2d2_hpc.storage.files import crc32_file

__all__ = ["check_file", "find_latest_valid", "open_checkpoint", "validate", "validate_files"]


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

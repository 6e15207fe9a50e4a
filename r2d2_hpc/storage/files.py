"""Files that survive a crash: crc32 of a file, fsync, atomic JSON.

A writer puts its bytes into a temp file beside the target, fsyncs it, and
``os.replace``s it into place, so a reader sees the old file or the whole new
one, never a part. The crc32 recorded at write time is what validation
compares a file against later.
"""
from __future__ import annotations

import json
import os
import zlib
from typing import Any, Tuple

__all__ = ["CRC_BLOCK_BYTES", "commit_file", "crc32_file", "fsync_path", "write_json_atomic"]

#: Bytes read per block by :func:`crc32_file`.
CRC_BLOCK_BYTES = 8 << 20


def crc32_file(path: str) -> int:
    """zlib crc32 of a whole file, read in blocks.

    Args:
      path: the file.

    Returns:
      The crc32 as an unsigned int.
    """
    crc = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CRC_BLOCK_BYTES)
            if not block:
                return crc
            crc = zlib.crc32(block, crc)


def fsync_path(path: str) -> None:
    """fsyncs a file or a directory (a directory: so a rename in it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_file(tmp: str, path: str, fsync: bool = True) -> Tuple[int, int]:
    """Puts a finished temp file in place: fsync, crc32, then ``os.replace``.

    The crc32 is taken before the rename, while the bytes are still in the
    page cache; it is what a manifest or snapshot index records.

    Args:
      tmp: the finished file, beside ``path``.
      path: where it goes.
      fsync: fsync ``tmp`` first (off only where crash safety is not tested).

    Returns:
      ``(size in bytes, crc32)`` of the file.
    """
    if fsync:
        fsync_path(tmp)
    size, crc = os.path.getsize(tmp), crc32_file(tmp)
    os.replace(tmp, path)
    return size, crc


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

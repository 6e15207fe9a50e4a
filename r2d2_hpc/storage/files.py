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
from typing import Any

__all__ = ["CRC_BLOCK_BYTES", "crc32_file", "fsync_path", "write_json_atomic"]

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

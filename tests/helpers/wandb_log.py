"""Reads a W&B run's transaction log (``run-<id>.wandb``, written offline) for tests.

The file is W&B's datastore: a 7-byte header (``:W&B``, magic 0xBEE1, version)
then LevelDB-log records (32 KiB blocks; each record a crc32, a length, a type:
full, first, middle or last fragment) holding ``wandb_internal_pb2.Record``
protobufs.
"""
from __future__ import annotations

import glob
import os
import struct
from typing import Any, Dict, Iterator, List

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str) -> Iterator[Any]:
    """Every record of a ``.wandb`` file, parsed."""
    from wandb.proto import wandb_internal_pb2  # the test extra installs wandb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # block trailer
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            pending = chunk
        elif kind in (FIRST, MIDDLE):
            pending = (pending if kind == MIDDLE else b"") + chunk
            continue
        elif kind == LAST:
            pending += chunk
        else:  # zero padding at the end
            break
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def offline_run(run_dir: str) -> Dict[str, Any]:
    """The offline W&B run under ``run_dir/wandb``: its history rows (key -> JSON
    text), config keys, tags, name and project."""
    [path] = glob.glob(os.path.join(run_dir, "wandb", "offline-run-*", "run-*.wandb"))
    out: Dict[str, Any] = {"history": [], "config": set(), "tags": [], "name": "",
                           "project": ""}
    rows: List[Dict[str, str]] = out["history"]
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            rows.append({i.key or "/".join(i.nested_key): i.value_json for i in r.history.item})
        elif kind == "config":
            out["config"] |= {i.key for i in r.config.update}
        elif kind == "run":
            out["tags"], out["name"] = list(r.run.tags), r.run.display_name
            out["project"] = r.run.project
            out["config"] |= {i.key for i in r.run.config.update}
    return out

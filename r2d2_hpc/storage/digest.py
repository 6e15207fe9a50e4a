"""Bit-exact fingerprints of saved state (tests and logs compare them across ranks and runs)."""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Mapping

import numpy as np

__all__ = ["replica_digest", "state_digest"]


def state_digest(tree: Any) -> str:
    """CRC32 over every array and scalar of a nested state, in key order (bit-exact check).

    Dataclass records (e.g. ``ShardState``) are walked field by field. Arrays
    are checksummed in place (a byte view, no copy: a shard's state is GBs).

    Returns:
      The crc32 as 8 hex digits.
    """
    crc = 0

    def walk(x: Any) -> None:
        nonlocal crc
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            walk({f.name: getattr(x, f.name) for f in dataclasses.fields(x)})
        elif isinstance(x, dict):
            for k in sorted(x):
                crc = zlib.crc32(str(k).encode(), crc)
                walk(x[k])
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        else:
            a = np.asarray(x)
            if a.dtype == object:
                crc = zlib.crc32(repr(x).encode(), crc)
            else:
                crc = zlib.crc32(np.ascontiguousarray(a).reshape(-1).view(np.uint8), crc)

    walk(tree)
    return f"{crc:08x}"


def replica_digest(state: Mapping[str, Any]) -> str:
    """:func:`state_digest` of a ``Learner.state()`` without its RNG states.

    What must be identical on every learner: online and target parameters,
    optimizer state, step count and parameter version. (Each process's torch
    RNG is its own; the learner step draws nothing from it.)
    """
    return state_digest({k: v for k, v in state.items() if not k.endswith("rng_state")})

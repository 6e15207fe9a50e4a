"""Bit-exact fingerprints of saved state (tests and logs compare them across ranks and runs)."""
from __future__ import annotations

import dataclasses
import zlib
from typing import Any, Mapping, Union

import numpy as np

from r2d2_hpc.storage.h5tree import record_fields

__all__ = ["replica_digest", "state_digest"]


def state_digest(tree: Any) -> str:
    """CRC32 over every array and scalar of a nested state, in key order (bit-exact check).

    Records (NamedTuples such as ``LearnerState``, dataclasses such as
    ``ShardState``) are walked field by field, by name. Arrays
    are checksummed in place (a byte view, no copy: a shard's state is GBs).

    Returns:
      The crc32 as 8 hex digits.
    """
    crc = 0

    def walk(x: Any) -> None:
        nonlocal crc
        if (dataclasses.is_dataclass(x) and not isinstance(x, type)) or \
                (isinstance(x, tuple) and hasattr(x, "_asdict")):
            walk(record_fields(x))
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


def replica_digest(state: Union[Any, Mapping[str, Any]]) -> str:
    """:func:`state_digest` of a ``Learner.state()`` record without its RNG states.

    What must be identical on every learner: online and target parameters,
    optimizer state, step count and parameter version. (Each process's torch
    RNG is its own; the learner step draws nothing from it.)
    """
    tree = dict(state) if isinstance(state, Mapping) else record_fields(state)
    return state_digest({k: v for k, v in tree.items() if not k.endswith("rng_state")})

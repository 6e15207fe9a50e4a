"""The HDF5 encoding of arrays, nested state and state records, exact and checksummed.

The one place that opens HDF5 files: replay snapshots, checkpoints and the
end-of-run learner file are all written and opened with these functions.

Every dataset is chunked (:data:`CHUNK_BYTES`, the one chunking policy) with a
fletcher32 checksum per chunk, so h5py detects a damaged chunk when it reads
it. :func:`write_tree` maps a nested dict one to one onto groups, datasets and
a JSON attribute; :func:`read_tree` gives it back bit for bit. A state record
(a NamedTuple or dataclass such as ``LearnerState``) becomes a tree with
:func:`record_tree` (one entry per field, ``None`` fields left out) and comes
back with :func:`tree_record`. A file (:func:`write_file`) is a ``meta``
dataset (JSON bytes: format tag, kind, ...) beside one tree::

    file.h5
      meta              <uint8>[n]: JSON of the file's meta
      <tree>            groups, datasets (chunked, fletcher32), JSON attributes
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
from typing import Any, Callable, Dict, Mapping, Optional, Type, TypeVar

import h5py
import numpy as np

__all__ = ["CHUNK_BYTES", "JSON_ATTR", "META", "SCALAR_ATTR", "Tree", "as_array", "open_file",
           "read_meta", "read_tree", "record_fields", "record_tree", "tree_record", "write_dataset",
           "write_file", "write_meta", "write_tree"]

#: Bytes per chunk of every dataset (each chunk carries its own fletcher32).
CHUNK_BYTES = 256 << 10
#: Name of a file's JSON meta dataset.
META = "meta"
#: Attribute marking a dataset that holds a 0-d array (stored with shape (1,)).
SCALAR_ATTR = "r2d2_0d"
#: Attribute of a group holding its plain (JSON) values.
JSON_ATTR = "r2d2_json"

#: A nested dict of arrays, numbers, strings and dicts.
Tree = Mapping[str, Any]
#: A state record: a NamedTuple or dataclass of arrays, numbers and dicts of them.
R = TypeVar("R")


def as_array(value: Any) -> Optional[np.ndarray]:
    """``value`` as a numpy array if it is one (or a tensor / numpy scalar), else None."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        return value.detach().cpu().numpy()
    return None


def write_dataset(group: h5py.Group, name: str, arr: np.ndarray) -> h5py.Dataset:
    """A chunked dataset with a fletcher32 checksum per chunk.

    Chunks are whole rows of about :data:`CHUNK_BYTES`; a 0-d array is stored
    with shape (1,) and marked with :data:`SCALAR_ATTR`; an empty array gets a
    resizable dataset of one-element chunks.

    Args:
      group: an open, writable HDF5 group (or file).
      name: the dataset's name.
      arr: a numeric or bool array.

    Returns:
      The dataset.

    Raises:
      TypeError: for a dtype that is not a number or bool, naming the dataset.
    """
    scalar = arr.ndim == 0
    arr = np.ascontiguousarray(arr).reshape(arr.shape or (1,))  # ascontiguousarray: ndim >= 1
    if arr.dtype.kind not in "biufc":
        raise TypeError(f"{group.name}/{name}: cannot store dtype {arr.dtype} (numbers only)")
    if arr.size == 0:
        ds = group.create_dataset(name, shape=arr.shape, dtype=arr.dtype,
                                  maxshape=(None,) * arr.ndim, chunks=(1,) * arr.ndim,
                                  fletcher32=True)
    else:
        row = max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
        rows = max(1, min(arr.shape[0], CHUNK_BYTES // row))
        ds = group.create_dataset(name, data=arr, chunks=(rows,) + arr.shape[1:],
                                  fletcher32=True)
    if scalar:
        ds.attrs[SCALAR_ATTR] = True
    return ds


def write_tree(group: h5py.Group, tree: Tree) -> None:
    """Writes a nested dict into an HDF5 group, exactly.

    Mapping: a dict -> a subgroup; a numpy array, numpy scalar or tensor -> a
    dataset of the same dtype and shape (chunked, fletcher32); any other value
    (int, float, str, bool, None, lists of those, e.g. a numpy generator's
    ``bit_generator.state``) -> one entry of the group's JSON attribute.
    Keys must be non-empty strings without '/'.

    Args:
      group: an open, writable HDF5 group.
      tree: the nested dict.

    Raises:
      TypeError: on a key or value that cannot be stored, naming it.
    """
    plain: Dict[str, Any] = {}
    for key, value in tree.items():
        if not isinstance(key, str) or not key or "/" in key or key == ".":
            raise TypeError(f"{group.name}: key {key!r} must be a non-empty string without '/'")
        if isinstance(value, Mapping):
            write_tree(group.create_group(key), value)
            continue
        arr = as_array(value)
        if arr is not None:
            write_dataset(group, key, arr)
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{group.name}/{key}: {type(value).__name__} is neither an array, "
                            f"a dict nor JSON-serialisable ({exc})") from None
        plain[key] = value
    if plain:
        group.attrs[JSON_ATTR] = json.dumps(plain, sort_keys=True)


def read_tree(group: h5py.Group) -> Dict[str, Any]:
    """Reads what :func:`write_tree` wrote (0-d arrays come back as 0-d arrays).

    Raises:
      OSError/ValueError from h5py when a chunk's fletcher32 checksum fails.
    """
    out: Dict[str, Any] = {}
    raw = group.attrs.get(JSON_ATTR)
    if raw is not None:
        out.update(json.loads(raw if isinstance(raw, str) else bytes(raw).decode()))
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = read_tree(item)
        else:
            arr = item[...]
            if item.attrs.get(SCALAR_ATTR, False):
                arr = arr.reshape(())
            out[key] = arr
    return out


def record_fields(record: Any) -> Dict[str, Any]:
    """A state record's fields by name, in order: a NamedTuple's or a dataclass's.

    Raises:
      TypeError: if ``record`` is neither.
    """
    if isinstance(record, tuple) and hasattr(record, "_asdict"):
        return dict(record._asdict())
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)}
    raise TypeError(f"expected a state record (a NamedTuple or dataclass), got "
                    f"{type(record).__name__}")


def _required_fields(cls: type) -> Dict[str, bool]:
    """Field name -> whether it has no default, for a NamedTuple or dataclass class."""
    if hasattr(cls, "_fields"):
        defaults = getattr(cls, "_field_defaults", {})
        return {n: n not in defaults for n in cls._fields}
    return {f.name: f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
            for f in dataclasses.fields(cls)}


def record_tree(record: Any) -> Dict[str, Any]:
    """A state record (NamedTuple or dataclass) as a tree: its fields, ``None`` ones left out.

    Raises:
      TypeError: if ``record`` is not a record.
    """
    return {k: v for k, v in record_fields(record).items() if v is not None}


def tree_record(cls: Type[R], tree: Tree) -> R:
    """The record of type ``cls`` that :func:`record_tree` turned into ``tree``.

    A field missing from ``tree`` takes its default (``None`` for the optional
    ones that ``record_tree`` leaves out).

    Raises:
      ValueError: naming every required field that is missing and every entry
        that is not a field of ``cls``.
    """
    fields = _required_fields(cls)
    missing = [n for n, required in fields.items() if required and n not in tree]
    unknown = sorted(set(tree) - set(fields))
    if missing or unknown:
        parts = [f"missing {', '.join(missing)}"] if missing else []
        parts += [f"unknown {', '.join(unknown)}"] if unknown else []
        raise ValueError(f"not a {cls.__name__} record: {'; '.join(parts)}")
    return cls(**{n: tree[n] for n in fields if n in tree})  # type: ignore[call-arg]


def write_meta(group: h5py.Group, meta: Mapping[str, Any]) -> None:
    """Stores ``meta`` as the JSON bytes (sorted keys) of the dataset :data:`META`."""
    write_dataset(group, META, np.frombuffer(json.dumps(meta, sort_keys=True).encode(),
                                             np.uint8))


def read_meta(group: h5py.Group) -> Dict[str, Any]:
    """The meta :func:`write_meta` stored.

    Raises:
      KeyError: no meta dataset.
      ValueError: a damaged chunk (``OSError`` from h5py is turned into it) or
        bytes that are not JSON.
    """
    ds = group[META]
    try:
        raw = ds[...]
    except (OSError, RuntimeError) as exc:
        raise ValueError(f"meta is corrupted ({exc})") from None
    try:
        return json.loads(np.asarray(raw, np.uint8).tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"meta is not valid JSON ({exc})") from None


#: Bytes a file may need beyond its arrays (HDF5 headers, chunk index, meta): a bound.
FILE_OVERHEAD_BYTES = 1 << 20


def tree_nbytes(tree: Tree) -> int:
    """Bytes of the arrays in a nested dict (what :func:`write_tree` writes as datasets)."""
    total = 0
    for value in tree.values():
        if isinstance(value, Mapping):
            total += tree_nbytes(value)
        else:
            arr = as_array(value)
            total += int(arr.nbytes) if arr is not None else 0
    return total


def write_file(path: str, meta: Mapping[str, Any], tree: Tree) -> None:
    """Creates (truncates) the HDF5 file ``path``: ``meta`` and ``tree`` at its root.

    Writes in place; callers write to a temp name and commit it with
    ``storage.files.commit_file``.

    Raises:
      OSError: the write failed (a full disk: ``errno.ENOSPC``), also where
        h5py reports it as a ``RuntimeError`` while closing the file.

    Args:
      path: the file.
      meta: JSON data (:func:`write_meta`).
      tree: the content (:func:`write_tree`); must not use the key ``meta``.
    """
    if META in tree:
        raise TypeError(f"{path}: the key {META!r} is the file's meta")
    # Refused before HDF5 writes a byte when it cannot fit: h5py's handling of a
    # write that fails half-way is fragile (RuntimeError at close, below).
    need = tree_nbytes(tree) + FILE_OVERHEAD_BYTES
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free
    if free < need:
        raise OSError(errno.ENOSPC, f"{path}: needs about {need:,} bytes, {free:,} are free")
    try:
        with h5py.File(path, "w") as f:
            write_meta(f, meta)
            write_tree(f, tree)
    except RuntimeError as exc:
        # h5py reports a write that fails while the file is flushed or closed
        # (a full disk) as RuntimeError; callers handle OSError, with its errno.
        found = re.search(r"errno = (\d+)", str(exc))
        raise OSError(int(found.group(1)) if found else errno.EIO,
                      f"{path}: HDF5 write failed ({str(exc).splitlines()[0]})") from exc


def open_file(path: str, error: Callable[[str], Exception] = OSError) -> h5py.File:
    """Opens an HDF5 file for reading.

    Args:
      path: the file.
      error: builds the exception raised, from a message naming ``path``.

    Raises:
      ``error(message)``: the file is missing, not HDF5, truncated or damaged.
    """
    if not os.path.exists(path):
        raise error(f"{path}: file is missing")
    try:
        return h5py.File(path, "r")
    except (OSError, ValueError, RuntimeError) as exc:
        raise error(f"{path}: not a readable HDF5 file, truncated or corrupted "
                    f"({exc})") from None

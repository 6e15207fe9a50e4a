"""The HDF5 encoding of arrays and nested state, exact and checksummed.

Every dataset is chunked with a fletcher32 checksum per chunk, so h5py
detects a damaged chunk when it reads it. :func:`write_tree` maps a nested
dict (a saved state record such as ``Learner.state()``) one to one onto
groups, datasets and a JSON attribute; :func:`read_tree` gives it back bit
for bit. Replay snapshots write their segment files with :func:`write_dataset`
(with smaller chunks), checkpoints their learner and actor files with
:func:`write_tree`.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Mapping, Optional

import h5py
import numpy as np

__all__ = ["CHUNK_BYTES", "JSON_ATTR", "SCALAR_ATTR", "Tree", "as_array", "read_tree",
           "write_dataset", "write_tree"]

#: Default bytes per chunk of a dataset (each chunk carries its own fletcher32).
CHUNK_BYTES = 256 << 10
#: Attribute marking a dataset that holds a 0-d array (stored with shape (1,)).
SCALAR_ATTR = "r2d2_0d"
#: Attribute of a group holding its plain (JSON) values.
JSON_ATTR = "r2d2_json"

#: A nested dict of arrays, numbers, strings and dicts.
Tree = Mapping[str, Any]


def as_array(value: Any) -> Optional[np.ndarray]:
    """``value`` as a numpy array if it is one (or a tensor / numpy scalar), else None."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, np.generic):
        return np.asarray(value)
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor
        return value.detach().cpu().numpy()
    return None


def write_dataset(group: h5py.Group, name: str, arr: np.ndarray,
                  chunk_bytes: int = CHUNK_BYTES) -> h5py.Dataset:
    """A chunked dataset with a fletcher32 checksum per chunk.

    Chunks are whole rows of about ``chunk_bytes``; a 0-d array is stored with
    shape (1,) and marked with :data:`SCALAR_ATTR`; an empty array gets a
    resizable dataset of one-element chunks.

    Args:
      group: an open, writable HDF5 group (or file).
      name: the dataset's name.
      arr: a numeric or bool array.
      chunk_bytes: target bytes per chunk.

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
        rows = max(1, min(arr.shape[0], chunk_bytes // row))
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

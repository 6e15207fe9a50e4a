"""The HDF5 encoding of nested state: exact round trips, refusals that name the key."""
from __future__ import annotations

import dataclasses
import errno
import os
import subprocess
from typing import Dict, List, Optional

import h5py
import numpy as np
import pytest

from r2d2_hpc.storage.files import commit_file, crc32_file
from r2d2_hpc.storage.h5tree import (CHUNK_BYTES, open_file, read_meta, read_tree, record_tree,
                                     tree_record, write_file, write_tree)


TREE_CASES = [
    ("float32 matrix", {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}),
    ("0-d float32 (Adam step)", {"step": np.array(7.0, np.float32)}),
    ("numpy scalar", {"n": np.int64(5)}),
    ("empty array", {"e": np.zeros((0, 4), np.float64)}),
    ("uint8 rng state", {"rng": np.arange(256, dtype=np.uint8)}),
    ("json leaves", {"i": 3, "f": 0.25, "s": "x", "b": True, "none": None, "l": [1, 2]}),
    ("pcg64 state", {"gen": np.random.default_rng(1).bit_generator.state}),
    ("nested", {"a": {"b": {"c": np.array([1.5, -2.0])}, "d": 4}, "empty": {}}),
    ("dotted names", {"torso.0.weight": np.ones((2, 2), np.float32)}),
]


def _assert_tree_equal(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], dict):
            _assert_tree_equal(a[k], b[k])
        elif isinstance(a[k], (np.ndarray, np.generic)):
            x = np.asarray(a[k])
            assert b[k].dtype == x.dtype and b[k].shape == x.shape and np.array_equal(b[k], x), k
        else:
            assert b[k] == a[k] and type(b[k]) is type(a[k]), k


@pytest.mark.parametrize("name,tree", TREE_CASES, ids=[c[0] for c in TREE_CASES])
def test_tree_round_trip_is_exact(tmp_path, name, tree) -> None:
    path = str(tmp_path / "t.h5")
    with h5py.File(path, "w") as f:
        write_tree(f.create_group("g"), tree)
    with h5py.File(path, "r") as f:
        back = read_tree(f["g"])
        for ds in _datasets(f):
            assert ds.fletcher32, ds.name
    _assert_tree_equal(tree, back)


def _datasets(f: h5py.File) -> List[h5py.Dataset]:
    out: List[h5py.Dataset] = []
    f.visititems(lambda _n, o: out.append(o) if isinstance(o, h5py.Dataset) else None)
    return out


@pytest.mark.parametrize("tree,needle", [({"a/b": 1}, "a/b"), ({"x": object()}, "x"),
                                         ({"s": np.array(["a"])}, "s")])
def test_tree_rejects_what_it_cannot_store_naming_it(tmp_path, tree, needle) -> None:
    with h5py.File(str(tmp_path / "t.h5"), "w") as f:
        with pytest.raises(TypeError, match=needle):
            write_tree(f.create_group("g"), tree)


@dataclasses.dataclass(frozen=True)
class _Record:
    w: np.ndarray
    n: int
    groups: Dict[str, np.ndarray]
    optional: Optional[np.ndarray] = None


def test_record_round_trip_through_a_file_leaves_none_fields_out(tmp_path) -> None:
    rec = _Record(np.arange(5, dtype=np.float32), 3, {"a": np.ones((2, 2))})
    tree = record_tree(rec)
    assert set(tree) == {"w", "n", "groups"}  # None is left out, comes back as the default
    tmp, path = str(tmp_path / "r.h5.tmp"), str(tmp_path / "r.h5")
    write_file(tmp, {"format": "test/1", "kind": "record"}, {"rec": tree})
    size, crc = commit_file(tmp, path, fsync=False)
    assert not os.path.exists(tmp) and size == os.path.getsize(path) and crc == crc32_file(path)
    with open_file(path) as f:
        assert read_meta(f) == {"format": "test/1", "kind": "record"}
        back = tree_record(_Record, read_tree(f["rec"]))
    assert back.optional is None and back.n == 3
    np.testing.assert_array_equal(back.w, rec.w)
    assert back.w.dtype == np.float32
    np.testing.assert_array_equal(back.groups["a"], rec.groups["a"])


def test_tree_record_names_missing_and_unknown_entries() -> None:
    with pytest.raises(ValueError, match="_Record.*missing w, groups.*unknown extra"):
        tree_record(_Record, {"n": 1, "extra": 2})
    with pytest.raises(TypeError, match="dict"):
        record_tree({"w": 1})


def test_open_file_names_a_missing_or_foreign_file(tmp_path) -> None:
    with pytest.raises(KeyError, match="nope.h5: file is missing"):
        open_file(str(tmp_path / "nope.h5"), KeyError)
    (tmp_path / "x.h5").write_bytes(b"not hdf5")
    with pytest.raises(OSError, match="x.h5: not a readable HDF5 file"):
        open_file(str(tmp_path / "x.h5"))


def test_one_chunking_policy(tmp_path) -> None:
    path = str(tmp_path / "c.h5")
    write_file(path, {}, {"big": np.zeros((4096, 64), np.float32), "row": np.zeros(10)})
    with h5py.File(path, "r") as f:
        assert f["big"].chunks == (CHUNK_BYTES // (64 * 4), 64)
        assert f["row"].chunks == (10,) and f["meta"].fletcher32


def test_a_full_disk_is_an_oserror_with_its_errno(tmp_path):
    """A file that cannot fit is refused with OSError(ENOSPC) before HDF5 writes
    (a 64 KiB tmpfs; needs root): the writers' callers handle OSError."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], check=True)
    try:
        for shape in ((100, 100), (1024, 256)):  # fails at close / while writing the data
            with pytest.raises(OSError) as exc:
                write_file(str(disk / f"f{shape[0]}.h5"), {"format": "test/1"},
                           {"x": np.ones(shape, np.float32), "y": np.ones(shape, np.float32)})
            assert exc.value.errno == errno.ENOSPC, exc.value
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)

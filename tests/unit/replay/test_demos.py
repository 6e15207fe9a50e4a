"""Demonstration files: the round trip, and every bad input named by file and field."""
from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from r2d2_hpc.replay.demos import (DemoFileError, from_arrays, read_demos, write_demos)
from r2d2_hpc.storage.h5tree import write_file
from tests.helpers.checkpoints import truncate

RUN = dict(env="atari:Pong", frame_shape=(6, 5), obs_dtype="uint8", frame_stack=4,
           num_actions=18)


def episodes(lengths=(5, 3, 7), seed: int = 0):
    """Per-step arrays of episodes of the given lengths."""
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    first = np.zeros(n, bool)
    first[np.cumsum((0,) + tuple(lengths[:-1]))] = True
    discount = np.ones(n, np.float32)
    discount[np.cumsum(lengths) - 1] = 0.0
    return dict(frames=rng.integers(0, 256, (n, 6, 5), np.uint8),
                action=rng.integers(0, 18, n), reward=rng.normal(size=n).astype(np.float32),
                discount=discount, first=first)


def a_file(tmp_path, **over) -> str:
    arrays = dict(episodes(), **over)
    path = str(tmp_path / "demos.h5")
    write_demos(path, from_arrays("atari:Pong", 4, 18, **arrays))
    return path


def test_a_file_reads_back_exactly(tmp_path):
    arrays = episodes()
    path = a_file(tmp_path)
    d = read_demos(path, **RUN)
    assert (d.steps, d.episodes, d.frame_shape) == (15, 3, (6, 5))
    for k, v in arrays.items():
        np.testing.assert_array_equal(getattr(d, k), v)
    assert d.frames.dtype == np.uint8 and d.action.dtype == np.int32
    np.testing.assert_allclose(d.episode_returns(),
                               [arrays["reward"][a:b].sum() for a, b in
                                ((0, 5), (5, 8), (8, 15))], rtol=1e-6)
    assert not os.path.exists(path + ".tmp")


@pytest.mark.parametrize("field, value, words", [
    ("reward", lambda a: np.where(np.arange(15) == 4, np.nan, a["reward"]),
     "reward: nan at step 4 is not finite"),
    ("action", lambda a: np.where(np.arange(15) == 2, 18, a["action"]),
     "action: 18 at step 2 is outside [0, 18)"),
    ("action", lambda a: np.where(np.arange(15) == 0, -1, a["action"]),
     "action: -1 at step 0 is outside [0, 18)"),
    ("first", lambda a: np.r_[False, a["first"][1:]], "first: step 0 must start an episode"),
    ("discount", lambda a: a["discount"] * 0.5, "discount: values other than 0.0 and 1.0"),
    ("reward", lambda a: a["reward"][:-1], "reward: shape (14,), expected (15)"),
    ("frames", lambda a: a["frames"][:3], "frames: shape (3, 6, 5), expected (15, ...)"),
])
def test_bad_steps_are_named(field, value, words):
    arrays = episodes()
    arrays[field] = value(arrays)
    with pytest.raises(DemoFileError, match="demo.npz: " + words.replace("(", r"\(")
                       .replace(")", r"\)").replace("[", r"\[").replace(".", r"\.")):
        from_arrays("atari:Pong", 4, 18, where="demo.npz", **arrays)


@pytest.mark.parametrize("field, run_value, file_value", [
    ("env", "atari:Breakout", "'atari:Pong'"), ("frame_shape", (84, 84), "[6, 5]"),
    ("num_actions", 6, "18"), ("frame_stack", 1, "4"), ("obs_dtype", "float32", "'uint8'"),
])
def test_a_file_for_another_run_is_refused_naming_the_field(tmp_path, field, run_value,
                                                           file_value):
    path = a_file(tmp_path)
    with pytest.raises(DemoFileError) as exc:
        read_demos(path, **dict(RUN, **{field: run_value}))
    assert f"{os.path.abspath(path)}: {field}: the file has {file_value}" in str(exc.value)


def test_missing_truncated_and_corrupt_files_are_named(tmp_path):
    missing = str(tmp_path / "nope.h5")
    with pytest.raises(DemoFileError, match="nope.h5: file is missing"):
        read_demos(missing, **RUN)
    path = a_file(tmp_path)
    truncate(path)
    with pytest.raises(DemoFileError, match="demos.h5: not a readable HDF5 file"):
        read_demos(path, **RUN)
    other = str(tmp_path / "not_demos.h5")
    write_file(other, {"format": "r2d2-snapshot"}, {"x": np.zeros(3)})
    with pytest.raises(DemoFileError, match="not_demos.h5: format: 'r2d2-snapshot', not a "
                                            "demonstration file"):
        read_demos(other, **RUN)


def test_a_bit_flipped_in_the_frames_is_caught(tmp_path):
    path = a_file(tmp_path, frames=np.zeros((15, 6, 5), np.uint8))
    with h5py.File(path, "r") as f:  # every dataset is chunked, with a fletcher32 each
        offset = f["frames"].id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:
        fh.seek(offset + 3)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(DemoFileError, match="demos.h5: a dataset is corrupted"):
        read_demos(path, **RUN)


def test_declared_shapes_are_checked_before_anything_is_read(tmp_path):
    """A file whose arrays disagree with its own meta (damaged or hostile) is
    refused from the shapes alone."""
    path = a_file(tmp_path)
    with h5py.File(path, "r+") as f:
        del f["reward"]
        f.create_dataset("reward", shape=(10 ** 9,), dtype=np.float32)  # never written
    with pytest.raises(DemoFileError, match=r"reward: float32\(1000000000,\) in the file, "
                                            r"expected float32\(15,\)"):
        read_demos(path, **RUN)

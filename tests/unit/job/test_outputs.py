"""End-of-run files: learning-curve PNG and the final learner state in HDF5."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.checkpoint.records import CheckpointError
from r2d2_hpc.checkpoint.restore import read_learner
from r2d2_hpc.config import Config
from r2d2_hpc.job.outputs import plot_learning_curve, write_run_outputs
from r2d2_hpc.storage.digest import state_digest

from tests.helpers.fakes import NUM_ACTIONS, OBS_SHAPE, random_sequence_batch, tiny_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rows(n: int = 6):
    out = []
    for i in range(n):
        out.append({"learner_step": 100.0 * i, "env_steps": 1000.0 * i, "wall_time_s": 2.0 * i,
                    "episode_return": 10.0 + i if i != 2 else math.nan,
                    "return_eps_low": 12.0 + i,
                    "eval_return": 20.0 * i if i % 2 else math.nan})
    return out


def trained_learner(steps: int = 2) -> Learner:
    cfg = tiny_config()
    learner = Learner(cfg, OBS_SHAPE, NUM_ACTIONS)
    for s in range(steps):
        batch = random_sequence_batch(cfg, seed=s)
        learner.step(batch, np.ones(cfg.learner.batch_size, np.float32))
    return learner


def test_plot_writes_a_png_with_nans_and_missing_columns(tmp_path):
    path = str(tmp_path / "curve.png")
    assert plot_learning_curve(rows(), path, title="t") == path
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    # rows without eval or bucket columns (e.g. eval off) still plot
    bare = [{"env_steps": 1.0 * i, "wall_time_s": 1.0 * i, "episode_return": 1.0 * i}
            for i in range(3)]
    path2 = str(tmp_path / "bare.png")
    assert plot_learning_curve(bare, path2) == path2
    assert open(path2, "rb").read()[:8] == PNG_MAGIC
    assert not list(tmp_path.glob("*.tmp*"))


def test_learner_final_is_a_learner_file_that_round_trips(tmp_path):
    """learner_final.h5 is written by the checkpoint's learner-file writer and read back
    by read_learner (what r2d2-eval reads), bit for bit."""
    learner = trained_learner()
    out = write_run_outputs(str(tmp_path), learner.cfg, rows(), learner.state(),
                            counters={"env_steps": 5, "learner_step": 2},
                            extra={"final_eval_return": 42.5})
    assert out["learner_state"] == str(tmp_path / "learner_final.h5")
    back = read_learner(out["learner_state"])
    assert back.step == 2 and back.counters == {"env_steps": 5, "learner_step": 2}
    assert Config.from_dict(back.config) == learner.cfg
    assert back.extra == {"final_eval_return": 42.5}
    fresh = Learner(learner.cfg, OBS_SHAPE, NUM_ACTIONS)
    assert not np.array_equal(fresh.flat_params(), learner.flat_params())
    fresh.load_state(back.state)
    assert state_digest(fresh.state()) == state_digest(learner.state())
    # the restored learner continues exactly like the original
    batch = random_sequence_batch(learner.cfg, seed=9)
    w = np.ones(learner.cfg.learner.batch_size, np.float32)
    a, b = learner.step(batch, w), fresh.step(batch, w)
    np.testing.assert_array_equal(a.priorities, b.priorities)
    np.testing.assert_array_equal(fresh.flat_params(), learner.flat_params())


def test_learner_final_is_checksummed_and_corruption_is_named(tmp_path):
    learner = trained_learner(1)
    path = write_run_outputs(str(tmp_path), learner.cfg, rows(), learner.state())["learner_state"]
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert names and all(f[n].fletcher32 for n in names)
        ds = f["state/online/lstm.weight_ih_l0"]
        offset = ds.id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:  # flip one byte of that parameter's data
        fh.seek(offset + 5)
        byte = fh.read(1)
        fh.seek(offset + 5)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointError, match="learner_final.h5: corrupted"):
        read_learner(path)


def test_read_rejects_other_files(tmp_path):
    path = str(tmp_path / "other.h5")
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(CheckpointError, match="other.h5: no 'meta' dataset"):
        read_learner(path)


def test_write_run_outputs_without_a_learner_state_writes_the_curve_alone(tmp_path):
    learner = trained_learner(1)
    out = write_run_outputs(str(tmp_path), learner.cfg, rows(), None)
    assert out["learner_state"] is None and (tmp_path / "learning_curve.png").is_file()
    assert not (tmp_path / "learner_final.h5").exists()

"""End-of-run files: learning-curve PNG and the final learner state in HDF5."""
from __future__ import annotations

import math

import h5py
import numpy as np
import pytest

from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.job.outputs import (LEARNER_STATE_FORMAT, plot_learning_curve, read_learner_state,
                                  write_learner_state, write_run_outputs)

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


def test_learner_state_round_trip_restores_everything(tmp_path):
    learner = trained_learner()
    path = str(tmp_path / "state.h5")
    write_learner_state(path, learner.state(), learner.cfg, extra={"final_eval_return": 42.5})
    back = read_learner_state(path)
    assert back["config"] == learner.cfg
    assert back["attrs"] == {"final_eval_return": 42.5}
    fresh = Learner(learner.cfg, OBS_SHAPE, NUM_ACTIONS)
    assert not np.array_equal(fresh.flat_params(), learner.flat_params())
    fresh.load_state(back["state"])
    np.testing.assert_array_equal(fresh.flat_params(), learner.flat_params())
    assert fresh.step_count == learner.step_count == 2
    assert fresh.params_version == learner.params_version
    # the restored learner continues exactly like the original
    batch = random_sequence_batch(learner.cfg, seed=9)
    w = np.ones(learner.cfg.learner.batch_size, np.float32)
    a, b = learner.step(batch, w), fresh.step(batch, w)
    np.testing.assert_array_equal(a.priorities, b.priorities)
    np.testing.assert_array_equal(fresh.flat_params(), learner.flat_params())


def test_arrays_are_checksummed_and_corruption_is_detected(tmp_path):
    learner = trained_learner(1)
    path = str(tmp_path / "state.h5")
    write_learner_state(path, learner.state(), learner.cfg)
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == LEARNER_STATE_FORMAT
        names = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset)
                     and o.ndim > 0 else None)
        assert names and all(f[n].fletcher32 for n in names)
        ds = f["online/lstm.weight_ih_l0"]
        offset = ds.id.get_chunk_info(0).byte_offset
    with open(path, "r+b") as fh:  # flip one byte of that parameter's data
        fh.seek(offset + 5)
        byte = fh.read(1)
        fh.seek(offset + 5)
        fh.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(OSError):
        read_learner_state(path)


def test_read_rejects_other_files(tmp_path):
    path = str(tmp_path / "other.h5")
    with h5py.File(path, "w") as f:
        f["x"] = 1
    with pytest.raises(ValueError, match="not a learner state"):
        read_learner_state(path)


def test_write_run_outputs_writes_both_files(tmp_path):
    learner = trained_learner(1)
    out = write_run_outputs(str(tmp_path), learner.cfg, rows(), learner.state(),
                            extra={"env_steps": 5})
    assert out["learning_curve"] == str(tmp_path / "learning_curve.png")
    assert out["learner_state"] == str(tmp_path / "learner_final.h5")
    assert read_learner_state(out["learner_state"])["attrs"] == {"env_steps": 5}
    # no learner state: the curve alone
    out2 = write_run_outputs(str(tmp_path / "x"), learner.cfg, rows(), None) \
        if (tmp_path / "x").mkdir() is None else None
    assert out2["learner_state"] is None and (tmp_path / "x" / "learning_curve.png").is_file()

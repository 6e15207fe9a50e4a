"""Saved state records: state() -> HDF5 -> load_state() gives identical arrays, for the
Learner, the ReplayShard and an actor; the old learner_final.h5 format still reads."""
from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch

from r2d2_hpc.agent.learner import Learner, LearnerState
from r2d2_hpc.checkpoint.records import CheckpointError
from r2d2_hpc.checkpoint.restore import read_learner
from r2d2_hpc.checkpoint.state_files import (LEGACY_LEARNER_FORMAT, read_actors_file,
                                             read_learner_file, write_actors_file,
                                             write_learner_file)
from r2d2_hpc.comm.memory_endpoint import InMemoryEndpoint, InMemoryHub
from r2d2_hpc.comm.messages import job_messages
from r2d2_hpc.comm.topology import assign_role
from r2d2_hpc.job.actor import ActorRank
from r2d2_hpc.job.learner import LearnerRank
from r2d2_hpc.job.role import job_spec
from r2d2_hpc.replay.snapshot import load_snapshot, save_snapshot
from r2d2_hpc.storage.digest import state_digest
from r2d2_hpc.storage.h5tree import record_fields
from r2d2_hpc.types import ActorState
from tests.helpers.checkpoints import (fill, make_learner, new_shard, trained_learner,
                                       write_checkpoint)
from tests.helpers.fakes import random_sequence_batch, tiny_config
from tests.helpers.launcher import tiny_job_config


def assert_records_equal(a, b, path: str = "") -> None:
    """Same fields, and every array of the same dtype, shape and bytes."""
    fa, fb = (record_fields(x) if not isinstance(x, dict) else x for x in (a, b))
    assert set(fa) == set(fb), path
    for k in fa:
        x, y = fa[k], fb[k]
        if isinstance(x, dict):
            assert_records_equal(x, y, f"{path}/{k}")
        elif isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray) and x.dtype == y.dtype and x.shape == y.shape, \
                f"{path}/{k}"
            assert x.tobytes() == y.tobytes(), f"{path}/{k}"
        else:
            assert x == y and type(x) is type(y), f"{path}/{k}"


def test_learner_state_round_trip_through_its_file_is_exact(tmp_path) -> None:
    cfg = tiny_config(learning_rate=1e-2)
    learner = trained_learner(cfg, steps=3)
    # fp16's scaler state on the CPU (the same code path): the optional field too.
    learner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
    learner.step(random_sequence_batch(cfg, seed=4), np.ones(5, np.float32))
    state = learner.state()
    path = str(tmp_path / "learner.h5")
    size, _ = write_learner_file(path, state, cfg, {"env_steps": 7}, job_spec=None,
                                 extra={"note": np.arange(3)}, fsync=False)
    assert size == os.path.getsize(path) and not os.path.exists(path + ".tmp")
    back = read_learner_file(path)
    assert back.step == state.step_count == 4 and back.counters == {"env_steps": 7}
    assert isinstance(back.state, LearnerState) and back.state.cuda_rng_state is None
    assert_records_equal(state, back.state)
    fresh = make_learner(cfg, seed=9)
    fresh.scaler = torch.amp.GradScaler("cpu")
    fresh.load_state(back.state)
    assert_records_equal(fresh.state(), state)
    batch = random_sequence_batch(cfg, seed=5)
    r1, r2 = learner.step(batch, np.ones(5, np.float32)), fresh.step(batch, np.ones(5, np.float32))
    np.testing.assert_array_equal(r1.priorities, r2.priorities)


def test_shard_state_round_trip_through_a_snapshot_is_exact(tmp_path) -> None:
    shard = new_shard(seed=3)
    fill(shard, [0, 1, 2], seed=3, rounds=2)
    shard.sample(4)  # advances the generator, whose state is part of the record
    save_snapshot(shard, str(tmp_path / "s"), fsync=False)
    back = load_snapshot(str(tmp_path / "s")).state()
    assert back.equals(shard.state())
    other = new_shard(seed=99)
    other.load_state(back)  # ReplayShard.load_state takes the record back
    assert other.state().equals(shard.state())
    assert state_digest(other.state()) == state_digest(shard.state())


def _actor(cfg, spec, resume=None) -> ActorRank:
    hub = InMemoryHub(job_messages(cfg, spec), 3)
    return ActorRank(cfg, spec, InMemoryEndpoint(hub, 2), assign_role(2, 3, cfg.topology),
                     resume=resume)


def test_actor_state_round_trip_and_resume(tmp_path) -> None:
    rows = [ActorState(env_steps=40, episodes=3), ActorState(env_steps=12)]
    path = str(tmp_path / "actors.h5")
    write_actors_file(path, rows, fsync=False)
    assert read_actors_file(path) == rows
    cfg = tiny_job_config()
    spec = job_spec(cfg)
    actor = _actor(cfg, spec)
    assert actor.state() == ActorState(0, 0)
    actor.load_state(read_actors_file(path)[0])
    assert actor.state() == rows[0]
    with pytest.raises(TypeError, match="ActorState"):
        actor.load_state({"env_steps": 1})
    # In a job: actor 0 continues its row of the checkpoint, the lead continues
    # the same counts, and its env step total is the checkpoint's.
    learner = Learner(cfg, spec.obs_shape, spec.num_actions)
    info = write_checkpoint(str(tmp_path / "run"), 5, cfg, [], learner_state=learner.state(),
                            actors=rows)
    assert _actor(cfg, spec, resume=info).state() == rows[0]
    hub = InMemoryHub(job_messages(cfg, spec), 3)
    lead = LearnerRank(cfg, spec, InMemoryEndpoint(hub, 0), assign_role(0, 3, cfg.topology),
                       resume=info)
    assert lead.actor_states() == rows[:1]  # one actor in this job
    assert lead.env_steps == info.counters["env_steps"] == 50


def test_legacy_learner_final_file_still_reads(tmp_path) -> None:
    """The format learner_final.h5 had before it took the checkpoint's (state at the root)."""
    cfg = tiny_config()
    state = trained_learner(cfg, steps=1).state()
    path = str(tmp_path / "learner_final.h5")
    with h5py.File(path, "w") as f:
        f.attrs["format"] = LEGACY_LEARNER_FORMAT
        f.attrs["config"] = json.dumps(cfg.to_dict())
        f.attrs["env_steps"] = json.dumps(33)
        for key, value in state._asdict().items():
            if isinstance(value, dict):
                g = f.create_group(key)
                for k, v in value.items():
                    if isinstance(v, dict):
                        sub = g.create_group(k)
                        for n, a in v.items():
                            sub.create_dataset(n, data=np.asarray(a))
                    else:
                        g.create_dataset(k, data=np.asarray(v))
            elif value is not None:
                f.create_dataset(key, data=np.asarray(value))
    back = read_learner(path)
    assert back.step == 1 and back.counters == {"env_steps": 33} and back.config == cfg.to_dict()
    fresh = make_learner(cfg, seed=5)
    fresh.load_state(back.state)
    assert state_digest(fresh.state()) == state_digest(state)


def test_a_file_that_is_no_learner_file_is_named(tmp_path) -> None:
    path = str(tmp_path / "actors.h5")
    write_actors_file(path, [ActorState(1, 1)], fsync=False)
    with pytest.raises(CheckpointError, match="actors.h5: a 'actors' file, not a learner file"):
        read_learner_file(path)
    with pytest.raises(CheckpointError, match="nope.h5: file is missing"):
        read_learner_file(str(tmp_path / "nope.h5"))

"""Small replay shards, learners and whole checkpoints for the checkpoint tests."""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import h5py
import numpy as np
import torch

from r2d2_hpc.agent.learner import Learner, LearnerState
from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.records import CheckpointInfo
from r2d2_hpc.config import Config
from r2d2_hpc.replay.routing import stream_id
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.replay.snapshot import FORMAT_V1, INDEX_FILE
from r2d2_hpc.types import ActorState, SequenceBatch
from tests.helpers.fakes import NUM_ACTIONS, OBS_SHAPE, random_sequence_batch

FRAME = (3, 3)


#: Streams per actor in these tests.
NUM_ENVS = 2


JOB_SPEC = {"obs_shape": list(OBS_SHAPE), "frame_shape": list(OBS_SHAPE), "obs_dtype": "float32",
            "num_actions": NUM_ACTIONS, "state_size": 8, "num_params": 1000, "frame_stack": 1}


def new_shard(seed: int = 0, C: int = 96, S: int = 24, frame: Tuple[int, ...] = FRAME,
              seg_obs: int = 8, seg_seq: int = 4, shard_index: int = 0) -> ReplayShard:
    return ReplayShard(frame, capacity_observations=C, capacity_sequences=S,
                       sequence_length=5, state_size=3, frame_stack=2, seed=seed,
                       segment_observations=seg_obs, segment_sequences=seg_seq,
                       shard_index=shard_index)


def filled_shard() -> ReplayShard:
    """A :func:`new_shard` holding one stream of 12 steps (:func:`fill`, seed 0)."""
    shard = new_shard()
    fill(shard, [0], seed=0)
    return shard


def fill(shard: ReplayShard, streams: Sequence[int], seed: int, steps: int = 12,
         rounds: int = 1) -> None:
    """Each stream: ``rounds`` chunks of ``steps`` steps, a sequence every 2 steps."""
    rng = np.random.default_rng(seed)
    shape = shard.spec.frame_shape
    for _ in range(rounds):
        for s in streams:
            nxt = shard.streams().get(s, (0, 0))[1]
            first = np.zeros(steps, bool)
            first[0] = nxt == 0
            shard.add_steps(s, nxt, rng.integers(0, 256, (steps,) + tuple(shape), np.uint8),
                            rng.integers(0, 4, steps), rng.normal(size=steps).astype(np.float32),
                            np.ones(steps, np.float32), first)
            starts = np.arange(nxt, nxt + steps - 4, 2)
            m = len(starts)
            shard.add_sequences(s, starts, np.full(m, 5), rng.normal(size=(m, 3)),
                                rng.normal(size=(m, 3)), rng.integers(0, 4, m),
                                rng.normal(size=m), rng.random(m) * 2 + 0.1)


def actor_streams(actors: Sequence[int]) -> List[int]:
    return [stream_id(a, e, NUM_ENVS) for a in actors for e in range(NUM_ENVS)]


def make_learner(cfg: Config, seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    return Learner(cfg, OBS_SHAPE, NUM_ACTIONS, device="cpu")


def trained_learner(cfg: Config, steps: int = 2) -> Learner:
    learner = make_learner(cfg)
    batch = random_sequence_batch(cfg, seed=3)
    for _ in range(steps):
        learner.step(batch, np.ones(5, np.float32))
    return learner


def fake_learner_state(step: int = 0, w: Optional[np.ndarray] = None) -> LearnerState:
    """A ``LearnerState`` of a one-parameter "network" ``w`` (the layout checks no shapes)."""
    w = np.ones(3) if w is None else np.asarray(w)
    return LearnerState(online={"w": w}, target={"w": w.copy()},
                        optimizer={"exp_avg": {}, "exp_avg_sq": {}, "step": {}},
                        step_count=step, params_version=step,
                        torch_rng_state=np.arange(16, dtype=np.uint8))


def write_checkpoint(run_dir: str, step: int, cfg: Config, shards: Sequence[ReplayShard],
                     learner_state: Optional[LearnerState] = None, keep: int = 3,
                     actors: Optional[List[ActorState]] = None,
                     layout: Optional[CheckpointLayout] = None,
                     job_spec: Optional[dict] = None) -> CheckpointInfo:
    """The protocol of the module docstring, all roles in this process."""
    layout = layout or CheckpointLayout(run_dir, keep=keep, fsync=False)
    path = layout.begin(step)
    state = learner_state if learner_state is not None else fake_learner_state(step)
    layout.write_learner(path, state, cfg, {"env_steps": 10 * step, "episodes": step},
                         step=step, job_spec=job_spec or JOB_SPEC, extra={"note": "test"})
    layout.write_actors(path, actors or [ActorState(env_steps=5 * step, episodes=1),
                                         ActorState(env_steps=5 * step, episodes=2)])
    for i, shard in enumerate(shards):
        layout.write_shard(layout.partial_path(step), i, shard)
    return layout.commit(path, step, len(shards))


def live_records(shards: Sequence[ReplayShard]) -> List[tuple]:
    """Every live sequence, as a hashable record independent of slot and key."""
    out = []
    for shard in shards:
        keys = shard.live_keys()
        if not len(keys):
            continue
        info = shard.sequence_info(keys)
        batch = shard.read(keys)
        for j in range(len(keys)):
            out.append((int(info["stream"][j]), int(info["start_step"][j]),
                        int(info["length"][j]), float(info["priority"][j]),
                        batch.obs[:, j].tobytes(), batch.state_h[j].tobytes()))
    return sorted(out)


def assert_batches_equal(a: SequenceBatch, b: SequenceBatch) -> None:
    for name in SequenceBatch._fields:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y), name


def report_sink() -> Tuple[List[str], callable]:
    lines: List[str] = []
    return lines, lines.append


def truncate(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(os.path.getsize(path) // 2)


def flip(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.seek(os.path.getsize(path) - 9)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0x10]))


def a_segment(ckpt: str) -> str:
    d = os.path.join(ckpt, "shard-0")
    return "shard-0/" + sorted(n for n in os.listdir(d) if n.startswith("steps_"))[0]


def with_changes(cfg: Config, section: str, **changes) -> Config:
    return cfg.replace(**{section: dataclasses.replace(getattr(cfg, section), **changes)})


def rewrite_snapshot_meta(directory: str, edit: Callable[[Dict[str, Any]], None]) -> None:
    """Rewrites a snapshot index's meta JSON through ``edit`` (to forge another writer's)."""
    idx = os.path.join(directory, INDEX_FILE)
    with h5py.File(idx, "r+") as f:
        meta = json.loads(f["meta"][...].tobytes().decode())
        edit(meta)
        del f["meta"]
        f.create_dataset("meta", data=np.frombuffer(json.dumps(meta).encode(), np.uint8))


def as_snapshot_version_1(meta: Dict[str, Any]) -> None:
    """What a version 1 writer left: no ``shard_index``."""
    meta["format"] = FORMAT_V1
    del meta["shard_index"]


def half_written_run(tmp_path, cfg: Config, learner_states: Optional[dict] = None,
                     job_spec: Optional[dict] = None) -> Tuple[str, dict]:
    """ckpt 1 and 2 valid, ckpt 3 with a bit flipped in learner.h5, ckpt 5 without its
    manifest (a copy cut short), and a ``.partial-`` ckpt 4 (the writer was killed)."""
    run = str(tmp_path / "run")
    states = learner_states or {k: fake_learner_state(k, np.full(4, float(k)))
                                for k in (1, 2, 3, 5)}
    infos = {k: write_checkpoint(run, k, cfg, [], learner_state=states[k], job_spec=job_spec)
             for k in (1, 2, 3)}
    flip(os.path.join(infos[3].path, "learner.h5"))
    five = write_checkpoint(run, 5, cfg, [], learner_state=states[5], keep=5,
                            job_spec=job_spec)
    os.remove(os.path.join(five.path, "MANIFEST.json"))
    partial = os.path.join(run, "checkpoints", ".partial-ckpt-000000000004")
    os.makedirs(partial)
    open(os.path.join(partial, "learner.h5"), "wb").write(b"\0" * 100)
    return run, infos

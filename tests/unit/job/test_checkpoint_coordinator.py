"""Learner 0's checkpoint protocol on the in-memory transport: start, progress while shards
write, commit after every CHECKPOINT_DONE, a failed shard keeps the previous checkpoint."""
from __future__ import annotations

import dataclasses
import errno
import os
from typing import List, Tuple

import numpy as np
import pytest

from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.comm.memory_endpoint import InMemoryEndpoint, InMemoryHub
from r2d2_hpc.comm.messages import Command, declare_messages
from r2d2_hpc.config import CheckpointConfig
from r2d2_hpc.job.checkpoint_coordinator import (CheckpointCoordinator, LeadFiles,
                                                 PendingCheckpoint)
from r2d2_hpc.job.role import Control, poll_control
from r2d2_hpc.storage.digest import state_digest
from r2d2_hpc.types import ActorState, JobSpec
from tests.helpers.checkpoints import JOB_SPEC, fake_learner_state, fill, new_shard
from tests.helpers.fakes import NUM_ACTIONS, OBS_SHAPE, tiny_config

LEAD, SHARD_RANKS = 0, (1, 2)
SPEC = JobSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in JOB_SPEC.items()})


class Timer:
    def __init__(self) -> None:
        self.t = 10.0

    def __call__(self) -> float:
        return self.t


def _setup(tmp_path, interval_steps: int = 0, with_layout: bool = True
           ) -> Tuple[CheckpointCoordinator, InMemoryHub, List[InMemoryEndpoint], Timer]:
    cfg = tiny_config()
    cfg = cfg.replace(checkpoint=CheckpointConfig(interval_seconds=0.0,
                                                  interval_steps=interval_steps))
    hub = InMemoryHub(declare_messages(cfg, OBS_SHAPE, np.float32, 8, 4, NUM_ACTIONS), 3)
    layout = CheckpointLayout(str(tmp_path / "run"), keep=3, fsync=False) if with_layout \
        else None
    timer = Timer()
    coord = CheckpointCoordinator(hub.endpoint(LEAD), SHARD_RANKS, cfg, SPEC, layout,
                                  timer=timer)
    return coord, hub, [hub.endpoint(r) for r in SHARD_RANKS], timer


def _files(step: int) -> LeadFiles:
    return LeadFiles(fake_learner_state(step), {"env_steps": 10 * step, "episodes": step},
                     [ActorState(5 * step, 1)])


def _shard_writes(coord: CheckpointCoordinator, shard: int, ep: InMemoryEndpoint,
                  ok: bool = True) -> None:
    """What a replay rank does on CONTROL CHECKPOINT: its part, then CHECKPOINT_DONE."""
    (ctl,) = poll_control(ep)
    assert ctl == Control(LEAD, int(Command.CHECKPOINT), ctl.argument)
    if ok:
        part = new_shard(seed=shard, shard_index=shard)
        fill(part, [shard], seed=shard)
        coord.layout.write_shard(coord.layout.partial_path(ctl.argument), shard, part)
    ep.send("CONTROL", LEAD, command=int(Command.CHECKPOINT_DONE),
            argument=ctl.argument if ok else -1)


def test_commit_after_every_shard_reported(tmp_path):
    coord, hub, shards, timer = _setup(tmp_path)

    def lead_files() -> LeadFiles:  # asked for once the shards were told to write
        assert [len(hub.queue(r, "CONTROL")) for r in SHARD_RANKS] == [1, 1]
        return _files(5)

    pending = coord.start(5, lead_files)
    assert pending == PendingCheckpoint(5, coord.layout.partial_path(5), frozenset({1, 2}),
                                        "", 10.0)
    assert coord.digests == {"5": state_digest(fake_learner_state(5))}
    assert coord.progress() is None and not coord.due(100)
    _shard_writes(coord, 0, shards[0])
    coord.take_controls(poll_control(coord.ep))
    assert coord.pending.waiting == {2} and coord.progress() is None  # shard 1 still writes
    _shard_writes(coord, 1, shards[1])
    coord.take_controls(poll_control(coord.ep))
    timer.t = 12.5
    done = coord.progress()
    assert done is not None and done.step == 5 and not done.failed
    assert coord.pending is None and coord.progress() is None
    assert coord.committed == [n.rsplit("/", 1)[-1] for n in coord.layout.checkpoints()]
    assert len(coord.committed) == 1 and coord.seconds == [2.5]
    assert coord.schedule.last_step == 5


def test_a_failed_shard_keeps_the_previous_checkpoint(tmp_path, capsys):
    coord, hub, shards, _ = _setup(tmp_path)
    coord.start(5, lambda: _files(5))
    for s, ep in enumerate(shards):
        _shard_writes(coord, s, ep)
    coord.take_controls(poll_control(coord.ep))
    coord.progress()
    before = coord.layout.checkpoints()
    coord.start(8, lambda: _files(8))
    _shard_writes(coord, 0, shards[0], ok=False)
    coord.take_controls(poll_control(coord.ep))
    assert coord.pending.failed and coord.progress() is None  # shard 1 still writes
    _shard_writes(coord, 1, shards[1])
    coord.take_controls(poll_control(coord.ep))
    done = coord.progress()
    assert done is not None and done.failed and done.step == 8
    err = capsys.readouterr().err
    assert ("checkpoint at step 8 failed: the replay shard at rank 1 could not write its part; "
            "the previous checkpoint ckpt-000000000005 is kept") in err
    assert coord.layout.checkpoints() == before and len(coord.committed) == 1
    assert coord.failures == [8] and not os.path.exists(coord.layout.partial_path(8))
    assert coord.schedule.last_step == 8  # the schedule restarts either way


def _a_committed_checkpoint(coord, shards, step: int) -> None:
    coord.start(step, lambda: _files(step))
    for s, ep in enumerate(shards):
        _shard_writes(coord, s, ep)
    coord.take_controls(poll_control(coord.ep))
    assert not coord.progress().failed


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("where, why", [
    ("write_learner", "learner 0 could not write its files ([Errno 28] No space left on device)"),
    ("write_actors", "learner 0 could not write its files ([Errno 28] No space left on device)"),
    ("commit", "its manifest could not be written ([Errno 28] No space left on device)"),
])
def test_a_write_of_learner_0_that_fails_keeps_the_previous_checkpoint(tmp_path, capsys,
                                                                         monkeypatch, where, why):
    """A full disk on learner 0 fails that checkpoint only: the shards still
    report, the partial directory goes, the previous checkpoint stays, and the
    next one (the disk has room again) commits."""
    coord, _, shards, _ = _setup(tmp_path)
    _a_committed_checkpoint(coord, shards, 5)
    before = coord.layout.checkpoints()
    with monkeypatch.context() as m:
        m.setattr(coord.layout, where, _disk_full)
        coord.start(8, lambda: _files(8))
        for s, ep in enumerate(shards):
            _shard_writes(coord, s, ep)  # the shards were asked and write their parts
        coord.take_controls(poll_control(coord.ep))
        done = coord.progress()
    assert done is not None and done.failed and done.failure == why
    assert f"checkpoint at step 8 failed: {why}; the previous checkpoint " \
           f"ckpt-000000000005 is kept" in capsys.readouterr().err
    assert coord.layout.checkpoints() == before and coord.failures == [8]
    assert not os.path.exists(coord.layout.partial_path(8))
    _a_committed_checkpoint(coord, shards, 11)
    assert len(coord.layout.checkpoints()) == 2 and coord.committed[-1].endswith("11")


def test_a_directory_that_cannot_be_made_fails_without_asking_the_shards(tmp_path, capsys,
                                                                           monkeypatch):
    coord, _, shards, _ = _setup(tmp_path)
    monkeypatch.setattr(coord.layout, "begin", _disk_full)
    pending = coord.start(3, lambda: pytest.fail("nothing is written"))
    assert pending.failed and pending.waiting == frozenset()
    assert all(poll_control(ep) == [] for ep in shards)
    assert coord.progress().failed and coord.pending is None and coord.failures == [3]
    err = capsys.readouterr().err
    assert "checkpoint at step 3 failed: its directory could not be made ([Errno 28] No " \
           "space left on device); there is no earlier checkpoint" in err


def test_a_done_for_another_step_counts_as_failed():
    ck = PendingCheckpoint(5, "p", frozenset({1, 2}), "", 0.0)
    assert ck.done_by(1, 5) == dataclasses.replace(ck, waiting=frozenset({2}))
    assert ck.done_by(2, 4).failed and ck.done_by(2, -1).failed
    assert ck.done_by(2, -1).done_by(1, -1).failure == \
        "the replay shard at rank 2 could not write its part"  # the first one is kept
    assert ck.waiting == {1, 2}  # the record is frozen: each report gives a new one


def test_one_checkpoint_at_a_time(tmp_path):
    coord, _, _, _ = _setup(tmp_path)
    coord.start(3, lambda: _files(3))
    with pytest.raises(RuntimeError, match="the one at step 3 is pending"):
        coord.start(4, lambda: _files(4))
    coord.take_controls([Control(1, int(Command.PREEMPT), 10)])  # not its business
    assert coord.pending.waiting == {1, 2}


def test_no_run_directory_no_checkpoints(tmp_path):
    coord, _, shards, _ = _setup(tmp_path, interval_steps=1, with_layout=False)
    assert not coord.enabled and not coord.due(10)
    with pytest.raises(RuntimeError, match="none is written"):
        coord.start(1, lambda: _files(1))
    assert all(poll_control(ep) == [] for ep in shards)


def test_the_schedule(tmp_path):
    coord, _, shards, _ = _setup(tmp_path, interval_steps=10)
    assert not coord.due(9) and coord.due(10)
    coord.start(10, lambda: _files(10))
    assert not coord.due(20)  # one is pending
    for s, ep in enumerate(shards):
        _shard_writes(coord, s, ep)
    coord.take_controls(poll_control(coord.ep))
    coord.progress()
    assert not coord.due(19) and coord.due(20)

"""Learner 0's side of a coordinated checkpoint: start, wait for the shards, commit.

One checkpoint at a time, in the partial directory of its learner step::

    start(step)        begin(step): a fresh partial directory
                       CONTROL CHECKPOINT(step) -> every shard (they write in parallel)
                       learner.h5 (state, config, counters), actors.h5
                       pending = PendingCheckpoint(step, path, waiting = every shard)
    take_controls()    CHECKPOINT_DONE(arg) from shard r: r leaves ``waiting``;
                       arg != step (a shard's write failed: -1) marks it failed
    progress()         nobody waiting: commit (manifest, atomic rename, prune)
                       or, if failed, delete the partial directory and keep the
                       previous checkpoint; the schedule restarts from ``step``
                       either way

A write that fails (``OSError``: a full disk, a quota, an I/O error) on any
rank fails that checkpoint only: learner 0 says so once, with the reason and the
checkpoint kept, and the run goes on (:attr:`CheckpointCoordinator.failures`).
Whether the run may go on after a failed *stop* checkpoint (preemption, end) is
the learner rank's decision
(:data:`~r2d2_hpc.checkpoint.preemption.EXIT_CHECKPOINT_FAILED`). Nothing half-written
is taken for a checkpoint: readers ignore partial directories, and only a
complete one is renamed to its final name.

The learner takes no step while a checkpoint is pending (the rank's loop),
so the learner, actor and shard files describe the same moment.
:class:`~r2d2_hpc.checkpoint.layout.CheckpointLayout` owns the files;
this module owns only the protocol and its record.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any, Callable, Dict, FrozenSet, List, NamedTuple, Optional, Sequence

from r2d2_hpc.agent.learner import LearnerState
from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.preemption import CheckpointSchedule
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.heartbeat import long_phase
from r2d2_hpc.comm.messages import Command
from r2d2_hpc.config import Config
from r2d2_hpc.job.role import Control
from r2d2_hpc.storage.digest import state_digest
from r2d2_hpc.types import ActorState, JobSpec

__all__ = ["CheckpointCoordinator", "LeadFiles", "PendingCheckpoint"]


class LeadFiles(NamedTuple):
    """What learner 0 writes itself: ``learner.h5`` and ``actors.h5``."""

    state: LearnerState
    counters: Dict[str, Any]
    actors: List[ActorState]


@dataclasses.dataclass(frozen=True)
class PendingCheckpoint:
    """A checkpoint started and not yet committed.

    Attributes:
      step: its learner step (the argument of CONTROL CHECKPOINT).
      path: its partial directory.
      waiting: shard ranks whose CHECKPOINT_DONE has not arrived.
      failure: why it failed ('' while nothing failed): the first failure reported.
      started: ``timer()`` when it started.
    """

    step: int
    path: str
    waiting: FrozenSet[int]
    failure: str
    started: float

    @property
    def failed(self) -> bool:
        """True once some part of it could not be written."""
        return bool(self.failure)

    def done_by(self, source: int, argument: int) -> "PendingCheckpoint":
        """The record after shard ``source`` reported ``argument`` (its step, -1: failed)."""
        failure = self.failure or ("" if argument == self.step else
                                   f"the replay shard at rank {source} could not write its part")
        return dataclasses.replace(self, waiting=self.waiting - {source}, failure=failure)


class CheckpointCoordinator:
    """Learner 0's checkpoint protocol (see the module docstring).

    Attributes:
      pending: the checkpoint being written, if any.
      committed: names of the checkpoints this run committed.
      seconds: wall seconds of each committed checkpoint, start to commit.
      failures: learner steps of the checkpoints that failed.
      digests: learner step -> digest of the learner state written (bit-exact resume tests).
    """

    def __init__(self, ep: Endpoint, shard_ranks: Sequence[int], cfg: Config, spec: JobSpec,
                 layout: Optional[CheckpointLayout], step: int = 0,
                 timer: Callable[[], float] = time.monotonic) -> None:
        """Args:
          ep: learner 0's endpoint.
          shard_ranks: every shard's rank (in shard order).
          cfg: the run's config (saved with the learner state; the schedule).
          spec: the job's shapes (saved).
          layout: the run directory's checkpoints; None writes none.
          step: the learner step the run starts at (the schedule counts from it).
          timer: time source of the checkpoint seconds (tests).
        """
        self.ep = ep
        self.shard_ranks = list(shard_ranks)
        self.cfg = cfg
        self.spec = spec
        self.layout = layout
        self.timer = timer
        self.schedule = CheckpointSchedule(cfg.checkpoint)
        if layout is not None:
            self.schedule.mark(step)
        self.pending: Optional[PendingCheckpoint] = None
        self.committed: List[str] = []
        self.seconds: List[float] = []
        self.failures: List[int] = []
        self.digests: Dict[str, str] = {}

    @property
    def enabled(self) -> bool:
        """True when this learner writes checkpoints (learner 0 with a run directory)."""
        return self.layout is not None

    def due(self, step: int) -> bool:
        """True when a periodic checkpoint should start at ``step``."""
        return self.enabled and self.pending is None and self.schedule.due(step)

    def start(self, step: int, lead_files: Callable[[], LeadFiles]) -> PendingCheckpoint:
        """Starts the checkpoint at ``step``: the shards first, then the lead's files.

        Args:
          step: the learner step.
          lead_files: called once the shards were asked, for what the lead writes.

        Returns:
          The pending record.

        Raises:
          RuntimeError: without a layout, or while another checkpoint is pending.
        """
        if self.layout is None or self.pending is not None:
            raise RuntimeError(f"cannot start a checkpoint at step {step}: "
                               + ("none is written" if self.layout is None else
                                  f"the one at step {self.pending.step} is pending"))
        started = self.timer()
        try:
            path = self.layout.begin(step)
        except OSError as exc:  # the shards are not asked: it fails at once
            self.pending = PendingCheckpoint(step, self.layout.partial_path(step), frozenset(),
                                             f"its directory could not be made ({exc})",
                                             started)
            return self.pending
        self.ep.send_to_all("CONTROL", self.shard_ranks, timeout=60.0,
                            command=int(Command.CHECKPOINT), argument=step)
        failure = ""
        with long_phase():  # heartbeats keep flowing while the files are written
            files = lead_files()
            try:
                self.layout.write_learner(path, files.state, self.cfg, files.counters,
                                          step=step, job_spec=self.spec)
                self.digests[str(step)] = state_digest(files.state)
                self.layout.write_actors(path, files.actors)
            except OSError as exc:  # the shards still report before it ends
                failure = f"learner 0 could not write its files ({exc})"
        self.pending = PendingCheckpoint(step, path, frozenset(self.shard_ranks), failure,
                                         started)
        return self.pending

    def take_controls(self, controls: Sequence[Control]) -> None:
        """Applies the CHECKPOINT_DONEs among ``controls`` to the pending checkpoint."""
        for c in controls:
            if c.command == int(Command.CHECKPOINT_DONE) and self.pending is not None:
                self.pending = self.pending.done_by(c.source, c.argument)

    def progress(self) -> Optional[PendingCheckpoint]:
        """Commits the pending checkpoint once every shard reported.

        Returns:
          The checkpoint that just ended (``failed``: the previous one is kept),
          or None while shards are still writing or none is pending.
        """
        ck = self.pending
        if ck is None or ck.waiting:
            return None
        self.pending = None
        assert self.layout is not None  # start needs it
        if not ck.failed:
            try:
                info = self.layout.commit(ck.path, ck.step, len(self.shard_ranks),
                                          demo_tables=bool(self.cfg.replay.demo_files))
            except OSError as exc:
                ck = dataclasses.replace(ck, failure=f"its manifest could not be written ({exc})")
            else:
                self.committed.append(info.name)
                self.seconds.append(self.timer() - ck.started)
        if ck.failed:
            self.layout.discard(ck.path)
            self.failures.append(ck.step)
            kept = self.layout.checkpoints()
            print(f"r2d2-train: checkpoint at step {ck.step} failed: {ck.failure}; "
                  + (f"the previous checkpoint {os.path.basename(kept[-1])} is kept" if kept
                     else "there is no earlier checkpoint"),
                  file=sys.stderr, flush=True)
        self.schedule.mark(ck.step)
        return ck

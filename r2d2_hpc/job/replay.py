"""The replay-shard rank: a :class:`~r2d2_hpc.replay.shard.ReplayShard` in a message loop.

Each tick serves what arrived, in this order: STEP_CHUNKs from its actors
(steps, then the sequences over them), PRIORITY_UPDATEs from learners, then
SAMPLE_REQUESTs, which wait in a queue until the shard holds
``replay.min_fill_sequences`` sequences.

Rate limiting (``replay.samples_per_insert``, as Reverb's SampleToInsertRatio;
:class:`~r2d2_hpc.replay.rate_limit.RateLimiter`): sampling waits while the
learner would run ahead of the actors, and once the minimum fill is reached
the shard stops taking in STEP_CHUNKs while the actors would run ahead of the
learner (their bounded send pools fill and they wait, giving the CPU to the
learner). The shard's priority mass, count and max priority go to every
learner in SHARD_STATS whenever they changed (at most every
``STATS_INTERVAL_S``) and inside every SAMPLE_REPLY, which is what makes
cross-shard sampling exact (``r2d2_hpc.replay.sampling``).
"""
from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Deque, Dict, Optional, Sequence, Tuple

import numpy as np

from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.records import CheckpointInfo
from r2d2_hpc.checkpoint.restore import restore_shard
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.heartbeat import long_phase
from r2d2_hpc.comm.messages import Command, sample_reply_arrays
from r2d2_hpc.comm.topology import RoleInfo
from r2d2_hpc.config import Config
from r2d2_hpc.job.role import Role, poll_control, stop_requested
from r2d2_hpc.replay.layout import ShardSpec, shard_spec
from r2d2_hpc.replay.rate_limit import RateLimiter, SampleDecision
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.seeding import derive_seed
from r2d2_hpc.storage.digest import state_digest
from r2d2_hpc.types import JobSpec

#: Seconds between SHARD_STATS messages while something changes.
STATS_INTERVAL_S = 0.02


def replay_shard_spec(cfg: Config, spec: JobSpec, num_shards: int) -> ShardSpec:
    """The layout of each replay rank's shard: its 1/S share of the replay capacity
    (computed, not allocated: the memory check uses it too)."""
    r = cfg.replay
    return shard_spec(
        spec.frame_shape, capacity_observations=max(r.sequence_length, r.capacity_observations
                                                    // num_shards),
        capacity_sequences=max(cfg.learner.batch_size, r.capacity_sequences // num_shards),
        sequence_length=r.sequence_length, state_size=spec.state_size,
        obs_dtype=spec.obs_dtype, frame_stack=spec.frame_stack,
        priority_exponent=r.priority_exponent)


def make_shard(cfg: Config, spec: JobSpec, shard_index: int, num_shards: int) -> ReplayShard:
    """The shard of one replay rank (:func:`replay_shard_spec`), empty."""
    return ReplayShard.from_spec(replay_shard_spec(cfg, spec, num_shards),
                                 seed=derive_seed(cfg.seed, "replay", shard_index),
                                 shard_index=shard_index)


def restore_replay(cfg: Config, spec: JobSpec, info: RoleInfo,
                   resume: CheckpointInfo) -> ReplayShard:
    """This rank's shard from checkpoint ``resume``: exact when the shard count and
    layout are unchanged, else re-sharded by the actors' routing rule.

    The layout is always this run's (its config's capacities, which the memory
    check counted): a saved layout that disagrees in a field a restore cannot
    change is refused before anything is allocated from the file, and a
    changed capacity takes effect (re-sharded into it) instead of the saved one."""
    return restore_shard(resume, info.index, info.num_shards, num_envs=cfg.actor.num_envs,
                         spec=replay_shard_spec(cfg, spec, info.num_shards),
                         seed=derive_seed(cfg.seed, "replay", info.index))


class ReplayRank(Role):
    """Message loop of one replay shard (see the module docstring)."""

    name = "replay"

    def __init__(self, cfg: Config, spec: JobSpec, ep: Endpoint, info: RoleInfo,
                 shard: Optional[ReplayShard] = None, run_dir: Optional[str] = None,
                 resume: Optional[CheckpointInfo] = None) -> None:
        self.cfg, self.spec, self.ep, self.info = cfg, spec, ep, info
        self.run_dir = run_dir
        self.checkpoints_written = 0
        self.resume_digest = ""
        self.checkpoint_digests: Dict[str, str] = {}
        if shard is None and resume is not None:
            shard = restore_replay(cfg, spec, info, resume)
            self.resume_digest = state_digest(shard.state())
        self.shard = shard or make_shard(cfg, spec, info.index, info.num_shards)
        if self.shard.shard_index != info.index:
            raise ValueError(f"replay rank {info.index} was given shard "
                             f"{self.shard.shard_index}, whose keys name another owner")
        self.pending: Deque[Tuple[int, int, int]] = deque()  # (learner rank, request id, k)
        self.inserted_sequences = 0
        self.sampled_sequences = 0
        self.chunks_received = 0
        self.steps_received = 0
        self.priority_updates = 0
        self.priority_keys = 0
        self.stale_priority_keys = 0
        self.rate_limited = 0
        self.insert_waits = 0
        self._stats_dirty = True
        self._last_stats = 0.0
        self.min_fill = min(cfg.replay.min_fill_sequences, self.shard.spec.capacity_sequences)
        self.limiter = RateLimiter(
            cfg.replay.samples_per_insert, self.min_fill,
            slack=float(cfg.learner.batch_size * max(1, cfg.learner.samples_in_flight)))

    def listen_names(self) -> Sequence[str]:
        return ("STEP_CHUNK", "PRIORITY_UPDATE", "SAMPLE_REQUEST", "CONTROL")

    def _insert(self, f: Dict[str, np.ndarray]) -> None:
        sid, first_index = int(f["stream_id"]), int(f["first_step_index"])
        if len(f["action"]):
            self.shard.add_steps(sid, first_index, f["obs"], f["action"], f["reward"],
                                 f["discount"], f["first"])
            self.steps_received += len(f["action"])
        m = len(f["seq_start_step"])
        if m:
            keys = self.shard.add_sequences(sid, f["seq_start_step"], f["seq_length"],
                                            f["seq_state_h"], f["seq_state_c"],
                                            f["seq_prev_action"], f["seq_prev_reward"],
                                            f["seq_priority"])
            self.inserted_sequences += int(np.count_nonzero(keys >= 0))
        self.chunks_received += 1

    def may_insert(self) -> bool:
        """False while inserting would run ahead of the samples_per_insert ratio."""
        return self.limiter.may_insert(self.shard.count, self.inserted_sequences,
                                       self.sampled_sequences)

    def _may_sample(self, k: int) -> bool:
        """True when the limiter lets the shard serve ``k`` sequences now (counts waits)."""
        decision = self.limiter.sample_decision(k, self.shard.count,
                                                self.shard.stats().total_priority,
                                                self.inserted_sequences, self.sampled_sequences)
        if decision is SampleDecision.WAIT_RATE:
            self.rate_limited += 1
        return decision is SampleDecision.SAMPLE

    def tick(self) -> bool:
        if self.done:
            return False
        controls = poll_control(self.ep)
        for c in controls:
            if c.command == int(Command.CHECKPOINT):
                self.write_checkpoint(c.argument, c.source)
        if stop_requested(self, controls):
            return False
        worked = False
        if self.may_insert():
            for msg in self.ep.poll("STEP_CHUNK"):
                self._insert(msg.fields)
                worked = True
            self.ep.release("STEP_CHUNK")
        else:
            self.insert_waits += 1
        for msg in self.ep.poll("PRIORITY_UPDATE"):
            keys, prio = msg.fields["keys"], msg.fields["priorities"]
            misrouted = self.shard.misrouted_updates
            applied = self.shard.update_priorities(keys, prio)
            misrouted = self.shard.misrouted_updates - misrouted
            self.priority_updates += 1
            self.priority_keys += len(keys)
            self.stale_priority_keys += len(keys) - applied - misrouted
            worked = True
        self.ep.release("PRIORITY_UPDATE")
        for msg in self.ep.poll("SAMPLE_REQUEST"):
            self.pending.append((msg.source, int(msg.fields["request_id"]),
                                 int(msg.fields["num_sequences"])))
        self.ep.release("SAMPLE_REQUEST")
        while self.pending and self._may_sample(self.pending[0][2]):
            source, rid, k = self.pending.popleft()
            stats = self.shard.stats()
            batch = self.shard.sample(k)
            self.ep.send("SAMPLE_REPLY", source, timeout=300.0,
                         **sample_reply_arrays(rid, batch, stats.total_priority, stats.count,
                                               stats.max_priority))
            self.sampled_sequences += k
            worked = True
        if worked:
            self._stats_dirty = True
        now = time.monotonic()
        if self._stats_dirty and now - self._last_stats >= STATS_INTERVAL_S:
            self._send_stats()
            self._last_stats = now
        return worked

    def write_checkpoint(self, step: int, lead: int) -> None:
        """Writes this shard's part of checkpoint ``step``; tells the lead (-1 on failure)."""
        layout = CheckpointLayout(self.run_dir or ".", keep=self.cfg.checkpoint.keep)
        result = step
        try:
            with long_phase():  # a large replay takes a while: heartbeats keep flowing
                layout.write_shard(layout.partial_path(step), self.info.index, self.shard)
            # after the write: it records the snapshot's id in the shard's counters
            self.checkpoint_digests[str(step)] = state_digest(self.shard.state())
            self.checkpoints_written += 1
        except OSError as exc:  # e.g. disk full: the lead keeps the previous checkpoint
            sys.stderr.write(f"r2d2-train: replay shard {self.info.index}: checkpoint {step} "
                             f"failed: {exc}\n")
            result = -1
        self.ep.send("CONTROL", lead, timeout=60.0, command=int(Command.CHECKPOINT_DONE),
                     argument=result)

    def drain(self, ep: Endpoint) -> None:
        """Late chunks are still stored (nothing an actor sent is lost); the rest is dropped."""
        for msg in ep.poll("STEP_CHUNK"):
            self._insert(msg.fields)
        ep.release("STEP_CHUNK")
        for name in ("PRIORITY_UPDATE", "SAMPLE_REQUEST", "CONTROL"):
            ep.poll(name)
            ep.release(name)

    def _send_stats(self) -> None:
        st = self.shard.stats()
        sent_all = True
        for learner in self.info.learner_ranks:
            sent_all &= self.ep.try_send(
                "SHARD_STATS", learner, total_priority=st.total_priority, count=st.count,
                max_priority=st.max_priority, inserted_sequences=self.inserted_sequences,
                sampled_sequences=self.sampled_sequences,
                observations_stored=self.shard.num_steps)
        self._stats_dirty = not sent_all

    def summary(self) -> Dict[str, Any]:
        return {"inserted_sequences": self.inserted_sequences,
                "sampled_sequences": self.sampled_sequences,
                "chunks_received": self.chunks_received, "steps_received": self.steps_received,
                "stored_sequences": self.shard.count, "stored_observations": self.shard.num_steps,
                "capacity_observations": self.shard.spec.capacity_observations,
                "evicted_sequences": self.shard.num_evicted_sequences,
                "dropped_sequences": self.shard.num_dropped_sequences,
                "priority_updates": self.priority_updates,
                "priority_keys": self.priority_keys,
                "stale_priority_keys": self.stale_priority_keys,
                "misrouted_updates": self.shard.misrouted_updates,
                "rate_limited_samples": self.rate_limited, "insert_waits": self.insert_waits,
                "dropped_sequences": self.shard.num_dropped_sequences,
                "checkpoints_written": self.checkpoints_written,
                "checkpoint_digests": dict(self.checkpoint_digests),
                "resume_digest": self.resume_digest}

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

With demonstrations (R2D3, ``replay.demo_files``) the rank also owns a demo
table (``r2d2_hpc.replay.demo_table``): loaded from the files at a fresh start,
restored from the checkpoint on resume, never evicted. A SAMPLE_REQUEST says
how many of its sequences come from it (``num_demo``, the reply's last rows),
a PRIORITY_UPDATE's demo keys go to it (``replay.layout.is_demo_key``), and its
stats ride beside the shard's.
"""
from __future__ import annotations

import sys
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Tuple

import numpy as np

from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.records import CheckpointInfo
from r2d2_hpc.checkpoint.restore import restore_demo_table, restore_shard
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.heartbeat import long_phase
from r2d2_hpc.comm.messages import NO_TABLE, Command, sample_reply_arrays, stats_fields
from r2d2_hpc.comm.topology import RoleInfo
from r2d2_hpc.config import Config
from r2d2_hpc.job.role import Role, poll_control, stop_requested
from r2d2_hpc.replay.demo_table import (build_demo_table, concat_batches, demo_table_spec,
                                        episodes_for_shard)
from r2d2_hpc.replay.demos import DemoEpisodes, env_id, read_demos
from r2d2_hpc.replay.layout import ShardSpec, is_demo_key, shard_spec
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


def read_run_demos(cfg: Config, spec: JobSpec) -> List[DemoEpisodes]:
    """Every file of ``replay.demo_files``, checked against the run (``DemoFileError``
    names the file and the field)."""
    return [read_demos(path, env=env_id(cfg.env), frame_shape=spec.frame_shape,
                       obs_dtype=spec.obs_dtype, frame_stack=cfg.env.frame_stack,
                       num_actions=spec.num_actions) for path in cfg.replay.demo_files]


def _demo_layout(cfg: Config, spec: JobSpec) -> Dict[str, Any]:
    r = cfg.replay
    return dict(burn_in=r.burn_in, trace_length=r.trace_length,
                sequence_period=r.sequence_period, state_size=spec.state_size,
                frame_stack=spec.frame_stack, priority_exponent=r.priority_exponent)


def demo_table_bytes(cfg: Config, spec: JobSpec, demos: Sequence[DemoEpisodes]) -> int:
    """The largest demo table of any shard, in bytes (the memory check)."""
    s = cfg.topology.replay_shards
    return max(sum(demo_table_spec(episodes_for_shard(demos, i, s),
                                   **_demo_layout(cfg, spec)).storage_bytes().values())
               for i in range(s))


def make_demo_table(cfg: Config, spec: JobSpec, shard_index: int, num_shards: int,
                    demos: Optional[Sequence[DemoEpisodes]] = None) -> ReplayShard:
    """Replay rank ``shard_index``'s demo table, from ``demos`` or the run's files."""
    demos = read_run_demos(cfg, spec) if demos is None else demos
    return build_demo_table(episodes_for_shard(demos, shard_index, num_shards), shard_index,
                            seed=derive_seed(cfg.seed, "demo", shard_index),
                            **_demo_layout(cfg, spec))


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
                 resume: Optional[CheckpointInfo] = None,
                 demo_table: Optional[ReplayShard] = None) -> None:
        self.cfg, self.spec, self.ep, self.info = cfg, spec, ep, info
        self.run_dir = run_dir
        self.checkpoints_written = 0
        self.resume_digest = ""
        self.checkpoint_digests: Dict[str, str] = {}
        self.demo_checkpoint_digests: Dict[str, str] = {}
        if shard is None and resume is not None:
            shard = restore_replay(cfg, spec, info, resume)
            self.resume_digest = state_digest(shard.state())
        self.shard = shard or make_shard(cfg, spec, info.index, info.num_shards)
        if self.shard.shard_index != info.index:
            raise ValueError(f"replay rank {info.index} was given shard "
                             f"{self.shard.shard_index}, whose keys name another owner")
        self.demo: Optional[ReplayShard] = None
        self.demo_resume_digest = ""
        if cfg.replay.demo_files:
            self.demo = demo_table or self._demo_table(resume)
        self.demo_sampled = 0
        # (learner rank, request id, sequences, of which demo)
        self.pending: Deque[Tuple[int, int, int, int]] = deque()
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

    def _demo_table(self, resume: Optional[CheckpointInfo]) -> ReplayShard:
        """The demo table: the checkpoint's (priorities exact) when it has this
        shard's, else built from the files (priorities start at the max)."""
        info = self.info
        if resume is not None:
            table = restore_demo_table(resume, info.index, info.num_shards)
            if table is not None:
                self.demo_resume_digest = state_digest(table.state())
                return table
            sys.stderr.write(f"r2d2-train: replay shard {info.index}: checkpoint "
                             f"{resume.name} has no demo table for {info.num_shards} "
                             f"shard(s); loading replay.demo_files afresh\n")
        return make_demo_table(self.cfg, self.spec, info.index, info.num_shards)

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

    def _may_serve(self, k: int, num_demo: int) -> bool:
        """The limiter judges the agent rows; demo rows wait for nothing (the demo
        table is whole from the start, and a shard may hold no agent data yet)."""
        return k == num_demo or self._may_sample(k - num_demo)

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
            self._update_priorities(msg.fields["keys"], msg.fields["priorities"])
            worked = True
        self.ep.release("PRIORITY_UPDATE")
        for msg in self.ep.poll("SAMPLE_REQUEST"):
            f = msg.fields
            self.pending.append((msg.source, int(f["request_id"]), int(f["num_sequences"]),
                                 int(f["num_demo"])))
        self.ep.release("SAMPLE_REQUEST")
        while self.pending and self._may_serve(*self.pending[0][2:]):
            self._serve(*self.pending.popleft())
            worked = True
        if worked:
            self._stats_dirty = True
        now = time.monotonic()
        if self._stats_dirty and now - self._last_stats >= STATS_INTERVAL_S:
            self._send_stats()
            self._last_stats = now
        return worked

    def _update_priorities(self, keys: np.ndarray, prio: np.ndarray) -> None:
        """One PRIORITY_UPDATE: agent keys to the shard, demo keys to the demo table
        (without one, the shard counts them as misrouted)."""
        demo = is_demo_key(keys) if self.demo is not None else np.zeros(len(keys), bool)
        applied = misrouted = 0
        for table, rows in ((self.shard, ~demo), (self.demo, demo)):
            if table is None or not rows.any():
                continue
            before = table.misrouted_updates
            applied += table.update_priorities(keys[rows], prio[rows])
            misrouted += table.misrouted_updates - before
        self.priority_updates += 1
        self.priority_keys += len(keys)
        self.stale_priority_keys += len(keys) - applied - misrouted

    def _serve(self, source: int, rid: int, k: int, num_demo: int) -> None:
        """One SAMPLE_REPLY: ``k - num_demo`` agent rows, then ``num_demo`` demo rows."""
        stats = self.shard.stats()
        demo_stats = self.demo.stats() if self.demo is not None else NO_TABLE
        if num_demo and self.demo is None:
            raise RuntimeError(f"replay shard {self.info.index}: a learner asked for "
                               f"{num_demo} demonstrations but this shard has no demo table")
        parts = [self.shard.sample(k - num_demo)] if k > num_demo else []
        if num_demo:
            assert self.demo is not None
            parts.append(self.demo.sample(num_demo))
        batch = parts[0] if len(parts) == 1 else concat_batches(parts)
        self.ep.send("SAMPLE_REPLY", source, timeout=300.0,
                     **sample_reply_arrays(rid, batch, stats.total_priority, stats.count,
                                           stats.max_priority, num_demo, demo_stats))
        self.sampled_sequences += k - num_demo
        self.demo_sampled += num_demo

    def write_checkpoint(self, step: int, lead: int) -> None:
        """Writes this shard's part of checkpoint ``step``; tells the lead (-1 on failure)."""
        layout = CheckpointLayout(self.run_dir or ".", keep=self.cfg.checkpoint.keep)
        result = step
        try:
            with long_phase():  # a large replay takes a while: heartbeats keep flowing
                layout.write_shard(layout.partial_path(step), self.info.index, self.shard)
                if self.demo is not None:
                    layout.write_shard(layout.partial_path(step), self.info.index, self.demo,
                                       table="demo")
            # after the write: it records the snapshot's id in the shard's counters
            self.checkpoint_digests[str(step)] = state_digest(self.shard.state())
            if self.demo is not None:
                self.demo_checkpoint_digests[str(step)] = state_digest(self.demo.state())
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
        fields = stats_fields(self.shard.stats(),
                              self.demo.stats() if self.demo is not None else NO_TABLE)
        sent_all = True
        for learner in self.info.learner_ranks:
            sent_all &= self.ep.try_send(
                "SHARD_STATS", learner, inserted_sequences=self.inserted_sequences,
                sampled_sequences=self.sampled_sequences,
                observations_stored=self.shard.num_steps, **fields)
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
                "resume_digest": self.resume_digest, **self._demo_summary()}

    def _demo_summary(self) -> Dict[str, Any]:
        if self.demo is None:
            return {}
        st = self.demo.stats()
        return {"demo_sequences": st.count, "demo_observations": self.demo.num_steps,
                "demo_sampled_sequences": self.demo_sampled,
                "demo_evicted_sequences": self.demo.num_evicted_sequences,
                "demo_mean_priority": st.total_priority / st.count if st.count else None,
                "demo_digest": state_digest(self.demo.state()),
                "demo_checkpoint_digests": dict(self.demo_checkpoint_digests),
                "demo_resume_digest": self.demo_resume_digest}

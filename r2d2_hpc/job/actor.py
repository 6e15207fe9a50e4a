"""The actor rank: many environments stepped as a vector, one batched forward per step.

Each tick is one agent step of all ``actor.num_envs`` environments:

1. the policy picks actions for all envs at once (Ape-X epsilon per env, over
   the *global* env index, so every env of every actor rank has its own epsilon);
2. the vector env steps; the sequence adder cuts the streams into overlapping
   sequences (burn-in + trace, period, never across an episode start) with the
   stored LSTM state at each start and an initial priority from the actor's own
   Q-values (Ape-X);
3. completed chunks go to this actor's replay shard (always the same one, so
   steps shared by overlapping sequences travel once) through the bounded send
   pool; chunks that find no room wait in a small outbox and the actor does
   not step its envs until the outbox is empty (backpressure: memory never
   grows, and a rate-limited shard slows its actors down);
4. every ``actor.param_refresh_period`` env steps the newest published
   parameters are taken if any arrived (never blocking on the learner).
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence

import numpy as np

from r2d2_hpc.agent.adder import SequenceAdder, StreamChunk
from r2d2_hpc.agent.exploration import env_epsilons
from r2d2_hpc.agent.policy import ActorPolicy
from r2d2_hpc.checkpoint.records import CheckpointInfo
from r2d2_hpc.checkpoint.restore import read_actors
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.topology import RoleInfo
from r2d2_hpc.config import Config
from r2d2_hpc.envs.base import EpisodeStats
from r2d2_hpc.envs.factory import make_vector_env
from r2d2_hpc.job.role import Role, poll_control, stop_requested
from r2d2_hpc.replay.routing import stream_id
from r2d2_hpc.seeding import derive_seed
from r2d2_hpc.types import ActorState, JobSpec

#: Seconds between ACTOR_REPORT messages.
REPORT_INTERVAL_S = 1.0

#: The adder hands over its chunks every ``min(sequence_period, EMIT_PERIOD_MAX)``
#: steps: the initial priorities of all sequences completed meanwhile are then
#: one batched computation (a fixed cost per call that dominates with small
#: networks), at the price of at most that many steps of delay before the
#: shard has them. Measurements: docs/decisions.md, "Adder emit period".
EMIT_PERIOD_MAX = 16


class ActorRank(Role):
    """Acting loop of one actor rank (see the module docstring).

    Args:
      cfg: run config.
      spec: the job's shapes.
      ep: this rank's endpoint.
      info: this rank's role info (``info.index`` is the actor index).
      fail_after_steps: test hook: raise RuntimeError at this env step.
      resume: the checkpoint the job resumes from: actor ``a`` continues the
        counters of its row ``a`` (``load_state``), if the checkpoint has one;
        episodes in flight at the checkpoint are not kept, the envs restart.
    """

    name = "actor"

    def __init__(self, cfg: Config, spec: JobSpec, ep: Endpoint, info: RoleInfo,
                 fail_after_steps: int = 0, resume: Optional[CheckpointInfo] = None) -> None:
        self.cfg, self.spec, self.ep, self.info = cfg, spec, ep, info
        n = cfg.actor.num_envs
        self.index = info.index
        self.shard_rank = info.shard_rank(self.index)
        self.learner_rank = info.learner_ranks[0]
        first_env = self.index * n
        self.epsilons = env_epsilons(n * info.num_actors, cfg.actor.epsilon_base,
                                     cfg.actor.epsilon_alpha)[first_env:first_env + n]
        #: Seeds the env, the policy and its exploration (actor_bench reuses it).
        self.seed = seed = derive_seed(cfg.seed, "actor", self.index)
        self.env = make_vector_env(cfg.env, n, seed=seed)
        self.policy = ActorPolicy(cfg, spec.obs_shape, spec.num_actions, self.epsilons, seed)
        self.adder = SequenceAdder.from_config(
            cfg, n, stream_id_offset=stream_id(self.index, 0, n),
            emit_period=max(1, min(cfg.replay.sequence_period, EMIT_PERIOD_MAX)))
        self.episodes = EpisodeStats(n)
        self.obs = self.env.reset(seed=seed)
        self.first = np.ones(n, bool)
        self.env_steps = 0          # agent steps of this rank (all envs)
        self.episodes_finished = 0  # episodes of this rank's envs that ended
        self.ticks = 0
        self.chunks_sent = 0
        self.sequences_sent = 0
        self.steps_sent = 0
        self.param_updates = 0
        self.action_counts = np.zeros(spec.num_actions, np.int64)
        self._pending_returns: List[float] = []
        self._pending_lengths: List[int] = []
        self._pending_eps: List[float] = []
        self._last_report = time.monotonic()
        self._fail_after = fail_after_steps
        self.outbox: Deque[StreamChunk] = deque()
        self.backpressure_waits = 0
        self.have_params = False
        if resume is not None:
            rows = read_actors(resume)
            if self.index < len(rows):
                self.load_state(rows[self.index])

    def state(self) -> ActorState:
        """This actor's counters, the part of it a checkpoint keeps."""
        return ActorState(env_steps=int(self.env_steps), episodes=int(self.episodes_finished))

    def load_state(self, state: ActorState) -> None:
        """Continues the counters of ``state`` (what ``state()`` returned)."""
        if not isinstance(state, ActorState):
            raise TypeError(f"load_state takes an ActorState, got {type(state).__name__}")
        self.env_steps = int(state.env_steps)
        self.episodes_finished = int(state.episodes)

    def listen_names(self) -> Sequence[str]:
        return ("CONTROL",)

    # ------------------------------------------------------------------ loop
    def _refresh_params(self) -> None:
        update = self.ep.latest_params(self.learner_rank)
        if update is not None:
            self.policy.load_flat_params(np.array(update.params), int(update.version))
            self.param_updates += 1
            self.have_params = True

    def tick(self) -> bool:
        if self.done:
            return False
        if stop_requested(self, poll_control(self.ep)):
            return False
        if not self.have_params:  # act only with the learner's parameters
            self._refresh_params()
            if not self.have_params:
                return False
        if not self._flush_outbox():
            self.backpressure_waits += 1
            return False
        out = self.policy.act(self.obs, self.first)
        res = self.env.step(out.action)
        self.policy.observe(res.reward)
        terminated = np.asarray(res.terminated, bool)
        truncated = np.asarray(res.truncated, bool)
        discount = (~terminated).astype(np.float32)
        chunks = self.adder.add(self.obs, out.action, res.reward, discount, self.first,
                                out.state_h, out.state_c, out.q, out.prev_action,
                                out.prev_reward, last=terminated | truncated)
        self._send_chunks(chunks)
        finished = self.episodes.update(res.reward, terminated, truncated)
        self.episodes_finished += len(finished.env_index)
        if len(finished.env_index):
            self._pending_returns += finished.episode_return.tolist()
            self._pending_lengths += finished.episode_length.tolist()
            self._pending_eps += self.epsilons[finished.env_index].tolist()
        np.add.at(self.action_counts, out.action, 1)
        self.obs = res.obs
        self.first = terminated | truncated
        n = self.cfg.actor.num_envs
        before = self.env_steps
        self.env_steps += n
        self.ticks += 1
        if self.env_steps // self.cfg.actor.param_refresh_period != \
                before // self.cfg.actor.param_refresh_period:
            self._refresh_params()
        now = time.monotonic()
        if now - self._last_report >= REPORT_INTERVAL_S:
            self._report()
            self._last_report = now
        if self._fail_after and self.env_steps >= self._fail_after:
            raise RuntimeError(f"injected actor failure at env step {self.env_steps}")
        return True

    def _send_chunks(self, chunks: Sequence[StreamChunk]) -> None:
        self.outbox.extend(chunks)
        self._flush_outbox()

    def _flush_outbox(self) -> bool:
        """Sends queued chunks in order while there is room; True when all went."""
        while self.outbox:
            chunk = self.outbox[0]
            if not self.ep.try_send("STEP_CHUNK", self.shard_rank, **chunk.message_fields()):
                self.ep.progress()
                return False
            self.outbox.popleft()
            self.chunks_sent += 1
            self.sequences_sent += chunk.num_sequences
            self.steps_sent += chunk.num_steps
        return True

    def _report(self) -> None:
        limit = 256  # declare_messages holds at least 256 episodes per report
        returns = np.asarray(self._pending_returns[:limit], np.float64)
        sent = self.ep.try_send(
            "ACTOR_REPORT", self.learner_rank, env_steps=self.env_steps,
            params_version=self.policy.params_version, episode_return=returns,
            episode_length=np.asarray(self._pending_lengths[:limit], np.int64),
            episode_epsilon=np.asarray(self._pending_eps[:limit], np.float64),
            action_counts=self.action_counts)
        if sent:
            del self._pending_returns[:limit]
            del self._pending_lengths[:limit]
            del self._pending_eps[:limit]

    def finish(self) -> None:
        """Sends the last report (episodes in flight are not sent: see the docs)."""
        self._report()

    def summary(self) -> Dict[str, Any]:
        return {"env_steps": self.env_steps, "episodes": self.episodes_finished,
                "chunks_sent": self.chunks_sent,
                "sequences_sent": self.sequences_sent, "steps_sent": self.steps_sent,
                "param_updates": self.param_updates,
                "backpressure_waits": self.backpressure_waits,
                "unsent_chunks": len(self.outbox),
                "params_version": self.policy.params_version}

    def close(self) -> None:
        self.env.close()

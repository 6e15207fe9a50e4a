"""The learner rank: sampling across shards, the gradient step, priorities, parameters.

Each tick:

1. takes in SHARD_STATS (each shard's priority mass, count, max priority);
2. keeps ``learner.samples_in_flight`` global batch requests in flight: a
   request allocates the batch over the shards by a multinomial over their
   masses (``replay.sampling.allocate_batch``) and sends each shard a
   SAMPLE_REQUEST for its share, so the union is proportional prioritized
   sampling over all shards;
3. copies each share, as it arrives, to its rows of a reused batch buffer (the
   batch's one host copy: :class:`~r2d2_hpc.replay.assembly.BatchAssembler`);
   when every share of the oldest request arrived, computes
   the global probabilities (each reply carries its shard's mass at sampling
   time) and the importance weights with the global N, runs
   :meth:`~r2d2_hpc.agent.learner.Learner.step`, and sends the new priorities back
   to the shard that owns each key (the shard a key names,
   ``replay.layout.keys_by_shard``; not the key's position in the batch);
4. learner 0 publishes parameters every ``learner.publish_period`` steps,
   aggregates ACTOR_REPORTs, writes metrics and decides when the run's budget
   is spent; it then sends CONTROL STOP to every other rank.

Learner 0 also evaluates: every ``logging.eval_interval_steps`` learner steps
and, with ``logging.final_eval_episodes > 0``, once when the budget is spent
(before the STOP), it plays separate near-greedy episodes with the online
parameters (:class:`~r2d2_hpc.agent.evaluation.Evaluator`, whose docstring gives
the cost) and logs their mean as ``eval_return`` in a metrics row of its own.

With several learners (``topology.learners > 1``) each samples its own batch
and the gradients are averaged over the learners' sub-communicator before
every optimizer step (:mod:`r2d2_hpc.comm.allreduce`: MPI, torch.distributed or
Horovod, ``learner.allreduce``), so their parameters stay identical; learner 0's
state is broadcast at start and after a resume, and a stop flag rides in the
same allreduce so that all learners stop after the same step.
"""
from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from r2d2_hpc.agent.device import spread_device
from r2d2_hpc.agent.evaluation import EvalResult, Evaluator
from r2d2_hpc.agent.exploration import EPSILON_BUCKET_COLUMNS, env_epsilons, epsilon_buckets
from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.agent.losses import importance_weights
from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.preemption import EXIT_REQUEUE, CheckpointSchedule, signal_name
from r2d2_hpc.checkpoint.records import CheckpointInfo
from r2d2_hpc.checkpoint.restore import read_actors, read_learner
from r2d2_hpc.comm.allreduce import GradientAverager, encode_stop, make_averager
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.heartbeat import long_phase
from r2d2_hpc.comm.messages import Command, sequence_batch_of, shard_stats_of
from r2d2_hpc.comm.topology import RoleInfo, node_local_rank
from r2d2_hpc.config import Config
from r2d2_hpc.job.role import Control, Role, poll_control, stop_requested
from r2d2_hpc.replay.assembly import BatchAssembler
from r2d2_hpc.replay.layout import keys_by_shard
from r2d2_hpc.replay.sampling import (ShardStats, allocate_batch, global_count,
                                      global_probabilities)
from r2d2_hpc.seeding import EVALUATOR_FINAL, EVALUATOR_PERIODIC, derive_seed
from r2d2_hpc.storage.digest import replica_digest, state_digest
from r2d2_hpc.types import ActorState, JobSpec, SequenceBatch

class LearnerRank(Role):
    """Learning loop of one learner rank (see the module docstring).

    Args:
      cfg: run config.
      spec: the job's shapes.
      ep: this rank's endpoint.
      info: role info (``info.index == 0`` is the lead learner).
      learner_comm: the learners' sub-communicator when there are several.
      on_metrics: the lead calls it with each metrics row (run directory writer).
      clock: time source (tests).
    """

    name = "learner"

    def __init__(self, cfg: Config, spec: JobSpec, ep: Endpoint, info: RoleInfo,
                 learner_comm: Optional[Any] = None,
                 on_metrics: Optional[Callable[[Dict[str, float]], None]] = None,
                 clock: Callable[[], float] = time.monotonic,
                 run_dir: Optional[str] = None,
                 resume: Optional[CheckpointInfo] = None) -> None:
        self.cfg, self.spec, self.ep, self.info = cfg, spec, ep, info
        self.lead = info.index == 0
        self.averager: Optional[GradientAverager] = None
        several = learner_comm is not None and learner_comm.Get_size() > 1
        device = cfg.learner.device
        if several:  # node_local_rank is collective: every learner calls it
            device = spread_device(device, node_local_rank(learner_comm),
                                   torch.cuda.device_count())
        self.learner = Learner(cfg, spec.obs_shape, spec.num_actions, device=device)
        self.run_dir = run_dir
        self.env_steps_base = 0
        self.episodes_base = 0
        self.seconds_base = 0.0
        self.resumed_from: Optional[int] = None
        self.resume_digest = ""
        #: Each actor rank's counters as its ACTOR_REPORTs (and a resume) give them.
        self.actor_steps: Dict[int, int] = {}
        self.actor_episodes: Dict[int, int] = {}
        if resume is not None:
            self._restore(resume)
        if several:
            self._join_learners(learner_comm)
        self.on_metrics = on_metrics
        self.clock = clock
        self.rng = np.random.default_rng(derive_seed(cfg.seed, "learner", info.index))
        self.shard_ranks = list(info.replay_ranks)
        self.stats: List[ShardStats] = [ShardStats(0.0, 0, 0.0) for _ in self.shard_ranks]
        #: Priority keys sent to each shard (by shard index).
        self.priority_keys_sent = [0] * len(self.shard_ranks)
        self.shard_counters: Dict[int, Dict[str, int]] = {}
        self.requests: "OrderedDict[int, Dict[int, Optional[Dict[str, np.ndarray]]]]" = \
            OrderedDict()
        #: The batch's one host copy: replies go straight into reused (pinned) buffers.
        self.assembler = BatchAssembler(cfg.learner.batch_size, self.learner.host_array)
        self._next_request = 0
        self.actor_versions: Dict[int, int] = {}
        self.episode_returns: List[float] = []
        self.episode_lengths: List[int] = []
        self.episode_eps: List[float] = []
        #: Episodes of this run already aggregated into a metrics row.
        self.episodes_logged = 0
        #: Epsilon of every env of the job (Ape-X, over the global env index).
        self.all_epsilons = env_epsilons(cfg.actor.num_envs * max(1, len(info.actor_ranks)),
                                         cfg.actor.epsilon_base, cfg.actor.epsilon_alpha)
        g = cfg.logging
        self.evaluator: Optional[Evaluator] = None
        if self.lead and (g.eval_interval_steps > 0 or g.final_eval_episodes > 0):
            self.evaluator = self._evaluator()
        self.evaluations: List[EvalResult] = []
        self.final_eval: Optional[EvalResult] = None
        self._eval_row: Optional[EvalResult] = None
        self.priority_sum = 0.0
        self.priority_max = 0.0
        self.priority_n = 0
        self.losses: List[float] = []
        self.staleness: float = math.nan
        self.stop_reason = ""
        self.start_time = clock()
        self._last_log = self.start_time
        self._last_log_step = 0
        self._last_log_env = 0
        self._last_inserted = 0
        self._last_sampled = 0
        self.compute_seconds = 0.0
        ck = cfg.checkpoint
        #: The lead's checkpoints (None on other learners and without a run directory).
        self.layout: Optional[CheckpointLayout] = None
        self.schedule = CheckpointSchedule(ck)
        if self.lead and run_dir:
            self.layout = CheckpointLayout(run_dir, keep=ck.keep)
            self.schedule.mark(self.learner.step_count)
        self._ckpt: Optional[Dict[str, Any]] = None
        self._finish_after_checkpoint = False
        self._preempt_signal = ""
        self.checkpoints_committed: List[str] = []
        #: learner step -> digest of the learner state written (tests: bit-exact resume)
        self.checkpoint_digests: Dict[str, str] = {}
        self.checkpoint_seconds: List[float] = []
        self.stop_time = math.nan
        if self.lead:
            self._publish()

    def _join_learners(self, learner_comm: Any) -> None:
        """Several learners: gradient averaging over ``learner_comm`` and learner 0's state."""
        self.averager = make_averager(self.cfg.learner.allreduce, learner_comm,
                                      self.learner.device)
        self.learner.grad_reducer = self.averager
        # Identical replicas: everyone takes learner 0's whole state (initial
        # parameters, or after a resume parameters, target, Adam, counters).
        self.averager.broadcast_learner(self.learner)
        if self.lead:
            print(f"r2d2-train: gradient allreduce over {learner_comm.Get_size()} "
                  f"learners: {self.averager.description} (learner.allreduce="
                  f"{self.cfg.learner.allreduce})", flush=True)

    def _evaluator(self, episodes: Optional[int] = None) -> Evaluator:
        """The lead's evaluator (``logging.eval_episodes``), or one playing ``episodes``."""
        if episodes is None:
            return Evaluator(self.cfg, self.spec.obs_shape, self.spec.num_actions,
                             seed=derive_seed(self.cfg.seed, "evaluator", EVALUATOR_PERIODIC))
        return Evaluator(self.cfg, self.spec.obs_shape, self.spec.num_actions,
                         seed=derive_seed(self.cfg.seed, "evaluator", EVALUATOR_FINAL),
                         episodes=episodes)

    def listen_names(self) -> Sequence[str]:
        return ("SHARD_STATS", "SAMPLE_REPLY", "ACTOR_REPORT", "CONTROL")

    def close(self) -> None:
        """Frees the gradient averager (torch process group, Horovod)."""
        if self.averager is not None:
            self.averager.close()
            self.averager = None

    # ---------------------------------------------------------------- helpers
    @property
    def env_steps(self) -> int:
        """Agent steps of the whole run (before a resume plus reported since)."""
        return self.env_steps_base + int(sum(self.actor_steps.values()))

    def _publish(self) -> None:
        if self.info.actor_ranks:
            self.ep.publish_params(self.learner.params_version, self.learner.step_count,
                                   self.learner.flat_params(), self.info.actor_ranks)

    def _take_messages(self) -> None:
        for msg in self.ep.poll("SHARD_STATS"):
            s = self.shard_ranks.index(msg.source)
            f = msg.fields
            self.stats[s] = shard_stats_of(f)
            self.shard_counters[msg.source] = {
                "inserted": int(f["inserted_sequences"]), "sampled": int(f["sampled_sequences"]),
                "observations": int(f["observations_stored"])}
        self.ep.release("SHARD_STATS")
        for msg in self.ep.poll("SAMPLE_REPLY"):
            rid = int(msg.fields["request_id"])
            parts = self.requests.get(rid)
            if parts is None or msg.source not in parts:
                raise RuntimeError(f"learner {self.info.index}: unexpected SAMPLE_REPLY "
                                   f"{rid} from rank {msg.source}")
            self.assembler.add(rid, msg.source, sequence_batch_of(msg.fields))
            parts[msg.source] = {k: np.array(v) for k, v in msg.fields.items()
                                 if k not in SequenceBatch._fields}  # the scalars
        self.ep.release("SAMPLE_REPLY")
        if self.lead:
            for msg in self.ep.poll("ACTOR_REPORT"):
                f = msg.fields
                self.actor_steps[msg.source] = int(f["env_steps"])
                self.actor_episodes[msg.source] = (self.actor_episodes.get(msg.source, 0)
                                                   + len(f["episode_return"]))
                self.actor_versions[msg.source] = int(f["params_version"])
                self.episode_returns += f["episode_return"].tolist()
                self.episode_lengths += f["episode_length"].tolist()
                self.episode_eps += f["episode_epsilon"].tolist()
            self.ep.release("ACTOR_REPORT")

    def _request(self) -> None:
        alloc = allocate_batch(self.stats, self.cfg.learner.batch_size, self.rng)
        rid = self._next_request
        self._next_request += 1
        plan = [(self.shard_ranks[s], int(k)) for s, k in enumerate(alloc) if k > 0]
        self.assembler.expect(rid, plan)  # the batch's rows, in this order
        parts: Dict[int, Optional[Dict[str, np.ndarray]]] = {}
        for rank, k in plan:
            parts[rank] = None
            self.ep.send("SAMPLE_REQUEST", rank, timeout=60.0, request_id=rid,
                         num_sequences=k)
        self.requests[rid] = parts

    def _ready_batch(self) -> Optional[Tuple[SequenceBatch, np.ndarray]]:
        if not self.requests:
            return None
        rid, parts = next(iter(self.requests.items()))
        if any(v is None for v in parts.values()):
            return None
        del self.requests[rid]
        ranks = list(parts)
        replies = [parts[r] for r in ranks]
        batch = self.assembler.take(rid)
        # Each reply carries its shard's stats at sampling time; the other
        # shards' masses are the latest reported.
        stats = list(self.stats)
        shard_ids = []
        for r, rep in zip(ranks, replies):
            s = self.shard_ranks.index(r)
            stats[s] = shard_stats_of(rep)
            shard_ids += [s] * int(rep["num_sequences"])
        probs = global_probabilities(batch.probs, np.asarray(shard_ids, np.int64), stats)
        n_items = max(1, global_count(stats))
        weights = importance_weights(probs, n_items,
                                     self.cfg.replay.importance_sampling_exponent)
        return batch, np.asarray(weights, np.float32)

    # ------------------------------------------------------------------ loop
    def tick(self) -> bool:
        if self.done:
            return False
        controls = poll_control(self.ep)
        if not self.lead:
            if self.averager is None and stop_requested(self, controls):
                return False
        else:
            self._lead_controls(controls)
        if self._ckpt is not None:  # no learner step while a checkpoint is written
            self._take_messages()
            self._progress_checkpoint()
            return False
        if self._preempt_signal and not self.stop_reason:
            self.request_stop(f"preempted by {self._preempt_signal}",
                              exit_code=EXIT_REQUEUE)
            if self.done or self._ckpt is not None:
                return False
        self._take_messages()
        while (len(self.requests) < self.cfg.learner.samples_in_flight
               and any(s.total_priority > 0 for s in self.stats)):
            self._request()
        ready = self._ready_batch()
        if ready is None:
            if self.lead:
                self._maybe_log()
                self._check_budget(before_step=True)
            return False
        batch, weights = ready
        if self.averager is not None:
            # The stop rides in this step's allreduce; a step budget that this
            # step spends is known in advance, so all learners end exactly on it.
            max_steps = self.cfg.learner.max_steps
            last = self.lead and bool(max_steps) and self.learner.step_count + 1 >= max_steps
            self.averager.want_stop = encode_stop(
                self.exit_code if (self.stop_reason or last) else None)
        t0 = time.perf_counter()
        result = self.learner.step(batch, weights)
        self.compute_seconds += time.perf_counter() - t0
        self._send_priorities(batch.keys, result.priorities)
        self.losses.append(result.loss)
        self.priority_sum += float(result.priorities.sum())
        self.priority_n += len(result.priorities)
        self.priority_max = max(self.priority_max, float(result.priorities.max()))
        step = self.learner.step_count
        period = self.cfg.learner.staleness_period
        if self.lead and period and step % period == 0:
            self.staleness = float(self.learner.q_staleness(batch))
        if self.lead and step % self.cfg.learner.publish_period == 0:
            self._publish()
        interval = self.cfg.logging.eval_interval_steps
        if self.lead and interval and step % interval == 0:
            self.evaluate()
        if self.lead:
            self._maybe_log()
            self._check_budget()
            if (not self.done and self._ckpt is None and self.layout is not None
                    and self.schedule.due(step)):
                self._start_checkpoint()
        if self.averager is not None and self.averager.stop:
            self.exit_code = self.averager.stop_code
            self._finish()
        return True

    def _send_priorities(self, keys: np.ndarray, priorities: np.ndarray) -> None:
        """One PRIORITY_UPDATE per shard, holding the keys that name it."""
        for s, mine in keys_by_shard(keys).items():
            if s >= len(self.shard_ranks):
                raise RuntimeError(f"learner {self.info.index}: a sampled key names shard {s} "
                                   f"but the job has {len(self.shard_ranks)}")
            self.ep.send("PRIORITY_UPDATE", self.shard_ranks[s], timeout=60.0,
                         keys=keys[mine], priorities=priorities[mine])
            self.priority_keys_sent[s] += int(mine.size)

    def _check_budget(self, before_step: bool = False) -> None:
        if self.stop_reason:
            # With several learners the stop rides in the next step's Allreduce.
            if self.averager is None:
                self._finish()
            return
        l, a = self.cfg.learner, self.cfg.actor
        if l.max_steps and self.learner.step_count >= l.max_steps:
            self.stop_reason = f"learner.max_steps={l.max_steps} reached"
        elif a.max_env_steps and self.env_steps >= a.max_env_steps:
            self.stop_reason = f"actor.max_env_steps={a.max_env_steps} reached"
        elif l.max_seconds and self.train_seconds >= l.max_seconds:
            self.stop_reason = f"learner.max_seconds={l.max_seconds:g} reached"
        elif (l.target_return is not None and self.evaluations
              and self.evaluations[-1].mean_return >= l.target_return):
            self.stop_reason = (f"learner.target_return={l.target_return:g} reached (greedy "
                                f"evaluation mean {self.evaluations[-1].mean_return:g})")
        if self.stop_reason and self.averager is None:
            self._finish()

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """Stops the run after the current step (signals, tests)."""
        if not self.stop_reason:
            self.stop_reason = reason
            self.exit_code = exit_code
        if self.averager is None:
            self._finish()

    def on_preempt(self, signum: int) -> None:
        """A signal reached learner 0 itself (others send it CONTROL PREEMPT)."""
        if self.lead:
            self._preempt_signal = self._preempt_signal or signal_name(signum)
        else:
            super().on_preempt(signum)

    # ------------------------------------------------------------ checkpoints
    def _lead_controls(self, controls: Sequence[Control]) -> None:
        for c in controls:
            if c.command == int(Command.PREEMPT):
                self._preempt_signal = self._preempt_signal or signal_name(c.argument)
            elif c.command == int(Command.CHECKPOINT_DONE) and self._ckpt is not None:
                self._ckpt["pending"].discard(c.source)
                if c.argument != self._ckpt["step"]:
                    self._ckpt["failed"] = True

    def counters(self) -> Dict[str, Any]:
        """The job's counters as a checkpoint records them."""
        frames = self.cfg.env.frame_skip if self.cfg.env.name == "atari" else 1
        return {"env_steps": self.env_steps, "env_frames": self.env_steps * frames,
                "learner_step": self.learner.step_count,
                "episodes": self.episodes, "train_seconds": self.train_seconds}

    @property
    def episodes(self) -> int:
        """Episodes the actors finished in this run and the runs it resumed."""
        return self.episodes_base + self.episodes_logged + len(self.episode_returns)

    @property
    def train_seconds(self) -> float:
        """Seconds of training in this run and the runs it resumed."""
        return self.seconds_base + (self.clock() - self.start_time)

    def _start_checkpoint(self) -> None:
        """Lead: learner and actor files now, shards asked to write theirs."""
        step = self.learner.step_count
        t0 = time.monotonic()
        path = self.layout.begin(step)
        self.ep.send_to_all("CONTROL", self.shard_ranks, timeout=60.0,
                            command=int(Command.CHECKPOINT), argument=step)
        state = self.learner.state()
        self.layout.write_learner(path, state, self.cfg, self.counters(), step=step,
                                  job_spec=self.spec)
        self.checkpoint_digests[str(step)] = state_digest(state)
        self.layout.write_actors(path, self.actor_states())
        self._ckpt = {"step": step, "path": path, "pending": set(self.shard_ranks),
                      "failed": False, "t0": t0}

    def _progress_checkpoint(self) -> None:
        ck = self._ckpt
        if ck is None or ck["pending"]:
            return
        self._ckpt = None
        if ck["failed"]:
            print(f"r2d2-train: checkpoint at step {ck['step']} failed on a replay shard; "
                  f"the previous checkpoint is kept", file=sys.stderr, flush=True)
        else:
            info = self.layout.commit(ck["path"], ck["step"], len(self.shard_ranks))
            self.checkpoints_committed.append(info.name)
            self.checkpoint_seconds.append(time.monotonic() - ck["t0"])
        self.schedule.mark(ck["step"])
        if self._finish_after_checkpoint:
            self._complete_finish()

    def actor_states(self) -> List[ActorState]:
        """Each actor's ``ActorState`` (``ActorRank.state()``) as last reported, in actor order."""
        return [ActorState(env_steps=int(self.actor_steps.get(r, 0)),
                           episodes=int(self.actor_episodes.get(r, 0)))
                for r in self.info.actor_ranks]

    def _restore(self, resume: CheckpointInfo) -> None:
        ck = read_learner(resume)
        self.learner.load_state(ck.state)
        # Actor a continues from row a (ActorRank.load_state); the steps of rows
        # without an actor in this job stay in the base.
        rows = read_actors(resume)[:len(self.info.actor_ranks)]
        for rank, row in zip(self.info.actor_ranks, rows):
            self.actor_steps[rank], self.actor_episodes[rank] = row.env_steps, row.episodes
        self.env_steps_base = int(ck.counters.get("env_steps", 0)) - \
            sum(r.env_steps for r in rows)
        self.episodes_base = int(ck.counters.get("episodes", 0))
        self.seconds_base = float(ck.counters.get("train_seconds", 0.0))
        self.resumed_from = int(ck.step)
        self.resume_digest = state_digest(self.learner.state())

    def evaluate(self, episodes: Optional[int] = None, log: bool = True) -> EvalResult:
        """Greedy evaluation of the current online parameters (lead learner).

        Args:
          episodes: episodes to play; default ``logging.eval_episodes``.
          log: write a metrics row with its ``eval_return`` right away.

        Returns:
          The ``EvalResult`` (also kept in ``evaluations``).
        """
        if self.evaluator is None:
            self.evaluator = self._evaluator()
        ev = self.evaluator
        if episodes is not None and episodes != ev.episodes:
            ev = self._evaluator(episodes)
        with long_phase():  # minutes on Atari: heartbeats keep flowing
            result = ev.evaluate(self.learner.flat_params(), self.learner.params_version)
        self.evaluations.append(result)
        self._eval_row = result
        if log:
            self._maybe_log(force=True)
        return result

    def _finish(self) -> None:
        if self.done or self._finish_after_checkpoint:
            return
        ck = self.cfg.checkpoint
        preempted = self.exit_code == EXIT_REQUEUE
        if self.lead and self.layout is not None and \
                ((preempted and ck.on_signal) or (not preempted and ck.at_end)):
            # One coordinated checkpoint, then the STOP (with the exit code).
            self._finish_after_checkpoint = True
            if self._ckpt is None:
                self._start_checkpoint()
            return
        self._complete_finish()

    def _complete_finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.stop_time = time.time()
        if self.lead:
            self._publish()
            if self.cfg.logging.final_eval_episodes > 0:
                # Before the STOP: the other ranks keep waiting (rate limited)
                # rather than time out in the shutdown barrier.
                self.final_eval = self.evaluate(self.cfg.logging.final_eval_episodes,
                                                log=False)
            self._maybe_log(force=True)
            others = [r for r in range(self.ep.size) if r != self.ep.rank
                      and r not in self.info.learner_ranks]
            self.ep.send_to_all("CONTROL", others, timeout=30.0, command=int(Command.STOP),
                                argument=self.exit_code)

    # --------------------------------------------------------------- metrics
    def metrics_row(self) -> Dict[str, float]:
        now = self.clock()
        dt = max(1e-9, now - self._last_log)
        step = self.learner.step_count
        env = self.env_steps
        inserted = sum(c["inserted"] for c in self.shard_counters.values())
        sampled = sum(c["sampled"] for c in self.shard_counters.values())
        versions = list(self.actor_versions.values())
        row = {
            "learner_step": float(step),
            "env_steps": float(env),
            "wall_time_s": now - self.start_time,
            "updates_per_s": (step - self._last_log_step) / dt,
            "env_steps_per_s": (env - self._last_log_env) / dt,
            "loss": float(np.mean(self.losses)) if self.losses else math.nan,
            "episode_return": float(np.mean(self.episode_returns)) if self.episode_returns
            else math.nan,
            "episode_length": float(np.mean(self.episode_lengths)) if self.episode_lengths
            else math.nan,
            "episodes": float(self.episodes_logged + len(self.episode_returns)),
            "replay_sequences": float(sum(s.count for s in self.stats)),
            "replay_observations": float(sum(c["observations"]
                                             for c in self.shard_counters.values())),
            "insert_per_s": (inserted - self._last_inserted) / dt,
            "sample_per_s": (sampled - self._last_sampled) / dt,
            "param_lag": float(self.learner.params_version - np.mean(versions)) if versions
            else math.nan,
            "mean_priority": self.priority_sum / self.priority_n if self.priority_n
            else math.nan,
            "max_priority": self.priority_max if self.priority_n else math.nan,
            "delta_q": self.staleness,
            "eval_return": self._eval_row.mean_return if self._eval_row is not None
            else math.nan,
            "eval_episode_length": float(np.mean(self._eval_row.lengths))
            if self._eval_row is not None else math.nan,
        }
        if self.episode_returns:
            buckets = epsilon_buckets(np.asarray(self.episode_eps), self.all_epsilons)
            returns = np.asarray(self.episode_returns, np.float64)
            for b, name in enumerate(EPSILON_BUCKET_COLUMNS):
                sel = returns[buckets == b]
                row[name] = float(sel.mean()) if sel.size else math.nan
        else:
            row.update({name: math.nan for name in EPSILON_BUCKET_COLUMNS})
        self._eval_row = None
        self._last_log, self._last_log_step, self._last_log_env = now, step, env
        self._last_inserted, self._last_sampled = inserted, sampled
        self.episodes_logged += len(self.episode_returns)
        self.episode_returns, self.episode_lengths, self.losses = [], [], []
        self.episode_eps = []
        self.priority_sum, self.priority_n, self.priority_max = 0.0, 0, 0.0
        return row

    def _maybe_log(self, force: bool = False) -> None:
        if not force and self.clock() - self._last_log < self.cfg.logging.log_interval_seconds:
            return
        row = self.metrics_row()
        if self.on_metrics is not None:
            self.on_metrics(row)

    def summary(self) -> Dict[str, Any]:
        return {"learner_step": self.learner.step_count, "env_steps": self.env_steps,
                "train_seconds": self.train_seconds, "stop_reason": self.stop_reason, "stop_time": self.stop_time,
                "exit_code": self.exit_code, "resumed_from": self.resumed_from,
                "resume_digest": self.resume_digest,
                "checkpoints": list(self.checkpoints_committed),
                "checkpoint_seconds": list(self.checkpoint_seconds),
                "checkpoint_digests": dict(self.checkpoint_digests),
                "episodes": self.episodes,
                "compute_seconds": self.compute_seconds,
                "params_version": self.learner.params_version,
                "priority_keys_sent": list(self.priority_keys_sent),
                "allreduce_seconds": self.averager.seconds if self.averager else 0.0,
                "allreduce_backend": self.averager.backend if self.averager else "",
                "params_digest": replica_digest(self.learner.state()),
                **self._eval_summary()}

    def _eval_summary(self) -> Dict[str, Any]:
        """Evaluation figures for summary.json (lead learner)."""
        if not self.lead:
            return {}
        out: Dict[str, Any] = {
            "evaluations": len(self.evaluations),
            "eval_seconds": float(sum(e.seconds for e in self.evaluations)),
            "eval_env_steps": int(sum(e.env_steps for e in self.evaluations)),
            "last_eval_return": (self.evaluations[-1].mean_return if self.evaluations
                                 else None),
        }
        fe = self.final_eval
        if fe is not None:
            out.update(final_eval_return=fe.mean_return,
                       final_eval_returns=fe.returns.tolist(),
                       final_eval_episodes=int(fe.returns.size),
                       final_eval_epsilon=self.cfg.logging.eval_epsilon,
                       final_eval_params_version=fe.params_version)
        return out

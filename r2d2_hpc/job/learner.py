"""The learner rank: a thin loop over the parts that sample, learn, count, checkpoint and stop.

Each tick:

1. takes in CONTROL (learner 0: preemption, CHECKPOINT_DONE), SHARD_STATS and
   SAMPLE_REPLYs, and learner 0 the ACTOR_REPORTs;
2. keeps ``learner.samples_in_flight`` global batch requests in flight and,
   when the oldest request's shares all arrived, takes its batch with the
   global probabilities and importance weights
   (:class:`~r2d2_hpc.job.sampler.ShardedSampler`: exact proportional sampling
   over every shard, the batch's one host copy);
3. runs :meth:`~r2d2_hpc.agent.learner.Learner.step` and sends the new
   priorities back to the shard that owns each key (the shard a key names,
   ``replay.layout.keys_by_shard``; not the key's position in the batch);
4. learner 0 publishes parameters every ``learner.publish_period`` steps,
   counts and writes metrics rows (:class:`~r2d2_hpc.job.learner_metrics.LearnerMetrics`),
   checkpoints on schedule (:class:`~r2d2_hpc.job.checkpoint_coordinator.CheckpointCoordinator`;
   no learner step while one is written) and decides when the run's budget is
   spent or a preemption stops it (:class:`~r2d2_hpc.job.stop.StopController`);
   it then sends CONTROL STOP, with the exit code, to every other rank. A
   periodic checkpoint that fails is reported and the run goes on; when the
   checkpoint a stop asked for fails, every rank exits with
   :data:`~r2d2_hpc.checkpoint.preemption.EXIT_CHECKPOINT_FAILED` (4).

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

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from r2d2_hpc.agent.device import spread_device
from r2d2_hpc.agent.evaluation import EvalResult, Evaluator
from r2d2_hpc.agent.exploration import env_epsilons
from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.records import CheckpointInfo
from r2d2_hpc.checkpoint.preemption import EXIT_CHECKPOINT_FAILED
from r2d2_hpc.checkpoint.restore import read_actors, read_learner
from r2d2_hpc.comm.allreduce import GradientAverager, make_averager
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.heartbeat import long_phase
from r2d2_hpc.comm.messages import Command
from r2d2_hpc.comm.topology import RoleInfo, node_local_rank
from r2d2_hpc.config import Config
from r2d2_hpc.job.checkpoint_coordinator import CheckpointCoordinator, LeadFiles
from r2d2_hpc.job.learner_metrics import LearnerMetrics
from r2d2_hpc.job.metrics import launch_epoch
from r2d2_hpc.job.role import Role, poll_control, stop_requested
from r2d2_hpc.job.sampler import ReadyBatch, ShardedSampler
from r2d2_hpc.job.stop import StopController
from r2d2_hpc.seeding import EVALUATOR_FINAL, EVALUATOR_PERIODIC, derive_seed
from r2d2_hpc.storage.digest import replica_digest, state_digest
from r2d2_hpc.types import ActorState, JobSpec


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
      run_dir: the run directory (the lead checkpoints into it); None: no checkpoints.
      resume: the checkpoint to continue from.

    Attributes:
      learner: the algorithm (:class:`~r2d2_hpc.agent.learner.Learner`).
      sampler: batches over the shards, priorities back.
      metrics: counters and metrics rows (kept by every learner, logged by the lead).
      stop: when and why the run stops, and its exit code.
      checkpoints: the lead's checkpoint protocol (writes nothing elsewhere).
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
        self.on_metrics = on_metrics
        self.resumed_from: Optional[int] = None
        self.resume_digest = ""
        restored = self._restore(resume) if resume is not None else None
        if several:
            self._join_learners(learner_comm)
        self.sampler = ShardedSampler(
            ep, info.replay_ranks, cfg.learner.batch_size, cfg.learner.samples_in_flight,
            cfg.replay.importance_sampling_exponent,
            np.random.default_rng(derive_seed(cfg.seed, "learner", info.index)),
            allocate=self.learner.host_array, name=f"learner {info.index}",
            demo_ratio=cfg.replay.demo_ratio)
        g = cfg.logging
        self.evaluator: Optional[Evaluator] = None
        if self.lead and (g.eval_interval_steps > 0 or g.final_eval_episodes > 0):
            self.evaluator = self._evaluator()
        self.metrics = self._make_metrics(clock)
        if restored is not None:
            self.metrics.resume(*restored, actor_ranks=info.actor_ranks)
        self.stop = StopController(cfg.learner, cfg.actor, cfg.checkpoint)
        layout = (CheckpointLayout(run_dir, keep=cfg.checkpoint.keep)
                  if self.lead and run_dir else None)
        self.checkpoints = CheckpointCoordinator(ep, info.replay_ranks, cfg, spec, layout,
                                                 step=self.learner.step_count)
        self.compute_seconds = 0.0
        if self.lead:
            self._publish()

    def _make_metrics(self, clock: Callable[[], float]) -> LearnerMetrics:
        """The counters and rows; its clock starts now (training time counts from here)."""
        cfg = self.cfg
        # Epsilon of every env of the job (Ape-X, over the global env index).
        all_epsilons = env_epsilons(cfg.actor.num_envs * max(1, len(self.info.actor_ranks)),
                                    cfg.actor.epsilon_base, cfg.actor.epsilon_alpha)
        frames = cfg.env.frame_skip if cfg.env.name == "atari" else 1
        return LearnerMetrics(all_epsilons, frames_per_step=frames,
                              log_interval_seconds=cfg.logging.log_interval_seconds,
                              clock=clock, launch_time=launch_epoch(),
                              replay_capacity=cfg.replay.capacity_observations)

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

    def _restore(self, resume: CheckpointInfo) -> Tuple[Mapping[str, Any], List[ActorState]]:
        """Loads the learner state of ``resume``; returns its counters and actor rows."""
        ck = read_learner(resume)
        self.learner.load_state(ck.state)
        self.resumed_from = int(ck.step)
        self.resume_digest = state_digest(self.learner.state())
        return ck.counters, read_actors(resume)

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

    # ------------------------------------------------------------ the facts
    @property  # type: ignore[override]
    def exit_code(self) -> int:
        """Every rank's exit code (the stop controller's)."""
        return self.stop.exit_code

    @exit_code.setter
    def exit_code(self, code: int) -> None:
        self.stop.exit_code = int(code)

    @property
    def env_steps(self) -> int:
        """Agent steps of the whole run (before a resume plus reported since)."""
        return self.metrics.env_steps

    def counters(self) -> Dict[str, Any]:
        """The job's counters as a checkpoint records them."""
        return self.metrics.counters(self.learner.step_count)

    def actor_states(self) -> List[ActorState]:
        """Each actor's ``ActorState`` (``ActorRank.state()``) as last reported, in actor order."""
        return self.metrics.actor_states(self.info.actor_ranks)

    # ------------------------------------------------------------------ loop
    def tick(self) -> bool:
        if self.done:
            return False
        controls = poll_control(self.ep)
        if not self.lead:
            if self.averager is None and stop_requested(self, controls):
                return False
        else:
            self.stop.take_controls(controls)
            self.checkpoints.take_controls(controls)
        if self.checkpoints.pending is not None:  # no learner step while one is written
            self._receive()
            ended = self.checkpoints.progress()
            if ended is not None and self.stop.final_checkpoint:
                if ended.failed:
                    self.exit_code = EXIT_CHECKPOINT_FAILED  # not requeued (module docstring)
                self._complete_finish()
            return False
        if self.stop.take_preemption():
            self._stop_unless_allreduce()
            if self.done or self.checkpoints.pending is not None:
                return False
        self._receive()
        self.sampler.fill()
        ready = self.sampler.ready()
        if ready is None:
            if self.lead:
                self._maybe_log()
                self._check_budget()
            return False
        self._learn(ready)
        if self.lead:
            self._lead_after_step(ready)
        if self.averager is not None and self.averager.stop:
            self.exit_code = self.averager.stop_code
            self._finish()
        return True

    def _receive(self) -> None:
        """What the shards (and, to the lead, the actors) sent."""
        self.sampler.receive()
        if self.lead:
            self.metrics.take_reports(self.ep)

    def _learn(self, ready: ReadyBatch) -> None:
        """One learner step on ``ready``; its priorities go back to their shards."""
        if self.averager is not None:
            # The stop rides in this step's allreduce.
            self.averager.want_stop = self.stop.allreduce_flag(self.learner.step_count,
                                                               self.lead)
        t0 = time.perf_counter()
        result = self.learner.step(ready.batch, ready.weights)
        self.compute_seconds += time.perf_counter() - t0
        self.sampler.send_priorities(ready.batch.keys, result.priorities)
        self.metrics.add_step(result.loss, result.priorities, ready.is_demo)

    def _lead_after_step(self, ready: ReadyBatch) -> None:
        """Learner 0 after a step: staleness, parameters, evaluation, metrics, budget,
        periodic checkpoint."""
        step = self.learner.step_count
        period = self.cfg.learner.staleness_period
        if period and step % period == 0:
            self.metrics.staleness = float(self.learner.q_staleness(ready.batch))
        if step % self.cfg.learner.publish_period == 0:
            self._publish()
        interval = self.cfg.logging.eval_interval_steps
        if interval and step % interval == 0:
            self.evaluate()
        self._maybe_log()
        self._check_budget()
        if not self.done and self.checkpoints.due(step):
            self._start_checkpoint()

    def _publish(self) -> None:
        if self.info.actor_ranks:
            self.ep.publish_params(self.learner.params_version, self.learner.step_count,
                                   self.learner.flat_params(), self.info.actor_ranks)

    # ------------------------------------------------------------------ stop
    def _check_budget(self) -> None:
        """Learner 0: stops once a budget is spent (with several learners, via the allreduce)."""
        self.stop.check_budgets(self.learner.step_count, self.metrics.env_steps,
                                self.metrics.train_seconds, self.metrics.last_eval_return)
        if self.stop.reason:
            self._stop_unless_allreduce()

    def _stop_unless_allreduce(self) -> None:
        """Finishes now; with several learners the stop rides in the next step's allreduce."""
        if self.averager is None:
            self._finish()

    def request_stop(self, reason: str, exit_code: int = 0) -> None:
        """Stops the run after the current step (signals, tests)."""
        self.stop.request(reason, exit_code)
        self._stop_unless_allreduce()

    def on_preempt(self, signum: int) -> None:
        """A signal reached learner 0 itself (others send it CONTROL PREEMPT)."""
        if self.lead:
            self.stop.on_signal(signum)
        else:
            super().on_preempt(signum)

    def _finish(self) -> None:
        """Stops: first the checkpoint the stop asks for (the STOP waits for it), if any."""
        if self.done or self.stop.final_checkpoint:
            return
        if self.checkpoints.enabled and self.stop.wants_checkpoint():
            self.stop.final_checkpoint = True
            if self.checkpoints.pending is None:
                self._start_checkpoint()
            return
        self._complete_finish()

    def _complete_finish(self) -> None:
        if self.done:
            return
        self.done = True
        self.stop.mark_stopped()
        if self.lead:
            self._publish()
            if self.cfg.logging.final_eval_episodes > 0:
                # Before the STOP: the other ranks keep waiting (rate limited)
                # rather than time out in the shutdown barrier.
                self.evaluate(self.cfg.logging.final_eval_episodes, log=False, final=True)
            self._maybe_log(force=True)
            others = [r for r in range(self.ep.size) if r != self.ep.rank
                      and r not in self.info.learner_ranks]
            self.ep.send_to_all("CONTROL", others, timeout=30.0, command=int(Command.STOP),
                                argument=self.exit_code)

    # ----------------------------------------------------- checkpoints, eval
    def _start_checkpoint(self) -> None:
        """Lead: the shards asked to write theirs, learner and actor files now."""
        self.checkpoints.start(self.learner.step_count, self._lead_files)

    def _lead_files(self) -> LeadFiles:
        return LeadFiles(self.learner.state(), self.counters(), self.actor_states())

    def evaluate(self, episodes: Optional[int] = None, log: bool = True,
                 final: bool = False) -> EvalResult:
        """Greedy evaluation of the current online parameters (lead learner).

        Args:
          episodes: episodes to play; default ``logging.eval_episodes``.
          log: write a metrics row with its ``eval_return`` right away.
          final: the end-of-run evaluation (its own columns, not in ``evaluations``).

        Returns:
          The ``EvalResult`` (also kept in ``metrics.evaluations`` or ``metrics.final_eval``).
        """
        if self.evaluator is None:
            self.evaluator = self._evaluator()
        ev = self.evaluator
        if episodes is not None and episodes != ev.episodes:
            ev = self._evaluator(episodes)
        with long_phase():  # minutes on Atari: heartbeats keep flowing
            result = ev.evaluate(self.learner.flat_params(), self.learner.params_version)
        self.metrics.add_evaluation(result, final=final)
        if log:
            self._maybe_log(force=True)
        return result

    # --------------------------------------------------------------- metrics
    def metrics_row(self) -> Dict[str, float]:
        """The metrics row of the interval since the last one (see ``LearnerMetrics.row``)."""
        return self.metrics.row(self.learner.step_count, self.learner.params_version,
                                self.sampler.stats, self.sampler.counters)

    def _maybe_log(self, force: bool = False) -> None:
        if not self.metrics.log_due(force, self.learner.step_count):
            return
        row = self.metrics_row()
        if self.on_metrics is not None:
            self.on_metrics(row)

    def summary(self) -> Dict[str, Any]:
        ck = self.checkpoints
        out = {"learner_step": self.learner.step_count, "env_steps": self.env_steps,
               "train_seconds": self.metrics.train_seconds, "stop_reason": self.stop.reason,
               # the run's one clock: seconds since the job's launch (as metrics.csv)
               "launch_time": self.metrics.launch_time,
               "wall_time_s": self.metrics.wall_clock() - self.metrics.launch_time,
               "stop_time": self.stop.stop_time,
               "exit_code": self.exit_code, "resumed_from": self.resumed_from,
               "resume_digest": self.resume_digest,
               "checkpoints": list(ck.committed),
               "checkpoint_seconds": list(ck.seconds),
               "checkpoint_failures": list(ck.failures),
               "checkpoint_digests": dict(ck.digests),
               "episodes": self.metrics.episodes,
               "compute_seconds": self.compute_seconds,
               "params_version": self.learner.params_version,
               "priority_keys_sent": list(self.sampler.priority_keys_sent),
               "rows_sampled": self.sampler.rows_sampled,
               "demo_rows_sampled": self.sampler.demo_rows_sampled,
               "allreduce_seconds": self.averager.seconds if self.averager else 0.0,
               "allreduce_backend": self.averager.backend if self.averager else "",
               "params_digest": replica_digest(self.learner.state())}
        if self.lead:
            out.update(self.metrics.eval_summary(self.cfg.logging.eval_epsilon))
        return out

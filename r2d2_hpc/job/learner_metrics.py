"""Learner 0's view of the run: actor reports, the run's counters and the metrics rows.

:class:`LearnerMetrics` owns what the lead learner counts and averages between
two metrics rows, and nothing it does touches the learner or the shards:

* ACTOR_REPORTs (:meth:`LearnerMetrics.take_reports`): each actor's running
  env step and episode counts and its parameter version, and the finished
  episodes' returns, lengths and epsilons;
* the run's counters (env steps, episodes, training seconds), which continue
  those of the checkpoint a run resumed from (:meth:`LearnerMetrics.resume`);
* per learner step: the loss and the new priorities; every
  ``learner.staleness_period`` steps the Q staleness; every evaluation.

:meth:`LearnerMetrics.row` turns them into one metrics row (the columns of
``metrics.csv``; rates are over the time since the previous row) and starts
the next interval. The shards' counts come in as arguments: the sampler owns
the latest SHARD_STATS.
"""
from __future__ import annotations

import collections
import math
import time
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from r2d2_hpc.agent.evaluation import EvalResult
from r2d2_hpc.agent.exploration import EPSILON_BUCKET_COLUMNS, epsilon_buckets
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.job.sampler import ShardCounters
from r2d2_hpc.replay.sampling import ShardStats
from r2d2_hpc.types import ActorState

__all__ = ["LearnerMetrics", "ENV_RATE_WINDOW_S"]

#: Seconds of actor reports over which ``env_steps_per_s`` is measured (reports
#: arrive in bursts; a window smooths them).
ENV_RATE_WINDOW_S = 30.0


class LearnerMetrics:
    """The lead learner's counters and metrics rows (see the module docstring).

    Attributes:
      actor_steps: each actor rank's env steps (its reports, or a resume).
      actor_episodes: each actor rank's finished episodes.
      actor_versions: each actor rank's parameter version at its last report.
      evaluations: every evaluation of this run.
      final_eval: the evaluation at the end of the run, if one was played.
      staleness: the latest Q staleness (``delta_q``), NaN until measured.
    """

    def __init__(self, all_epsilons: np.ndarray, frames_per_step: int = 1,
                 log_interval_seconds: float = 0.0,
                 clock: Callable[[], float] = time.monotonic,
                 launch_time: Optional[float] = None,
                 wall_clock: Callable[[], float] = time.time,
                 replay_capacity: int = 0) -> None:
        """Args:
          all_epsilons: the Ape-X epsilon of every env of the job (the return buckets).
          frames_per_step: env frames per agent step (Atari's frame skip).
          log_interval_seconds: seconds between rows that :meth:`log_due` asks for.
          clock: time source of rates and training time (tests).
          launch_time: the job's launch (epoch seconds): ``wall_time_s`` counts from it,
            the one clock of progress lines, metrics.csv, TensorBoard and summary.json
            (default: now).
          wall_clock: epoch time source (tests).
          replay_capacity: observations the shards hold in all (``replay_fill``).
        """
        self.all_epsilons = np.asarray(all_epsilons)
        self.frames_per_step = int(frames_per_step)
        self.log_interval_seconds = float(log_interval_seconds)
        self.clock = clock
        self.env_steps_base = 0
        self.episodes_base = 0
        self.seconds_base = 0.0
        self.actor_steps: Dict[int, int] = {}
        self.actor_episodes: Dict[int, int] = {}
        self.actor_versions: Dict[int, int] = {}
        self.episode_returns: List[float] = []
        self.episode_lengths: List[int] = []
        self.episode_eps: List[float] = []
        #: Episodes of this run already aggregated into a metrics row.
        self.episodes_logged = 0
        self.evaluations: List[EvalResult] = []
        self.final_eval: Optional[EvalResult] = None
        self._eval_row: Optional[EvalResult] = None
        self.losses: List[float] = []
        self.priority_sum = 0.0
        self.priority_max = 0.0
        self.priority_n = 0
        #: R2D3: the interval's demo rows and their new priorities' sum.
        self.batch_rows = 0
        self.demo_rows = 0
        self.demo_priority_sum = 0.0
        self.staleness = math.nan
        self.wall_clock = wall_clock
        self.launch_time = wall_clock() if launch_time is None else float(launch_time)
        self.replay_capacity = int(replay_capacity)
        self._final_row: Optional[EvalResult] = None
        self._env_window: Deque[Tuple[float, int]] = collections.deque()
        self._rows = 0
        self.start_time = clock()
        self._last_log = self.start_time
        self._last_log_step = 0
        self._last_log_env = 0
        self._last_inserted = 0
        self._last_sampled = 0

    # ------------------------------------------------------------ counters
    def resume(self, counters: Mapping[str, Any], actors: Sequence[ActorState],
               actor_ranks: Sequence[int]) -> None:
        """Continues the counters of a checkpoint.

        Args:
          counters: the checkpoint's counters (:meth:`counters` of the run that wrote it).
          actors: its actor rows; actor rank ``actor_ranks[a]`` continues row ``a``,
            the steps of rows without an actor in this job stay in the base.
          actor_ranks: this job's actor ranks.
        """
        rows = list(actors)[:len(actor_ranks)]
        for rank, row in zip(actor_ranks, rows):
            self.actor_steps[rank], self.actor_episodes[rank] = row.env_steps, row.episodes
        self.env_steps_base = int(counters.get("env_steps", 0)) - sum(r.env_steps for r in rows)
        self.episodes_base = int(counters.get("episodes", 0))
        self.seconds_base = float(counters.get("train_seconds", 0.0))
        # the first row's updates/s counts from the checkpoint's step, not from 0
        self._last_log_step = int(counters.get("learner_step", 0))

    @property
    def env_steps(self) -> int:
        """Agent steps of the whole run (before a resume plus reported since)."""
        return self.env_steps_base + int(sum(self.actor_steps.values()))

    @property
    def episodes(self) -> int:
        """Episodes the actors finished in this run and the runs it resumed."""
        return self.episodes_base + self.episodes_logged + len(self.episode_returns)

    @property
    def train_seconds(self) -> float:
        """Seconds of training in this run and the runs it resumed."""
        return self.seconds_base + (self.clock() - self.start_time)

    def counters(self, learner_step: int) -> Dict[str, Any]:
        """The job's counters as a checkpoint records them."""
        return {"env_steps": self.env_steps,
                "env_frames": self.env_steps * self.frames_per_step,
                "learner_step": learner_step,
                "episodes": self.episodes, "train_seconds": self.train_seconds}

    def actor_states(self, actor_ranks: Sequence[int]) -> List[ActorState]:
        """Each actor's ``ActorState`` as last reported, in ``actor_ranks`` order."""
        return [ActorState(env_steps=int(self.actor_steps.get(r, 0)),
                           episodes=int(self.actor_episodes.get(r, 0)))
                for r in actor_ranks]

    # ------------------------------------------------------------- inputs
    def take_reports(self, ep: Endpoint) -> int:
        """Takes in the ACTOR_REPORTs that arrived; returns how many."""
        received = ep.poll("ACTOR_REPORT")
        for msg in received:
            f = msg.fields
            self.add_report(msg.source, int(f["env_steps"]), int(f["params_version"]),
                            f["episode_return"], f["episode_length"], f["episode_epsilon"])
        ep.release("ACTOR_REPORT")
        return len(received)

    def add_report(self, source: int, env_steps: int, params_version: int,
                   returns: np.ndarray, lengths: np.ndarray, epsilons: np.ndarray) -> None:
        """One actor's report: running counts and the episodes finished since its last."""
        self.actor_steps[source] = int(env_steps)
        self._note_env(self.clock())
        self.actor_episodes[source] = self.actor_episodes.get(source, 0) + len(returns)
        self.actor_versions[source] = int(params_version)
        self.episode_returns += np.asarray(returns).tolist()
        self.episode_lengths += np.asarray(lengths).tolist()
        self.episode_eps += np.asarray(epsilons).tolist()

    def add_step(self, loss: float, priorities: np.ndarray,
                 is_demo: Optional[np.ndarray] = None) -> None:
        """One learner step's loss and new priorities (``is_demo``: rows from the
        demonstration tables, kept apart from the agent's in the priority columns)."""
        self.losses.append(loss)
        priorities = np.asarray(priorities)
        demo = (np.zeros(len(priorities), bool) if is_demo is None
                else np.asarray(is_demo, bool))
        self.demo_rows += int(demo.sum())
        self.demo_priority_sum += float(priorities[demo].sum())
        self.batch_rows += int(priorities.size)
        agent = priorities[~demo]
        if agent.size:
            self.priority_sum += float(agent.sum())
            self.priority_n += int(agent.size)
            self.priority_max = max(self.priority_max, float(agent.max()))

    def add_evaluation(self, result: EvalResult, final: bool = False) -> None:
        """An evaluation, shown in the next row: a periodic one (kept in
        ``evaluations``, the ``eval_return`` columns) or the final one (its own
        ``final_eval_return`` columns)."""
        if final:
            self.final_eval = self._final_row = result
        else:
            self.evaluations.append(result)
            self._eval_row = result

    def _note_env(self, now: float) -> None:
        """Keeps (time, env steps) samples of the last :data:`ENV_RATE_WINDOW_S`."""
        window = self._env_window
        window.append((now, self.env_steps))
        while len(window) > 2 and now - window[1][0] >= ENV_RATE_WINDOW_S:
            window.popleft()

    def env_rate(self, now: float) -> float:
        """Env steps per second over the window of reports (NaN until the window
        spans a second)."""
        self._note_env(now)
        (t0, e0), (t1, e1) = self._env_window[0], self._env_window[-1]
        return (e1 - e0) / (t1 - t0) if t1 - t0 >= 1.0 else math.nan

    @property
    def last_eval_return(self) -> Optional[float]:
        """The latest evaluation's mean return, None before the first."""
        return self.evaluations[-1].mean_return if self.evaluations else None

    # -------------------------------------------------------------- output
    def log_due(self, force: bool = False, learner_step: Optional[int] = None) -> bool:
        """True when a row is due (``log_interval_seconds`` since the last one) or
        forced; a forced row that would repeat the last one's learner step with
        no evaluation to show is not due (no two unmarked rows at one step)."""
        if force:
            return not (self._rows and learner_step == self._last_log_step
                        and self._eval_row is None and self._final_row is None)
        return self.clock() - self._last_log >= self.log_interval_seconds

    def row(self, learner_step: int, params_version: int, shard_stats: Sequence[ShardStats],
            shard_counters: Sequence[ShardCounters]) -> Dict[str, float]:
        """The metrics row of the interval since the last one, which starts the next.

        Args:
          learner_step: the learner's step count.
          params_version: the learner's parameter version.
          shard_stats: each shard's latest stats.
          shard_counters: each shard's latest counters.

        Returns:
          Column -> value (NaN where the interval had nothing to average).
        """
        now = self.clock()
        dt = max(1e-9, now - self._last_log)
        env = self.env_steps
        inserted = sum(c.inserted_sequences for c in shard_counters)
        sampled = sum(c.sampled_sequences for c in shard_counters)
        versions = list(self.actor_versions.values())
        ev, final = self._eval_row, self._final_row
        stored = sum(c.observations_stored for c in shard_counters)
        row = {
            "learner_step": float(learner_step),
            "env_steps": float(env),
            "wall_time_s": self.wall_clock() - self.launch_time,
            "train_seconds": self.train_seconds,
            "updates_per_s": (learner_step - self._last_log_step) / dt,
            "env_steps_per_s": self.env_rate(now),
            "loss": _mean(self.losses),
            "episode_return": _mean(self.episode_returns),
            "episode_length": _mean(self.episode_lengths),
            "episodes": float(self.episodes_logged + len(self.episode_returns)),
            "replay_sequences": float(sum(s.count for s in shard_stats)),
            "replay_observations": float(stored),
            "replay_fill": stored / self.replay_capacity if self.replay_capacity else math.nan,
            "insert_per_s": (inserted - self._last_inserted) / dt,
            "sample_per_s": (sampled - self._last_sampled) / dt,
            "param_lag": float(params_version - np.mean(versions)) if versions else math.nan,
            "mean_priority": self.priority_sum / self.priority_n if self.priority_n
            else math.nan,
            "max_priority": self.priority_max if self.priority_n else math.nan,
            "demo_fraction": self.demo_rows / self.batch_rows if self.batch_rows else math.nan,
            "demo_mean_priority": self.demo_priority_sum / self.demo_rows if self.demo_rows
            else math.nan,
            "delta_q": self.staleness,
            "eval_return": ev.mean_return if ev is not None else math.nan,
            "eval_return_std": float(np.std(ev.returns)) if ev is not None else math.nan,
            "eval_episode_length": float(np.mean(ev.lengths)) if ev is not None else math.nan,
            "final_eval_return": final.mean_return if final is not None else math.nan,
            "final_eval_return_std": float(np.std(final.returns)) if final is not None
            else math.nan,
        }
        row.update(self._bucket_returns())
        self._eval_row = self._final_row = None
        self._rows += 1
        self._last_log, self._last_log_step, self._last_log_env = now, learner_step, env
        self._last_inserted, self._last_sampled = inserted, sampled
        self.episodes_logged += len(self.episode_returns)
        self.episode_returns, self.episode_lengths, self.losses = [], [], []
        self.episode_eps = []
        self.priority_sum, self.priority_n, self.priority_max = 0.0, 0, 0.0
        self.batch_rows, self.demo_rows, self.demo_priority_sum = 0, 0, 0.0
        return row

    def _bucket_returns(self) -> Dict[str, float]:
        """Mean return of the interval's episodes in each epsilon bucket (NaN if none)."""
        if not self.episode_returns:
            return {name: math.nan for name in EPSILON_BUCKET_COLUMNS}
        buckets = epsilon_buckets(np.asarray(self.episode_eps), self.all_epsilons)
        returns = np.asarray(self.episode_returns, np.float64)
        out = {}
        for b, name in enumerate(EPSILON_BUCKET_COLUMNS):
            sel = returns[buckets == b]
            out[name] = float(sel.mean()) if sel.size else math.nan
        return out

    def eval_summary(self, eval_epsilon: float) -> Dict[str, Any]:
        """Evaluation figures for summary.json.

        Args:
          eval_epsilon: the epsilon the final evaluation played with.
        """
        out: Dict[str, Any] = {
            "evaluations": len(self.evaluations),
            "eval_seconds": float(sum(e.seconds for e in self.evaluations)),
            "eval_env_steps": int(sum(e.env_steps for e in self.evaluations)),
            "last_eval_return": self.last_eval_return,
        }
        fe = self.final_eval
        if fe is not None:
            out.update(final_eval_return=fe.mean_return,
                       final_eval_returns=fe.returns.tolist(),
                       final_eval_episodes=int(fe.returns.size),
                       final_eval_epsilon=eval_epsilon,
                       final_eval_params_version=fe.params_version)
        return out


def _mean(values: Sequence[float]) -> float:
    """``float(np.mean(values))``, NaN for none."""
    return float(np.mean(values)) if len(values) else math.nan

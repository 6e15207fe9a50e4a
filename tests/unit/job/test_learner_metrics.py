"""The lead learner's metrics: actor reports, the run's counters, a resume, and the metrics
row's columns and values by hand (a fake clock, nothing else running)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from r2d2_hpc.agent.evaluation import EvalResult
from r2d2_hpc.comm.memory_endpoint import InMemoryHub
from r2d2_hpc.comm.messages import declare_messages
from r2d2_hpc.job.learner_metrics import LearnerMetrics
from r2d2_hpc.job.sampler import ShardCounters
from r2d2_hpc.replay.sampling import ShardStats
from r2d2_hpc.types import ActorState
from tests.helpers.fakes import NUM_ACTIONS, OBS_SHAPE, tiny_config

#: The columns of metrics.csv, in order (what the run directory's readers expect).
COLUMNS = ["learner_step", "env_steps", "wall_time_s", "train_seconds", "updates_per_s",
           "env_steps_per_s", "loss", "episode_return", "episode_length", "episodes",
           "replay_sequences", "replay_observations", "replay_fill", "insert_per_s",
           "sample_per_s", "param_lag", "mean_priority", "max_priority", "demo_fraction",
           "demo_mean_priority", "delta_q", "eval_return", "eval_return_std", "eval_episode_length", "final_eval_return",
           "final_eval_return_std", "return_eps_low", "return_eps_mid", "return_eps_high"]

#: Six envs: the greediest third has epsilons .01 .02, the middle .1 .2, the rest .3 .4.
ALL_EPS = np.array([0.4, 0.3, 0.2, 0.1, 0.02, 0.01])


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _metrics(clock: Clock, frames: int = 1) -> LearnerMetrics:
    """Launched 3 s before the metrics started; 1,000 observations of replay."""
    return LearnerMetrics(ALL_EPS, frames_per_step=frames, log_interval_seconds=5.0,
                          clock=clock, launch_time=clock.t - 3.0, wall_clock=clock,
                          replay_capacity=1000)


def _eval(mean: float, lengths=(10, 30)) -> EvalResult:
    return EvalResult(mean, np.array([mean, mean]), np.asarray(lengths), int(sum(lengths)),
                      1.5, 7)


def test_actor_reports_arrive_over_the_endpoint():
    cfg = tiny_config()
    hub = InMemoryHub(declare_messages(cfg, OBS_SHAPE, np.float32, 8, 4, NUM_ACTIONS), 3)
    lead, actor = hub.endpoint(0), hub.endpoint(2)
    for steps, n in ((40, 2), (90, 1)):
        ret = np.array([3.0, 5.0][:n])
        actor.send("ACTOR_REPORT", 0, env_steps=steps, params_version=4, episode_return=ret,
                   episode_length=np.full(n, 7), episode_epsilon=np.full(n, 0.01),
                   action_counts=np.zeros(NUM_ACTIONS, np.int64))
    m = _metrics(Clock())
    assert m.take_reports(lead) == 2
    assert m.actor_steps == {2: 90} and m.actor_episodes == {2: 3}
    assert m.actor_versions == {2: 4} and m.episode_returns == [3.0, 5.0, 3.0]
    assert m.env_steps == 90 and m.episodes == 3
    assert m.actor_states([2, 3]) == [ActorState(90, 3), ActorState(0, 0)]


def test_metrics_row_by_hand():
    clock = Clock()
    m = _metrics(clock)
    m.add_report(3, 100, 8, np.array([1.0, 4.0]), np.array([10, 20]), np.array([0.01, 0.4]))
    clock.t += 2.0  # env steps/s over the window of reports: 160 steps in 4 s
    m.add_report(4, 60, 6, np.array([7.0]), np.array([30]), np.array([0.02]))
    clock.t -= 2.0
    m.add_step(2.0, np.array([0.5, 1.5]))
    m.add_step(4.0, np.array([3.0]))
    m.staleness = 0.25
    clock.t += 4.0
    assert not m.log_due() and m.log_due(force=True)
    stats = [ShardStats(2.0, 30, 1.0), ShardStats(1.0, 12, 1.0)]
    counters = [ShardCounters(40, 20, 300), ShardCounters(10, 4, 100)]
    row = m.row(learner_step=8, params_version=10, shard_stats=stats, shard_counters=counters)
    assert list(row) == COLUMNS
    nan = [c for c in COLUMNS if math.isnan(row[c])]
    assert nan == ["demo_mean_priority", "eval_return", "eval_return_std",
                   "eval_episode_length", "final_eval_return", "final_eval_return_std",
                   "return_eps_mid"]
    expected = {
        "learner_step": 8, "env_steps": 160, "wall_time_s": 7.0, "train_seconds": 4.0,
        "updates_per_s": 2.0,
        # the window of reports: 100 steps at t, 160 at t+2, still 160 at the row (t+4)
        "env_steps_per_s": (160 - 100) / 4,
        "loss": 3.0, "episode_return": 4.0, "episode_length": 20.0,
        "episodes": 3, "replay_sequences": 42, "replay_observations": 400, "replay_fill": 0.4,
        "insert_per_s": 12.5, "sample_per_s": 6.0,
        "param_lag": 3.0,                    # 10 - mean(8, 6)
        "mean_priority": 5.0 / 3, "max_priority": 3.0, "demo_fraction": 0.0,
        "delta_q": 0.25,
        "return_eps_low": 4.0,               # episodes of eps .01 and .02: returns 1, 7
        "return_eps_high": 4.0,              # eps .4: return 4
    }
    assert {k: row[k] for k in expected} == pytest.approx(expected)


def test_the_next_row_starts_a_new_interval():
    clock = Clock()
    m = _metrics(clock)
    m.add_report(3, 100, 8, np.array([1.0]), np.array([10]), np.array([0.4]))
    m.add_step(2.0, np.array([0.5]))
    counters = [ShardCounters(40, 20, 300)]
    clock.t += 2.0
    m.row(4, 4, [ShardStats(1.0, 3, 1.0)], counters)
    m.add_report(3, 150, 8, np.array([]), np.array([]), np.array([]))
    clock.t += 5.0
    assert m.log_due()
    row = m.row(6, 6, [ShardStats(1.0, 3, 1.0)], [ShardCounters(50, 30, 300)])
    assert row["updates_per_s"] == pytest.approx(2 / 5)
    # env steps/s: over the window of reports (30 s), not the interval
    assert row["env_steps_per_s"] == pytest.approx((150 - 100) / 7)
    assert row["insert_per_s"] == 2.0 and row["sample_per_s"] == 2.0
    for col in ("loss", "episode_return", "episode_length", "mean_priority", "max_priority",
                "return_eps_low", "return_eps_high"):
        assert math.isnan(row[col]), col
    assert row["episodes"] == 1.0 and m.episodes == 1  # counted once, in the first row


def test_an_evaluation_shows_in_the_next_row_only():
    clock = Clock()
    m = _metrics(clock)
    assert m.last_eval_return is None
    m.add_evaluation(_eval(12.0))
    row = m.row(1, 1, [], [])
    assert row["eval_return"] == 12.0 and row["eval_episode_length"] == 20.0
    assert math.isnan(m.row(1, 1, [], [])["eval_return"])
    m.add_evaluation(_eval(15.0))
    m.final_eval = _eval(16.0)
    assert m.last_eval_return == 15.0
    assert m.eval_summary(0.001) == {
        "evaluations": 2, "eval_seconds": 3.0, "eval_env_steps": 80, "last_eval_return": 15.0,
        "final_eval_return": 16.0, "final_eval_returns": [16.0, 16.0],
        "final_eval_episodes": 2, "final_eval_epsilon": 0.001,
        "final_eval_params_version": 7}


def test_a_resumed_run_continues_the_checkpoints_counters():
    clock = Clock()
    m = _metrics(clock, frames=4)
    counters = {"env_steps": 500, "episodes": 9, "train_seconds": 30.0}
    # the checkpoint had three actors, this job has two: row 2's steps stay in the base
    rows = [ActorState(200, 4), ActorState(100, 3), ActorState(150, 2)]
    m.resume(counters, rows, actor_ranks=[5, 6])
    assert m.actor_states([5, 6]) == rows[:2]
    assert m.env_steps == 500 and m.episodes == 9
    clock.t += 2.5
    assert m.train_seconds == 32.5
    m.add_report(5, 210, 1, np.array([1.0]), np.array([10]), np.array([0.4]))
    assert m.counters(learner_step=77) == {"env_steps": 510, "env_frames": 2040,
                                           "learner_step": 77, "episodes": 10,
                                           "train_seconds": 32.5}


def test_a_resumed_runs_first_row_counts_updates_from_the_checkpoints_step():
    """Resumed at learner step 4,648: 30 steps in 30 s is 1 update/s, not 155."""
    clock = Clock()
    m = _metrics(clock)
    m.resume({"env_steps": 0, "episodes": 0, "train_seconds": 0.0, "learner_step": 4648},
             [], actor_ranks=[])
    clock.t += 30.0
    row = m.row(4678, 1, [], [ShardCounters(0, 0, 0)])
    assert row["updates_per_s"] == pytest.approx(1.0)


def test_env_rate_is_a_moving_window_over_bursts():
    """Reports in bursts: the rate over the last 30 s, not over one row's interval,
    and no rate (NaN) until the window spans a second."""
    clock = Clock()
    m = _metrics(clock)
    assert math.isnan(m.env_rate(clock.t))
    for k in range(1, 31):           # 100 steps a second, reported every 5 s
        clock.t += 1.0
        if k % 5 == 0:
            m.add_report(3, 100 * k, 1, np.array([]), np.array([]), np.array([]))
    assert m.env_rate(clock.t) == pytest.approx(100.0)  # 500 at t+5 ... 3000 at t+30
    clock.t += 60.0                   # silence: the window moves on
    m.add_report(3, 3000, 1, np.array([]), np.array([]), np.array([]))
    assert m.env_rate(clock.t) == pytest.approx(0.0)


def test_a_forced_row_repeating_a_step_is_skipped_unless_it_shows_an_evaluation():
    clock = Clock()
    m = _metrics(clock)
    m.row(5, 5, [], [])
    assert not m.log_due(force=True, learner_step=5)
    assert m.log_due(force=True, learner_step=6)
    m.add_evaluation(_eval(3.0))
    assert m.log_due(force=True, learner_step=5)
    row = m.row(5, 5, [], [])
    assert row["eval_return"] == 3.0 and math.isnan(row["final_eval_return"])
    m.add_evaluation(_eval(9.0), final=True)
    row = m.row(5, 5, [], [])
    assert row["final_eval_return"] == 9.0 and math.isnan(row["eval_return"])
    assert [e.mean_return for e in m.evaluations] == [3.0] and m.final_eval.mean_return == 9.0


def test_demo_rows_have_their_own_priority_column_and_fraction():
    """R2D3: agent and demo rows' new priorities are averaged apart; the fraction counts rows."""
    m = _metrics(Clock())
    m.add_step(1.0, np.array([1.0, 2.0, 9.0, 3.0]), np.array([False, False, True, False]))
    m.add_step(1.0, np.array([4.0, 5.0, 6.0, 7.0]), np.array([True, True, False, False]))
    row = m.row(learner_step=2, params_version=2, shard_stats=[ShardStats(1.0, 1, 1.0)],
                shard_counters=[ShardCounters(0, 0, 0)])
    assert row["demo_fraction"] == pytest.approx(3 / 8)
    assert row["demo_mean_priority"] == pytest.approx((9 + 4 + 5) / 3)
    assert row["mean_priority"] == pytest.approx((1 + 2 + 3 + 6 + 7) / 5)
    assert row["max_priority"] == 7.0  # the agent rows' largest

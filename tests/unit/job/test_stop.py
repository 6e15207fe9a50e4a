"""The stop controller: each budget, target_return, preemption and its exit code, the final
checkpoint decision and the allreduce stop flag."""
from __future__ import annotations

import signal

import pytest

from r2d2_hpc.checkpoint.preemption import EXIT_REQUEUE
from r2d2_hpc.comm.allreduce import decode_stop
from r2d2_hpc.comm.messages import Command
from r2d2_hpc.config import ActorConfig, CheckpointConfig, LearnerConfig
from r2d2_hpc.job.role import Control
from r2d2_hpc.job.stop import StopController


def _stop(max_steps: int = 0, max_env_steps: int = 0, max_seconds: float = 0.0,
          target_return=None, **checkpoint) -> StopController:
    return StopController(LearnerConfig(max_steps=max_steps, max_seconds=max_seconds,
                                        target_return=target_return),
                          ActorConfig(max_env_steps=max_env_steps),
                          CheckpointConfig(**checkpoint))


# (budgets, learner_step, env_steps, train_seconds, last_eval_return, reason)
BUDGETS = [
    (dict(max_steps=100), 99, 0, 0.0, None, ""),
    (dict(max_steps=100), 100, 0, 0.0, None, "learner.max_steps=100 reached"),
    (dict(max_env_steps=5000), 10, 4999, 0.0, None, ""),
    (dict(max_env_steps=5000), 10, 5000, 0.0, None, "actor.max_env_steps=5000 reached"),
    (dict(max_seconds=60.0), 10, 0, 59.9, None, ""),
    (dict(max_seconds=60.0), 10, 0, 60.0, None, "learner.max_seconds=60 reached"),
    (dict(target_return=195.0), 10, 0, 0.0, None, ""),           # no evaluation yet
    (dict(target_return=195.0), 10, 0, 0.0, 194.5, ""),
    (dict(target_return=195.0), 10, 0, 0.0, 200.0,
     "learner.target_return=195 reached (greedy evaluation mean 200)"),
    (dict(), 10**9, 10**9, 1e9, 1e9, ""),                         # 0 / None: no budget
    # several spent: the first in this order names the reason
    (dict(max_steps=10, max_env_steps=10), 10, 10, 0.0, None, "learner.max_steps=10 reached"),
]


@pytest.mark.parametrize("budgets, step, env, seconds, ret, reason", BUDGETS)
def test_budgets(budgets, step, env, seconds, ret, reason):
    stop = _stop(**budgets)
    assert stop.check_budgets(step, env, seconds, ret) == reason == stop.reason
    assert stop.exit_code == 0


def test_the_first_reason_stays():
    stop = _stop(max_steps=10)
    stop.request("test", exit_code=5)
    assert stop.check_budgets(10, 0, 0.0, None) == "test"
    stop.request("other", exit_code=EXIT_REQUEUE)
    assert (stop.reason, stop.exit_code) == ("test", 5)


def test_preemption_stops_with_the_requeue_code_once():
    stop = _stop()
    assert not stop.take_preemption()
    stop.take_controls([Control(4, int(Command.CHECKPOINT_DONE), 3),
                        Control(5, int(Command.PREEMPT), int(signal.SIGUSR1))])
    stop.on_signal(int(signal.SIGTERM))  # a second signal changes nothing
    assert stop.preempt_signal == "SIGUSR1"
    assert stop.take_preemption()
    assert (stop.reason, stop.exit_code) == ("preempted by SIGUSR1", EXIT_REQUEUE)
    assert stop.preempted
    assert not stop.take_preemption()  # a second one during the checkpoint starts nothing


def test_a_budget_spent_before_the_signal_keeps_exit_code_0():
    stop = _stop(max_steps=5)
    stop.check_budgets(5, 0, 0.0, None)
    stop.on_signal(int(signal.SIGUSR1))
    assert not stop.take_preemption() and stop.exit_code == 0 and not stop.preempted


@pytest.mark.parametrize("preempt, on_signal, at_end, wants", [
    (True, True, False, True), (True, False, True, False),
    (False, True, False, False), (False, False, True, True)])
def test_which_stop_checkpoints(preempt, on_signal, at_end, wants):
    stop = _stop(on_signal=on_signal, at_end=at_end)
    if preempt:
        stop.on_signal(int(signal.SIGUSR1))
        stop.take_preemption()
    else:
        stop.request("done")
    assert stop.wants_checkpoint() is wants


def test_the_allreduce_flag():
    stop = _stop(max_steps=10)
    assert decode_stop(stop.allreduce_flag(8, lead=True)) == (False, 0)
    # learner 0 knows step 9 -> 10 spends the budget; the others learn it in the allreduce
    assert decode_stop(stop.allreduce_flag(9, lead=True)) == (True, 0)
    assert decode_stop(stop.allreduce_flag(9, lead=False)) == (False, 0)
    stop.on_signal(int(signal.SIGUSR1))
    stop.take_preemption()
    assert decode_stop(stop.allreduce_flag(3, lead=True)) == (True, EXIT_REQUEUE)
    assert decode_stop(stop.allreduce_flag(3, lead=False)) == (True, EXIT_REQUEUE)

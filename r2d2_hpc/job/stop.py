"""When the learners stop, why, and with which exit code.

:class:`StopController` owns the stop decision of a learner rank:

* the budgets, checked by learner 0 (the first that is spent names the
  reason): ``learner.max_steps`` learner steps, ``actor.max_env_steps``
  agent steps, ``learner.max_seconds`` seconds of training (a resumed run
  counts the seconds before it), and ``learner.target_return``, reached when
  the latest greedy evaluation's mean return is at least that;
* preemption: a SIGUSR1/SIGTERM on learner 0 or a CONTROL PREEMPT from another
  rank; the first signal's name is kept, later ones change nothing, and the
  run stops with :data:`~r2d2_hpc.checkpoint.preemption.EXIT_REQUEUE` (3);
* whether a checkpoint precedes the STOP (``checkpoint.on_signal`` after a
  preemption, ``checkpoint.at_end`` otherwise);
* with several learners, the stop flag each learner adds to the gradient
  allreduce (:func:`~r2d2_hpc.comm.allreduce.encode_stop`), so that all stop
  after the same step.

It decides; the learner rank acts (checkpoint, STOP to the other ranks).
"""
from __future__ import annotations

import math
import time
from typing import Optional, Sequence

from r2d2_hpc.checkpoint.preemption import EXIT_REQUEUE, signal_name
from r2d2_hpc.comm.allreduce import encode_stop
from r2d2_hpc.comm.messages import Command
from r2d2_hpc.config import ActorConfig, CheckpointConfig, LearnerConfig
from r2d2_hpc.job.role import Control

__all__ = ["StopController"]


class StopController:
    """A learner's stop decision (see the module docstring).

    Attributes:
      reason: why the run stops, in words ('' while it goes on).
      exit_code: every rank's exit code (0, or EXIT_REQUEUE after a preemption).
      preempt_signal: name of the first preemption signal ('' if none).
      final_checkpoint: the STOP waits for a checkpoint being written.
      stop_time: ``time.time()`` when the learner finished (NaN before).
    """

    def __init__(self, learner: LearnerConfig, actor: ActorConfig,
                 checkpoint: CheckpointConfig) -> None:
        self.learner_cfg = learner
        self.actor_cfg = actor
        self.checkpoint_cfg = checkpoint
        self.reason = ""
        self.exit_code = 0
        self.preempt_signal = ""
        self.final_checkpoint = False
        self.stop_time = math.nan

    # ------------------------------------------------------------- inputs
    def on_signal(self, signum: int) -> None:
        """A preemption signal (its number) reached learner 0 or a rank that told it."""
        self.preempt_signal = self.preempt_signal or signal_name(signum)

    def take_controls(self, controls: Sequence[Control]) -> None:
        """Applies the CONTROL PREEMPTs among ``controls`` (learner 0)."""
        for c in controls:
            if c.command == int(Command.PREEMPT):
                self.on_signal(c.argument)

    def request(self, reason: str, exit_code: int = 0) -> None:
        """Stops the run for ``reason`` unless it already stops for another."""
        if not self.reason:
            self.reason = reason
            self.exit_code = exit_code

    def take_preemption(self) -> bool:
        """Turns a pending preemption signal into the stop; True if it did."""
        if not self.preempt_signal or self.reason:
            return False
        self.request(f"preempted by {self.preempt_signal}", exit_code=EXIT_REQUEUE)
        return True

    def check_budgets(self, learner_step: int, env_steps: int, train_seconds: float,
                      last_eval_return: Optional[float]) -> str:
        """Sets the reason if a budget is spent (and none is set yet).

        Args:
          learner_step: learner steps done.
          env_steps: agent steps of the whole run.
          train_seconds: seconds of training of the whole run.
          last_eval_return: the latest evaluation's mean return (None: none yet).

        Returns:
          The reason ('' while the run goes on).
        """
        if self.reason:
            return self.reason
        l, a = self.learner_cfg, self.actor_cfg
        if l.max_steps and learner_step >= l.max_steps:
            self.reason = f"learner.max_steps={l.max_steps} reached"
        elif a.max_env_steps and env_steps >= a.max_env_steps:
            self.reason = f"actor.max_env_steps={a.max_env_steps} reached"
        elif l.max_seconds and train_seconds >= l.max_seconds:
            self.reason = f"learner.max_seconds={l.max_seconds:g} reached"
        elif (l.target_return is not None and last_eval_return is not None
              and last_eval_return >= l.target_return):
            self.reason = (f"learner.target_return={l.target_return:g} reached (greedy "
                           f"evaluation mean {last_eval_return:g})")
        return self.reason

    # ------------------------------------------------------------ outputs
    @property
    def preempted(self) -> bool:
        """True when the run stops to be requeued."""
        return self.exit_code == EXIT_REQUEUE

    def wants_checkpoint(self) -> bool:
        """True when a checkpoint precedes the STOP (``on_signal`` / ``at_end``)."""
        ck = self.checkpoint_cfg
        return (ck.on_signal if self.preempted else ck.at_end)

    def allreduce_flag(self, learner_step: int, lead: bool) -> float:
        """This learner's stop flag for the allreduce of the step after ``learner_step``.

        The reason's exit code once there is one; learner 0 also knows in advance
        that a step spends ``learner.max_steps``, so all learners end exactly on it.
        """
        max_steps = self.learner_cfg.max_steps
        last = lead and bool(max_steps) and learner_step + 1 >= max_steps
        return encode_stop(self.exit_code if (self.reason or last) else None)

    def mark_stopped(self) -> None:
        """Records when the learner finished."""
        self.stop_time = time.time()

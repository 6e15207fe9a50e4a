"""Progress lines: budget, percentage, ETA, replay fill, the one clock."""
from __future__ import annotations

import io
import math

from r2d2_hpc.job.metrics import Budget, ProgressPrinter, format_line

ROW = {"learner_step": 250.0, "env_steps": 12000.0, "wall_time_s": 61.4, "train_seconds": 50.0,
       "updates_per_s": 5.0, "env_steps_per_s": 400.0, "loss": 0.25,
       "episode_return": math.nan, "replay_fill": 0.375, "replay_sequences": 80.0}


def test_step_budget_gives_progress_and_eta():
    line = format_line(ROW, Budget(max_steps=1000))
    assert line.startswith("step 250/1000 (25%)")
    assert "env 12000" in line and "400 env/s" in line and "replay 38%" in line
    assert line.endswith("ETA 2m30s")            # 750 steps at 5 a second
    assert "return" not in line                  # NaN is left out


def test_the_nearest_budget_sets_the_eta():
    assert format_line(ROW, Budget(max_steps=1000, max_seconds=80)).endswith("ETA 30s")
    assert format_line(ROW, Budget(max_env_steps=16000)).endswith("ETA 10s")
    assert "ETA" not in format_line(ROW, Budget())
    assert format_line(dict(ROW, learner_step=1000.0, updates_per_s=0.0),
                       Budget(max_steps=1000, max_seconds=900)).endswith("ETA 0s")


def test_plain_lines_carry_the_runs_clock():
    out = io.StringIO()                          # not a terminal: a SLURM log
    printer = ProgressPrinter(out, Budget(max_steps=1000))
    printer.show(ROW)
    printer.show(dict(ROW, wall_time_s=75.0))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[     61s] step 250/1000") and lines[1].startswith("[     75s]")
    assert "\r" not in out.getvalue()

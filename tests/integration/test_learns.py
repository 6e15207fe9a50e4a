"""End to end: the embedded default job learns a task that needs memory.

``mpiexec -n 4 python -m r2d2_hpc.cli`` with the embedded default (CartPole with
the velocities hidden: 1 learner, 1 replay shard, 2 actors) and a shorter,
seeded step budget must end with a *late greedy evaluation* above
``THRESHOLD``: the mean of the greedy evaluations (epsilon 0.001) of the last
quarter of training, i.e. the periodic ones at 6000, 7000 and 8000 learner
steps (16 episodes each) and the final one (32 episodes, printed by rank 0 and
in summary.json).

Why several evaluations and not the final one alone: the greedy policy of a
DQN-style learner oscillates between evaluations, so a single snapshot's lower
tail reaches any threshold worth having now and then, while the mean over the
last quarter does not (docs/decisions.md). Each evaluation is a greedy one of
the agent's parameters at that time, so their mean is bounded by what the
agent can do: a memoryless agent stays below the threshold in every single
evaluation, hence in their mean.

Why the threshold separates an agent with memory from one without: a
uniformly random policy scores about 23; the best memoryless policies found by
search score about 110; the same agent with ``network.core=feedforward`` stays
near 75; the LSTM agent reaches several hundred.
"""
from __future__ import annotations

import csv
import json

import pytest

from tests.helpers.launcher import ROOT, launch, sets

#: Learner steps of the CI run (the embedded default runs 10,000).
CI_MAX_STEPS = 8000
#: Seed of the CI run.
CI_SEED = 0

THRESHOLD = 150.0
"""Late greedy evaluation return (module docstring) the CI run must exceed.

Above everything memoryless (random about 23, the feedforward agent below 100
in every evaluation, the best memoryless policy found 110) and below every
late figure of the LSTM agent (250 and up). The job is not bit-reproducible,
so the margin is what keeps the test stable. The measurements:
docs/decisions.md, "The learning test's threshold".
"""


def late_evaluations(metrics_csv: str, since_step: int):
    """(learner step, return) of every evaluation at or after ``since_step``: the
    periodic ones (``eval_return``), then the final one (``final_eval_return``)."""
    with open(metrics_csv, newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if float(r["learner_step"]) >= since_step]
    return [(float(r["learner_step"]), float(r[col])) for col in ("eval_return",
                                                                  "final_eval_return")
            for r in rows if r.get(col) not in (None, "", "nan")]


@pytest.mark.slow
def test_embedded_default_learns_what_a_memoryless_agent_cannot(tmp_path):
    run = tmp_path / "run"
    # Only the step budget ends the run (no wall-clock cap): the same amount
    # of learning on a slow machine, just later.
    # the embedded default through the real entry point, 4 ranks
    proc, wall = launch(4, ["--run-dir", str(run)] + sets(
        f"learner.max_steps={CI_MAX_STEPS}", "learner.max_seconds=0", f"seed={CI_SEED}",
        "logging.tensorboard=false"), ROOT, timeout=900.0)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = json.loads((run / "summary.json").read_text())
    lead = ranks[0]
    assert lead["stop_reason"] == f"learner.max_steps={CI_MAX_STEPS} reached", lead
    assert lead["final_eval_episodes"] == 32
    final = lead["final_eval_return"]
    # rank 0 prints the same figure
    assert f"mean return {final:.1f} over 32 episodes" in proc.stdout, proc.stdout
    late = late_evaluations(str(run / "metrics.csv"), CI_MAX_STEPS * 3 // 4)
    # the periodic evaluations of the last quarter, then the final one
    assert [s for s, _ in late] == [6000.0, 7000.0, 8000.0, 8000.0], late
    assert late[-1][1] == pytest.approx(final)
    score = sum(v for _, v in late) / len(late)
    assert score > THRESHOLD, (
        f"late greedy evaluation {score:.1f} <= {THRESHOLD} after {lead['learner_step']} "
        f"learner steps and {lead['env_steps']} env steps ({wall:.0f} s); evaluations "
        f"{late}; final returns {lead['final_eval_returns']}")
    # the run directory's files
    for name in ("config.yaml", "metrics.csv", "summary.json", "learning_curve.png",
                 "learner_final.h5"):
        assert (run / name).is_file(), name

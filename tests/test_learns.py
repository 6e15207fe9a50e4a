"""End to end: the embedded default job learns a task that needs memory.

``mpiexec -n 4 python -m r2d2_hpc.cli`` with the embedded default (CartPole with
the velocities hidden: 1 learner, 1 replay shard, 2 actors) and a shorter,
seeded budget must end with a final greedy evaluation (``final_eval_episodes``
= 32 episodes, epsilon 0.001, printed by rank 0 and in summary.json) above
``THRESHOLD``.

Why the threshold separates an agent with memory from one without
(measurements in the docstring of ``THRESHOLD``): a uniformly random policy
scores about 22; the best memoryless policies we could find score about 110;
the same agent with ``network.core=feedforward`` stays near 75; the LSTM agent
reaches several hundred.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Learner steps of the CI run (the embedded default runs 10,000).
CI_MAX_STEPS = 8000
#: Seed of the CI run.
CI_SEED = 0

THRESHOLD = 150.0
"""Final greedy evaluation return the CI run must exceed.

Measured on the shared 2-core machine (32 evaluation episodes, epsilon 0.001,
masked CartPole, episodes capped at 500 steps):

* uniformly random actions: 22.6 (200 episodes);
* the best *memoryless* deterministic policy of (x, theta, previous action)
  found by random search plus the cross-entropy method over linear and
  quadratic features: 110 (200 episodes); the sign of the pole angle alone: 42;
* the same agent with ``network.core=feedforward`` (same torso and head
  width, previous action and reward still fed), this budget, seeds 0 and 1:
  79.2 and 62.2; no periodic evaluation of any feedforward run we made (7
  runs, up to 10,000 steps) ever exceeded 86;
* the LSTM agent, this budget (8000 learner steps, about 125k env steps,
  about 3 minutes), seeds 0-4: 485.7, 496.2, 496.5, 482.9, 256.9; the lowest
  of all its periodic 16-episode evaluations after 7000 steps in those runs
  was 154.

150 is well above everything memoryless (random, the feedforward agent, the
searched memoryless policies) and well below what the LSTM reaches with every
seed. The MPI job is not bit-reproducible (rank timing decides which batches
the learner sees), so the seed fixes the start, not the outcome: the margin
is what keeps the test from being flaky.
"""


def _mpiexec() -> str:
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.path.exists(here) else shutil.which("mpiexec")
    assert found, "mpiexec not found: install the [mpich] extra or a system MPI"
    return found


def run_default_job(run_dir: str, *overrides: str, timeout: float = 600.0):
    """The embedded default through the real entry point, 4 ranks."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [_mpiexec(), "-n", "4", sys.executable, "-m", "r2d2_hpc.cli", "--quiet",
           "--run-dir", run_dir]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


@pytest.mark.slow
def test_embedded_default_learns_what_a_memoryless_agent_cannot(tmp_path):
    run = tmp_path / "run"
    proc, wall = run_default_job(str(run), f"learner.max_steps={CI_MAX_STEPS}",
                                 f"seed={CI_SEED}", "logging.tensorboard=false")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ranks = json.loads((run / "summary.json").read_text())
    lead = ranks[0]
    assert lead["stop_reason"] == f"learner.max_steps={CI_MAX_STEPS} reached", lead
    assert lead["final_eval_episodes"] == 32
    score = lead["final_eval_return"]
    # rank 0 prints the same figure
    assert f"mean return {score:.1f} over 32 episodes" in proc.stdout, proc.stdout
    assert score > THRESHOLD, (
        f"final greedy evaluation {score:.1f} <= {THRESHOLD} after {lead['learner_step']} "
        f"learner steps and {lead['env_steps']} env steps ({wall:.0f} s); returns "
        f"{lead['final_eval_returns']}")
    # the run directory of the issue
    for name in ("config.yaml", "metrics.csv", "summary.json", "learning_curve.png",
                 "learner_final.h5"):
        assert (run / name).is_file(), name

"""End to end: the embedded default job learns a task that needs memory.

``mpiexec -n 4 python -m r2d2_hpc.cli`` with the embedded default (CartPole with
the velocities hidden: 1 learner, 1 replay shard, 2 actors) and a shorter,
seeded budget must end with a final greedy evaluation (``final_eval_episodes``
= 32 episodes, epsilon 0.001, printed by rank 0 and in summary.json) above
``THRESHOLD``.

Why the threshold separates an agent with memory from one without
(measurements in the docstring of ``THRESHOLD``): a uniformly random policy
scores about 23; the best memoryless policies we could find score about 110;
the same agent with ``network.core=feedforward`` stays near 75; the LSTM agent
reaches several hundred.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: Learner steps of the CI run: the embedded default's own budget.
CI_MAX_STEPS = 10000
#: Seed of the CI run.
CI_SEED = 0

THRESHOLD = 120.0
"""Final greedy evaluation return the CI run must exceed.

Measured on the shared 2-core machine (32 evaluation episodes, epsilon 0.001,
masked CartPole, episodes capped at 500 steps):

* ``benchmarks/memoryless_baselines.py`` (200 episodes each): uniformly
  random actions 23.2; the sign of the pole angle 41.7; the best *memoryless*
  deterministic policy of (x, theta, previous action) found by random search
  plus the cross-entropy method over linear and quadratic features: 110.3;
* the same agent with ``network.core=feedforward`` (same torso and head
  width, previous action and reward still fed), this budget, seeds 0 and 1:
  79.2 and 62.2; no periodic evaluation of any feedforward run we made (7
  runs, up to 10,000 steps) ever exceeded 86;
* the LSTM agent, this budget (8000 learner steps, about 125k env steps,
  about 3 minutes), seeds 0-4: 485.7, 496.2, 496.5, 482.9, 256.9; the lowest
  of all its periodic 16-episode evaluations after 7000 steps in those runs
  was 154.

120 is above everything memoryless we measured (random 23, the best searched
memoryless policy 110, the feedforward agent never above 86) and below every
LSTM run: one CI rehearsal on a heavily loaded machine (another training job
and a test suite on the same 2 cores) ended at 137 after 8000 steps, the
lowest final figure we have seen, which is why CI now runs the default's full
10,000 steps and the threshold is 120 rather than 150. The MPI job is not
bit-reproducible (rank timing decides which batches the learner sees), so the
seed fixes the start, not the outcome: the margin is what keeps the test from
being flaky.
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
    # the step budget, or the preset's 420-s safety cap on a very slow machine
    assert lead["stop_reason"].startswith(("learner.max_steps", "learner.max_seconds")), lead
    assert lead["final_eval_episodes"] == 32
    score = lead["final_eval_return"]
    # rank 0 prints the same figure
    assert f"mean return {score:.1f} over 32 episodes" in proc.stdout, proc.stdout
    evals = [(r["learner_step"], r["eval_return"]) for r in csv.DictReader(
        open(run / "metrics.csv")) if r["eval_return"] not in ("", "nan")]
    assert score > THRESHOLD, (
        f"final greedy evaluation {score:.1f} <= {THRESHOLD} after {lead['learner_step']} "
        f"learner steps and {lead['env_steps']} env steps ({wall:.0f} s); returns "
        f"{lead['final_eval_returns']}; periodic evaluations {evals}")
    # the run directory of the issue
    for name in ("config.yaml", "metrics.csv", "summary.json", "learning_curve.png",
                 "learner_final.h5"):
        assert (run / name).is_file(), name

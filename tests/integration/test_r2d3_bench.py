"""benchmarks/r2d3_demos.py: its figures by hand, and a quick run through the real entry
points (a tiny demonstrator, r2d2-record, both arms under mpiexec)."""
from __future__ import annotations

import json
import math

from benchmarks import r2d3_demos
from r2d2_hpc.cli.train import train_main

EVALS = [{"env_steps": 9_000, "learner_step": 250, "eval_return": 30.0},
         {"env_steps": 31_000, "learner_step": 500, "eval_return": 120.0},
         {"env_steps": 58_000, "learner_step": 750, "eval_return": 410.0},
         {"env_steps": 88_000, "learner_step": 1000, "eval_return": 380.0}]


def test_the_return_at_each_budget_is_the_latest_evaluation_before_it():
    got = r2d3_demos.at_budgets(EVALS, [5_000, 30_000, 60_000, 90_000])
    assert math.isnan(got["5000"])
    assert {k: got[k] for k in ("30000", "60000", "90000")} == {
        "30000": 30.0, "60000": 410.0, "90000": 380.0}


def test_env_steps_to_the_target_is_the_first_evaluation_reaching_it():
    assert r2d3_demos.steps_to_target(EVALS, 400.0, 90_000) == 58_000
    assert r2d3_demos.steps_to_target(EVALS, 400.0, 50_000) is None  # after the budget
    assert r2d3_demos.steps_to_target(EVALS, 500.0, 90_000) is None


def test_a_quick_run_writes_both_arms_and_the_demonstrations(tmp_path):
    demonstrator = tmp_path / "demonstrator"
    assert train_main(["--serial", "--quiet", "--run-dir", str(demonstrator),
                       "--set", "learner.max_steps=4", "--set", "replay.min_fill_sequences=20",
                       "--set", "logging.tensorboard=false",
                       "--set", "logging.final_eval_episodes=0"]) == 0
    out = tmp_path / "out"
    # the default's rate limit (16 env steps per learner step) keeps the learner in step
    small = ["replay.min_fill_sequences=20", "logging.tensorboard=false"]
    args = ["--seeds", "0", "--budgets", "1000", "2000", "--eval-every", "20",
            "--episodes", "3", "--demonstrator", str(demonstrator), "--out", str(out)]
    for s in small:
        args += ["--set", s]
    assert r2d3_demos.main(args) == 0
    report = json.loads((out / "r2d3_demos.json").read_text())
    assert report["demo_episodes"] == 3 and len(report["demo_returns"]) == 3
    r2d2, r2d3 = report["runs"]["r2d2"], report["runs"]["r2d3"]
    assert r2d2[0]["demo_rows_sampled"] == 0
    assert 0 < r2d3[0]["demo_rows_sampled"] < r2d3[0]["rows_sampled"]
    for arm in ("r2d2", "r2d3"):
        assert set(report["summary"][arm]["median_eval_at_budget"]) == {"1000", "2000"}
        assert report["runs"][arm][0]["evaluations"]
    assert (out / "r2d3_demos.png").stat().st_size > 0

"""Time to solve: launch-to-exit wall time of ``mpiexec -n 4 r2d2-train`` until solved.

What a user comparing libraries waits for: the job is launched with a preset
whose ``learner.target_return`` ends the run as soon as a periodic greedy
evaluation's mean return reaches the target. For each seed (run one after
another, nothing else running) this records

* ``wall_seconds``: from just before ``mpiexec`` starts to its exit (Python and
  torch start-up, replay fill, evaluations, shutdown: everything counts);
* ``env_steps`` and ``learner_steps`` at the end (rank 0's ``summary.json``);
* ``solved`` (the stop reason is the target) and the last evaluation's mean.

Tasks (``--tasks``):

* ``cartpole``: plain CartPole, episodes capped at 200 steps, 8 greedy
  episodes every 100 learner steps, target 195 (preset ``cartpole_fast``);
* ``masked``: the embedded default task (CartPole with the velocities hidden,
  500-step episodes) with ``learner.target_return=400`` (16 greedy episodes
  every 1000 learner steps, as the default evaluates).

Medians over the seeds go in ``summary``. An unsolved seed counts with its
wall time and is flagged; its budget is the preset's ``learner.max_seconds``.

Usage::

    python benchmarks/time_to_solve.py [--tasks cartpole,masked] [--seeds 0,1,2,3,4]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(HERE))
from benchmarks._common import mpiexec_cmd, r2d2_train, write_result  # noqa: E402

#: task -> (r2d2-train arguments, target return)
TASKS: Dict[str, Any] = {
    "cartpole": (["--config", "cartpole_fast"], 195.0),
    "masked": (["--set", "learner.target_return=400", "--set", "learner.max_seconds=600"], 400.0),
}


def run_seed(task: str, seed: int, ranks: int, extra: Sequence[str]) -> Dict[str, Any]:
    """One launch of the job; returns its record."""
    args, target = TASKS[task]
    run_dir = tempfile.mkdtemp(prefix=f"tts-{task}-{seed}-")
    cmd = [*mpiexec_cmd(), "-n", str(ranks), r2d2_train(),
           *args, "--run-dir", run_dir, "--quiet", "--set", f"seed={seed}",
           "--set", "logging.tensorboard=false"]
    for o in extra:
        cmd += ["--set", o]
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as fh:
            lead = next(r for r in json.load(fh) if r.get("role") == "learner" and r["index"] == 0)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    reason = str(lead.get("stop_reason", ""))
    return {"seed": seed, "wall_seconds": wall, "env_steps": lead.get("env_steps"),
            "learner_steps": lead.get("learner_step"), "solved": "target_return" in reason,
            "stop_reason": reason, "last_eval_return": lead.get("last_eval_return"),
            "target_return": target}


def summarize(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians and the solved count of one task's runs."""
    def med(key: str) -> float:
        return float(statistics.median(float(r[key]) for r in runs))

    return {"median_wall_seconds": med("wall_seconds"), "median_env_steps": med("env_steps"),
            "median_learner_steps": med("learner_steps"),
            "solved": sum(bool(r["solved"]) for r in runs), "seeds": len(runs)}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tasks", default="cartpole,masked")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--ranks", type=int, default=4)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra config override for every run (repeatable)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "time_to_solve.json"))
    args = p.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",") if s]
    result: Dict[str, Any] = {"benchmark": "time_to_solve", "ranks": args.ranks,
                              "cpu_count": os.cpu_count(), "tasks": {}}
    for task in [t for t in args.tasks.split(",") if t]:
        if task not in TASKS:
            raise SystemExit(f"--tasks: unknown task {task!r}; choose from {', '.join(TASKS)}")
        runs = []
        for seed in seeds:
            runs.append(run_seed(task, seed, args.ranks, args.overrides))
            print(json.dumps({"task": task, **runs[-1]}), flush=True)
        result["tasks"][task] = {"command": " ".join(TASKS[task][0]), "runs": runs,
                                 "summary": summarize(runs)}
    return write_result(result, args.out)


if __name__ == "__main__":
    main()

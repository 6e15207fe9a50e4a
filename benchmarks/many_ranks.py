"""Many ranks on one workstation: start-up time and resident memory per rank.

For each rank count (``--ranks 8,16,32,64``) runs the embedded default task
through ``mpiexec -n N python -m r2d2_hpc.cli`` for a few learner steps and
records

* ``startup_seconds``: from launch to the first metrics row with a learner
  step (the job's own clock, ``wall_time_s`` in ``metrics.csv``);
* resident memory (``VmRSS``) of every rank, sampled once the first learner
  step is done, by role (learner, replay, actor: mean and max) and in all;
* ``wall_seconds`` to the process's exit and its exit code.

Usage::

    python benchmarks/many_ranks.py [--ranks 8,16,32,64] [--out benchmarks/results/many_ranks.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(HERE))
from benchmarks._common import mpiexec_cmd, rank_pids, read_rows, write_result  # noqa: E402
from benchmarks.soak import rss_bytes  # noqa: E402

#: A short run of the default task: enough learner steps to be past start-up.
SETTINGS = ("learner.max_steps=50", "logging.tensorboard=false", "logging.eval_interval_steps=0",
            "logging.final_eval_episodes=0", "checkpoint.interval_seconds=0",
            "checkpoint.at_end=false", "logging.log_interval_seconds=1",
            "--no-memory-check")


def first_learner_step_s(run_dir: str) -> Optional[float]:
    """``wall_time_s`` of the first metrics row with a learner step, if any."""
    for row in read_rows(os.path.join(run_dir, "metrics.csv")):
        if row.get("learner_step", 0.0) > 0 and not math.isnan(row.get("wall_time_s", math.nan)):
            return row["wall_time_s"]
    return None


def roles_by_rank(run_dir: str, size: int) -> List[str]:
    """Each rank's role, from the run's effective config (learners, shards, actors)."""
    import yaml

    with open(os.path.join(run_dir, "config.yaml")) as fh:
        topo = yaml.safe_load(fh)["topology"]
    learners, shards = int(topo["learners"]), int(topo["replay_shards"])
    return ["learner"] * learners + ["replay"] * shards + ["actor"] * (size - learners - shards)


def one(ranks: int, timeout: float) -> Dict[str, Any]:
    run_dir = tempfile.mkdtemp(prefix=f"many-{ranks}-")
    cmd = [*mpiexec_cmd(), "-n", str(ranks), sys.executable, "-m", "r2d2_hpc.cli", "--quiet",
           "--run-dir", run_dir]
    for s in SETTINGS:
        cmd += [s] if s.startswith("--") else ["--set", s]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                            text=True)
    rss: Dict[int, Optional[int]] = {}
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            if first_learner_step_s(run_dir) is not None and not rss:
                pids = rank_pids(run_dir)
                rss = {i: rss_bytes(p) for i, p in enumerate(pids)}
            time.sleep(0.5)
        if proc.poll() is None:
            proc.kill()
        err = proc.communicate()[1]
        wall = time.monotonic() - t0
        startup = first_learner_step_s(run_dir)
        roles = roles_by_rank(run_dir, ranks) if os.path.exists(
            os.path.join(run_dir, "config.yaml")) else []
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    by_role: Dict[str, Dict[str, float]] = {}
    for role in ("learner", "replay", "actor"):
        vals = [rss[i] / 2 ** 20 for i, r in enumerate(roles) if r == role and rss.get(i)]
        if vals:
            by_role[role] = {"ranks": len(vals), "mean_mb": sum(vals) / len(vals),
                             "max_mb": max(vals)}
    total = sum(v for v in rss.values() if v) / 2 ** 30
    return {"ranks": ranks, "exit_code": proc.returncode, "wall_seconds": wall,
            "startup_seconds": startup, "rss_sampled_ranks": sum(1 for v in rss.values() if v),
            "rss_by_role": by_role, "rss_total_gb": total, "stderr_tail": err[-1500:]}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ranks", default="8,16,32,64")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per job")
    p.add_argument("--out", default=os.path.join(HERE, "results", "many_ranks.json"))
    args = p.parse_args(argv)
    runs = []
    for n in [int(x) for x in args.ranks.split(",") if x]:
        runs.append(one(n, args.timeout))
        print(json.dumps({k: v for k, v in runs[-1].items() if k != "stderr_tail"}), flush=True)
    return write_result({"benchmark": "many_ranks", "settings": list(SETTINGS),
                         "cpu_count": os.cpu_count(), "runs": runs}, args.out)


if __name__ == "__main__":
    main()

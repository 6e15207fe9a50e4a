"""Does the Atari path learn? Pong through the real job on one machine, with a curve.

Runs ``mpiexec -n RANKS r2d2-train --config configs/pong_2core.yaml`` (the R2D2
agent and the paper's Atari protocol, sizes for 2 cores; the config comments
each change) in one run directory, in one or more **segments**: each call runs
the job for at most ``--segment-minutes`` of wall time; the job ends the
segment itself (``learner.max_seconds`` is set to the training seconds so far
plus the segment) and writes its end-of-budget checkpoint; the next call
resumes from it (the job's own checkpoint and resume, bit-exact replay), so a
long run can be split around other work on a small machine. The run's own
clock is the sum of the segments' launch-to-exit wall times, evaluation and
start-up included; the total may not exceed ``--budget-minutes`` (150).

The job evaluates greedily (epsilon 0.001, ``logging.eval_episodes`` = 8
episodes, 30 no-op starts) every ``logging.eval_interval_steps`` learner steps
and at the end of each segment. After each segment this script writes

* ``--out`` (JSON): per segment the wall time, exit code and learner/env
  steps; every greedy evaluation with its learner step, env steps and run
  clock; the best and last evaluation means; the config;
* ``--png``: greedy and training return against env steps and against the run
  clock.

Usage::

    python benchmarks/atari_learning.py --run-dir runs/pong --segment-minutes 60
    python benchmarks/atari_learning.py --run-dir runs/pong --segment-minutes 50   # resumes
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(HERE))
from benchmarks._common import mpiexec_cmd, r2d2_train  # noqa: E402

from r2d2_hpc.job.metrics import read_metrics  # noqa: E402
from r2d2_hpc.job.outputs import plot_learning_curve  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "pong_2core.yaml")
STATE_FILE = "atari_learning_segments.json"
#: The issue's goal: a greedy evaluation mean of at least this (Pong; random -20.7).
GOAL_RETURN = -15.0
#: Seconds left for start-up, the final evaluation and the checkpoint inside a segment.
SEGMENT_MARGIN_S = 90.0


def _read_rows(run_dir: str) -> List[Dict[str, float]]:
    path = os.path.join(run_dir, "metrics.csv")
    return read_metrics(path)[1] if os.path.exists(path) else []


def _load_segments(run_dir: str) -> List[Dict[str, Any]]:
    path = os.path.join(run_dir, STATE_FILE)
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return list(json.load(fh))


def _lead_summary(run_dir: str) -> Dict[str, Any]:
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as fh:
        ranks = json.load(fh)
    return next((r for r in ranks if r.get("role") == "learner" and r.get("index") == 0), {})


def run_segment(run_dir: str, config: str, ranks: int, minutes: float,
                overrides: Sequence[str]) -> Dict[str, Any]:
    """Runs (or resumes) the job for one segment of at most ``minutes``.

    Returns:
      The segment's record (wall seconds, exit code, rows it added, counters).
    """
    trained = float(_lead_summary(run_dir).get("train_seconds", 0.0) or 0.0)
    rows_before = len(_read_rows(run_dir))
    max_seconds = trained + max(60.0, minutes * 60.0 - SEGMENT_MARGIN_S)
    cmd = [*mpiexec_cmd(), "-n", str(ranks), r2d2_train(), "--config", config,
           "--run-dir", run_dir, "--set", f"learner.max_seconds={max_seconds:.0f}"]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.time()
    with open(os.path.join(run_dir, "atari_learning.log"), "a", encoding="utf-8") as log:
        log.write(f"\n# segment {' '.join(cmd)}\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT,
                              timeout=minutes * 60.0 + 600.0)
    wall = time.time() - t0
    lead = _lead_summary(run_dir)
    return {"launch_time": t0, "wall_seconds": wall, "exit_code": proc.returncode,
            "rows": [rows_before, len(_read_rows(run_dir))],
            "learner_step": lead.get("learner_step"), "env_steps": lead.get("env_steps"),
            "train_seconds": lead.get("train_seconds"), "resumed_from": lead.get("resumed_from"),
            "final_eval_return": lead.get("final_eval_return"), "command": cmd}


def curve(run_dir: str, segments: Sequence[Dict[str, Any]]) -> List[Dict[str, float]]:
    """Metric rows with ``run_clock_s``: earlier segments' wall time + this row's."""
    rows = _read_rows(run_dir)
    out: List[Dict[str, float]] = []
    offset = 0.0
    for seg in segments:
        lo, hi = seg["rows"]
        for row in rows[lo:hi]:
            out.append(dict(row, run_clock_s=offset + row.get("wall_time_s", math.nan)))
        offset += seg["wall_seconds"]
    return out


def evaluations(rows: Sequence[Dict[str, float]]) -> List[Dict[str, Any]]:
    """The greedy evaluation points of the curve: the periodic ones (``kind``
    ``periodic``, every ``logging.eval_interval_steps``) and each segment's final
    one (``final``, ``logging.final_eval_episodes`` at the segment's end)."""
    out: List[Dict[str, Any]] = []
    for r in rows:
        for kind, col in (("periodic", "eval_return"), ("final", "final_eval_return")):
            if math.isfinite(r.get(col, math.nan)):
                out.append({"kind": kind, "learner_step": r["learner_step"],
                            "env_steps": r["env_steps"], "run_clock_s": r["run_clock_s"],
                            "eval_return": r[col],
                            "eval_return_std": r.get(f"{col}_std", math.nan),
                            "eval_episode_length": r.get("eval_episode_length", math.nan)})
    return out


def plot(rows: Sequence[Dict[str, float]], path: str, title: str) -> Optional[str]:
    """The job's learning-curve plot, its wall-time axis being the run clock."""
    return plot_learning_curve([dict(r, wall_time_s=r["run_clock_s"]) for r in rows], path,
                               title)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", required=True, help="the job's run directory (resumed if it exists)")
    p.add_argument("--config", default=DEFAULT_CONFIG)
    p.add_argument("--ranks", type=int, default=3, help="MPI ranks (default 3)")
    p.add_argument("--segment-minutes", type=float, default=150.0)
    p.add_argument("--budget-minutes", type=float, default=150.0,
                   help="the run clock's limit over all segments")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results",
                                                 "atari_learning.json"))
    p.add_argument("--png", default=os.path.join(REPO, "benchmarks", "results",
                                                 "atari_learning.png"))
    p.add_argument("--report-only", action="store_true",
                   help="write the JSON and PNG from the run directory without running")
    args = p.parse_args(argv)
    run_dir = os.path.abspath(args.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    segments = _load_segments(run_dir)
    used = sum(s["wall_seconds"] for s in segments) / 60.0
    if not args.report_only:
        minutes = min(args.segment_minutes, args.budget_minutes - used)
        if minutes < 3.0:
            raise SystemExit(f"atari_learning: {used:.1f} of {args.budget_minutes:g} minutes "
                             f"used; nothing left for another segment")
        segments.append(run_segment(run_dir, os.path.abspath(args.config), args.ranks,
                                    minutes, args.overrides))
        with open(os.path.join(run_dir, STATE_FILE), "w", encoding="utf-8") as fh:
            json.dump(segments, fh, indent=1)
    rows = curve(run_dir, segments)
    evals = evaluations(rows)
    with open(os.path.join(run_dir, "config.yaml"), encoding="utf-8") as fh:
        config_text = fh.read()
    result = {
        "benchmark": "atari_learning",
        "game": "Pong",
        "config": os.path.relpath(os.path.abspath(args.config), REPO),
        "ranks": args.ranks,
        "run_clock_minutes": sum(s["wall_seconds"] for s in segments) / 60.0,
        "budget_minutes": args.budget_minutes,
        "segments": segments,
        "evaluations": evals,
        "best_eval_return": max((e["eval_return"] for e in evals), default=None),
        "last_eval_return": evals[-1]["eval_return"] if evals else None,
        "goal_eval_return": GOAL_RETURN,
        "goal_reached": any(e["eval_return"] >= GOAL_RETURN
                            and e["run_clock_s"] <= 60.0 * args.budget_minutes for e in evals),
        "random_return": -20.7,
        "effective_config": config_text,
    }
    if args.png:
        plot(rows, args.png, f"R2D2 on Pong, 2 cores ({result['run_clock_minutes']:.0f} min)")
    text = json.dumps(result, indent=1, default=float)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    print(json.dumps({k: v for k, v in result.items()
                      if k not in ("effective_config", "segments")}, indent=1, default=float))
    return result


if __name__ == "__main__":
    main()

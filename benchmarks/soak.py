"""Soak: many ranks for a long time with a replay that fills and evicts.

Runs the real job (``mpiexec -n RANKS python -m r2d2_hpc.cli``, the embedded
default task, two replay shards, a replay small enough to fill in a few
minutes and then evict for the rest of the run) for ``--minutes`` of training,
samples every rank's resident memory (``VmRSS``) every ``--sample-seconds``,
and checks at the end:

* **memory flat**: each rank's resident memory at the end is at most
  ``--max-growth`` (5 %) above what it was at the first sample after the
  replay was full;
* **the books balance**: sequences the actors sent = sequences the shards
  received (+ in flight at the end, 0 after the shutdown drain), and what the
  shards received = held at the end + evicted + refused by rule (their steps
  already overwritten on arrival), each counted by its own counter;
* **no error lines**: the job exits 0 and writes nothing on stderr that looks
  like an error.

Writes JSON (``--out``) and a PNG of memory per rank over time (``--png``).
``tests/integration/test_soak.py`` runs a 2-minute version of it in CI.

Usage::

    python benchmarks/soak.py [--minutes 30] [--ranks 8] [--out benchmarks/results/soak.json]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
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

#: The job: the embedded default with two shards and a replay that evicts early.
SOAK_SETTINGS = ("topology.replay_shards=2", "replay.capacity_observations=20000",
                 "learner.max_steps=0", "logging.tensorboard=false",
                 "checkpoint.interval_seconds=0", "checkpoint.at_end=false",
                 "logging.final_eval_episodes=0", "logging.log_interval_seconds=5")
#: stderr lines that count as errors.
ERROR_RE = re.compile(r"error|traceback|exception|failed|abort", re.I)


def rss_bytes(pid: int) -> Optional[int]:
    """Resident memory of a process (``VmRSS``), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def replay_fill(run_dir: str) -> float:
    """The newest ``replay_fill`` in the run's metrics.csv (0 before there is one)."""
    fills = [r["replay_fill"] for r in read_rows(os.path.join(run_dir, "metrics.csv"))
             if not math.isnan(r.get("replay_fill", math.nan))]
    return fills[-1] if fills else 0.0


def books(ranks: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """The sequence accounting of a finished job from its summary.json records."""
    actors = [r for r in ranks if r["role"] == "actor"]
    shards = [r for r in ranks if r["role"] == "replay"]
    sent = sum(int(a["sequences_sent"]) for a in actors)
    stored = sum(int(s["stored_sequences"]) for s in shards)
    evicted = sum(int(s["evicted_sequences"]) for s in shards)
    refused = sum(int(s["dropped_sequences"]) for s in shards)
    received = sum(int(s["inserted_sequences"]) + int(s["dropped_sequences"]) for s in shards)
    return {"sent_by_actors": sent, "received_by_shards": received,
            "in_flight_at_end": sent - received, "held_at_end": stored, "evicted": evicted,
            "refused_by_rule": refused,
            "balanced": received == stored + evicted + refused and sent == received}


def memory_growth(samples: List[Dict[str, Any]], full_at: Optional[float]
                  ) -> Dict[str, Dict[str, float]]:
    """Per rank: resident memory at the first sample with the replay full and at the end."""
    if full_at is None:
        return {}
    after = [s for s in samples if s["t"] >= full_at]
    if len(after) < 2:
        return {}
    first, last = after[0]["rss"], after[-1]["rss"]
    out = {}
    for rank, b0 in first.items():
        b1 = last.get(rank)
        if b0 and b1:
            out[rank] = {"at_fill_mb": b0 / 2 ** 20, "at_end_mb": b1 / 2 ** 20,
                         "growth": b1 / b0 - 1.0}
    return out


def soak(minutes: float, ranks: int, sample_s: float, overrides: Sequence[str],
         keep_dir: Optional[str] = None) -> Dict[str, Any]:
    """Runs the job and returns the record (see the module docstring)."""
    run_dir = keep_dir or tempfile.mkdtemp(prefix="soak-")
    os.makedirs(run_dir, exist_ok=True)
    cmd = [*mpiexec_cmd(), "-n", str(ranks), sys.executable, "-m", "r2d2_hpc.cli", "--quiet",
           "--run-dir", run_dir]
    for o in (*SOAK_SETTINGS, f"learner.max_seconds={minutes * 60:g}", *overrides):
        cmd += ["--set", o]
    env = dict(os.environ, PYTHONPATH=os.path.dirname(HERE) + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    err_path = os.path.join(run_dir, "soak.stderr")
    samples: List[Dict[str, Any]] = []
    full_at = None
    t0 = time.monotonic()
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        pids: List[int] = []
        next_sample = 0.0
        while proc.poll() is None:
            t = time.monotonic() - t0
            if len(pids) < ranks:
                pids = rank_pids(run_dir)
            if t >= next_sample and len(pids) == ranks:
                fill = replay_fill(run_dir)
                samples.append({"t": t, "replay_fill": fill,
                                "rss": {str(i): rss_bytes(p) for i, p in enumerate(pids)}})
                if full_at is None and fill >= 0.999:
                    full_at = t
                next_sample = t + sample_s
            time.sleep(0.5)
    wall = time.monotonic() - t0
    stderr = open(err_path).read()
    try:
        with open(os.path.join(run_dir, "summary.json")) as fh:
            summary = json.load(fh)
    except OSError:
        summary = []
    growth = memory_growth(samples, full_at)
    result = {
        "benchmark": "soak", "ranks": ranks, "minutes": minutes, "settings": list(SOAK_SETTINGS)
        + list(overrides), "exit_code": proc.returncode, "wall_seconds": wall,
        "replay_full_at_s": full_at, "samples": samples, "memory": growth,
        "max_growth": max((g["growth"] for g in growth.values()), default=None),
        "books": books(summary) if summary else None,
        "error_lines": [ln for ln in stderr.splitlines() if ERROR_RE.search(ln)],
        "learner_steps": next((r.get("learner_step") for r in summary
                               if r.get("role") == "learner"), None),
    }
    if keep_dir is None:
        shutil.rmtree(run_dir, ignore_errors=True)
    return result


def plot(result: Dict[str, Any], path: str) -> None:
    """Resident memory per rank over time, with the moment the replay was full."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    samples = result["samples"]
    for rank in (samples[0]["rss"] if samples else {}):
        pts = [(s["t"] / 60, s["rss"][rank] / 2 ** 20) for s in samples if s["rss"].get(rank)]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=f"rank {rank}")
    if result["replay_full_at_s"] is not None:
        ax.axvline(result["replay_full_at_s"] / 60, color="k", ls="--", lw=1,
                   label="replay full")
    ax.set_xlabel("minutes since launch")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_title(f"soak: {result['ranks']} ranks, {result['minutes']:g} min; largest growth "
                 f"after fill {100 * (result['max_growth'] or 0):.1f} %")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def verdict(result: Dict[str, Any], max_growth: float) -> List[str]:
    """What failed (empty: the soak passed)."""
    problems = []
    if result["exit_code"] != 0:
        problems.append(f"the job exited {result['exit_code']}")
    if result["error_lines"]:
        problems.append(f"{len(result['error_lines'])} error lines, e.g. "
                        f"{result['error_lines'][0]!r}")
    b = result["books"]
    if not b or not b["balanced"] or b["in_flight_at_end"] != 0:
        problems.append(f"the books do not balance: {b}")
    if result["replay_full_at_s"] is None:
        problems.append("the replay never filled")
    elif result["max_growth"] is None:
        problems.append("no memory samples after the replay was full")
    elif result["max_growth"] > max_growth:
        problems.append(f"resident memory grew {100 * result['max_growth']:.1f} % after the "
                        f"replay was full (limit {100 * max_growth:.0f} %)")
    return problems


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training minutes")
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--sample-seconds", type=float, default=30.0)
    p.add_argument("--max-growth", type=float, default=0.05,
                   help="allowed memory growth per rank from fill to end")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   help="extra config override (repeatable)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "soak.json"))
    p.add_argument("--png", default=os.path.join(HERE, "results", "soak_memory.png"))
    args = p.parse_args(argv)
    result = soak(args.minutes, args.ranks, args.sample_seconds, args.overrides)
    result["problems"] = verdict(result, args.max_growth)
    if args.png:
        plot(result, args.png)
    write_result(result, args.out)
    print("soak: " + ("passed" if not result["problems"] else
                      "FAILED: " + "; ".join(result["problems"])), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(1 if main()["problems"] else 0)

"""Does the LSTM matter? The embedded default task with and without recurrence.

Runs the real job (``mpiexec -n 4 python -m r2d2_hpc.cli``, the embedded
default: CartPole with the velocities hidden) once per variant and seed:

* ``lstm``: the default (LSTM core, burn-in 8 from the stored state);
* ``feedforward``: ``network.core=feedforward``, the same torso, width and
  head, the previous action and reward still fed to the core, no recurrence;
* ``lstm_burnin0``: the LSTM with ``replay.burn_in=0`` (the trace starts from
  the stored state directly; ``trace_length`` unchanged), to compare the
  recurrent-state staleness ``delta_q`` (paper section 3, ``Learner.q_staleness``)
  with and without burn-in;
* ``gtrxl``: ``network.core=gtrxl`` (Gated Transformer-XL, ``network.gtrxl_*``
  defaults), its memory stored at each sequence start
  (``network.gtrxl_start_state=stored``);
* ``gtrxl_zero``: the same from an empty memory rebuilt during burn-in
  (``network.gtrxl_start_state=zero``; ``delta_q`` is 0 by construction).

Writes, into ``--out`` (default ``benchmarks/results/lstm_ablation``):

* ``lstm_vs_feedforward.png``: greedy evaluation return and training return vs
  env steps (left) and vs wall time (right), LSTM, feedforward and the gtrxl
  variants that ran in one figure (every seed, thin lines);
* ``lstm_ablation.json``: per run the final greedy evaluation return (mean over
  ``logging.final_eval_episodes`` episodes, epsilon 0.001), wall time, env and
  learner steps, the mean ``delta_q`` over the second half of the run, and
  per variant the mean and min/max over seeds and how many runs pass the
  learning test's judge (late greedy return above its ``THRESHOLD``);
* ``runs/<variant>-s<seed>/``: each run's own run directory.

Usage::

    python benchmarks/lstm_ablation.py [--seeds 0 1 2]
        [--variants lstm feedforward lstm_burnin0 gtrxl gtrxl_zero]
        [--np 4] [--set section.field=value ...] [--out DIR] [--merge]

``--merge`` adds these runs to the report already in ``--out`` (a run of the
same variant and seed replaced), e.g. a new arm or seed beside earlier ones.

On the 2-core CI machine one run of the default takes about 2 minutes.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, ROOT)
from benchmarks._common import mpiexec_cmd, read_rows  # noqa: E402
from tests.integration.test_learns import THRESHOLD  # noqa: E402  (the learning test's judge)

#: Config overrides of each variant on top of the embedded default.
VARIANTS: Dict[str, List[str]] = {
    "lstm": [],
    "feedforward": ["network.core=feedforward"],
    "lstm_burnin0": ["replay.burn_in=0"],
    "gtrxl": ["network.core=gtrxl", "network.gtrxl_start_state=stored"],
    "gtrxl_zero": ["network.core=gtrxl", "network.gtrxl_start_state=zero"],
}
COLORS = {"lstm": "tab:red", "feedforward": "tab:blue", "lstm_burnin0": "tab:orange",
          "gtrxl": "tab:green", "gtrxl_zero": "tab:olive"}
#: Variants drawn in the figure.
PLOTTED = ("lstm", "feedforward", "gtrxl", "gtrxl_zero")


def run_job(run_dir: str, overrides: Sequence[str], np_ranks: int,
            timeout: float) -> Dict[str, Any]:
    """One job through the real entry point; returns its figures."""
    if os.path.exists(run_dir):
        shutil.rmtree(run_dir)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [*mpiexec_cmd(), "-n", str(np_ranks), sys.executable, "-m", "r2d2_hpc.cli", "--quiet",
           "--run-dir", run_dir]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n"
                           f"{proc.stderr}")
    ranks = json.load(open(os.path.join(run_dir, "summary.json")))
    lead = ranks[0]
    rows = read_rows(os.path.join(run_dir, "metrics.csv"))
    dq = column(rows, "delta_q")
    half = dq[len(dq) // 2:]
    half = half[np.isfinite(half)]
    return {
        "run_dir": os.path.relpath(run_dir, ROOT),
        "overrides": list(overrides),
        "final_eval_return": lead.get("final_eval_return", math.nan),
        "final_eval_episodes": lead.get("final_eval_episodes", 0),
        "job_wall_s": wall,
        "train_wall_s": float(column(rows, "wall_time_s")[-1]) if rows else math.nan,
        "env_steps": lead["env_steps"],
        "learner_steps": lead["learner_step"],
        "stop_reason": lead["stop_reason"],
        "delta_q_second_half": float(half.mean()) if half.size else math.nan,
        "eval_returns": [x for x in column(rows, "eval_return").tolist() if math.isfinite(x)],
        "late_eval_return": late_eval(rows),
    }


def earlier_runs(json_path: str, overrides: Sequence[str],
                 rerun: Sequence[str], seeds: Sequence[int]) -> Dict[str, List[Dict[str, Any]]]:
    """The runs of an earlier report at ``json_path``, less those of the variants in
    ``rerun`` with a seed in ``seeds`` (which this invocation makes again).

    Raises:
      SystemExit: if that report was made with other ``--set`` overrides (its
        runs would not compare with these).
    """
    if not os.path.exists(json_path):
        return {}
    with open(json_path) as fh:
        report = json.load(fh)
    if list(report.get("extra_overrides", [])) != list(overrides):
        raise SystemExit(f"--merge: {json_path} was made with --set "
                         f"{report.get('extra_overrides')}, not {list(overrides)}; pass the same "
                         f"overrides or another --out")
    return {v: [r for r in entry["runs"] if v not in rerun or r.get("seed") not in seeds]
            for v, entry in report.get("variants", {}).items()}


def late_eval(rows: Sequence[Dict[str, float]]) -> float:
    """Mean greedy evaluation return of the last quarter of training (the
    periodic evaluations at or after 3/4 of the last learner step, the final
    one included): the figure tests/integration/test_learns.py holds to its threshold."""
    steps = column(rows, "learner_step")
    evals = column(rows, "eval_return")
    final = column(rows, "final_eval_return") if any("final_eval_return" in r for r in rows) \
        else np.full(len(rows), math.nan)
    ok = np.isfinite(evals)
    if not ok.any():
        return math.nan
    late = np.concatenate([evals[ok & (steps >= steps[ok].max() * 3 // 4)],
                           final[np.isfinite(final)]])
    return float(late.mean())


def column(rows: Sequence[Dict[str, float]], key: str) -> np.ndarray:
    return np.asarray([r.get(key, math.nan) for r in rows], np.float64)


def plot(out_png: str, runs: Dict[str, List[Dict[str, Any]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for variant, results in runs.items():
        if variant not in PLOTTED:
            continue
        for i, res in enumerate(results):
            csv_path = os.path.join(ROOT, res["run_dir"], "metrics.csv")
            if not os.path.exists(csv_path):  # a merged run whose directory is gone
                print(f"plot: {res['run_dir']} has no metrics.csv; not drawn", file=sys.stderr)
                continue
            rows = read_rows(csv_path)
            for ax, xkey in ((axes[0], "env_steps"), (axes[1], "wall_time_s")):
                x = column(rows, xkey)
                for ykey, style in (("eval_return", dict(lw=1.6, marker="o", ms=3)),
                                    ("episode_return", dict(lw=0.8, ls="--", alpha=0.6))):
                    y = column(rows, ykey)
                    ok = np.isfinite(x) & np.isfinite(y)
                    kind = "greedy eval" if ykey == "eval_return" else "training"
                    label = f"{variant} ({kind})" if i == 0 else None
                    ax.plot(x[ok], y[ok], color=COLORS[variant], label=label, **style)
    axes[0].set_xlabel("env steps")
    axes[1].set_xlabel("wall time (s)")
    axes[0].set_ylabel("episode return")
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="upper left")
    fig.suptitle("R2D2 on CartPole with hidden velocities: "
                 + " vs ".join(v for v in PLOTTED if runs.get(v)) + " core")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)


def aggregate(results: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    learned = sum(bool(r["late_eval_return"] > THRESHOLD) for r in results)
    out["learns"] = f"{learned} of {len(results)} runs " \
                    f"with late greedy return > {THRESHOLD:g} (tests/integration/test_learns.py)"
    for key in ("final_eval_return", "late_eval_return", "job_wall_s", "env_steps", "learner_steps",
                "delta_q_second_half"):
        v = np.asarray([r[key] for r in results], np.float64)
        out[key] = {"mean": float(np.nanmean(v)), "min": float(np.nanmin(v)),
                    "max": float(np.nanmax(v))}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--np", type=int, default=4, help="MPI ranks per job (default 4)")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   help="extra override for every run (repeatable)")
    p.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results",
                                                 "lstm_ablation"))
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per job")
    p.add_argument("--merge", action="store_true",
                   help="keep the runs already in --out's JSON (made with the same --set "
                        "overrides) but those of the variant and seed rerun now, and report "
                        "them with these")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "lstm_ablation.json")
    runs: Dict[str, List[Dict[str, Any]]] = (
        earlier_runs(json_path, args.overrides, args.variants, args.seeds) if args.merge else {})
    for v in args.variants:
        runs.setdefault(v, [])
    for seed in args.seeds:
        for variant in args.variants:
            run_dir = os.path.join(args.out, "runs", f"{variant}-s{seed}")
            res = run_job(run_dir, VARIANTS[variant] + list(args.overrides) + [f"seed={seed}"],
                          args.np, args.timeout)
            res["seed"] = seed
            runs[variant].append(res)
            print(f"{variant:13s} seed {seed}: final greedy eval {res['final_eval_return']:6.1f}"
                  f" (late {res['late_eval_return']:6.1f})"
                  f" | {res['learner_steps']} learner steps, {res['env_steps']} env steps, "
                  f"{res['job_wall_s']:.0f} s | delta_q {res['delta_q_second_half']:.3f}",
                  flush=True)
    report = {
        "task": "cartpole_masked (embedded default), mpiexec -n %d" % args.np,
        "extra_overrides": list(args.overrides),
        "variants": {v: {"overrides": VARIANTS[v], "summary": aggregate(rs), "runs": rs}
                     for v, rs in runs.items() if rs},
    }
    with open(json_path, "w") as fh:
        json.dump(report, fh, indent=1)
    if any(v in runs for v in PLOTTED):
        plot(os.path.join(args.out, "lstm_vs_feedforward.png"), runs)
    for v, rs in runs.items():
        s = aggregate(rs)
        print(f"{v:13s} final greedy eval mean {s['final_eval_return']['mean']:.1f} "
              f"(min {s['final_eval_return']['min']:.1f}, max "
              f"{s['final_eval_return']['max']:.1f}) | delta_q "
              f"{s['delta_q_second_half']['mean']:.3f}")
    print(f"wrote {args.out}/lstm_ablation.json and lstm_vs_feedforward.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

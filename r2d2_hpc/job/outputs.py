"""End-of-run files of the run directory: the learning-curve PNG and the final learner state.

The run directory of a job holds (learner 0 writes all but ``config.yaml``,
which rank 0 of the CLI writes before anything starts)::

    config.yaml            effective configuration
    metrics.csv            one row per log interval (r2d2_hpc.job.metrics)
    tb/                    TensorBoard events, when tensorboard is installed
    summary.json           every rank's counters; learner 0's final evaluation
    learning_curve.png     return vs env steps and vs wall time (this module)
    learner_final.h5       the final Learner.state(), in a checkpoint's learner.h5 format
    checkpoints/           the coordinated checkpoints (r2d2_hpc.checkpoint)

``learner_final.h5`` is the trained agent: written by the checkpoint's own
learner-file writer (:func:`r2d2_hpc.checkpoint.state_files.write_learner_file`:
the ``LearnerState`` record, the job's counters, the config and the job's
shapes), with the final evaluation's figures in its ``extra`` group.
``r2d2-eval RUN_DIR/learner_final.h5`` evaluates it; ``read_learner`` reads it.
The resumable checkpoint (replay included) is ``checkpoints/``.
"""
from __future__ import annotations

import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from r2d2_hpc.agent.learner import LearnerState
from r2d2_hpc.checkpoint.state_files import write_learner_file
from r2d2_hpc.config import Config
from r2d2_hpc.types import JobSpec

#: File names inside the run directory.
LEARNING_CURVE_PNG = "learning_curve.png"
LEARNER_STATE_H5 = "learner_final.h5"


def _column(rows: Sequence[Mapping[str, float]], key: str) -> np.ndarray:
    out = []
    for r in rows:
        v = r.get(key, math.nan)
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(math.nan)
    return np.asarray(out, np.float64)


def plot_learning_curve(rows: Sequence[Mapping[str, float]], path: str,
                        title: str = "") -> Optional[str]:
    """Writes the learning curve: returns vs env steps (left) and vs wall time (right).

    Plotted series (each only where the row has a value): the mean training
    episode return of the interval (all actors' epsilon-greedy episodes), the
    return of the greediest third of the envs (``return_eps_low``) and the
    greedy evaluation return (``eval_return``, markers, with a band of one
    standard deviation over its episodes, ``eval_return_std``) and the final
    evaluation (``final_eval_return``, a star with its standard deviation).

    Args:
      rows: metric rows (``MetricsSink.rows`` or ``metrics.csv``).
      path: PNG file to write (temp file + ``os.replace``).
      title: figure title.

    Returns:
      ``path``, or None when matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    env = _column(rows, "env_steps")
    wall = _column(rows, "wall_time_s")
    series = [("episode_return", "training return (all envs)", dict(color="tab:blue", lw=1.2)),
              ("return_eps_low", "training return, greediest third",
               dict(color="tab:cyan", lw=0.8, alpha=0.8)),
              ("eval_return", "greedy evaluation", dict(color="tab:red", lw=1.2, marker="o",
                                                        ms=3))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, x, xlabel in ((axes[0], env, "env steps"), (axes[1], wall, "wall time (s)")):
        for key, label, style in series:
            y = _column(rows, key)
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.any():
                ax.plot(x[ok], y[ok], label=label, **style)
            spread = _column(rows, key + "_std")
            if key == "eval_return" and np.isfinite(spread[ok]).any():
                ax.fill_between(x[ok], (y - spread)[ok], (y + spread)[ok], color="tab:red",
                                alpha=0.15, lw=0)
        y, spread = _column(rows, "final_eval_return"), _column(rows, "final_eval_return_std")
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.any():
            ax.errorbar(x[ok], y[ok], yerr=np.nan_to_num(spread[ok]), fmt="*", ms=10,
                        color="tab:purple", capsize=3, label="final evaluation")
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("episode return")
    axes[0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_run_outputs(run_dir: str, cfg: Config, rows: List[Mapping[str, float]],
                      learner_state: Optional[LearnerState],
                      counters: Optional[Mapping[str, Any]] = None,
                      job_spec: Optional[JobSpec] = None,
                      extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Optional[str]]:
    """The lead learner's end-of-run files (see the module docstring).

    Args:
      run_dir: the run directory.
      cfg: the run's config.
      rows: every metrics row of the run.
      learner_state: ``Learner.state()``, or None to skip ``learner_final.h5``.
      counters: the job's counters (``LearnerRank.counters()``).
      job_spec: the job's shapes.
      extra: JSON-able facts kept in the file's ``extra`` group (the final evaluation).

    Returns:
      ``{"learning_curve": path or None, "learner_state": path or None}``.
    """
    name = cfg.env.name if cfg.env.name != "atari" else f"atari {cfg.env.game}"
    title = f"R2D2 on {name} (core: {cfg.network.core})"
    png = plot_learning_curve(rows, os.path.join(run_dir, LEARNING_CURVE_PNG), title=title)
    h5 = None
    if learner_state is not None:
        h5 = os.path.join(run_dir, LEARNER_STATE_H5)
        write_learner_file(h5, learner_state, cfg, dict(counters or {}), job_spec=job_spec,
                           extra=dict(extra or {}))
    return {"learning_curve": png, "learner_state": h5}

"""End-of-run files of the run directory: the learning-curve PNG and the final learner state.

The run directory of a job holds (learner 0 writes all but ``config.yaml``,
which rank 0 of the CLI writes before anything starts)::

    config.yaml            effective configuration
    metrics.csv            one row per log interval (r2d2_hpc.job.metrics)
    tb/                    TensorBoard events, when tensorboard is installed
    summary.json           every rank's counters; learner 0's final evaluation
    learning_curve.png     return vs env steps and vs wall time (this module)
    learner_final.h5       the final Learner.state() (this module)

``learner_final.h5`` is deliberately small: the learner's state record
(``Learner.state()``) mapped onto HDF5 groups, with the config beside it. The
coordinated checkpoint format (replay included, resumable) is
``r2d2_hpc.checkpoint``'s business; this file is the trained agent.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import h5py
import numpy as np

from r2d2_hpc.agent.learner import LearnerState
from r2d2_hpc.config import Config
from r2d2_hpc.storage.h5tree import record_tree, tree_record

#: File names inside the run directory.
LEARNING_CURVE_PNG = "learning_curve.png"
LEARNER_STATE_H5 = "learner_final.h5"
#: Format tag stored in the HDF5 file's attributes.
LEARNER_STATE_FORMAT = "r2d2_hpc.agent.learner_state/1"


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
    greedy evaluation return (``eval_return``, markers).

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


def _write_group(group: h5py.Group, data: Mapping[str, Any]) -> None:
    for key, value in data.items():
        if isinstance(value, Mapping):
            _write_group(group.create_group(key), value)
        else:
            arr = np.asarray(value)
            if arr.ndim == 0:
                group.create_dataset(key, data=arr)
            else:
                group.create_dataset(key, data=arr, chunks=True, fletcher32=True)


def _read_group(group: h5py.Group) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, item in group.items():
        if isinstance(item, h5py.Group):
            out[key] = _read_group(item)
        else:
            value = item[()]
            out[key] = value.item() if np.ndim(value) == 0 and key in (
                "step_count", "params_version") else np.asarray(value)
    return out


def write_learner_state(path: str, state: Mapping[str, Any], cfg: Config,
                        extra: Optional[Mapping[str, Any]] = None) -> str:
    """Writes a ``Learner.state()`` record to HDF5 (fletcher32 checksums).

    Layout: groups ``online/``, ``target/`` (one dataset per parameter name,
    e.g. ``online/lstm.weight_ih_l0``), ``optimizer/{exp_avg,exp_avg_sq,step}/``,
    datasets ``step_count``, ``params_version``, ``torch_rng_state``; file
    attributes ``format``, ``config`` (the run's config as JSON) and the
    ``extra`` items (JSON). Written to a temp file, then ``os.replace``d.

    Args:
      path: the ``.h5`` file.
      state: ``Learner.state()``.
      cfg: the run's config.
      extra: small JSON-able facts to keep beside it (e.g. the final evaluation).

    Returns:
      ``path``.
    """
    tmp = f"{path}.tmp"
    with h5py.File(tmp, "w") as f:
        f.attrs["format"] = LEARNER_STATE_FORMAT
        f.attrs["config"] = json.dumps(cfg.to_dict())
        for key, value in (extra or {}).items():
            f.attrs[key] = json.dumps(value, default=float)
        _write_group(f, record_tree(state))
    os.replace(tmp, path)
    return path


def read_learner_state(path: str) -> Dict[str, Any]:
    """Reads what ``write_learner_state`` wrote, checksums verified by h5py.

    Returns:
      ``{"state": <dict for Learner.load_state>, "config": Config,
      "attrs": {name: decoded JSON}}``.

    Raises:
      ValueError: if the file is not a learner state file.
    """
    with h5py.File(path, "r") as f:
        if f.attrs.get("format") != LEARNER_STATE_FORMAT:
            raise ValueError(f"{path}: not a learner state file (format "
                             f"{f.attrs.get('format')!r}, expected {LEARNER_STATE_FORMAT!r})")
        state = tree_record(LearnerState, _read_group(f))
        cfg = Config.from_dict(json.loads(f.attrs["config"]))
        attrs = {k: json.loads(v) for k, v in f.attrs.items() if k not in ("format", "config")}
    return {"state": state, "config": cfg, "attrs": attrs}


def write_run_outputs(run_dir: str, cfg: Config, rows: List[Mapping[str, float]],
                      learner_state: Optional[Mapping[str, Any]],
                      extra: Optional[Mapping[str, Any]] = None) -> Dict[str, Optional[str]]:
    """The lead learner's end-of-run files (see the module docstring).

    Args:
      run_dir: the run directory.
      cfg: the run's config.
      rows: every metrics row of the run.
      learner_state: ``Learner.state()``, or None to skip the HDF5 file.
      extra: JSON-able facts stored as attributes of the HDF5 file.

    Returns:
      ``{"learning_curve": path or None, "learner_state": path or None}``.
    """
    name = cfg.env.name if cfg.env.name != "atari" else f"atari {cfg.env.game}"
    title = f"R2D2 on {name} (core: {cfg.network.core})"
    png = plot_learning_curve(rows, os.path.join(run_dir, LEARNING_CURVE_PNG), title=title)
    h5 = None
    if learner_state is not None:
        h5 = write_learner_state(os.path.join(run_dir, LEARNER_STATE_H5), learner_state, cfg,
                                 extra=extra)
    return {"learning_curve": png, "learner_state": h5}

"""Metrics of a run: CSV rows, optional TensorBoard events and W&B, plain log lines.

Only learner 0 writes metrics. A row is a flat ``{name: float}`` dict; the CSV
header is fixed by the first row's keys plus any later ones (the file is then
rewritten once with the wider header, so columns never shift).
"""
from __future__ import annotations

import csv
import importlib.util
import math
import os
import sys
import time
import uuid
from typing import Any, Dict, List, NamedTuple, Optional, TextIO, Tuple

from r2d2_hpc.config import Config

Row = Dict[str, float]


class MetricsWriter:
    """Appends metric rows to ``metrics.csv`` (and TensorBoard when available).

    Args:
      run_dir: directory of the run.
      tensorboard: also write TensorBoard events under ``run_dir/tb`` if the
        ``tensorboard`` package is installed.
      step_key: the row field used as the TensorBoard step.
    """

    def __init__(self, run_dir: str, tensorboard: bool = True,
                 step_key: str = "learner_step", launch_time: Optional[float] = None) -> None:
        self.path = os.path.join(run_dir, "metrics.csv")
        self.step_key = step_key
        #: TensorBoard's wall time of a row: the launch plus its ``wall_time_s``.
        self.launch_time = launch_time
        self._fields: List[str] = []
        self._rows: List[Row] = []
        if os.path.exists(self.path):  # resumed run: keep what is there
            self._fields, self._rows = read_metrics(self.path)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(os.path.join(run_dir, "tb"))
            except Exception:  # tensorboard not installed: CSV only
                self._tb = None

    @property
    def rows(self) -> List[Row]:
        return list(self._rows)

    def write(self, row: Row) -> None:
        """Appends one row (and flushes it to disk)."""
        new = [k for k in row if k not in self._fields]
        self._rows.append(dict(row))
        if new:
            self._fields += new
            self._rewrite()
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as fh:
                csv.DictWriter(fh, self._fields).writerow(row)
        if self._tb is not None:
            step = int(row.get(self.step_key, len(self._rows)))
            wall = (self.launch_time + row["wall_time_s"]
                    if self.launch_time is not None and "wall_time_s" in row else None)
            for key, value in row.items():
                if key != self.step_key and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step, walltime=wall)
            self._tb.flush()

    def _rewrite(self) -> None:
        tmp = self.path + ".tmp"
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, self._fields)
            writer.writeheader()
            for r in self._rows:
                writer.writerow(r)
        os.replace(tmp, self.path)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


#: The row field that counts training progress (TensorBoard's and W&B's x-axis).
STEP_KEY = "learner_step"
#: File in the run directory holding the W&B run id (a resumed job continues that run).
WANDB_ID_FILE = "wandb_run_id"


def wandb_errors(cfg: Config) -> List[str]:
    """The config's W&B request cannot be met: the package is missing."""
    if cfg.logging.wandb and importlib.util.find_spec("wandb") is None:
        return ["logging.wandb: true needs the wandb package, which is not installed: "
                "pip install 'r2d2_hpc[wandb]' (or pip install wandb), or set "
                "logging.wandb=false"]
    return []


class WandbLogger:
    """Metric rows and the config to Weights & Biases (learner 0 only).

    The run id is kept in ``run_dir/wandb_run_id`` so that a resumed job (a
    requeue) continues the same W&B run; W&B's files go under ``run_dir/wandb``
    (``WANDB_MODE=offline`` keeps them there for ``wandb sync``).

    Args:
      cfg: the run config (``logging.wandb_*``: project, entity, name, tags).
      run_dir: the run directory.
    """

    def __init__(self, cfg: Config, run_dir: str) -> None:
        import wandb  # optional dependency (the wandb extra), checked at start-up

        g = cfg.logging
        id_path = os.path.join(run_dir, WANDB_ID_FILE)
        if os.path.exists(id_path):
            with open(id_path, encoding="utf-8") as fh:
                run_id = fh.read().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            with open(id_path, "w", encoding="utf-8") as fh:
                fh.write(run_id + "\n")
        self.run: Any = wandb.init(
            project=g.wandb_project, entity=g.wandb_entity or None,
            name=g.wandb_run_name or os.path.basename(os.path.abspath(run_dir)),
            tags=list(g.wandb_tags), dir=run_dir, config=cfg.to_dict(), id=run_id,
            resume="allow")
        # Every row is one W&B history row, plotted against the learner step.
        self.run.define_metric(STEP_KEY)
        self.run.define_metric("*", step_metric=STEP_KEY)

    def log(self, row: Row) -> None:
        """One row: its finite numbers (the learner step among them)."""
        self.run.log({k: v for k, v in row.items()
                      if isinstance(v, (int, float)) and math.isfinite(v)})

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


#: Launchers whose start is the job's launch (an ancestor of rank 0's process).
LAUNCHERS = ("mpiexec", "mpirun", "mpiexec.hydra", "hydra_pmi_proxy", "prterun", "prted",
             "orterun", "orted", "srun", "slurmstepd")


def _process_start(pid: str) -> Tuple[float, str, int]:
    """(start in epoch seconds, command name, parent pid) of a process, from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
        stat = fh.read()
    name = stat[stat.index("(") + 1:stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = os.sysconf("SC_CLK_TCK")
    with open("/proc/stat", encoding="ascii") as fh:
        boot = next(float(line.split()[1]) for line in fh if line.startswith("btime"))
    return boot + int(fields[19]) / ticks, name, int(fields[1])


def launch_epoch() -> float:
    """When the job was launched, as close as this process can tell: the start of
    the earliest launcher among its ancestors (mpiexec, srun, ...), else its own
    start; now where /proc cannot tell."""
    try:
        start, _, parent = _process_start("self")
        for _ in range(4):
            if parent <= 1:
                break
            t, name, parent = _process_start(str(parent))
            if name not in LAUNCHERS:
                break
            start = min(start, t)
        return start
    except (OSError, ValueError, IndexError, StopIteration):
        return time.time()


def read_metrics(path: str) -> Tuple[List[str], List[Row]]:
    """A ``metrics.csv``'s field names and rows (empty cells as NaN)."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), [{k: _num(v) for k, v in r.items()}
                                               for r in reader]


def _num(v: Optional[str]) -> float:
    try:
        return float(v) if v not in (None, "") else math.nan
    except ValueError:
        return math.nan


class Budget(NamedTuple):
    """What ends the run, for progress and ETA (0 = not set)."""

    max_steps: int = 0
    max_env_steps: int = 0
    max_seconds: float = 0.0

    @classmethod
    def of(cls, cfg: Config) -> "Budget":
        return cls(cfg.learner.max_steps, cfg.actor.max_env_steps, cfg.learner.max_seconds)

    def eta(self, row: Row) -> Optional[float]:
        """Seconds until the first budget is spent at the row's rates (None: unknown)."""
        left = []
        ups, eps = row.get("updates_per_s", 0.0), row.get("env_steps_per_s", 0.0)
        if ((self.max_steps and row.get("learner_step", 0.0) >= self.max_steps)
                or (self.max_env_steps and row.get("env_steps", 0.0) >= self.max_env_steps)):
            return 0.0  # spent
        ups, eps = (v if v == v else 0.0 for v in (ups, eps))  # NaN: no rate yet
        if self.max_steps and ups > 0:
            left.append((self.max_steps - row.get("learner_step", 0.0)) / ups)
        if self.max_env_steps and eps > 0:
            left.append((self.max_env_steps - row.get("env_steps", 0.0)) / eps)
        if self.max_seconds and "train_seconds" in row:
            left.append(self.max_seconds - row["train_seconds"])
        return max(0.0, min(left)) if left else None


def _duration(seconds: float) -> str:
    """``45s``, ``12m05s``, ``3h07m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _finite(row: Row, key: str) -> bool:
    v = row.get(key)
    return v is not None and not (isinstance(v, float) and math.isnan(v))


def format_line(row: Row, budget: Budget = Budget()) -> str:
    """One plain log line with the figures people watch: progress against the
    budget, env steps and their rate, returns, loss, replay fill, the ETA."""
    parts = []
    step = row.get("learner_step", 0.0)
    if budget.max_steps:
        parts.append(f"step {step:.0f}/{budget.max_steps} ({100 * step / budget.max_steps:.0f}%)")
    else:
        parts.append(f"step {step:.0f}")
    for key, fmt in (("env_steps", "env {:.0f}"), ("episode_return", "return {:.1f}"),
                     ("eval_return", "eval {:.1f}"), ("final_eval_return", "final eval {:.1f}"),
                     ("updates_per_s", "{:.1f} upd/s"), ("env_steps_per_s", "{:.0f} env/s"),
                     ("loss", "loss {:.4f}")):
        if _finite(row, key):
            parts.append(fmt.format(row[key]))
    if _finite(row, "replay_fill"):
        parts.append(f"replay {100 * row['replay_fill']:.0f}%")
    elif _finite(row, "replay_sequences"):
        parts.append(f"replay {row['replay_sequences']:.0f}")
    eta = budget.eta(row)
    if eta is not None:
        parts.append(f"ETA {_duration(eta)}")
    return " | ".join(parts)


class ProgressPrinter:
    """Live one-line progress on a terminal, one plain line per row otherwise (a
    SLURM log). The ``[Ns]`` prefix is the row's ``wall_time_s``: seconds since
    the job's launch, the clock of metrics.csv, TensorBoard and summary.json."""

    def __init__(self, stream: TextIO = sys.stdout, budget: Budget = Budget()) -> None:
        self.stream = stream
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self.budget = budget

    def show(self, row: Row) -> None:
        line = f"[{row.get('wall_time_s', 0.0):7.0f}s] {format_line(row, self.budget)}"
        if self.live:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

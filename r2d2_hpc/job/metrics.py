"""Metrics of a run: CSV rows, optional TensorBoard events, plain log lines.

Only learner 0 writes metrics. A row is a flat ``{name: float}`` dict; the CSV
header is fixed by the first row's keys plus any later ones (the file is then
rewritten once with the wider header, so columns never shift).
"""
from __future__ import annotations

import csv
import math
import os
import sys
import time
from typing import Dict, List, Optional, TextIO, Tuple

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
                 step_key: str = "learner_step") -> None:
        self.path = os.path.join(run_dir, "metrics.csv")
        self.step_key = step_key
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
            for key, value in row.items():
                if key != self.step_key and isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, step)
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


def format_line(row: Row) -> str:
    """One plain log line with the figures people watch."""
    parts = []
    for key, fmt in (("learner_step", "step {:.0f}"), ("env_steps", "env {:.0f}"),
                     ("episode_return", "return {:.1f}"), ("eval_return", "eval {:.1f}"),
                     ("updates_per_s", "{:.1f} upd/s"), ("env_steps_per_s", "{:.0f} env/s"),
                     ("loss", "loss {:.4f}"), ("replay_sequences", "replay {:.0f}")):
        v = row.get(key)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            parts.append(fmt.format(v))
    return " | ".join(parts)


class ProgressPrinter:
    """Live one-line progress on a terminal, periodic plain lines otherwise."""

    def __init__(self, stream: TextIO = sys.stdout) -> None:
        self.stream = stream
        self.live = hasattr(stream, "isatty") and stream.isatty()
        self.start = time.monotonic()

    def show(self, row: Row) -> None:
        line = f"[{time.monotonic() - self.start:7.0f}s] {format_line(row)}"
        if self.live:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self.live:
            self.stream.write("\n")
            self.stream.flush()

"""What the benchmark scripts (and the tests that drive a job) share: finding mpiexec,
finding a running job's ranks, writing the JSON result."""
from __future__ import annotations

import csv
import functools
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence


def find_mpiexec() -> str:
    """The mpiexec beside this Python (the venv's MPICH from the [mpich] extra),
    else the one on PATH.

    Raises:
      SystemExit: naming the fix when there is none.
    """
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = here if os.path.exists(here) else shutil.which("mpiexec")
    if not found:
        raise SystemExit("mpiexec not found: install r2d2_hpc's [mpich] extra or a system MPI")
    return found


def r2d2_train() -> str:
    """The ``r2d2-train`` script beside this Python (a venv's, found when the venv
    is not on PATH), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "r2d2-train")
    return here if os.path.exists(here) else "r2d2-train"


@functools.lru_cache(maxsize=None)
def mpiexec_cmd() -> List[str]:
    """``[mpiexec, *flags]``: :func:`find_mpiexec` and what its MPI needs to run
    a job of more ranks than cores on one machine.

    ``R2D2_MPIEXEC_FLAGS`` (split like a shell line) gives the flags when set.
    Otherwise, for Open MPI (``mpiexec --version`` names it): ``--oversubscribe``
    (it refuses more ranks than cores by default) and, as root,
    ``--allow-run-as-root``; for MPICH none.
    """
    exe = find_mpiexec()
    flags = os.environ.get("R2D2_MPIEXEC_FLAGS")
    if flags is not None:
        return [exe, *shlex.split(flags)]
    try:
        version = subprocess.run([exe, "--version"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        version = ""
    if "Open MPI" in version or "OpenRTE" in version:
        return [exe, "--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return [exe]


def run_worker(script: str, ranks: int, worker_flag: str, args: Sequence[str] = (),
               overrides: Sequence[str] = (), threads: int = 1, timeout: float = 900.0,
               what: str = "benchmark worker") -> Dict[str, Any]:
    """Runs ``mpiexec -n RANKS python SCRIPT WORKER_FLAG OUT ARGS --set ...`` and
    returns the JSON its workers wrote to ``OUT`` (a temporary file).

    Args:
      script: the benchmark script (its worker mode writes the JSON).
      ranks: MPI ranks.
      worker_flag: the script's option that takes the output path.
      args: further arguments.
      overrides: config overrides, each passed as ``--set``.
      threads: ``OMP_NUM_THREADS`` of every rank.
      timeout: seconds before the run is killed.
      what: the run's name in the error.

    Raises:
      RuntimeError: with the command and the tails of its output, if it failed
        or wrote nothing.
    """
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "worker.json")
        cmd = [*mpiexec_cmd(), "-n", str(ranks), sys.executable, os.path.abspath(script),
               worker_flag, out, *args]
        for o in overrides:
            cmd += ["--set", o]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
        if proc.returncode != 0 or not os.path.exists(out):
            raise RuntimeError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                               f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        with open(out, encoding="utf-8") as fh:
            return json.load(fh)


def write_result(result: Dict[str, Any], out: Optional[str]) -> Dict[str, Any]:
    """Prints the result as JSON, also writes it to ``out`` if given, and
    returns it as read back from that JSON (plain types only).

    Args:
      result: the benchmark's result; numpy scalars are written as floats.
      out: a path, or None.
    """
    text = json.dumps(result, indent=1, default=float)
    print(text)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return json.loads(text)


def rank_pids(run_dir: str) -> List[int]:
    """PIDs of the job's Python ranks (their command line names the run dir)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as fh:
                cmd = fh.read().split(b"\0")
        except OSError:
            continue
        if cmd and b"python" in os.path.basename(cmd[0]) and b"r2d2_hpc.cli" in cmd \
                and run_dir.encode() in cmd:
            pids.append(int(d))
    return sorted(pids)


def _number(text: Optional[str]) -> float:
    try:
        return float(text) if text not in ("", None) else math.nan
    except ValueError:  # a row still being written
        return math.nan


def read_rows(path: str) -> List[Dict[str, float]]:
    """The rows of a run's ``metrics.csv`` as floats (NaN where empty); [] if it is missing."""
    try:
        with open(path, newline="") as fh:
            return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    except OSError:
        return []

"""What the benchmark scripts (and the tests that drive a job) share: finding mpiexec,
finding a running job's ranks, writing the JSON result."""
from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Dict, List, Optional


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

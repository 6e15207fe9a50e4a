"""Running the real job from a test: ``mpiexec`` beside this Python, the tiny settings, and
what every job test checks about the counters in ``summary.json``."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence, Tuple

from benchmarks._common import mpiexec_cmd
from r2d2_hpc.config import Config, load_config
from r2d2_hpc.presets import load_preset

#: The repository root.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Small, fast settings on top of the embedded default.
TINY = ["replay.min_fill_sequences=40", "actor.num_envs=8", "learner.batch_size=16",
        "network.lstm_size=32", "network.head_hidden=32", "network.mlp_hidden=[32]",
        "logging.log_interval_seconds=0.5", "logging.tensorboard=false",
        "learner.publish_period=2", "actor.param_refresh_period=16",
        # no rate limit: these tests are about plumbing, not learning (a limited
        # actor waits, and its parameter lag then depends on the machine's load)
        "replay.samples_per_insert=0"]

#: ``--set`` fields of each recurrent core for the job-level suites: the LSTM of
#: ``TINY``, or a small GTrXL (1 layer of width 16, 2 heads, memory 4) whose memory
#: the replay stores at each sequence start (the start state with the most to carry).
CORE_SETS = {"lstm": [],
             "gtrxl": ["network.core=gtrxl", "network.gtrxl_layers=1", "network.gtrxl_dim=16",
                       "network.gtrxl_heads=2", "network.gtrxl_memory_length=4",
                       "network.gtrxl_start_state=stored"]}
#: :data:`CORE_SETS` and the small GTrXL started from an empty memory rebuilt
#: during burn-in (``gtrxl_zero``), for the end-to-end suite.
START_STATE_SETS = {**CORE_SETS,
                    "gtrxl_zero": CORE_SETS["gtrxl"][:-1] + ["network.gtrxl_start_state=zero"]}


def tiny_job_config(*extra: str) -> Config:
    """The embedded default with :data:`TINY` and ``extra`` overrides."""
    return load_config(None, TINY + list(extra), base=load_preset("default"))


def by_role(ranks: Sequence[Dict[str, Any]], role: str) -> List[Dict[str, Any]]:
    """The summaries of one role, in rank order."""
    return [r for r in ranks if r["role"] == role]


def check_nothing_lost(ranks: Sequence[Dict[str, Any]]) -> None:
    """Every sequence, step and chunk an actor sent reached a shard."""
    actors, shards = by_role(ranks, "actor"), by_role(ranks, "replay")
    sent = sum(a["sequences_sent"] for a in actors)
    stored = sum(s["inserted_sequences"] + s["dropped_sequences"] for s in shards)
    assert sent == stored > 0
    assert sum(a["steps_sent"] for a in actors) == sum(s["steps_received"] for s in shards)
    assert sum(a["chunks_sent"] for a in actors) == sum(s["chunks_received"] for s in shards)


def launch(n: int, args: Sequence[str], cwd: Any,
           timeout: float = 240) -> Tuple[subprocess.CompletedProcess, float]:
    """``mpiexec -n N python -m r2d2_hpc.cli --quiet ARGS``; (process, wall seconds)."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [*mpiexec_cmd(), "-n", str(n), sys.executable, "-m", "r2d2_hpc.cli", "--quiet"] + list(args)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    return proc, time.monotonic() - t0


def sets(*fields: str) -> List[str]:
    """``--set F`` for each field."""
    out: List[str] = []
    for f in fields:
        out += ["--set", f]
    return out

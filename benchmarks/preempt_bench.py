"""Preemption benchmark: signal -> every rank exited, and resume -> training again, ~1 GB replay.

Everything goes through the real job (``mpiexec -n 4 python -m r2d2_hpc.cli``,
what ``r2d2-train`` and ``slurm/*.sh`` run) on Atari Pong
(``configs/pong_workstation.yaml``, shrunk for a small CPU machine by
:data:`FULL_SETTINGS`: learner on the CPU, a small MLP torso so the actors are
fast, one replay shard, no periodic checkpoint, a replay rate limit so the
learner does not starve the actors):

1. **Fill.** Start the job in a fresh run directory and poll its
   ``metrics.csv`` until the replay holds ``--target-bytes`` (default 1e9).
   Replay bytes are what the shard stores for its contents (not what it
   allocated): ``replay_observations x ring row + replay_sequences x sequence
   row``, the ring row being one 84x84 uint8 frame plus its action, reward,
   discount and first flag (7,073 B) and the sequence row a live sequence's
   table entries (ring positions, LSTM state h and c, prev action/reward,
   start step, length) plus its slot entries (stream, oldest, priority,
   generation, live, sum-tree leaf); row sizes come from
   ``ShardSpec.field_layout()`` (:func:`row_bytes`), the two counts from the
   learner's metrics row (the shards' SHARD_STATS).
2. **Preempt.** ``SIGUSR1`` to the ``mpiexec`` process, as the batch script's
   trap forwards SLURM's ``--signal=B:USR1@120`` to the job step (MPICH's
   Hydra passes it on to every rank); ``--signal-to rank`` signals one actor
   rank instead (``scancel --signal=USR1`` without ``--batch``, or a ``kill``).
   Measured: wall seconds from ``os.kill`` until ``mpiexec`` returned (every
   rank exited), its exit code (must be 3), the complete checkpoint
   (``find_latest_valid``, deep: every crc32) and its bytes (the manifest's
   file sizes), and a breakdown from the run's own records: when the
   checkpoint began and was committed (``summary.json``: the lead's
   ``stop_time`` and ``checkpoint_seconds``), when each rank left its loop
   (``exit_time``), when the end-of-run files were written (file mtimes).
3. **Restore, offline.** The job logs no restore time, so the benchmark times
   the functions the ranks call, in its own process, on the checkpoint just
   written (page cache warm): ``resume_point`` (rank 0, deep validation),
   ``read_learner`` (learner) and ``restore_shard`` (replay shard).
4. **Resume.** The same command again: the run directory holds a checkpoint,
   so the job resumes by itself. Measured from the launch: the
   ``resuming from checkpoint`` line on stdout (rank 0 validated it), the
   first new metrics row (the learner's loop runs) and the first row whose
   ``learner_step`` is past the checkpoint's (training continues). Metric rows
   come every ``logging.log_interval_seconds`` (0.25 s) and the file is
   polled every 0.05 s, so the last figure is late by at most ~0.3 s.
   ``summary.json`` then shows whether the learner and shard state resumed
   bit for bit (digests).
5. **Second preemption.** ``SIGUSR1`` again, which also ends the resumed run:
   this checkpoint hard-links the unchanged replay segments of the first one
   and writes only what changed (the usual case with periodic checkpoints).

Usage::

    python benchmarks/preempt_bench.py [--quick] [--out FILE] [--target-bytes 1e9]
                                       [--signal-to mpiexec|rank] [--run-dir DIR]

``--quick`` fills a tiny replay (~2 MB) and takes well under a minute. The
JSON goes to stdout and to ``--out``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, ROOT)
from benchmarks._common import find_mpiexec, mpiexec_cmd, rank_pids, write_result  # noqa: E402

from r2d2_hpc.checkpoint.preemption import EXIT_REQUEUE  # noqa: E402
from r2d2_hpc.checkpoint.records import CheckpointInfo, LEARNER_FILE  # noqa: E402
from r2d2_hpc.checkpoint.restore import read_learner, restore_shard  # noqa: E402
from r2d2_hpc.checkpoint.resume import resume_point  # noqa: E402
from r2d2_hpc.checkpoint.validate import find_latest_valid  # noqa: E402
from r2d2_hpc.comm.topology import assign_role  # noqa: E402
from r2d2_hpc.config import Config, load_config  # noqa: E402
from r2d2_hpc.replay.layout import SEQUENCE_FIELDS, SLOT_FIELDS, STEP_FIELDS  # noqa: E402

#: The base config: the Pong workstation job (paper protocol and replay layout).
CONFIG_FILE = os.path.join("configs", "pong_workstation.yaml")

#: On top of CONFIG_FILE: a 4-rank job on a small CPU machine whose replay fills
#: to ~1 GB in minutes. Periodic checkpoints are off, so the signal's checkpoint
#: writes the whole replay (the worst case).
COMMON_SETTINGS = [
    "learner.device=cpu", "network.torso=mlp", "topology.replay_shards=1",
    "actor.max_env_steps=0", "checkpoint.interval_seconds=0",
    "logging.log_interval_seconds=0.25", "logging.tensorboard=false",
    "logging.eval_interval_steps=0", "logging.final_eval_episodes=0",
]
FULL_SETTINGS = COMMON_SETTINGS + [
    "network.mlp_hidden=[32]", "network.lstm_size=64", "network.head_hidden=64",
    "actor.num_envs=32", "replay.capacity_observations=160000",
    "replay.min_fill_sequences=64", "replay.samples_per_insert=0.25",
    "learner.batch_size=16",
]
QUICK_SETTINGS = COMMON_SETTINGS + [
    "network.mlp_hidden=[16]", "network.lstm_size=16", "network.head_hidden=16",
    "actor.num_envs=4", "replay.capacity_observations=4000",
    "replay.min_fill_sequences=8", "replay.samples_per_insert=1.0",
    "learner.batch_size=4",
]
#: SLURM's grace with ``--signal=B:USR1@120``.
SLURM_GRACE_S = 120.0
POLL_S = 0.05


# --------------------------------------------------------------------------- #
# Pure helpers.

def row_bytes(layout: Mapping[str, Tuple[Tuple[int, ...], Any]]) -> Dict[str, int]:
    """Bytes per stored observation and per live sequence of a replay shard.

    ``observation = sum over STEP_FIELDS of prod(row shape) * itemsize`` (the
    frame, action, reward, discount, first flag of one ring row);
    ``sequence = the same over SEQUENCE_FIELDS + SLOT_FIELDS`` (a sequence's
    table entries and its slot entries, sum-tree leaf included). With 84x84
    uint8 frames: observation = 7056 + 8 + 4 + 4 + 1 = 7073.

    Args:
      layout: ``ShardSpec.field_layout()``: field -> (row shape, numpy dtype).

    Returns:
      ``{"observation": bytes, "sequence": bytes}``.
    """
    import numpy as np

    def size(names: Sequence[str]) -> int:
        return int(sum(int(np.prod(layout[n][0], dtype=np.int64)) * np.dtype(layout[n][1]).itemsize
                       for n in names))

    return {"observation": size(STEP_FIELDS),
            "sequence": size(tuple(SEQUENCE_FIELDS) + tuple(SLOT_FIELDS))}


def replay_bytes(observations: float, sequences: float, rows: Mapping[str, int]) -> int:
    """Bytes of replay contents: ``observations * rows.observation + sequences * rows.sequence``.

    Args:
      observations: stored observations (ring rows holding a step), all shards.
      sequences: live sequences, all shards.
      rows: :func:`row_bytes` output.

    Returns:
      The byte count (0 for NaN counts: no metrics row had them yet).
    """
    o = 0 if math.isnan(observations) else int(observations)
    s = 0 if math.isnan(sequences) else int(sequences)
    return o * int(rows["observation"]) + s * int(rows["sequence"])


def first_row_after(rows: Sequence[Mapping[str, float]], start: int, step: float
                    ) -> Optional[int]:
    """Index of the first row at or after ``start`` whose ``learner_step`` exceeds ``step``.

    Args:
      rows: metric rows in file order.
      start: first index to look at (rows before it belong to an earlier run).
      step: the learner step to get past (the checkpoint's).

    Returns:
      The index, or None if no such row.
    """
    for i in range(max(0, start), len(rows)):
        v = rows[i].get("learner_step", math.nan)
        if not math.isnan(v) and v > step:
            return i
    return None


def first_crossing(samples: Sequence[Tuple[float, float]], threshold: float
                   ) -> Optional[float]:
    """Time of the first ``(time, value)`` sample whose value reaches ``threshold``.

    Args:
      samples: ``(time, value)`` in time order.
      threshold: the value to reach (``>=``).

    Returns:
      That sample's time, or None if no sample reaches it.
    """
    for t, v in samples:
        if v >= threshold:
            return t
    return None


def within_grace(seconds: float, grace: float = SLURM_GRACE_S) -> Dict[str, Any]:
    """How ``seconds`` (signal -> all exited) compares with SLURM's grace.

    Returns:
      ``{"grace_s", "fraction_of_grace" (seconds / grace), "within_grace"
      (seconds < grace)}``.
    """
    return {"grace_s": grace, "fraction_of_grace": seconds / grace,
            "within_grace": bool(seconds < grace)}


# --------------------------------------------------------------------------- #
# The job.

def train_command(run_dir: str, settings: Sequence[str], ranks: int) -> List[str]:
    """``mpiexec -n RANKS python -m r2d2_hpc.cli --quiet --run-dir RUN --config ... --set ...``."""
    cmd = [*mpiexec_cmd(), "-n", str(ranks), sys.executable, "-m", "r2d2_hpc.cli", "--quiet",
           "--run-dir", run_dir, "--config", CONFIG_FILE]
    for s in settings:
        cmd += ["--set", s]
    return cmd


class Job:
    """One launch of the job: the process, its output lines with arrival times."""

    def __init__(self, cmd: Sequence[str]) -> None:
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.lines: List[Tuple[float, str, str]] = []  # (monotonic, stream, line)
        self.t_launch = time.monotonic()
        # own session: on a failure the whole job is ended by its process group
        self.proc = subprocess.Popen(list(cmd), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._threads = [threading.Thread(target=self._read, args=(s, n), daemon=True)
                         for s, n in ((self.proc.stdout, "stdout"), (self.proc.stderr, "stderr"))]
        for t in self._threads:
            t.start()

    def _read(self, stream: Any, name: str) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), name, line.rstrip("\n")))

    def line_at(self, text: str) -> Optional[float]:
        """Monotonic arrival time of the first stdout line containing ``text``."""
        for t, name, line in list(self.lines):
            if name == "stdout" and text in line:
                return t
        return None

    def line_time(self, text: str) -> Optional[float]:
        """Seconds from launch to the first stdout line containing ``text``."""
        t = self.line_at(text)
        return None if t is None else t - self.t_launch

    def output(self, stream: str = "", tail: int = 40) -> str:
        lines = [line for _, n, line in list(self.lines) if not stream or n == stream]
        return "\n".join(lines[-tail:])

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=5.0)
        return rc

    def kill(self) -> None:
        """Ends the job (its own process group) if it still runs."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=30)


def _proc_sample(pid: int) -> Optional[Tuple[int, float, int]]:
    """``(bytes read through read syscalls, CPU seconds, RSS bytes)`` of a live
    process; None once it has exited (gone, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        if fields[0] in ("Z", "X"):
            return None
        with open(f"/proc/{pid}/io", encoding="ascii") as fh:
            rchar = int(fh.readline().split()[1])
        cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        rss = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        return rchar, cpu, rss
    except (OSError, IndexError, ValueError):
        return None


def _mpi_rank(pid: int) -> Optional[int]:
    """The MPI rank of a process launched by Hydra (its ``PMI_RANK``)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as fh:
            for item in fh.read().split(b"\0"):
                if item.startswith(b"PMI_RANK="):
                    return int(item.split(b"=", 1)[1])
    except (OSError, ValueError):
        pass
    return None


class RankMonitor:
    """Samples every rank's bytes read, CPU time and RSS every ``period`` seconds.

    Ranks are found by their command line (the run dir) and told apart by
    ``PMI_RANK``. During a resume it shows when the replay rank has read the
    checkpoint's replay files (``rchar`` counts page-cache hits too); during a
    preemption, when each rank's process was last seen alive.
    """

    def __init__(self, run_dir: str, ranks: int, period: float = 0.1) -> None:
        self.run_dir, self.ranks, self.period = run_dir, ranks, period
        #: rank -> [(monotonic time, rchar, cpu seconds, rss bytes)]
        self.samples: Dict[int, List[Tuple[float, int, float, int]]] = {}
        self._pids: Dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            if len(self._pids) < self.ranks:  # ranks appear during the startup
                for pid in rank_pids(self.run_dir):
                    if pid not in self._pids.values():
                        rank = _mpi_rank(pid)
                        if rank is not None:
                            self._pids[rank] = pid
            for rank, pid in list(self._pids.items()):
                got = _proc_sample(pid)
                if got is not None:
                    self.samples.setdefault(rank, []).append((time.monotonic(),) + got)
            self._stop.wait(self.period)

    def wait_for_ranks(self, timeout: float) -> bool:
        """Waits until every rank was sampled once; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.samples) >= self.ranks:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def report(self, ref: float, replay_ranks: Sequence[int] = (),
               replay_file_bytes: int = 0) -> Dict[str, Any]:
        """Per rank, in seconds after ``ref`` (a monotonic time): first and last
        seen alive, and at the last sample its CPU seconds, RSS and bytes read;
        with ``replay_file_bytes``: when each replay rank's ``rchar`` reached its
        share of the checkpoint's replay files (one shard: all of them)."""
        per_rank = {}
        for rank, smp in sorted(self.samples.items()):
            per_rank[str(rank)] = {"first_seen_s": smp[0][0] - ref,
                                   "last_seen_s": smp[-1][0] - ref, "cpu_s": smp[-1][2],
                                   "rss_bytes": smp[-1][3], "read_bytes": smp[-1][1]}
        out: Dict[str, Any] = {"ranks": per_rank, "sample_period_s": self.period}
        if replay_file_bytes:
            share = replay_file_bytes / max(1, len(replay_ranks))
            done = [first_crossing([(t - ref, r) for t, r, _, _ in self.samples.get(k, [])],
                                   share) for k in replay_ranks]
            out["replay_ranks_read_checkpoint_s"] = done
        return out


def read_metrics(run_dir: str) -> List[Dict[str, float]]:
    """Rows of ``RUN_DIR/metrics.csv`` as floats (NaN for empty cells); [] if absent."""
    path = os.path.join(run_dir, "metrics.csv")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except FileNotFoundError:
        return []
    out = []
    for r in rows:
        row = {}
        for k, v in r.items():
            try:
                row[k] = float(v) if v not in (None, "") else math.nan
            except ValueError:
                row[k] = math.nan
        out.append(row)
    return out


def send_signal(job: Job, run_dir: str, target: str) -> Tuple[float, float, str]:
    """SIGUSR1 to mpiexec or to the job's last rank (an actor).

    Returns:
      ``(monotonic time, wall time, what was signalled)`` at the ``os.kill``.
    """
    if target == "mpiexec":
        pid, what = job.proc.pid, "mpiexec"
    else:
        pids = rank_pids(run_dir)
        if not pids:
            raise RuntimeError("no rank process found to signal")
        pid, what = pids[-1], "one rank (the highest pid: an actor)"
    t, wall = time.monotonic(), time.time()
    os.kill(pid, signal.SIGUSR1)
    return t, wall, what


def summary(run_dir: str) -> List[Dict[str, Any]]:
    with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as fh:
        return json.load(fh)


def checkpoint_files(info: CheckpointInfo) -> Dict[str, Any]:
    """Bytes of a checkpoint by the manifest, and which files are hard links.

    Returns:
      ``{"bytes", "files", "learner_bytes", "replay_file_bytes",
      "inodes": {(dev, ino), ...}}``.
    """
    files = info.manifest["files"]
    inodes = {_inode(os.path.join(info.path, rel)) for rel in files}
    total = sum(int(e["nbytes"]) for e in files.values())
    return {"bytes": total, "files": len(files),
            "learner_bytes": int(files[LEARNER_FILE]["nbytes"]),
            "replay_file_bytes": sum(int(e["nbytes"]) for r, e in files.items()
                                     if r.startswith("shard-")),
            "inodes": inodes}


def preempt(job: Job, run_dir: str, target: str, rows: Mapping[str, int], ranks: int,
            timeout: float) -> Dict[str, Any]:
    """Signals the running job, waits for it, and describes what it left."""
    monitor = RankMonitor(run_dir, ranks)
    monitor.wait_for_ranks(10.0)
    t_sig, wall_sig, what = send_signal(job, run_dir, target)
    try:
        rc = job.wait(timeout)
    except subprocess.TimeoutExpired:
        job.kill()
        raise RuntimeError(f"the job did not exit within {timeout} s of SIGUSR1")
    finally:
        monitor.stop()
    seconds = time.monotonic() - t_sig
    if rc != EXIT_REQUEUE:
        raise RuntimeError(f"exit code {rc}, expected {EXIT_REQUEUE}:\n{job.output()}")
    ranks = summary(run_dir)
    lead = ranks[0]
    info = find_latest_valid(run_dir, report=None, deep=True)
    if info is None or info.name != lead["checkpoints"][-1]:
        raise RuntimeError(f"no complete, valid checkpoint {lead['checkpoints']} in {run_dir}")
    files = checkpoint_files(info)
    fill_obs = sum(int(s["stored_observations"]) for s in info.shards)
    fill_seq = sum(int(s["live_sequences"]) for s in info.shards)
    write_s = float(lead["checkpoint_seconds"][-1])
    commit_wall = float(lead["stop_time"])  # set right after the commit's rename

    def mtime(name: str) -> Optional[float]:
        p = os.path.join(run_dir, name)
        return os.stat(p).st_mtime - wall_sig if os.path.exists(p) else None

    return {
        "signalled": what,
        "signal_to_all_exited_s": seconds,
        "exit_code": rc,
        "every_rank_exit_code": sorted({int(r["exit_code"]) for r in ranks}),
        "stop_reason": lead["stop_reason"],
        **within_grace(seconds),
        "checkpoint_write_s": write_s,
        "breakdown_after_signal_s": {
            "checkpoint_started": commit_wall - write_s - wall_sig,
            "checkpoint_committed": commit_wall - wall_sig,
            "ranks_left_loop": {f"{r['role']} {r['index']}": float(r["exit_time"]) - wall_sig
                                for r in ranks},
            "summary_json_written": mtime("summary.json"),
            "learning_curve_png_written": mtime("learning_curve.png"),
            "learner_final_h5_written": mtime("learner_final.h5"),
            "done_line_printed": (None if job.line_at("r2d2-train: done:") is None
                                  else job.line_at("r2d2-train: done:") - t_sig),
            "mpiexec_returned": seconds,
            "processes": monitor.report(t_sig)["ranks"],
        },
        "checkpoint": {
            "name": info.name, "step": info.step, "valid_deep": info.deep_verified,
            "bytes": files["bytes"], "files": files["files"],
            "learner_bytes": files["learner_bytes"],
            "replay_file_bytes": files["replay_file_bytes"],
            "replay_observations": fill_obs, "replay_sequences": fill_seq,
            "replay_bytes": replay_bytes(fill_obs, fill_seq, rows),
            "counters": info.counters,
        },
        "_info": info, "_inodes": files["inodes"], "_ranks": ranks,
    }


def restore_offline(run_dir: str, cfg: Config, spec: Any) -> Dict[str, Any]:
    """Times what the resuming ranks call, here in one process (page cache warm).

    Returns:
      Seconds of ``resume_point`` (rank 0: find + deep validation +
      compatibility), ``read_learner`` (learner) and ``restore_shard`` of every
      shard (replay ranks, exact restore).
    """
    t0 = time.perf_counter()
    info = resume_point(run_dir, cfg, spec, report=None, deep=True)
    t1 = time.perf_counter()
    learner = read_learner(info)
    t2 = time.perf_counter()
    restored = []
    for i in range(info.num_shards):
        shard = restore_shard(info, i, info.num_shards, num_envs=cfg.actor.num_envs,
                                 seed=0)
        restored.append(shard.num_steps)
        del shard
    t3 = time.perf_counter()
    del learner
    return {"resume_point_deep_validate_s": t1 - t0, "read_learner_s": t2 - t1,
            "restore_shards_s": t3 - t2, "restored_observations": int(sum(restored)),
            "note": "timed in the benchmark's process with the checkpoint's files in the "
                    "page cache (just written); the job itself logs no restore time"}


def machine_info() -> Dict[str, Any]:
    try:
        cpus_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus_usable = os.cpu_count()
    mem = None
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    import torch
    return {"cpus": os.cpu_count(), "cpus_usable": cpus_usable, "memory_bytes": mem,
            "load_average_start": list(os.getloadavg()), "python": platform.python_version(),
            "torch": torch.__version__, "platform": platform.platform(),
            "mpiexec": find_mpiexec()}


def bench_config(settings: Sequence[str]) -> Config:
    """The effective config of the benchmark's job (as the CLI builds it)."""
    return load_config(os.path.join(ROOT, CONFIG_FILE), list(settings))


def fill(job: Job, run_dir: str, target: int, rows: Mapping[str, int],
         timeout: float) -> Dict[str, Any]:
    """Waits until the replay holds ``target`` bytes and the learner has stepped."""
    deadline = time.monotonic() + timeout
    last: Dict[str, float] = {}
    started: Dict[str, float] = {}
    while time.monotonic() < deadline:
        if job.proc.poll() is not None:
            raise RuntimeError(f"the job ended (exit {job.proc.returncode}) while filling:\n"
                               f"{job.output()}")
        metrics = read_metrics(run_dir)
        if metrics and not started:
            started = loop_start(time.monotonic() - job.t_launch, metrics[0])
            started["launch_to_setup_line_s"] = job.line_time("r2d2-train plan:")
        if metrics:
            last = metrics[-1]
            got = replay_bytes(last.get("replay_observations", math.nan),
                               last.get("replay_sequences", math.nan), rows)
            if got >= target and last.get("learner_step", 0) >= 1:
                return {**started, "seconds_from_launch": time.monotonic() - job.t_launch,
                        "replay_observations": int(last["replay_observations"]),
                        "replay_sequences": int(last["replay_sequences"]),
                        "replay_bytes": got, "learner_step": int(last["learner_step"]),
                        "env_steps": int(last["env_steps"]),
                        "job_wall_time_s": last.get("wall_time_s")}
        time.sleep(0.5 if started else POLL_S)
    job.kill()
    raise RuntimeError(f"the replay did not reach {target} bytes in {timeout} s; last row "
                       f"{last}")


def loop_start(seen: float, row: Mapping[str, float]) -> Dict[str, float]:
    """When the learner's loop started, from the first metrics row of a launch.

    A row's ``wall_time_s`` counts from the learner rank's construction (after
    its restore), so ``seen - wall_time_s`` is that moment (the row was seen
    late by at most one poll).

    Args:
      seen: seconds from the launch to when the row was seen.
      row: the launch's first metrics row.

    Returns:
      ``{"launch_to_first_metrics_row_s", "launch_to_learner_loop_start_s"}``.
    """
    return {"launch_to_first_metrics_row_s": seen,
            "launch_to_learner_loop_start_s": seen - float(row.get("wall_time_s", 0.0))}


def resume(job: Job, run_dir: str, step: int, rows_before: int, timeout: float
           ) -> Dict[str, Any]:
    """Waits for the first learner step past ``step`` in the resumed run's metrics."""
    deadline = time.monotonic() + timeout
    started: Dict[str, float] = {}
    while time.monotonic() < deadline:
        if job.proc.poll() is not None:
            raise RuntimeError(f"the resumed job ended (exit {job.proc.returncode}):\n"
                               f"{job.output()}")
        metrics = read_metrics(run_dir)
        now = time.monotonic() - job.t_launch
        if not started and len(metrics) > rows_before:
            started = loop_start(now, metrics[rows_before])
        i = first_row_after(metrics, rows_before, step)
        if i is not None:
            return {"launch_to_setup_line_s": job.line_time("r2d2-train plan:"),
                    "launch_to_resuming_line_s": job.line_time("resuming from checkpoint"),
                    **started,
                    "launch_to_first_learner_step_s": now,
                    "first_row_after_resume": {k: metrics[i][k] for k in
                                               ("learner_step", "env_steps", "wall_time_s",
                                                "replay_observations", "replay_sequences")}}
        time.sleep(POLL_S)
    job.kill()
    raise RuntimeError(f"no learner step past {step} within {timeout} s of the resume:\n"
                       f"{job.output()}")


def resume_cycle(cmd: Sequence[str], run_dir: str, prev: Dict[str, Any],
                 rows: Mapping[str, int], replay_ranks: Sequence[int], ranks: int,
                 signal_to: str, jobs: List[Job]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The requeued job (the same command) resumes from ``prev``'s checkpoint; once
    it trains again it is preempted once more (an incremental checkpoint).

    Returns:
      ``(this cycle's JSON, the new preemption's record)``.
    """
    step = prev["checkpoint"]["step"]
    rows_before = len(read_metrics(run_dir))
    job = Job(cmd)
    jobs.append(job)
    monitor = RankMonitor(run_dir, ranks)
    try:
        res = resume(job, run_dir, step, rows_before, timeout=600.0)
    finally:
        monitor.stop()
    res["processes"] = monitor.report(job.t_launch, replay_ranks,
                                      prev["checkpoint"]["replay_file_bytes"])
    nxt = preempt(job, run_dir, signal_to, rows, ranks, timeout=600.0)
    old_ranks, new_ranks = prev["_ranks"], nxt["_ranks"]
    lead = new_ranks[0]
    res["resumed_from"] = lead["resumed_from"]
    if lead["learner_step"] > lead["resumed_from"] and lead["compute_seconds"]:
        res["learner_step_compute_s_mean"] = (lead["compute_seconds"]
                                              / (lead["learner_step"] - lead["resumed_from"]))
    res["learner_state_bit_exact"] = (lead["resume_digest"]
                                      == old_ranks[0]["checkpoint_digests"][str(step)])
    res["replay_state_bit_exact"] = all(
        new["resume_digest"] == old["checkpoint_digests"][str(step)]
        for old, new in zip(old_ranks, new_ranks) if new["role"] == "replay")
    res["restore_time_logged_by_job"] = False
    info: CheckpointInfo = nxt["_info"]
    files = info.manifest["files"]
    new_files = [rel for rel in files if _inode(os.path.join(info.path, rel))
                 not in prev["_inodes"]]
    out = public(nxt)
    out["checkpoint"].update(bytes_new=sum(int(files[r]["nbytes"]) for r in new_files),
                             files_new=len(new_files),
                             hard_linked_from=prev["checkpoint"]["name"])
    return {"resume": res, "preempt": out}, nxt


def _inode(path: str) -> Tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def public(d: Dict[str, Any]) -> Dict[str, Any]:
    """``d`` without its private (``_``) entries."""
    return {k: v for k, v in d.items() if not k.startswith("_")}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny replay (~2 MB), seconds")
    p.add_argument("--target-bytes", type=float, default=None,
                   help="replay bytes to fill before the signal (default 1e9; quick 2e6)")
    p.add_argument("--signal-to", choices=("mpiexec", "rank"), default="mpiexec",
                   help="SIGUSR1 to mpiexec (as slurm/*.sh forward it; default) or one rank")
    p.add_argument("--ranks", type=int, default=None,
                   help="MPI ranks (default 4: learner, shard, 2 actors; quick 3)")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   metavar="SECTION.FIELD=VALUE", help="extra config override (repeatable)")
    p.add_argument("--run-dir", default=None,
                   help="run directory (default: a temporary one, removed afterwards)")
    p.add_argument("--fill-timeout", type=float, default=1800.0,
                   help="seconds to wait for the replay to fill (default 1800)")
    p.add_argument("--cycles", type=int, default=None,
                   help="resume + preempt cycles after the first preemption (default 2; "
                        "quick 1)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    if a.cycles is None:
        a.cycles = 1 if a.quick else 2
    if a.ranks is None:
        a.ranks = 3 if a.quick else 4
    if a.cycles < 1:
        p.error("--cycles must be >= 1")
    settings = (QUICK_SETTINGS if a.quick else FULL_SETTINGS) + list(a.overrides)
    target = int(a.target_bytes if a.target_bytes is not None else (2e6 if a.quick else 1e9))
    machine = machine_info()

    from r2d2_hpc.job.role import job_spec
    from r2d2_hpc.job.replay import make_shard

    cfg = bench_config(settings)
    own_dir = a.run_dir is None
    parent = tempfile.mkdtemp(prefix="preempt_bench-") if own_dir else None
    run_dir = os.path.abspath(a.run_dir or os.path.join(parent, "run"))
    if os.path.exists(os.path.join(run_dir, "checkpoints")):
        p.error(f"--run-dir {run_dir} already holds checkpoints; use a fresh directory")
    cmd = train_command(run_dir, settings, a.ranks)
    result: Dict[str, Any] = {
        "benchmark": "preempt",
        "quick": a.quick,
        "command": shlex.join(cmd),
        "command_argv": cmd,
        "config": {"file": CONFIG_FILE, "settings": list(settings), "env": cfg.env.name,
                   "game": cfg.env.game, "ranks": a.ranks,
                   "replay_shards": cfg.topology.replay_shards,
                   "capacity_observations": cfg.replay.capacity_observations,
                   "sequence_length": cfg.replay.sequence_length,
                   "sequence_period": cfg.replay.sequence_period,
                   "num_envs_per_actor": cfg.actor.num_envs},
        "machine": machine,
        "replay_bytes_definition": (
            "stored contents, not allocation: stored observations x ring row bytes + live "
            "sequences x (sequence table + slot) row bytes, from ShardSpec.field_layout(); "
            "counts from the metrics row (fill) or the checkpoint manifest (checkpoint)"),
        "target_replay_bytes": target,
    }
    replay_ranks = [r for r in range(a.ranks)
                    if assign_role(r, a.ranks, cfg.topology).role == "replay"]
    jobs: List[Job] = []
    try:
        job = Job(cmd)
        jobs.append(job)
        # The job's shapes, while the job starts: row sizes for the fill figure.
        spec = job_spec(cfg)
        rows = row_bytes(make_shard(cfg, spec, 0, cfg.topology.replay_shards).spec
                         .field_layout())
        result["row_bytes"] = rows
        result["fill"] = fill(job, run_dir, target, rows, a.fill_timeout)
        first = preempt(job, run_dir, a.signal_to, rows, a.ranks, timeout=600.0)
        result["preempt"] = public(first)
        result["restore_offline"] = restore_offline(run_dir, cfg, spec)
        cycles, prev = [], first
        for _ in range(a.cycles):
            res, prev = resume_cycle(cmd, run_dir, prev, rows, replay_ranks, a.ranks,
                                     a.signal_to, jobs)
            cycles.append(res)
        result["resume_cycles"] = cycles
    finally:
        for j in jobs:
            j.kill()
        if own_dir and parent:
            shutil.rmtree(parent, ignore_errors=True)
    pre = result["preempt"]
    result["headline"] = {
        "replay_bytes_at_checkpoint": pre["checkpoint"]["replay_bytes"],
        "checkpoint_bytes": pre["checkpoint"]["bytes"],
        "signal_to_all_exited_s": pre["signal_to_all_exited_s"],
        "checkpoint_write_s": pre["checkpoint_write_s"],
        "exit_code": pre["exit_code"],
        "within_slurm_grace_120s": pre["within_grace"],
        "resume_launch_to_first_learner_step_s": [
            c["resume"]["launch_to_first_learner_step_s"] for c in result["resume_cycles"]],
        "resume_bit_exact": all(c["resume"]["learner_state_bit_exact"]
                                and c["resume"]["replay_state_bit_exact"]
                                for c in result["resume_cycles"]),
        "incremental_signal_to_all_exited_s": [
            c["preempt"]["signal_to_all_exited_s"] for c in result["resume_cycles"]],
    }
    result["machine"]["load_average_end"] = list(os.getloadavg())
    return write_result(result, a.out)


if __name__ == "__main__":
    main()

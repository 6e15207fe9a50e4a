"""A rank dying, through the real entry point under mpiexec: the whole job ends
within a bounded time, non-zero, with one message naming the rank and its role,
and the newest committed checkpoint stays intact.

Bound: an exception on any rank aborts the job (``comm.Abort``) at once; a rank
killed outright is noticed by mpiexec, which ends the others. Both finish well
within :data:`BOUND_S` of the failure here.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from benchmarks._common import rank_pids
from r2d2_hpc.checkpoint.records import list_checkpoints
from r2d2_hpc.checkpoint.validate import find_latest_valid
from tests.helpers.launcher import ROOT, TINY, launch, mpiexec_cmd, sets

#: Seconds from the failure to the end of the job that the tests allow.
BOUND_S = 30.0
#: Periodic checkpoints every few steps, a budget the failure comes before.
FAULT_RUN = [*TINY, "learner.max_steps=1000000", "checkpoint.interval_steps=10",
             "checkpoint.keep=2"]
FAIL_AFTER_S = 10.0


def newest_checkpoint_is_intact(run) -> None:
    info = find_latest_valid(str(run), report=None, deep=True)
    assert info is not None and info.step >= 10, "no committed checkpoint survived"


@pytest.mark.parametrize("role, index, rank, what", [
    ("learner", 0, 0, ""), ("learner", 0, 0, ":checkpoint"), ("replay", 0, 1, ""),
    ("actor", 1, 3, "")])
def test_a_crash_on_any_rank_ends_the_job_naming_it(tmp_path, role, index, rank, what):
    """``:checkpoint``: learner 0 fails while the shards write a checkpoint it started."""
    run = tmp_path / "run"
    proc, seconds = launch(4, ["--run-dir", str(run), "--inject-failure",
                               f"{role}:{index}:{FAIL_AFTER_S:g}{what}"] + sets(*FAULT_RUN),
                           tmp_path, timeout=180)
    assert proc.returncode not in (0, 2, 3, 4), proc.stdout + proc.stderr
    assert proc.stderr.count(f"rank {rank} ({role} {index}) failed; aborting the whole job") \
        == 1, proc.stderr
    assert f"injected failure in {role} {index}" in proc.stderr
    # start-up (a few seconds), the failure at 10 s of the loop, then the abort
    assert seconds < FAIL_AFTER_S + BOUND_S + 20
    newest_checkpoint_is_intact(run)
    if what:
        assert "during a checkpoint" in proc.stderr
        partial = [n for n in os.listdir(run / "checkpoints") if n.startswith(".partial-ckpt-")]
        assert len(partial) == 1  # the interrupted one, never taken for a checkpoint
        newest = find_latest_valid(str(run), report=None, deep=True)
        assert newest.step < int(partial[0].rsplit("-", 1)[1])


def rank_pid(run_dir: str, rank: int) -> int:
    """The PID of one rank of the job writing ``run_dir`` (MPICH's PMI_RANK)."""
    for pid in rank_pids(run_dir):
        with open(f"/proc/{pid}/environ", "rb") as fh:
            env = dict(kv.split(b"=", 1) for kv in fh.read().split(b"\0") if b"=" in kv)
        if int(env.get(b"PMI_RANK", env.get(b"OMPI_COMM_WORLD_RANK", b"-1"))) == rank:
            return pid
    raise AssertionError(f"rank {rank} of {run_dir} not found")


def start_job(tmp_path, run, *fields: str) -> subprocess.Popen:
    """``mpiexec -n 4`` of the fault-test run (FAULT_RUN + ``fields``), its pipes open."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [*mpiexec_cmd(), "-n", "4", sys.executable, "-m", "r2d2_hpc.cli", "--quiet",
           "--run-dir", str(run)] + sets(*FAULT_RUN, *fields)
    return subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("rank", [1, 0])
def test_a_rank_killed_outright_ends_the_job(tmp_path, rank):
    """SIGKILL (no Python left to say anything): mpiexec ends the job and names
    the rank; the plan printed at start maps ranks to roles."""
    run = tmp_path / "run"
    proc = start_job(tmp_path, run)
    try:
        deadline = time.monotonic() + 120
        while find_latest_valid(str(run), report=None, deep=False) is None:
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint"
            time.sleep(0.5)
        os.kill(rank_pid(str(run), rank), signal.SIGKILL)
        killed = time.monotonic()
        out, err = proc.communicate(timeout=BOUND_S + 30)
        ended = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert ended < BOUND_S, f"the job took {ended:.0f} s to end after rank {rank} died"
    # One message naming the dead rank and its role (the lowest surviving rank
    # noticed it through MPI), or, when mpiexec ended the others first, its own
    # report of the PID, which the "rank pids" line maps to the rank.
    role = "learner 0" if rank == 0 else "replay 0"
    said = err.count(f"rank {rank} ({role}) died; rank ")
    pid = [p.split(":")[2] for p in out.split("rank pids: ")[1].splitlines()[0].split(", ")
           ][rank]
    launcher = f"PID {pid} RUNNING AT" in out + err and "signal 9" in out + err
    assert said == 1 or (said == 0 and launcher), out[-3000:] + err[-3000:]
    newest_checkpoint_is_intact(run)


# --------------------------------------------------------------------------- #
# A hung rank: heartbeats.

HEARTBEAT_S = 8.0


@pytest.mark.parametrize("rank, role", [(3, "actor 1"), (1, "replay 0"), (0, "learner 0")])
def test_a_stopped_rank_is_named_by_its_watcher(tmp_path, rank, role):
    """SIGSTOP: the rank is alive to the OS and MPI but makes no progress; its
    watcher in the heartbeat ring (rank + 1) names it after the timeout and the
    job ends (rank 0 too: rank 1 watches it)."""
    run = tmp_path / "run"
    proc = start_job(tmp_path, run, f"topology.heartbeat_timeout_seconds={HEARTBEAT_S:g}")
    pid = None
    try:
        deadline = time.monotonic() + 120
        while find_latest_valid(str(run), report=None, deep=False) is None:
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint"
            time.sleep(0.5)
        pid = rank_pid(str(run), rank)
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        out, err = proc.communicate(timeout=HEARTBEAT_S + 60)
        ended = time.monotonic() - stopped
    finally:
        if pid is not None:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    watcher = (rank + 1) % 4
    assert err.count(f"rank {rank} ({role}) sent no heartbeat for") == 1, \
        out[-3000:] + err[-3000:]
    assert f"rank {watcher} (" in err.split("sent no heartbeat")[1].splitlines()[0]
    assert HEARTBEAT_S - 1 <= ended < HEARTBEAT_S + 20, ended
    newest_checkpoint_is_intact(run)


def test_a_stuck_loop_is_noticed(tmp_path):
    """A rank whose loop hangs (alive, its heartbeat thread running, but no
    progress outside a long phase) stops sending heartbeats and is named."""
    proc, seconds = launch(4, ["--run-dir", str(tmp_path / "run"), "--inject-failure",
                               "actor:0:5:hang"] + sets(
        *TINY, "learner.max_steps=1000000", "topology.heartbeat_timeout_seconds=4"),
        tmp_path, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.count("rank 2 (actor 0) sent no heartbeat for") == 1, proc.stderr[-3000:]
    assert seconds < 60


def test_a_long_phase_raises_no_false_alarm(tmp_path):
    """A replay shard spends 3x the heartbeat timeout in a long phase (as in a
    big checkpoint or restore); the run goes on and ends normally. (The timeout
    is 5 s, not less: a loaded CI machine can stall an ordinary loop iteration
    for a second or two, and half the timeout without a beat stops the sending.)"""
    run = tmp_path / "run"
    proc, _ = launch(4, ["--run-dir", str(run), "--inject-failure", "replay:0:3:phase=15"]
                     + sets(*TINY, "learner.max_steps=150",
                            "topology.heartbeat_timeout_seconds=5"), tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sent no heartbeat" not in proc.stderr
    assert json.loads((run / "summary.json").read_text())[0]["learner_step"] == 150


# --------------------------------------------------------------------------- #
# A full disk: the checkpoints' filesystem is a small tmpfs the test fills.

def _fill(directory: str) -> str:
    """Writes a file into ``directory`` until its filesystem is full, down to the
    last byte (a small manifest must not fit either); returns its path."""
    path = os.path.join(directory, "filler")
    with open(path, "ab", buffering=0) as fh:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * size)
            except OSError:
                pass
    return path


@pytest.fixture
def small_disk(tmp_path):
    """``run/checkpoints`` on a 64 MiB tmpfs (needs root, as CI runs)."""
    mount = tmp_path / "run" / "checkpoints"
    mount.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_fails_checkpoints_training_goes_on_and_a_preemption_exits_4(
        tmp_path, small_disk):
    run = tmp_path / "run"
    proc = start_job(tmp_path, run)
    lines: list = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")),
                              daemon=True)
    reader.start()

    def wait_for(what, seconds: float = 120.0):
        deadline = time.monotonic() + seconds
        while not what():
            assert time.monotonic() < deadline and proc.poll() is None, "".join(lines)[-3000:]
            time.sleep(0.2)

    def failed_steps() -> set:
        return {int(m.group(1)) for ln in lines
                for m in [re.search(r"checkpoint at step (\d+) failed: ", ln)] if m}

    def failures() -> int:
        return len(failed_steps())

    def failed_are_not_committed() -> None:
        """No checkpoint reported failed was committed, and the newest is intact (a
        failed one frees what it wrote, which a later one may use)."""
        committed = {int(os.path.basename(p).split("-")[1].split(".")[0])
                     for p in list_checkpoints(str(run))}
        assert not committed & failed_steps(), (committed, failed_steps())
        assert find_latest_valid(str(run), report=None, deep=True) is not None

    try:
        wait_for(lambda: find_latest_valid(str(run), report=None, deep=False) is not None)
        filler = _fill(str(small_disk))
        wait_for(lambda: failures() >= 2)  # each reported, and the run goes on
        failed_are_not_committed()
        os.remove(filler)  # room again: checkpoints commit again
        last_failed = max(failed_steps())
        wait_for(lambda: find_latest_valid(str(run), report=None, deep=False).step > last_failed)
        # Then a disk too small for any checkpoint (a tmpfs mounted over the first, so no
        # space freed by a failed attempt can let one through) and a preemption.
        newest = find_latest_valid(str(run), report=None, deep=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small_disk)],
                       check=True)
        try:
            os.kill(rank_pid(str(run), 3), signal.SIGUSR1)
            out, _ = proc.communicate(timeout=120)
            reader.join(timeout=5)
        finally:
            subprocess.run(["umount", "-l", str(small_disk)], check=True)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(lines)
    assert proc.returncode == 4, out[-2000:] + err[-3000:]
    assert "exiting with code 4 (the checkpoint the stop asked for could not be written" in out
    assert err.count("[Errno 28]") >= 3  # ENOSPC, each failure reported
    # the preemption's checkpoint is not taken for one; the newest committed one is intact
    failed_are_not_committed()
    assert find_latest_valid(str(run), report=None, deep=True).step >= newest.step

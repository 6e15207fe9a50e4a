"""SLURM integration tests on a real one-node cluster (tests/helpers/slurm_cluster.py).

The cluster is installed with apt when missing and started by hand; these
tests are skipped only when that is genuinely impossible (not root, no apt,
the install or the daemons fail), with the reason. They check: sbatch runs a
script; srun --mpi=pmi2 starts a 2-rank mpi4py job with the MPICH wheel;
slurm/single_game.sh runs a tiny real config to completion under both
launchers; the signal -> exit 3 -> requeue (array form) -> restart cycle of
the batch scripts with a stand-in step; and the full preempt-and-resume of a
real run through slurm/single_game.sh.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from typing import Callable, List, Optional

import pytest

from r2d2_hpc.envs.games import ATARI57, game, main as games_main, rom_id
from tests.helpers import slurm_cluster
from tests.helpers.launcher import ROOT

PY = sys.executable
MPIEXEC = os.path.join(os.path.dirname(PY), "mpiexec")
SINGLE = os.path.join(ROOT, "slurm", "single_game.sh")
ATARI = os.path.join(ROOT, "slurm", "atari57.sh")

#: A tiny real job (3 ranks: learner, shard, actor), as tests/integration/test_job_mpi.py's.
TINY = ["replay.min_fill_sequences=40", "actor.num_envs=8", "learner.batch_size=16",
        "network.lstm_size=32", "network.head_hidden=32", "network.mlp_hidden=[32]",
        "logging.log_interval_seconds=0.5", "logging.tensorboard=false",
        "learner.publish_period=2", "actor.param_refresh_period=16"]


def r2d2_args(*fields: str) -> str:
    return " ".join(f"--set {f}" for f in TINY + list(fields)) + " --quiet"


# --------------------------------------------------------------------------- #
# The game list (no cluster needed).

def test_atari57_list_is_57_distinct_games_with_roms() -> None:
    assert len(ATARI57) == 57 and len(set(ATARI57)) == 57
    assert list(ATARI57) == sorted(ATARI57, key=str.lower)
    assert game(0) == "Alien" and game(36) == "Pong" and game(56) == "Zaxxon"
    with pytest.raises(IndexError, match="0..56"):
        game(57)
    import ale_py.roms  # an install requirement: a missing one must fail here

    roms = os.path.dirname(ale_py.roms.__file__)
    missing = [g for g in ATARI57 if not os.path.exists(os.path.join(roms, rom_id(g) + ".bin"))]
    assert missing == []


@pytest.mark.parametrize("name,rom", [("MontezumaRevenge", "montezuma_revenge"),
                                      ("UpNDown", "up_n_down"), ("Pong", "pong"),
                                      ("Jamesbond", "jamesbond")])
def test_rom_id_table(name, rom) -> None:
    assert rom_id(name) == rom


def test_atari_games_command(capsys) -> None:
    assert games_main(["36"]) == 0 and capsys.readouterr().out == "Pong\n"
    assert games_main(["--count"]) == 0 and capsys.readouterr().out == "57\n"
    assert games_main(["57"]) == 2 and "0..56" in capsys.readouterr().err
    res = subprocess.run([PY, "-m", "r2d2_hpc.envs.games", "31"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "MontezumaRevenge\n"


def test_scripts_are_valid_bash_with_the_required_sbatch_options() -> None:
    for path in (SINGLE, ATARI):
        assert subprocess.run(["bash", "-n", path]).returncode == 0
        text = open(path).read()
        for opt in ("#SBATCH --signal=B:USR1@120", "#SBATCH --requeue",
                    "#SBATCH --open-mode=append"):
            assert opt in text, (path, opt)
    assert re.search(r"#SBATCH --array=0-56%\d+", open(ATARI).read())


def test_scripts_ask_for_one_gpu_per_job_for_the_learner() -> None:
    for path in (SINGLE, ATARI):
        text = open(path).read()
        assert re.findall(r"^#SBATCH --gres=.*$", text, re.M) == ["#SBATCH --gres=gpu:1"], path
        assert "sbatch --gres=none" in text, path  # the CPU-only override, documented


# --------------------------------------------------------------------------- #
# The cluster.

@pytest.fixture(scope="module")
def cluster():
    """The one-node cluster. It keeps running for the next session (and for a
    concurrent one); R2D2_SLURM_STOP=1 stops it afterwards if these tests started it."""
    try:
        c = slurm_cluster.ensure_cluster()
    except slurm_cluster.SlurmUnavailable as exc:
        pytest.skip(f"no SLURM cluster on this machine: {exc}")
    yield c
    if c.started_here and os.environ.get("R2D2_SLURM_STOP") == "1":
        slurm_cluster.stop_cluster(c.base)


def wait_for(cond: Callable[[], bool], timeout: float, what: str,
             detail: Callable[[], str] = lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{detail()}")


class Job:
    """A submitted batch job: its id, log, state; cancelled when the test ends."""

    def __init__(self, cluster: slurm_cluster.Cluster, jobid: str, log: str) -> None:
        self.cluster, self.id, self.log = cluster, jobid, log

    def text(self) -> str:
        return open(self.log).read() if os.path.exists(self.log) else ""

    def state(self) -> str:
        """squeue's state and reason ('' once the job left the queue)."""
        res = self.cluster.run("squeue", "-h", "-j", self.id, "-o", "%T %r", check=False)
        return res.stdout.strip() if res.returncode == 0 else ""

    def show(self) -> str:
        return self.cluster.run("scontrol", "show", "job", self.id, check=False).stdout

    def restarts(self) -> int:
        m = re.search(r"Restarts=(\d+)", self.show())
        return int(m.group(1)) if m else -1

    def start_now_if_held(self) -> None:
        """A requeued job waits ~2 min (BeginTime); tests do not.

        Released only once it is pending and no slurmstepd of its previous run
        is left: a job restarted while one still cleans up fails at once
        ("credential revoked").
        """
        wait_for(lambda: "BeginTime" in self.state(), 60, "the requeued job to be pending",
                 self.show)
        wait_for(lambda: not self.cluster.stepds_alive(self.id.split("_")[0]), 60,
                 "the previous run's slurmstepd processes to exit")
        # slurmd refuses a credential issued in the same second as the
        # revocation of the previous run's ("reissued" needs a later time).
        time.sleep(2.0)
        self.cluster.run("scontrol", "update", f"jobid={self.id}", "StartTime=now")

    def wait_gone(self, timeout: float) -> None:
        wait_for(lambda: self.state() == "", timeout, f"job {self.id} to finish",
                 lambda: f"state: {self.state()}\nlog:\n{self.text()}\n"
                         f"{self.cluster.log_tail(10)}")

    def cancel(self) -> None:
        self.cluster.run("scancel", self.id, check=False)


@pytest.fixture
def jobs(cluster):
    submitted: List[Job] = []

    def submit(*args: str, log: str, env: Optional[dict] = None) -> Job:
        res = cluster.run("sbatch", "--parsable", f"--output={log}", *args,
                          env=cluster.env(env))
        job = Job(cluster, res.stdout.strip().split(";")[0], log)
        submitted.append(job)
        return job

    yield submit
    for job in submitted:
        job.cancel()


#: The CPU-only override of the scripts' GPU request (this cluster has no GPU).
CPU_ONLY = "--gres=none"


@pytest.mark.parametrize("script", [SINGLE, ATARI])
def test_the_gpu_request_is_real_and_gres_none_drops_it(cluster, tmp_path, script) -> None:
    """On this GPU-less cluster the scripts as written are refused for their
    GPU request; with --gres=none they are accepted (--test-only: nothing runs)."""
    args = ["sbatch", "--test-only", "--ntasks=1", f"--chdir={tmp_path}", "--array=36", script]
    refused = cluster.run(*args, check=False)
    assert refused.returncode != 0 and "gres" in refused.stderr.lower(), refused.stderr
    accepted = cluster.run(*args[:2], CPU_ONLY, *args[2:], check=False)
    assert accepted.returncode == 0, accepted.stderr


def test_sbatch_runs_a_batch_script(cluster, jobs, tmp_path) -> None:
    script = tmp_path / "hello.sh"
    script.write_text("#!/bin/bash\necho \"hello job=$SLURM_JOB_ID tasks=$SLURM_NTASKS "
                      "node=$SLURMD_NODENAME\"\n")
    job = jobs("--ntasks=2", str(script), log=str(tmp_path / "out.txt"))
    job.wait_gone(60)
    assert f"hello job={job.id} tasks=2 node={cluster.node}" in job.text()


HELLO = ("from mpi4py import MPI; c = MPI.COMM_WORLD; "
         "print(f'rank {c.Get_rank()} of {c.Get_size()} sum {c.allreduce(c.Get_rank() + 1)} "
         "lib {MPI.Get_library_version().split()[0]}', flush=True)")


def test_srun_pmi2_runs_a_two_rank_mpi4py_job_with_the_mpich_wheel(cluster) -> None:
    res = cluster.run("srun", "--mpi=pmi2", "-n", "2", PY, "-c", HELLO, timeout=120,
                      check=False)
    assert res.returncode == 0, res.stderr
    lines = sorted(res.stdout.splitlines())
    assert lines == ["rank 0 of 2 sum 3 lib MPICH", "rank 1 of 2 sum 3 lib MPICH"], res.stdout


def _script_env(tmp_path, **extra: str) -> dict:
    env = {"R2D2_HOME": ROOT, "R2D2_PYTHON": PY, "R2D2_MPIEXEC": MPIEXEC,
           "PYTHONPATH": ROOT, "R2D2_CHECKPOINT_GRACE": "60"}
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["srun", "mpiexec"])
def test_single_game_script_runs_a_tiny_config_to_completion(cluster, jobs, tmp_path,
                                                             launcher) -> None:
    run = tmp_path / "run"
    env = _script_env(tmp_path, R2D2_RUN_DIR=str(run), R2D2_LAUNCHER=launcher,
                      R2D2_ARGS=r2d2_args("learner.max_steps=20"))
    job = jobs("--ntasks=3", "--overcommit", f"--chdir={tmp_path}", CPU_ONLY, SINGLE,
               log=str(tmp_path / "job.out"), env=env)
    job.wait_gone(240)
    log = job.text()
    assert "fresh start" in log and "job step exited with code 0" in log, log
    # which device the learner got: the job's GPUs (none here) and the plan's line
    assert "GPUs of this job: none" in log and "learner   device cpu" in log, log
    assert ("srun --mpi=pmi2" in log) == (launcher == "srun")
    ranks = json.loads((run / "summary.json").read_text())
    assert [r["role"] for r in ranks] == ["learner", "replay", "actor"]
    assert ranks[0]["learner_step"] == 20


FAKE_STEP = textwrap.dedent("""\
    #!/usr/bin/env bash
    # Stand-in for the training step: the first run waits for SIGUSR1 and exits 3
    # ("checkpointed, requeue me"); later runs exit 0 at once.
    if [ "${1:-}" = "-m" ] && [ "${2:-}" = "r2d2_hpc.envs.games" ]; then exec REAL_PY "$@"; fi
    echo "step restart=${SLURM_RESTART_COUNT:-0} args=$*" >> "$FAKE_LOG"
    if [ -e "$FAKE_LOG.done" ]; then echo "step: done" >> "$FAKE_LOG"; exit 0; fi
    trap 'touch "$FAKE_LOG.done"; echo "step: got USR1" >> "$FAKE_LOG"; exit 3' USR1
    echo "step: waiting" >> "$FAKE_LOG"
    while true; do sleep 0.2 & wait $!; done
""")


def test_atari57_array_task_signal_requeues_itself_and_restarts(cluster, jobs,
                                                                tmp_path) -> None:
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_STEP.replace("REAL_PY", PY))
    fake.chmod(0o755)
    fake_log = tmp_path / "step.log"
    env = _script_env(tmp_path, R2D2_PYTHON=str(fake), R2D2_RUN_ROOT=str(tmp_path / "runs"),
                      FAKE_LOG=str(fake_log), R2D2_NTASKS="1")
    job = jobs("--array=36", "--ntasks=1", f"--chdir={tmp_path}", CPU_ONLY, ATARI,
               log=str(tmp_path / "job-%A_%a.out"), env=env)
    job.log = str(tmp_path / f"job-{job.id}_36.out")
    task = f"{job.id}_36"
    step_text = lambda: fake_log.read_text() if fake_log.exists() else ""  # noqa: E731
    wait_for(lambda: "step: waiting" in step_text(), 60, "the step to start",
             lambda: job.text() + step_text())
    cluster.run("scancel", "--signal=USR1", "--batch", task)
    wait_for(lambda: job.restarts() >= 1, 60, "the requeue", lambda: job.text() + job.show())
    job.start_now_if_held()
    job.wait_gone(90)
    log = job.text()
    assert "received SIGUSR1" in log and "job step exited with code 3" in log, log
    assert f"requeueing {task}: checkpoint written" in log
    assert "restart 1: fresh start" in log and "job step exited with code 0" in log
    step = step_text()
    assert "step restart=0" in step and "step restart=1" in step and "got USR1" in step
    # Task 36 is Pong; its own run directory and the default config arguments.
    assert f"--run-dir {tmp_path}/runs/atari57/Pong" in step
    assert "--set env.game=Pong" in step and (tmp_path / "runs/atari57/Pong").is_dir()


@pytest.mark.slow
def test_preempted_run_checkpoints_requeues_and_resumes(cluster, jobs, tmp_path) -> None:
    """SIGUSR1 -> one coordinated checkpoint -> every rank exits 3 -> requeue ->
    the same command resumes from the checkpoint and finishes the budget."""
    from r2d2_hpc.checkpoint.preemption import EXIT_REQUEUE
    from r2d2_hpc.checkpoint.validate import find_latest_valid

    run = tmp_path / "run"
    env = _script_env(tmp_path, R2D2_RUN_DIR=str(run), R2D2_LAUNCHER="srun",
                      R2D2_ARGS=r2d2_args("learner.max_steps=300",
                                          "checkpoint.interval_seconds=0"))
    job = jobs("--ntasks=3", "--overcommit", f"--chdir={tmp_path}", CPU_ONLY, SINGLE,
               log=str(tmp_path / "job.out"), env=env)

    def learner_step() -> int:
        path = run / "metrics.csv"
        if not path.exists():
            return 0
        rows = [r for r in path.read_text().splitlines()[1:] if r]
        header = path.read_text().splitlines()[0].split(",")
        if not rows or "learner_step" not in header:
            return 0
        return int(float(rows[-1].split(",")[header.index("learner_step")] or 0))

    wait_for(lambda: learner_step() >= 20, 180, "learner progress", job.text)
    cluster.run("scancel", "--signal=USR1", "--batch", job.id)
    wait_for(lambda: "job step exited with code" in job.text(), 120, "the step to exit",
             job.text)
    assert f"job step exited with code {EXIT_REQUEUE}" in job.text(), job.text()
    info = find_latest_valid(str(run), report=None)
    assert info is not None and 20 <= info.step < 300
    wait_for(lambda: job.restarts() >= 1, 60, "the requeue", job.show)
    job.start_now_if_held()
    job.wait_gone(300)
    log = job.text()
    assert "requeueing" in log and "restart 1: " in log and "holds checkpoints" in log
    assert log.rstrip().splitlines()[-1].endswith("job step exited with code 0"), log
    ranks = json.loads((run / "summary.json").read_text())
    assert ranks[0]["learner_step"] == 300
    assert ranks[0]["env_steps"] >= info.counters.get("env_steps", 0)

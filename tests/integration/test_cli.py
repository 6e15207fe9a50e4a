"""The entry points run for real in a subprocess: r2d2-train (also under mpiexec),
r2d2-ckpt and r2d2-eval (also on a checkpoint the real job wrote under mpiexec)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import yaml

from r2d2_hpc.cli.train import EXIT_BAD_INPUT, train_main
from r2d2_hpc.job.metrics import read_metrics
from tests.helpers.checkpoints import filled_shard, write_checkpoint
from tests.helpers.fakes import tiny_config
from tests.helpers.launcher import ROOT
from benchmarks._common import mpiexec_cmd
from tests.helpers.pong import PONG, copy_run
from tests.helpers.wandb_log import offline_run


def run_cli(args, cwd, launcher=(), env_overrides=None):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_overrides or {})
    cmd = list(launcher) + [sys.executable, "-m", "r2d2_hpc.cli"] + list(args)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)



SHORT = ["--serial", "--quiet", "--set", "learner.max_steps=3", "--set",
         "replay.min_fill_sequences=20", "--set", "logging.tensorboard=false"]


def test_serial_run_writes_effective_config(tmp_path):
    proc = run_cli(["--run-dir", str(tmp_path / "run"), "--set", "seed=3"] + SHORT,
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["env"]["name"] == "cartpole_masked"
    assert written["seed"] == 3
    # the plan, once: roles, the budget and the run directory
    assert proc.stdout.count("r2d2-train plan:") == 1
    assert "1 process (--serial): 1 learner, 1 replay shard, 1 actor x 16 envs" in proc.stdout
    assert "budget    learner.max_steps=3" in proc.stdout
    assert "actors    inference " in proc.stdout and "actor.inference_precision=auto" in proc.stdout
    assert f"run dir   {tmp_path / 'run'} (fresh start" in proc.stdout
    assert "learner.max_steps=3 reached" in proc.stdout


def test_default_run_dir_under_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_main(["--set", "env.name=cartpole"] + SHORT) == 0
    (run,) = os.listdir(tmp_path / "runs")
    assert run.startswith("cartpole-")
    assert (tmp_path / "runs" / run / "config.yaml").is_file()


def test_print_config(tmp_path):
    proc = run_cli(["--print-config", "--config", os.path.join(ROOT, "configs/atari57.yaml")],
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["learner"]["discount"] == 0.997
    assert not (tmp_path / "runs").exists()


def test_config_takes_an_embedded_preset_name(tmp_path):
    proc = run_cli(["--print-config", "--config", "cartpole_fast"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout)
    assert printed["env"]["name"] == "cartpole"
    assert printed["learner"]["target_return"] == 195


@pytest.mark.parametrize("args,needle", [
    (["--config", "missing.yaml"], "missing.yaml"),
    (["--config", "cartpole_slow"], "one of the presets cartpole_fast, default"),
    (["--set", "learner.batchsize=3"], "did you mean 'learner.batch_size'"),
    (["--set", "env.name=pong"], "env.name"),
])
def test_bad_input_exits_2_with_one_message(tmp_path, args, needle):
    proc = run_cli(args + ["--run-dir", str(tmp_path / "r")], cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert needle in proc.stderr
    assert proc.stderr.count("r2d2-train:") == 1
    assert not (tmp_path / "r").exists()  # nothing started


def test_unwritable_run_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli(["--serial", "--run-dir", str(blocker / "run")], cwd=tmp_path)
    assert proc.returncode == EXIT_BAD_INPUT
    assert "run directory" in proc.stderr and "--run-dir" in proc.stderr
    assert blocker.read_text() == "x"  # nothing lost


def test_bad_input_under_mpiexec_is_printed_once(tmp_path):
    proc = run_cli(["--set", "learner.discount=7"], cwd=tmp_path,
                   launcher=[*mpiexec_cmd(), "-n", "2"])
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
    assert proc.stderr.count("learner.discount") == 1


# --------------------------------------------------------------------------- #
# --device and the learner's device / mixed-precision check.

#: No GPU visible, on any machine: the no-CUDA path runs everywhere.
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}


@pytest.mark.parametrize("args", [
    ["--device", "cuda"],
    ["--set", "learner.device=cuda"],  # the same check, the same message
])
def test_cuda_without_cuda_exits_2_with_one_message(tmp_path, args):
    proc = run_cli(["--serial", "--run-dir", str(tmp_path / "r")] + args, cwd=tmp_path,
                   env_overrides=NO_GPU)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
    assert proc.stderr.count("r2d2-train:") == 1
    assert "learner.device: 'cuda" in proc.stderr and "needs CUDA" in proc.stderr
    assert "learner.device=cpu" in proc.stderr and "--device cpu" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing started


@pytest.mark.parametrize("args, expected", [
    (["--device", "cpu"], "cpu"),
    (["--device", "cuda:1"], "cuda:1"),
    (["--set", "learner.device=cuda", "--device", "cpu"], "cpu"),  # --device wins
    (["--set", "learner.device=cpu"], "cpu"),
    ([], "auto"),
])
def test_device_flag_overrides_learner_device(tmp_path, args, expected):
    proc = run_cli(["--print-config"] + args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["learner"]["device"] == expected


@pytest.mark.parametrize("args, needle", [
    (["--device", "gpu"], "learner.device: unknown value 'gpu'"),
    (["--device", "cpu", "--set", "learner.mixed_precision=fp16"],
     "learner.mixed_precision: 'fp16' needs a CUDA learner"),
])
def test_bad_device_or_precision_exits_2(tmp_path, args, needle):
    proc = run_cli(["--serial", "--run-dir", str(tmp_path / "r")] + args, cwd=tmp_path,
                   env_overrides=NO_GPU)
    assert proc.returncode == EXIT_BAD_INPUT, proc.stdout + proc.stderr
    assert needle in proc.stderr and proc.stderr.count("r2d2-train:") == 1
    assert not (tmp_path / "r").exists()


def test_serial_run_with_bf16_on_the_cpu(tmp_path):
    proc = run_cli(["--run-dir", str(tmp_path / "run"), "--device", "cpu", "--set",
                    "learner.mixed_precision=bf16"] + SHORT, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert written["learner"]["device"] == "cpu"
    assert written["learner"]["mixed_precision"] == "bf16"
    assert "learner.max_steps=3 reached" in proc.stdout


# --------------------------------------------------------------------------- #
# r2d2-ckpt.

def test_ckpt_cli_runs_as_a_module(tmp_path) -> None:
    run = str(tmp_path / "run")
    shard = filled_shard()
    write_checkpoint(run, 9, tiny_config(), [shard])
    res = subprocess.run([sys.executable, "-m", "r2d2_hpc.cli.ckpt", "list", run], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "ckpt-000000000009  step 9  valid" in res.stdout


# --------------------------------------------------------------------------- #
# r2d2-eval.

def test_entry_point_subprocess(pong, tmp_path):
    run = copy_run(pong["run"], str(tmp_path / "run"))
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "r2d2_hpc.cli.eval", run, "--episodes", "1",
                           "--threads", "1"], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "human-normalised score:" in proc.stdout
    assert json.load(open(os.path.join(run, "eval.json")))["episodes"] == 1
    proc = subprocess.run([sys.executable, "-m", "r2d2_hpc.cli.eval", str(tmp_path / "nope")],
                          capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no such file or directory" in proc.stderr


# --------------------------------------------------------------------------- #
# End to end: the real job under mpiexec writes a checkpoint, r2d2-eval scores it.


@pytest.mark.slow
def test_end_to_end_pong_mpiexec_checkpoint_then_eval(tmp_path):
    """r2d2-train on Pong under ``mpiexec -n 3`` writes a checkpoint; r2d2-eval scores it."""
    run = str(tmp_path / "run")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    sets = PONG + ["actor.num_envs=4", "replay.burn_in=2", "replay.trace_length=4",
                   "replay.sequence_period=2", "replay.capacity_observations=2000",
                   "replay.min_fill_sequences=8", "learner.batch_size=4",
                   "learner.n_step=2", "learner.max_steps=6", "learner.publish_period=2",
                   "learner.device=cpu", "checkpoint.interval_steps=3",
                   "checkpoint.interval_seconds=0", "topology.replay_shards=1"]
    argv = [*mpiexec_cmd(), "-n", "3", sys.executable, "-m", "r2d2_hpc.cli", "--quiet",
            "--run-dir", run]
    for s in sets:
        argv += ["--set", s]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=str(tmp_path),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.path.isdir(os.path.join(run, "checkpoints")), f"{run}: the job wrote no checkpoints/"
    proc = subprocess.run([sys.executable, "-m", "r2d2_hpc.cli.eval", run, "--episodes", "2",
                           "--json"], capture_output=True, text=True, env=env,
                          cwd=str(tmp_path), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rec = json.loads(proc.stdout)
    assert rec["game"] == "Pong" and rec["checkpoint_step"] >= 3
    assert rec["lengths"] == [10, 10] and rec["human_normalized"] is not None


# --------------------------------------------------------------------------- #
# Weights & Biases, offline.

def test_wandb_offline_logs_the_metrics_and_config(tmp_path):
    """logging.wandb with WANDB_MODE=offline: the run directory gets W&B's files,
    with every metrics.csv row (same learner steps and losses), the config and
    the tags; the run id is kept for a resumed job."""
    run = tmp_path / "run"
    proc = run_cli(SHORT[:-4] + ["--run-dir", str(run), "--set", "learner.max_steps=12",
                                 "--set", "logging.wandb=true",
                                 "--set", "logging.log_interval_seconds=0.2",
                                 "--set", "logging.wandb_tags=[ci, offline]"],
                   cwd=tmp_path, env_overrides={"WANDB_MODE": "offline",
                                                "WANDB_SILENT": "true"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    logged = offline_run(str(run))
    assert logged["tags"] == ["ci", "offline"] and logged["name"] == "run"
    assert logged["project"] == "r2d2_hpc"
    assert {"env", "network", "replay", "learner", "logging"} <= logged["config"]
    _, rows = read_metrics(str(run / "metrics.csv"))
    steps = [int(float(h["learner_step"])) for h in logged["history"]]
    assert len(rows) >= 2 and steps == [int(r["learner_step"]) for r in rows]
    losses = [float(h["loss"]) for h in logged["history"] if "loss" in h]
    assert losses == pytest.approx([r["loss"] for r in rows if r["loss"] == r["loss"]])
    assert (run / "wandb_run_id").read_text().strip() in str(
        next((run / "wandb").glob("offline-run-*")))


def test_wandb_without_the_package_exits_2_naming_the_install(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    code = train_main(SHORT + ["--run-dir", str(tmp_path / "run"),
                               "--set", "logging.wandb=true"])
    err = capsys.readouterr().err
    assert code == EXIT_BAD_INPUT
    assert err.count("needs the wandb package") == 1 and "pip install 'r2d2_hpc[wandb]'" in err
    assert not (tmp_path / "run").exists()

"""Preemption: the signal flag, a second signal during a checkpoint, the periodic schedule."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from r2d2_hpc.checkpoint.preemption import (EXIT_CHECKPOINT_FAILED, EXIT_REQUEUE,
                                            CheckpointSchedule, PreemptionFlag)
from r2d2_hpc.checkpoint.restore import read_learner
from r2d2_hpc.checkpoint.validate import find_latest_valid
from r2d2_hpc.cli.train import EXIT_BAD_INPUT
from r2d2_hpc.config import CheckpointConfig
from tests.helpers.launcher import ROOT


_SIGNAL_SCRIPT = textwrap.dedent("""
    import sys, time, numpy as np
    sys.path.insert(0, sys.argv[2])
    from r2d2_hpc.checkpoint.layout import CheckpointLayout
    from r2d2_hpc.checkpoint.preemption import EXIT_REQUEUE, PreemptionFlag
    from r2d2_hpc.types import ActorState
    from tests.helpers.checkpoints import fake_learner_state
    from tests.helpers.fakes import tiny_config
    flag = PreemptionFlag().install()
    print("ready", flush=True)
    while not flag.requested:
        time.sleep(0.005)
    layout = CheckpointLayout(sys.argv[1], keep=3, fsync=True)
    path = layout.begin(7)
    print("writing", flush=True)
    time.sleep(0.3)   # the test sends more signals now
    for k in range(8):
        layout.write_learner(path, fake_learner_state(7, np.full(1 << 20, k, np.float32)),
                             tiny_config(), {"env_steps": 7})
    layout.write_actors(path, [ActorState(env_steps=7)])
    from r2d2_hpc.replay.shard import ReplayShard
    sh = ReplayShard((4,), capacity_observations=64, capacity_sequences=8, sequence_length=5,
                     state_size=2)
    layout.write_shard(path, 0, sh)
    layout.commit(path, 7, 1)
    print(f"signals {flag.count} first {flag.signal_name}", flush=True)
    sys.exit(EXIT_REQUEUE)
""")


def test_a_second_signal_during_the_checkpoint_changes_nothing(tmp_path) -> None:
    run = str(tmp_path / "run")
    proc = subprocess.Popen([sys.executable, "-c", _SIGNAL_SCRIPT, run, ROOT],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGUSR1)
        assert proc.stdout.readline().strip() == "writing"
        proc.send_signal(signal.SIGUSR1)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == EXIT_REQUEUE, err
    assert "signals 3 first SIGUSR1" in out
    info = find_latest_valid(run, report=None)
    assert info is not None and info.step == 7
    assert np.all(read_learner(info).state.online["w"] == 7)


def test_preemption_flag_counts_signals_and_restores_handlers() -> None:
    before = signal.getsignal(signal.SIGUSR1)
    with PreemptionFlag() as flag:
        assert not flag.requested and flag.signal_name == ""
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 5
        while flag.count < 2 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert flag.requested and flag.count == 2 and flag.signal_name == "SIGUSR1"
    assert signal.getsignal(signal.SIGUSR1) == before
    flag = PreemptionFlag()
    assert flag.take() is None
    flag.trigger(signal.SIGTERM)
    assert flag.requested and flag.signal_name == "SIGTERM"
    assert flag.take() == signal.SIGTERM and not flag.requested  # polled once
    assert flag.take() is None
    flag.trigger(signal.SIGUSR1)
    assert flag.take() == signal.SIGTERM  # the first signal's number stays


@pytest.mark.parametrize("seconds,steps,at_step,at_time,due", [
    (0.0, 0, 10_000, 1e9, False),     # both off
    (0.0, 100, 99, 1e9, False),
    (0.0, 100, 100, 0.0, True),
    (60.0, 0, 1, 59.9, False),
    (60.0, 0, 1, 60.0, True),
    (60.0, 100, 100, 1.0, True),      # whichever comes first
    (60.0, 0, 0, 120.0, False),       # nothing new since the last one
])
def test_schedule_table(seconds, steps, at_step, at_time, due) -> None:
    sched = CheckpointSchedule(CheckpointConfig(interval_seconds=seconds, interval_steps=steps),
                               step=0, now=0.0)
    assert sched.due(at_step, at_time) is due
    sched.mark(at_step, at_time)
    assert not sched.due(at_step, at_time)


def test_the_slurm_script_knows_every_exit_code_by_its_value():
    """slurm/single_game.sh decides requeue or not by exit code: its numbers
    are the package's (0 done, 2 bad input, 3 requeue, 4 checkpoint failed)."""
    text = open(os.path.join(ROOT, "slurm", "single_game.sh")).read()
    declared = dict(re.findall(r"^(EXIT_\w+)=(\d+)$", text, re.M))
    assert declared == {"EXIT_BAD_INPUT": str(EXIT_BAD_INPUT), "EXIT_REQUEUE": str(EXIT_REQUEUE),
                        "EXIT_CHECKPOINT_FAILED": str(EXIT_CHECKPOINT_FAILED)}
    for name in declared:  # each has its own branch in the final case
        assert re.search(rf'^\s*"\${name}"\)', text, re.M), name

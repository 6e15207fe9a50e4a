"""r2d2-train with demonstrations (R2D3): every bad demo input is refused before anything
starts, exit 2 and one message naming the file and the field; a good file runs."""
from __future__ import annotations

import json

import numpy as np
import pytest

from r2d2_hpc.cli.train import EXIT_BAD_INPUT, train_main
from r2d2_hpc.job.memory import NodeMemory, memory_problem, node_needs
from r2d2_hpc.job.replay import demo_table_bytes, read_run_demos
from r2d2_hpc.job.role import job_spec
from r2d2_hpc.replay.demos import write_demos
from tests.helpers.demos import random_demos
from tests.helpers.launcher import tiny_job_config

SHORT = ["--serial", "--quiet", "--set", "learner.max_steps=3", "--set",
         "replay.min_fill_sequences=20", "--set", "logging.tensorboard=false",
         "--set", "logging.final_eval_episodes=0"]


def _nan_reward() -> np.ndarray:
    r = np.ones(120, np.float32)
    r[33] = np.nan
    return r


BAD_FILES = {
    "wrong env": (lambda: random_demos(env="cartpole"), "env: the file has 'cartpole'"),
    "wrong shape": (lambda: random_demos(frame_shape=(4,)), "frame_shape: the file has [4]"),
    "wrong actions": (lambda: random_demos(num_actions=6), "num_actions: the file has 6"),
    "action out of range": (lambda: random_demos(action=np.full(120, 5)), "action: 5 at step 0 is "
                                                                   "outside [0, 2)"),
    "nan reward": (lambda: random_demos(reward=_nan_reward()), "reward: nan at step 33"),
    "too short": (lambda: random_demos(episodes=(5, 8)),
                  "no episode is longer than replay.burn_in"),
}


def _train(tmp_path, *extra):
    return train_main(SHORT + ["--run-dir", str(tmp_path / "run")] + list(extra))


def _one_message(capsys, *needles):
    err = capsys.readouterr().err
    assert err.count("r2d2-train:") == 1, err
    for n in needles:
        assert n in err, err
    return err


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_bad_demo_file_exits_2_naming_the_file_and_field(tmp_path, capsys, case):
    make, needle = BAD_FILES[case]
    path = tmp_path / "demos.h5"
    write_demos(str(path), make())
    code = _train(tmp_path, "--set", f"replay.demo_files=[{path}]",
                  "--set", "replay.demo_ratio=0.25")
    assert code == EXIT_BAD_INPUT
    _one_message(capsys, "replay.demo_files", needle)
    assert not (tmp_path / "run").exists()  # nothing started


def test_a_missing_or_corrupt_demo_file_exits_2(tmp_path, capsys):
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
    for path in (tmp_path / "missing.h5", corrupt):
        code = _train(tmp_path, "--set", f"replay.demo_files=[{path}]",
                      "--set", "replay.demo_ratio=0.25")
        assert code == EXIT_BAD_INPUT
        _one_message(capsys, "replay.demo_files", str(path))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("sets,needle", [
    (["replay.demo_ratio=1.5"], "replay.demo_ratio: must be in [0, 1]"),
    (["replay.demo_ratio=0.25"], "replay.demo_files is empty"),
    (["replay.demo_files=[DEMOS]"], "replay.demo_ratio is 0"),
])
def test_a_bad_demo_ratio_exits_2(tmp_path, capsys, sets, needle):
    path = tmp_path / "demos.h5"
    write_demos(str(path), random_demos())
    args = []
    for s in sets:
        args += ["--set", s.replace("DEMOS", str(path))]
    assert _train(tmp_path, *args) == EXIT_BAD_INPUT
    _one_message(capsys, needle)


def test_a_good_demo_file_runs_and_its_tables_are_reported(tmp_path, capsys):
    path = tmp_path / "demos.h5"
    write_demos(str(path), random_demos())
    code = _train(tmp_path, "--set", f"replay.demo_files=[{path}]",
                  "--set", "replay.demo_ratio=0.5")
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    (shard,) = [r for r in summary if r["role"] == "replay"]
    assert shard["demo_observations"] == 120 and shard["demo_sequences"] > 0


def test_the_memory_check_counts_the_demo_tables(tmp_path):
    path = tmp_path / "demos.h5"
    write_demos(str(path), random_demos(episodes=(500, 700, 900)))
    cfg = tiny_job_config(f"replay.demo_files=[{path}]", "replay.demo_ratio=0.25")
    spec = job_spec(cfg)
    demo = demo_table_bytes(cfg, spec, read_run_demos(cfg, spec))
    assert demo > 2100 * 2 * 4  # at least the frames
    need = node_needs(cfg, spec, [0, 1, 2], 3, demo)
    node = NodeMemory("n1", [0, 1, 2], sum(need.values()) - demo + 1)  # fits without demos
    assert memory_problem(cfg, spec, [node], 3) is None
    msg = memory_problem(cfg, spec, [node], 3, demo)
    assert msg is not None and "demonstration tables (replay.demo_files)" in msg

"""r2d2-record in process: demonstrations played from a Pong checkpoint (10-step
episodes), an .npz converted, bad input. (The file format: tests/unit/replay/test_demos.py.)"""
from __future__ import annotations

import os

import numpy as np

from r2d2_hpc.cli import record
from r2d2_hpc.cli.eval import checkpoint_player, evaluate_checkpoint
from r2d2_hpc.replay.demos import read_demos
from tests.helpers.pong import copy_run

PONG_RUN = dict(env="atari:Pong", frame_shape=(84, 84), obs_dtype="uint8", frame_stack=4,
                num_actions=18)


def test_records_the_episodes_an_evaluation_plays(pong, tmp_path, capsys):
    run = copy_run(pong["run"], str(tmp_path / "run"))
    assert record.main([run, "--episodes", "3", "--seed", "5"]) == 0
    out = capsys.readouterr().out
    demos = read_demos(os.path.join(run, "demos.h5"), **PONG_RUN)
    assert demos.episodes == 3 and "3 episodes" in out and out.count("episode ") == 3
    # the same episodes as r2d2-eval plays with the same seed and epsilon
    ev = evaluate_checkpoint(os.path.join(run, "checkpoints", "ckpt-000000000002"),
                             episodes=3, seed=5)
    np.testing.assert_allclose(demos.episode_returns(), ev["returns"])
    starts = np.flatnonzero(demos.first)
    assert np.diff(np.r_[starts, demos.steps]).tolist() == ev["lengths"]
    assert demos.frames.shape == (demos.steps, 84, 84) and demos.frames.any()
    assert set(np.unique(demos.discount)) <= {0.0, 1.0}


def test_frames_are_the_newest_of_each_stack(pong, tmp_path):
    """Step t's frame is the last frame of the observation the policy saw at t
    (what an actor sends the replay), so the stacks rebuild from the file."""
    saved, cfg, evaluator, flat = checkpoint_player(pong["ckpts"][1], episodes=1, seed=2)
    res = evaluator.evaluate(flat, record=True)
    ep = res.steps[0]
    assert ep["first"][0] and not ep["first"][1:].any()
    assert len(ep["action"]) == int(res.lengths[0]) and ep["frames"].shape[1:] == (84, 84)


def test_an_npz_is_converted_and_checked(tmp_path, capsys):
    n = 6
    first = np.array([1, 0, 0, 1, 0, 0], bool)
    npz = str(tmp_path / "eps.npz")
    np.savez(npz, frames=np.zeros((n, 2), np.float32), action=np.array([0, 1, 1, 0, 1, 0]),
             reward=np.ones(n, np.float32), discount=np.array([1, 1, 0, 1, 1, 0], np.float32),
             first=first)
    out = str(tmp_path / "demos.h5")
    assert record.main(["--from-npz", npz, "--env", "cartpole_masked", "--num-actions", "2",
                        "--out", out]) == 0
    d = read_demos(out, env="cartpole_masked", frame_shape=(2,), obs_dtype="float32",
                   frame_stack=1, num_actions=2)
    assert (d.steps, d.episodes) == (6, 2)
    np.savez(npz, frames=np.zeros((n, 2), np.float32), action=np.array([0, 1, 5, 0, 1, 0]),
             reward=np.ones(n, np.float32), discount=np.ones(n, np.float32), first=first)
    assert record.main(["--from-npz", npz, "--env", "cartpole_masked", "--num-actions", "2",
                        "--out", out]) == 2
    assert "eps.npz: action: 5 at step 2 is outside [0, 2)" in capsys.readouterr().err


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    for argv, words in [([str(tmp_path / "nothing")], "nothing"),
                        ([], "give a CHECKPOINT"),
                        (["--from-npz", "x.npz"], "--from-npz needs --env"),
                        (["--from-npz", str(tmp_path / "x.npz"), "--env", "e", "--num-actions",
                          "2", "--out", str(tmp_path / "o.h5")], "x.npz: file is missing")]:
        assert record.main(argv) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err

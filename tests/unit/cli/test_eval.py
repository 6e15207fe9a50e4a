"""r2d2-eval in process: checkpoints of a fresh Pong learner, the aggregate over fake runs,
bad input. (The entry point in a subprocess: tests/integration/test_cli.py.)"""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Optional

import numpy as np
import pytest

from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.checkpoint.state_files import write_learner_file
from r2d2_hpc.cli import eval as eval_cli
from r2d2_hpc.config import Config
from r2d2_hpc.job.role import job_spec
from r2d2_hpc.agent.learner import Learner
from tests.helpers.pong import copy_run, pong_config
from tests.helpers.pong import write_checkpoint as write_pong_checkpoint
from tests.unit.agent.test_evaluation import counter_config, fixed_action_params


def main(argv: List[str], capsys) -> tuple:
    code = eval_cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- #
# Evaluating a checkpoint.

def test_eval_run_dir_uses_newest_checkpoint_and_writes_eval_json(pong, tmp_path, capsys):
    run = copy_run(pong["run"], str(tmp_path / "run"))
    code, out, err = main([run, "--seed", "3"], capsys)
    assert code == 0, err
    rec = json.load(open(os.path.join(run, eval_cli.EVAL_FILE)))
    assert rec["format"] == eval_cli.EVAL_FORMAT and rec["game"] == "Pong"
    assert rec["checkpoint_step"] == 2 and rec["params_version"] == 7
    assert rec["checkpoint"].endswith("ckpt-000000000002")
    assert rec["counters"] == {"env_steps": 200, "env_frames": 800}
    # logging.eval_episodes = 2 episodes; epsilon 0.001 (logging.eval_epsilon); the
    # 40-frame cap ends every episode on agent step 10.
    assert rec["episodes"] == 2 and rec["epsilon"] == 0.001 and rec["seed"] == 3
    assert rec["lengths"] == [10, 10] and rec["env_steps"] == 20
    assert (rec["noop_max"], rec["max_episode_frames"]) == (30, 40)
    assert rec["score"] == pytest.approx(np.mean(rec["returns"]))
    assert rec["human_normalized"] == pytest.approx((rec["score"] + 20.7) / 35.3)
    assert (rec["random_score"], rec["human_score"]) == (-20.7, 14.6)
    assert "human-normalised score:" in out and f"{rec['human_normalized']:.4f}" in out
    assert "raw score:" in out and f"wrote {os.path.join(run, 'eval.json')}" in out


def test_eval_checkpoint_dir_options_and_determinism(pong, tmp_path, capsys):
    run = copy_run(pong["run"], str(tmp_path / "run"))
    ckpt = os.path.join(run, "checkpoints", "ckpt-000000000001")
    argv = [ckpt, "--episodes", "3", "--epsilon", "0.5", "--seed", "9",
            "--max-episode-frames", "20", "--json"]
    code, out, err = main(argv, capsys)
    assert code == 0, err
    rec = json.loads(out)
    assert rec["checkpoint_step"] == 1 and rec["params_version"] == 0
    assert rec["episodes"] == 3 and rec["epsilon"] == 0.5
    assert rec["lengths"] == [5, 5, 5] and rec["max_episode_frames"] == 20
    assert rec["eval_json"] == os.path.join(run, "eval.json")
    code, out2, _ = main(argv + ["--no-write"], capsys)
    again = json.loads(out2)
    assert code == 0 and again["eval_json"] is None
    assert again["returns"] == rec["returns"] and again["lengths"] == rec["lengths"]


def test_flat_online_params_is_the_learners_layout(pong):
    cfg, learner = pong["cfg"], pong["learner"]
    flat = eval_cli.flat_online_params(learner.state().online, cfg, learner.obs_shape,
                                       learner.num_actions)
    np.testing.assert_array_equal(flat, learner.flat_params())
    online = dict(learner.state().online)
    name = next(iter(online))
    online[name] = online[name][..., :1]
    with pytest.raises(eval_cli.EvalInputError, match=name):
        eval_cli.flat_online_params(online, cfg, learner.obs_shape, learner.num_actions)


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_damaged_newest_learner_file_falls_back_to_the_previous(pong, tmp_path, capsys,
                                                                damage):
    run = copy_run(pong["run"], str(tmp_path / "run"))
    learner_h5 = os.path.join(run, "checkpoints", "ckpt-000000000002", "learner.h5")
    size = os.path.getsize(learner_h5)
    with open(learner_h5, "r+b") as fh:
        if damage == "truncate":
            fh.truncate(size // 2)
        else:  # one flipped bit in the middle: same size, wrong crc32
            fh.seek(size // 2)
            byte = fh.read(1)[0]
            fh.seek(size // 2)
            fh.write(bytes([byte ^ 0x10]))
    code, out, err = main([run, "--episodes", "1", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["checkpoint_step"] == 1
    expected = "truncated" if damage == "truncate" else "corrupted"
    assert "ckpt-000000000002 is corrupt or incomplete: learner.h5" in err and expected in err


def test_eval_learner_final_file(pong, tmp_path, capsys):
    """RUN_DIR/learner_final.h5 (the checkpoint's learner-file format) is evaluated too."""
    run = tmp_path / "run"
    run.mkdir()
    path = str(run / "learner_final.h5")
    write_learner_file(path, pong["learner"].state(), pong["cfg"], {"env_steps": 300},
                       step=3, job_spec=job_spec(pong["cfg"]), fsync=False)
    code, out, err = main([path, "--episodes", "1", "--seed", "3", "--json"], capsys)
    assert code == 0, err
    rec = json.loads(out)
    assert rec["checkpoint"] == path and rec["checkpoint_step"] == 3
    assert rec["params_version"] == 7 and rec["counters"] == {"env_steps": 300}
    assert rec["eval_json"] == str(run / "eval.json") and (run / "eval.json").is_file()
    # the same parameters as the checkpoint of the same learner state
    code, out2, _ = main([pong["ckpts"][1], "--episodes", "1", "--seed", "3", "--json",
                          "--no-write"], capsys)
    assert code == 0 and json.loads(out2)["returns"] == rec["returns"]


def test_damaged_replay_files_do_not_stop_an_evaluation(pong, tmp_path, capsys):
    # Only learner.h5 is read: a damaged actors.h5 (or replay file) is not checked
    # beyond its size.
    run = copy_run(pong["run"], str(tmp_path / "run"))
    actors = os.path.join(run, "checkpoints", "ckpt-000000000002", "actors.h5")
    size = os.path.getsize(actors)
    with open(actors, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(b"\xff\xfe")
    code, out, err = main([run, "--episodes", "1", "--json", "--no-write"], capsys)
    assert code == 0 and json.loads(out)["checkpoint_step"] == 2 and err == ""


# --------------------------------------------------------------------------- #
# Bad input: one message, exit 2.

def bad_cases(pong, tmp_path) -> Dict[str, tuple]:
    empty_run = tmp_path / "empty_run"
    (empty_run / "checkpoints").mkdir(parents=True)
    plain = tmp_path / "plain"
    plain.mkdir()
    corrupt = copy_run(pong["run"], str(tmp_path / "corrupt"))
    ckpt = os.path.join(corrupt, "checkpoints", "ckpt-000000000001")
    with open(os.path.join(ckpt, "learner.h5"), "r+b") as fh:
        fh.truncate(100)
    # A run whose config names a game that does not exist.
    cfg = pong_config()
    typo_cfg = Config.from_dict(dict(cfg.to_dict(), env=dict(cfg.to_dict()["env"],
                                                              game="Pongg")))
    typo = str(tmp_path / "typo")
    layout = CheckpointLayout(typo, fsync=False)
    path = layout.begin(3)
    layout.write_learner(path, pong["learner"].state(), typo_cfg, {"env_steps": 0}, step=3)
    layout.write_actors(path, [])
    layout.commit(path, 3, 0)
    ok = pong["ckpts"][0]
    return {
        "missing path": ([str(tmp_path / "nope")], "no such file or directory"),
        "not a run dir": ([str(plain)], "neither a checkpoint directory"),
        "no checkpoint": ([str(empty_run)], "no valid checkpoint"),
        "corrupt checkpoint": ([ckpt], "is invalid"),
        "unknown game in the run": ([typo], "env.game='Pongg'.*did you mean 'Pong'"),
        "unknown game by --set": ([ok, "--set", "env.game=Pongo"], "did you mean 'Pong'"),
        "non-env --set": ([ok, "--set", "network.lstm_size=3"], "only env.FIELD=VALUE"),
        "bad env value": ([ok, "--set", "env.frame_skip=0"], "env.frame_skip: must be > 0"),
        "changed stack": ([ok, "--set", "env.frame_stack=2"], "do not change env.frame_stack"),
        "zero episodes": ([ok, "--episodes", "0"], "--episodes: must be >= 1"),
        "bad epsilon": ([ok, "--epsilon", "2"], "--epsilon: must be in"),
        "nothing given": ([], "give a CHECKPOINT"),
        "both given": ([ok, "--aggregate", str(plain)], "not both"),
        "aggregate missing dir": (["--aggregate", str(tmp_path / "nope")], "no such directory"),
        "aggregate nothing": (["--aggregate", str(plain)], "no run directory with an Atari-57"),
    }


def test_bad_input_exits_2_with_one_message(pong, tmp_path, capsys):
    import re

    for name, (argv, pattern) in bad_cases(pong, tmp_path).items():
        code, out, err = main(argv, capsys)
        assert code == 2, f"{name}: exit {code}, stderr {err!r}"
        lines = [line for line in err.splitlines() if line.startswith("r2d2-eval: error:")]
        assert len(lines) == 1, f"{name}: {err!r}"
        assert re.search(pattern, lines[0]), f"{name}: {lines[0]!r} !~ {pattern!r}"
        assert out == "", f"{name}: printed {out!r}"


# --------------------------------------------------------------------------- #
# Aggregating runs.

def fake_run(root, name: str, game: Optional[str], score: float, env_name: str = "atari",
             episodes: int = 5) -> str:
    run = os.path.join(str(root), name)
    os.makedirs(run)
    rec = {"format": eval_cli.EVAL_FORMAT, "game": game, "env_name": env_name,
           "score": score, "episodes": episodes, "checkpoint_step": 100,
           "counters": {"env_frames": 4000}}
    with open(os.path.join(run, eval_cli.EVAL_FILE), "w") as fh:
        json.dump(rec, fh)
    return run


def test_aggregate_two_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    # Human-normalised by hand: Pong (-3.05 + 20.7) / 35.3 = 0.5,
    # Breakout (88.1 - 1.7) / 28.8 = 3.0.
    fake_run(runs, "pong-1", "Pong", -3.05)
    fake_run(runs, "breakout-1", "Breakout", 88.1)
    os.makedirs(runs / "not-evaluated")
    fake_run(runs, "cartpole", None, 400.0, env_name="cartpole_masked")
    out_dir = tmp_path / "report"
    code, out, err = main(["--aggregate", str(runs), "--out-dir", str(out_dir)], capsys)
    assert code == 0, err
    assert "2 game(s): median human-normalised score 1.7500, mean 1.7500" in out
    lines = out.splitlines()
    assert lines[1].split()[0] == "Breakout" and lines[2].split()[0] == "Pong"  # best first
    assert lines[1].split()[-1] == "3.000" and lines[2].split()[-1] == "0.500"
    assert "not-evaluated: no eval.json" in err and "cartpole: 'cartpole_masked'" in err
    with open(out_dir / eval_cli.CSV_FILE) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["game"] for r in rows] == ["Breakout", "Pong"]
    assert float(rows[0]["human_normalized"]) == pytest.approx(3.0)
    assert float(rows[1]["human_normalized"]) == pytest.approx(0.5)
    assert rows[1]["random_score"] == "-20.7" and rows[1]["human_score"] == "14.6"
    assert rows[1]["env_frames"] == "4000"
    png = (out_dir / eval_cli.PNG_FILE).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_aggregate_median_differs_from_mean_and_json(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "a", "Pong", -3.05)          # 0.5
    fake_run(runs, "b", "Breakout", 88.1)       # 3.0
    fake_run(runs, "c", "MsPacman", 307.3)      # 0.0
    code, out, err = main(["--aggregate", str(runs), "--json"], capsys)
    assert code == 0, err
    res = json.loads(out)
    assert res["num_games"] == 3
    assert res["median"] == pytest.approx(0.5) and res["mean"] == pytest.approx(3.5 / 3)
    assert os.path.exists(runs / eval_cli.CSV_FILE) and os.path.exists(runs / eval_cli.PNG_FILE)


def test_aggregate_refuses_two_runs_of_one_game(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, "pong-1", "Pong", 1.0)
    fake_run(runs, "pong-2", "Pong", 2.0)
    code, out, err = main(["--aggregate", str(runs)], capsys)
    assert code == 2 and "Pong has eval results in two runs" in err


def test_aggregate_reports_an_unreadable_eval_json(tmp_path, capsys):
    runs = tmp_path / "runs"
    run = fake_run(runs, "pong-1", "Pong", 1.0)
    with open(os.path.join(run, eval_cli.EVAL_FILE), "w") as fh:
        fh.write("{not json")
    code, out, err = main(["--aggregate", str(runs)], capsys)
    assert code == 2 and "pong-1/eval.json: unreadable" in err


# --------------------------------------------------------------------------- #


# --------------------------------------------------------------------------- #
# The GTrXL core.

def test_eval_of_a_gtrxl_checkpoint_gives_the_hand_computed_returns(tmp_path, capsys):
    """A gtrxl learner whose Q-values always favour action 1 on the counter env (env i
    ends after 5 + 5 i steps, action a earns 1 + a): r2d2-eval restores the core
    from the checkpoint and plays returns 10 and 20."""
    cfg = counter_config(episodes=2, core="gtrxl")
    learner = Learner(cfg, (2,), 2)
    learner.load_flat_params(fixed_action_params(cfg, (2,), 2, action=1))
    run = str(tmp_path / "run")
    write_pong_checkpoint(run, cfg, learner, 4)
    code, out, err = main([run, "--epsilon", "0", "--no-write", "--json"], capsys)
    assert code == 0, err
    rec = json.loads(out)
    assert rec["returns"] == [10, 20] and rec["lengths"] == [5, 10], rec
    assert rec["checkpoint_step"] == 4

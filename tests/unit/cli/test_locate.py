"""The three entry points find a run's newest valid checkpoint with the one locator
(``checkpoint.validate.find_latest_valid``): on a run whose newer checkpoints are corrupt
or half-written, ``r2d2-ckpt inspect``, ``r2d2-eval`` and ``r2d2-train``'s resume all take the
same checkpoint and report the skipped ones in the same words. A copy of the lookup in one
of them would pick another checkpoint or word its lines differently."""
from __future__ import annotations

import json
import os

import pytest
import torch

from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.cli import train
from r2d2_hpc.cli.ckpt import main as ckpt_main
from r2d2_hpc.cli.eval import main as eval_main
from r2d2_hpc.job.role import job_spec
from tests.helpers.checkpoints import half_written_run
from tests.helpers.launcher import TINY, sets, tiny_job_config


@pytest.fixture
def run(tmp_path):
    cfg = tiny_job_config()
    spec = job_spec(cfg)
    states = {}
    for k in (1, 2, 3, 5):
        torch.manual_seed(k)
        learner = Learner(cfg, spec.obs_shape, spec.num_actions)
        learner.params_version = 10 * k
        states[k] = learner.state()
    run_dir, _ = half_written_run(tmp_path, cfg, states, job_spec=spec)
    return run_dir


def _line(err: str, name: str) -> str:
    (line,) = [x for x in err.splitlines() if name in x]
    return line


def test_ckpt_eval_and_train_take_the_same_checkpoint_and_say_the_same(run, capsys) -> None:
    assert ckpt_main(["inspect", run, "--json"]) == 0
    out, err_ckpt = capsys.readouterr()
    assert json.loads(out)["step"] == 2

    assert eval_main([run, "--episodes", "1", "--json", "--no-write"]) == 0
    out, err_eval = capsys.readouterr()
    rec = json.loads(out)
    assert rec["checkpoint_step"] == 2 and rec["params_version"] == 20

    args = train.build_train_parser().parse_args(["--serial", "--run-dir", run] + sets(*TINY))
    cfg_dict, error, _, resume, _ = train._root_setup(args, 1)  # the resume decision, no job
    _, err_train = capsys.readouterr()
    assert error is None and resume is not None and resume.step == 2

    for name in ("ckpt-000000000003", "ckpt-000000000005", "ckpt-000000000004"):
        words = _line(err_ckpt, name)
        assert words == _line(err_eval, name)
        assert _line(err_train, name).startswith(words.rsplit(" (moved to", 1)[0])
    assert "learner.h5: crc32" in _line(err_ckpt, "ckpt-000000000003")
    # r2d2-train moved the invalid ones aside; the others only read.
    names = sorted(os.listdir(os.path.join(run, "checkpoints")))
    assert "corrupt-ckpt-000000000003" in names and "corrupt-ckpt-000000000005" in names

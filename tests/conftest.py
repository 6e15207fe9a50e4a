"""Shared fixtures and setup for the test suite."""
from __future__ import annotations

import os
import sys
from typing import Any, Dict

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the packages r2d2_hpc, tests and benchmarks import from the root
    sys.path.insert(0, ROOT)

from r2d2_hpc.agent.learner import Learner  # noqa: E402
from r2d2_hpc.job.role import job_spec  # noqa: E402
from tests.helpers.pong import pong_config, write_checkpoint  # noqa: E402

torch.set_num_threads(1)  # 2-core CI machine; tests use tiny shapes


@pytest.fixture
def repo_root() -> str:
    return ROOT


@pytest.fixture(scope="module")
def pong(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """A run directory with two checkpoints (steps 1 and 2) of a fresh Pong learner."""
    torch.set_num_threads(1)
    cfg = pong_config()
    spec = job_spec(cfg)
    torch.manual_seed(0)
    learner = Learner(cfg, spec.obs_shape, spec.num_actions)
    run = str(tmp_path_factory.mktemp("pong") / "run")
    first = write_checkpoint(run, cfg, learner, 1)
    learner.params_version = 7
    second = write_checkpoint(run, cfg, learner, 2)
    return {"cfg": cfg, "learner": learner, "run": run, "ckpts": [first, second]}

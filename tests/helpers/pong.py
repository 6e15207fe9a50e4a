"""Checkpoints of a fresh Pong learner (the ``pong`` fixture in tests/conftest.py)."""
from __future__ import annotations

import shutil


from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.checkpoint.layout import CheckpointLayout
from r2d2_hpc.config import Config, load_config
from r2d2_hpc.job.role import job_spec
from r2d2_hpc.types import ActorState

#: A Pong run with a tiny core and a 40-frame cap (10 agent steps per episode).
PONG = ["env.name=atari", "env.game=Pong", "env.max_episode_frames=40",
        "network.lstm_size=16", "network.head_hidden=16", "logging.eval_episodes=2"]


def pong_config(*extra: str) -> Config:
    """The Pong run's config with ``extra`` overrides."""
    return load_config(None, PONG + list(extra))


def write_checkpoint(run_dir: str, cfg: Config, learner: Learner, step: int) -> str:
    """Commits a learner-only checkpoint (no replay shards) at ``step``; returns its path."""
    layout = CheckpointLayout(run_dir, keep=5, fsync=False)
    path = layout.begin(step)
    layout.write_learner(path, learner.state(), cfg, {"env_steps": 100 * step,
                                                      "env_frames": 400 * step},
                         step=step, job_spec=job_spec(cfg))
    layout.write_actors(path, [ActorState(env_steps=100 * step)])
    return layout.commit(path, step, 0).path


def copy_run(src: str, dst: str) -> str:
    """A copy of run directory ``src`` at ``dst``."""
    shutil.copytree(src, dst)
    return dst

"""The resume decision: which fields may change, and every one that may not is named."""
from __future__ import annotations

import pytest

from r2d2_hpc.checkpoint.records import CheckpointIncompatible
from r2d2_hpc.checkpoint.resume import compatibility_errors, resume_point
from tests.helpers.checkpoints import JOB_SPEC, filled_shard, with_changes, write_checkpoint
from tests.helpers.fakes import tiny_config


FROZEN_CASES = [
    ("network", {"lstm_size": 16}, ["network.lstm_size: checkpoint has 8, this run has 16"]),
    ("network", {"mlp_hidden": (8, 8)},
     ["network.mlp_hidden: checkpoint has [8], this run has [8, 8]"]),
    ("network", {"dueling": False, "head_hidden": 4},
     ["network.dueling: checkpoint has True, this run has False",
      "network.head_hidden: checkpoint has 8, this run has 4"]),
    ("env", {"name": "cartpole"}, ["env.name: checkpoint has 'counter', this run has 'cartpole'"]),
    ("env", {"game": "Breakout"}, ["env.game: checkpoint has 'Pong', this run has 'Breakout'"]),
    ("env", {"frame_stack": 2}, ["env.frame_stack: checkpoint has 4, this run has 2"]),
    ("replay", {"burn_in": 2}, ["replay.burn_in: checkpoint has 3, this run has 2"]),
]


@pytest.mark.parametrize("section,changes,expected", FROZEN_CASES)
def test_compatibility_errors_name_each_frozen_field(section, changes, expected) -> None:
    saved = tiny_config()
    assert compatibility_errors(saved, with_changes(saved, section, **changes)) == expected


@pytest.mark.parametrize("section,changes", [
    ("learner", {"learning_rate": 3e-4, "batch_size": 4}),
    ("topology", {"replay_shards": 3}),
    ("replay", {"capacity_observations": 2000, "sequence_period": 2}),
    ("actor", {"num_envs": 4}),
    ("checkpoint", {"keep": 5}),
])
def test_changes_a_resume_honours_are_no_errors(section, changes) -> None:
    saved = tiny_config()
    assert compatibility_errors(saved, with_changes(saved, section, **changes)) == []


def test_job_shape_differences_are_named() -> None:
    cfg = tiny_config()
    new = dict(JOB_SPEC, obs_shape=[6], num_actions=4)
    assert compatibility_errors(cfg, cfg, JOB_SPEC, new) == [
        "obs_shape: checkpoint has [5], this run has [6]",
        "num_actions: checkpoint has 3, this run has 4"]


def test_resume_point_raises_with_every_differing_field(tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = filled_shard()
    write_checkpoint(run, 1, cfg, [shard])
    new = with_changes(with_changes(cfg, "network", lstm_size=16), "learner", learning_rate=0.5)
    with pytest.raises(CheckpointIncompatible) as exc:
        resume_point(run, new, job_spec=dict(JOB_SPEC, num_actions=4), report=None)
    assert exc.value.errors == ["network.lstm_size: checkpoint has 8, this run has 16",
                                "num_actions: checkpoint has 3, this run has 4"]
    assert "ckpt-000000000001" in str(exc.value) and "--run-dir" in str(exc.value)
    assert resume_point(run, with_changes(cfg, "learner", learning_rate=0.5), job_spec=JOB_SPEC,
                        report=None).step == 1


def test_gtrxl_sizes_are_frozen_only_between_two_gtrxl_runs() -> None:
    """A changed head count keeps the parameter count and state size: named by field. A
    checkpoint from before the gtrxl fields existed (no such keys) still resumes an LSTM."""
    saved = with_changes(tiny_config(), "network", core="gtrxl", gtrxl_heads=4, gtrxl_dim=8)
    new = with_changes(saved, "network", gtrxl_heads=2, gtrxl_gate_bias=1.0)
    assert compatibility_errors(saved, new) == [
        "network.gtrxl_heads: checkpoint has 4, this run has 2"]  # the bias is only an init
    old = tiny_config().to_dict()
    for k in [k for k in old["network"] if k.startswith("gtrxl_")]:
        del old["network"][k]
    assert compatibility_errors(old, tiny_config()) == []

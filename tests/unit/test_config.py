"""Configuration: paper defaults, YAML + overrides, and one case per kind of error."""
from __future__ import annotations

import dataclasses
import os

import pytest
import yaml

from r2d2_hpc.comm.topology import assign_role
from r2d2_hpc.config import (Config, ConfigError, EnvConfig, config_diff, load_config,
                             parse_override, save_config)
from r2d2_hpc.presets import config_path, load_preset, preset_names, preset_path
from tests.helpers.launcher import ROOT


def errors_of(overrides, path=None, base=None):
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides, base=base)
    return info.value.errors


# Paper, Table 2 (and Section 2), field by field.
PAPER_DEFAULTS = [
    ("learner.discount", 0.997),
    ("learner.n_step", 5),
    ("replay.burn_in", 40),
    ("replay.trace_length", 80),
    ("replay.sequence_period", 40),
    ("learner.batch_size", 64),
    ("learner.learning_rate", 1e-4),
    ("learner.adam_epsilon", 1e-3),
    ("replay.priority_exponent", 0.9),
    ("replay.importance_sampling_exponent", 0.6),
    ("replay.priority_eta", 0.9),
    ("replay.capacity_observations", 4_000_000),
    ("learner.target_update_period", 2500),
    ("actor.param_refresh_period", 400),
    ("actor.epsilon_base", 0.4),
    ("actor.epsilon_alpha", 7.0),
    ("learner.value_rescaling_epsilon", 1e-3),
    ("network.lstm_size", 512),
    ("env.frame_stack", 4),
    ("env.full_action_space", True),
    ("env.terminal_on_life_loss", False),
    ("env.clip_rewards", False),
    ("env.noop_max", 30),
    ("env.max_episode_frames", 108_000),
]


@pytest.mark.parametrize("name,expected", PAPER_DEFAULTS)
def test_defaults_are_the_papers(name, expected):
    section, field = name.split(".")
    assert getattr(getattr(Config(), section), field) == expected


def test_default_config_is_valid_and_derived_values():
    cfg = Config()
    assert cfg.validate() == []
    assert cfg.replay.sequence_length == 120
    assert cfg.replay.capacity_sequences == 100_000
    assert cfg.topology.min_ranks == 3


def test_every_field_has_a_docstring():
    import ast
    import inspect

    import r2d2_hpc.config as module

    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name.endswith("Config"):
            body = node.body
            for i, stmt in enumerate(body):
                if isinstance(stmt, ast.AnnAssign):
                    nxt = body[i + 1] if i + 1 < len(body) else None
                    assert isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant), (
                        f"{node.name}.{stmt.target.id} has no docstring")


def test_yaml_file_and_overrides_apply_in_order(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  batch_size: 32\n  learning_rate: 1e-4\nreplay:\n  burn_in: 20\n")
    cfg = load_config(str(path), ["learner.batch_size=16", "network.mlp_hidden=[8, 4]"])
    assert cfg.learner.batch_size == 16           # --set wins over the file
    assert cfg.learner.learning_rate == 1e-4      # YAML 1.1 "1e-4" string accepted as float
    assert cfg.replay.burn_in == 20
    assert cfg.network.mlp_hidden == (8, 4)
    assert cfg.replay.trace_length == 80          # untouched default


def test_int_written_as_float_is_accepted():
    cfg = load_config(None, ["replay.capacity_observations=4e6"])
    assert cfg.replay.capacity_observations == 4_000_000
    assert isinstance(cfg.replay.capacity_observations, int)


def test_embedded_preset_is_valid_and_small():
    cfg = load_config(None, base=load_preset("default"))
    assert cfg.env.name == "cartpole_masked"
    assert cfg.replay.capacity_observations <= 1_000_000
    assert os.path.isfile(preset_path("default"))


def test_every_embedded_preset_is_valid_and_named():
    names = preset_names()
    assert {"default", "cartpole_fast"} <= set(names)
    for name in names:
        load_config(preset_path(name))
    assert config_path("cartpole_fast") == preset_path("cartpole_fast")
    assert config_path("configs/nothing.yaml") == "configs/nothing.yaml"  # reported by the reader


def test_loss_reduction_default_and_values():
    assert Config().learner.loss_reduction == "sum"  # Acme and SEED RL
    assert load_config(None, ["learner.loss_reduction=mean"]).learner.loss_reduction == "mean"
    (err,) = errors_of(["learner.loss_reduction=meen"])
    assert err.startswith("learner.loss_reduction: unknown value 'meen'; did you mean 'mean'?")


def test_target_return_is_optional_and_needs_evaluations():
    assert Config().learner.target_return is None
    cfg = load_config(None, ["learner.target_return=195", "logging.eval_interval_steps=100"])
    assert cfg.learner.target_return == 195.0
    assert load_config(None, ["learner.target_return=null"]).learner.target_return is None
    (err,) = errors_of(["learner.target_return=195"])
    assert err.startswith("learner.target_return:") and "eval_interval_steps" in err
    (err,) = errors_of(["learner.target_return=high", "logging.eval_interval_steps=100"])
    assert err.startswith("learner.target_return:")


def test_repo_configs_are_valid(repo_root):
    cdir = os.path.join(repo_root, "configs")
    files = [f for f in os.listdir(cdir) if f.endswith(".yaml")]
    assert files
    for f in files:
        load_config(os.path.join(cdir, f))


# --- one case per kind of error ------------------------------------------------

def test_unknown_key_suggests_the_closest():
    errs = errors_of(["learner.batchsize=3"])
    assert errs == ["learner.batchsize: unknown key; did you mean 'learner.batch_size'?"]


def test_unknown_section_suggests_the_closest():
    errs = errors_of(["lerner.batch_size=3"])
    assert len(errs) == 1 and "did you mean 'learner'" in errs[0]


def test_unknown_key_without_close_match_lists_fields():
    errs = errors_of(["replay.zzzz=1"])
    assert "unknown key" in errs[0] and "burn_in" in errs[0]


@pytest.mark.parametrize("override,field", [
    ("learner.discount=yes", "learner.discount"),      # bool for float
    ("learner.batch_size=2.5", "learner.batch_size"),  # float for int
    ("learner.batch_size=true", "learner.batch_size"),  # bool for int
    ("network.dueling=1", "network.dueling"),          # int for bool
    ("env.game=7", "env.game"),                        # int for str
    ("network.mlp_hidden=64", "network.mlp_hidden"),   # scalar for list
    ("learner=3", "learner"),                          # scalar for a section
])
def test_wrong_type(override, field):
    errs = errors_of([override])
    assert len(errs) == 1 and errs[0].startswith(f"{field}:"), errs


@pytest.mark.parametrize("override,field", [
    ("learner.discount=1.5", "learner.discount"),
    ("learner.discount=0", "learner.discount"),
    ("learner.learning_rate=-1", "learner.learning_rate"),
    ("replay.priority_exponent=1.2", "replay.priority_exponent"),
    ("replay.importance_sampling_exponent=-0.1", "replay.importance_sampling_exponent"),
    ("replay.priority_eta=2", "replay.priority_eta"),
    ("replay.burn_in=-1", "replay.burn_in"),
    ("topology.learners=0", "topology.learners"),
    ("actor.epsilon_base=0", "actor.epsilon_base"),
    ("network.core=lsmt", "network.core"),
    ("env.name=pong", "env.name"),
    ("learner.device=gpu", "learner.device"),
    ("learner.allreduce=nccl", "learner.allreduce"),
    ("learner.mixed_precision=fp8", "learner.mixed_precision"),
    ("learner.mixed_precision=true", "learner.mixed_precision"),
])
def test_out_of_range(override, field):
    errs = errors_of([override])
    assert any(e.startswith(f"{field}:") for e in errs), errs


def test_choice_error_suggests():
    errs = errors_of(["network.core=lsmt"])
    assert "did you mean 'lstm'" in errs[0]


def test_mixed_precision_default_and_values():
    assert Config().learner.mixed_precision == "none"  # float32 unless asked for
    for value in ("none", "bf16", "fp16"):  # fp16 needs CUDA: checked at start-up
        assert load_config(None, [f"learner.mixed_precision={value}"]) \
            .learner.mixed_precision == value
    (err,) = errors_of(["learner.mixed_precision=bf61"])
    assert err == ("learner.mixed_precision: unknown value 'bf61'; did you mean 'bf16'? "
                   "choose one of none, bf16, fp16")


@pytest.mark.parametrize("overrides,field", [
    (["replay.sequence_period=81"], "replay.sequence_period"),      # period > trace
    (["learner.n_step=81"], "learner.n_step"),                      # n-step > trace
    (["replay.capacity_observations=100"], "replay.capacity_observations"),
    (["replay.capacity_observations=4000", "replay.min_fill_sequences=1000"],
     "replay.min_fill_sequences"),
    (["replay.capacity_observations=1200", "replay.min_fill_sequences=0"],
     "learner.batch_size"),                                          # batch > slots
    (["replay.sequence_period=0"], "replay.sequence_period"),       # overlap >= length
])
def test_inconsistent_values(overrides, field):
    errs = errors_of(overrides)
    assert any(e.startswith(f"{field}:") for e in errs), errs


def test_all_errors_reported_at_once():
    errs = errors_of(["learner.batchsize=3", "learner.discount=yes", "network.core=x",
                      "replay.trace_length=2"])
    fields = {e.split(":")[0] for e in errs}
    assert {"learner.batchsize", "learner.discount", "network.core",
            "replay.sequence_period", "learner.n_step"} <= fields


def test_malformed_override():
    assert "expected section.field=value" in errors_of(["learner.batch_size"])[0]
    with pytest.raises(ConfigError):
        parse_override("=3")


def test_missing_and_malformed_files(tmp_path):
    errs = errors_of([], path=str(tmp_path / "missing.yaml"))
    assert "does not exist" in errs[0] and "missing.yaml" in errs[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text("learner: [unclosed\n")
    assert "not valid YAML" in errors_of([], path=str(bad))[0]
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    assert "must be a mapping" in errors_of([], path=str(lst))[0]


def test_message_names_source_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("learner:\n  discount: 3\n")
    with pytest.raises(ConfigError, match="c.yaml"):
        load_config(str(path))


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["learner.batch_size=8", "network.mlp_hidden=[3, 5]", "seed=7"])
    path = tmp_path / "config.yaml"
    save_config(cfg, str(path))
    assert load_config(str(path)) == cfg
    assert yaml.safe_load(path.read_text())["learner"]["batch_size"] == 8
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_from_dict_round_trip_and_diff():
    cfg = load_config(None, ["learner.n_step=3"])
    assert Config.from_dict(cfg.to_dict()) == cfg
    diff = config_diff(Config(), cfg)
    assert diff == [("learner.n_step", 5, 3)]


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().learner.batch_size = 3  # type: ignore[misc]


def test_pong_workstation_config_is_64_ranks_with_the_paper_protocol():
    cfg = load_config(os.path.join(ROOT, "configs", "pong_workstation.yaml"))
    assert cfg.env == EnvConfig(name="atari", game="Pong")  # the paper's protocol
    assert (cfg.topology.learners, cfg.topology.replay_shards) == (1, 4)
    roles = [assign_role(r, 64, cfg.topology).role for r in range(64)]
    assert {k: roles.count(k) for k in set(roles)} == {"learner": 1, "replay": 4, "actor": 59}
    assert cfg.learner.device == "cuda" and cfg.actor.num_envs == 64
    assert cfg.replay.capacity_observations == 4_000_000

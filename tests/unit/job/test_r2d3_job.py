"""R2D3 in the job: demo tables on the shards, the learner's split, checkpoint and resume.

Serial runs of the embedded default (masked CartPole) with tiny sizes and a
demonstration file of random play: the machinery, not learning (the
benchmark ``benchmarks/r2d3_demos.py`` shows learning).
"""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from r2d2_hpc.checkpoint.restore import restore_demo_table
from r2d2_hpc.cli.ckpt import main as ckpt_main
from r2d2_hpc.checkpoint.validate import find_latest_valid
from r2d2_hpc.job.replay import make_demo_table
from r2d2_hpc.job.role import job_spec
from r2d2_hpc.job.runner import run_serial
from r2d2_hpc.replay.demo_table import episode_windows
from r2d2_hpc.replay.demos import write_demos
from r2d2_hpc.storage.digest import state_digest
from tests.helpers.demos import random_demos
from tests.helpers.launcher import by_role, check_nothing_lost, tiny_job_config


def write_random_demos(path, episodes=(60, 45, 90, 30, 75)):
    """A demonstration file of random masked-CartPole-shaped play."""
    demos = random_demos(episodes)
    write_demos(str(path), demos)
    return demos


def demo_config(path, *extra):
    return tiny_job_config(f"replay.demo_files=[{path}]", "replay.demo_ratio=0.25", *extra)


def test_a_serial_run_with_demos_samples_them_at_the_ratio_and_never_evicts(tmp_path):
    demos = write_random_demos(tmp_path / "demos.h5")
    # a small agent replay that fills and evicts while the demo tables stay whole
    cfg = demo_config(tmp_path / "demos.h5", "learner.max_steps=60", "topology.replay_shards=2",
                      "replay.capacity_observations=1200",
                      "replay.min_fill_sequences=20")
    (tmp_path / "run").mkdir()
    result = run_serial(cfg, str(tmp_path / "run"), num_actors=2, quiet=True)
    ranks = result["ranks"]
    check_nothing_lost(ranks)
    shards = by_role(ranks, "replay")
    (learner,) = by_role(ranks, "learner")
    r = cfg.replay
    expected = sum(len(episode_windows(n, r.burn_in, r.trace_length, r.sequence_period))
                   for n in (60, 45, 90, 30, 75))
    assert sum(s["demo_sequences"] for s in shards) == expected
    assert sum(s["demo_observations"] for s in shards) == demos.steps
    assert all(s["demo_evicted_sequences"] == 0 for s in shards)
    assert sum(s["evicted_sequences"] for s in shards) > 0  # the agent's replay did evict
    # the split: demo rows ~ Binomial(rows, 0.25) over the run's batches
    rows = 60 * cfg.learner.batch_size
    demo_rows = learner["demo_rows_sampled"]
    assert learner["rows_sampled"] == rows
    assert stats.binomtest(demo_rows, rows, 0.25).pvalue > 1e-4
    # demo priorities moved away from the initial max (updates reached the tables)
    assert any(s["demo_mean_priority"] != 1.0 for s in shards)
    assert all(s["misrouted_updates"] == 0 for s in shards)
    rows_csv = result["metrics"]
    fractions = [row["demo_fraction"] for row in rows_csv if not np.isnan(row["demo_fraction"])]
    assert fractions and all(0.0 <= f <= 1.0 for f in fractions)


def test_demo_tables_are_checkpointed_and_restored_bit_exact(tmp_path):
    write_random_demos(tmp_path / "demos.h5")
    cfg = demo_config(tmp_path / "demos.h5", "learner.max_steps=30", "topology.replay_shards=2")
    run = tmp_path / "run"
    run.mkdir()
    result = run_serial(cfg, str(run), num_actors=1, quiet=True)
    shards = by_role(result["ranks"], "replay")
    info = find_latest_valid(str(run), report=None)
    assert info is not None and info.num_demo_tables == 2
    for i, s in enumerate(shards):
        table = restore_demo_table(info, i, 2)
        assert table is not None
        saved = s["demo_checkpoint_digests"][str(info.step)]
        assert state_digest(table.state()) == saved
        # updated priorities, not the initial ones: a rebuild from the file differs
        fresh = make_demo_table(cfg, job_spec(cfg), i, 2)
        assert state_digest(fresh.state()) != saved
        assert not np.array_equal(fresh.state().slots["priority"], table.state().slots["priority"])
    # another shard count: no exact table to restore (the files are loaded afresh)
    assert restore_demo_table(info, 0, 3) is None


def test_a_resumed_run_continues_from_the_checkpoints_demo_tables(tmp_path):
    write_random_demos(tmp_path / "demos.h5")
    cfg = demo_config(tmp_path / "demos.h5", "learner.max_steps=20")
    run = tmp_path / "run"
    run.mkdir()
    first = run_serial(cfg, str(run), num_actors=1, quiet=True)
    (shard,) = by_role(first["ranks"], "replay")
    info = find_latest_valid(str(run), report=None)
    cfg2 = demo_config(tmp_path / "demos.h5", "learner.max_steps=40")
    second = run_serial(cfg2, str(run), num_actors=1, quiet=True, resume=info)
    (shard2,) = by_role(second["ranks"], "replay")
    # the restored table is the saved one: its digest at resume equals the end of run 1
    restored = restore_demo_table(info, 0, 1)
    assert state_digest(restored.state()) == shard["demo_checkpoint_digests"][str(info.step)]
    assert shard2["demo_resume_digest"] == shard["demo_checkpoint_digests"][str(info.step)]
    assert shard2["demo_sampled_sequences"] > 0
    (learner2,) = by_role(second["ranks"], "learner")
    assert learner2["learner_step"] == 40


@pytest.mark.parametrize("ratio", [0.0, 1.0])
def test_the_split_extremes(tmp_path, ratio):
    """rho = 1: every row a demonstration; no files and rho = 0: none (and no table)."""
    write_random_demos(tmp_path / "demos.h5")
    extra = ([f"replay.demo_files=[{tmp_path / 'demos.h5'}]", "replay.demo_ratio=1.0"]
             if ratio else [])
    cfg = tiny_job_config("learner.max_steps=10", *extra)
    result = run_serial(cfg, None, num_actors=1, quiet=True)
    (learner,) = by_role(result["ranks"], "learner")
    assert learner["demo_rows_sampled"] == (learner["rows_sampled"] if ratio else 0)
    (shard,) = by_role(result["ranks"], "replay")
    assert ("demo_sequences" in shard) == bool(ratio)


def test_ckpt_inspect_lists_the_demo_tables(tmp_path, capsys):
    write_random_demos(tmp_path / "demos.h5")
    run = tmp_path / "run"
    run.mkdir()
    run_serial(demo_config(tmp_path / "demos.h5", "learner.max_steps=5"), str(run),
               num_actors=1, quiet=True)
    capsys.readouterr()
    assert ckpt_main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "demo  0    sequences" in out and "demo-0/index.h5" in out

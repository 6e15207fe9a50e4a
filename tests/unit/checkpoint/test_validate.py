"""Validation: a damaged or incomplete checkpoint is named once and the previous one used."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from r2d2_hpc.checkpoint.records import MANIFEST, CheckpointError
from r2d2_hpc.checkpoint.restore import read_learner, restore_shard
from r2d2_hpc.checkpoint.resume import resume_point
from r2d2_hpc.checkpoint.validate import find_latest_valid, locate_checkpoint
from tests.helpers.checkpoints import (NUM_ENVS, a_segment, fake_learner_state, fill, filled_shard,
                                       flip, half_written_run, new_shard, report_sink, truncate,
                                       write_checkpoint)
from tests.helpers.fakes import tiny_config


@pytest.mark.parametrize("damage,word", [(truncate, "truncated"), (flip, "corrupted")],
                         ids=["truncated", "bit-flipped"])
@pytest.mark.parametrize("which", ["learner.h5", "segment", "shard-0/index.h5", "actors.h5"])
def test_damaged_newest_checkpoint_is_named_once_and_the_previous_one_used(
        tmp_path, damage, word, which) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard(seed=1)
    fill(shard, [0, 1], seed=1)
    write_checkpoint(run, 10, cfg, [shard], learner_state=fake_learner_state(10, np.arange(5.0)))
    good = shard.state().copy()
    fill(shard, [0, 1], seed=2)
    newest = write_checkpoint(run, 20, cfg, [shard],
                              learner_state=fake_learner_state(20, np.arange(6.0)))
    rel = a_segment(newest.path) if which == "segment" else which
    # Damage the newest checkpoint's own copy (not an inode shared with ckpt 10).
    target = os.path.join(newest.path, rel)
    data = open(target, "rb").read()
    os.remove(target)
    open(target, "wb").write(data)
    damage(target)

    lines, say = report_sink()
    info = find_latest_valid(run, report=say)
    assert info is not None and info.step == 10
    assert len(lines) == 1
    assert "ckpt-000000000020" in lines[0] and rel in lines[0] and word in lines[0]
    assert "using the previous one" in lines[0]
    np.testing.assert_array_equal(read_learner(info).state.online["w"], np.arange(5.0))
    assert restore_shard(info, 0, 1, num_envs=NUM_ENVS).state().equals(good)
    # A size-only check catches truncation but not a flipped bit.
    shallow = find_latest_valid(run, report=None, deep=False)
    assert shallow.step == (10 if word == "truncated" else 20)
    # resume_point reports it once and moves it aside; the next resume is silent.
    lines2, say2 = report_sink()
    assert resume_point(run, cfg, report=say2).step == 10
    assert len(lines2) == 1 and "corrupt-ckpt-000000000020" in lines2[0]
    lines3, say3 = report_sink()
    assert resume_point(run, cfg, report=say3).step == 10 and lines3 == []


def test_manifest_damage_and_missing_manifest_are_detected(tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = filled_shard()
    write_checkpoint(run, 1, cfg, [shard])
    second = write_checkpoint(run, 2, cfg, [shard])
    third = write_checkpoint(run, 3, cfg, [shard])
    mpath = os.path.join(third.path, MANIFEST)
    manifest = json.load(open(mpath))
    manifest["step"] = 4  # edited without fixing the body crc32
    json.dump(manifest, open(mpath, "w"))
    os.remove(os.path.join(second.path, MANIFEST))
    lines, say = report_sink()
    assert find_latest_valid(run, report=say).step == 1
    assert len(lines) == 2
    assert "ckpt-000000000003" in lines[0] and "does not match its contents" in lines[0]
    assert "ckpt-000000000002" in lines[1] and "MANIFEST.json is missing" in lines[1]


def test_no_checkpoint_means_a_fresh_start(tmp_path) -> None:
    lines, say = report_sink()
    assert find_latest_valid(str(tmp_path), report=say) is None and lines == []
    assert resume_point(str(tmp_path), tiny_config(), report=say) is None


def test_damage_to_a_shared_segment_is_reported_in_every_checkpoint_that_links_it(
        tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shard = new_shard(seed=2, C=192, S=48)
    fill(shard, [0, 1], seed=1, rounds=3)
    first = write_checkpoint(run, 1, cfg, [shard])
    fill(shard, [0], seed=2, steps=6)
    second = write_checkpoint(run, 2, cfg, [shard])
    rel = a_segment(first.path)
    assert os.path.samefile(os.path.join(first.path, rel), os.path.join(second.path, rel))
    flip(os.path.join(second.path, rel))
    lines, say = report_sink()
    assert find_latest_valid(run, report=say) is None
    assert len(lines) == 2 and all(rel in line for line in lines)
    assert "no older checkpoint left" in lines[1]


def test_the_locator_skips_a_newer_corrupt_and_half_written_checkpoints(tmp_path) -> None:
    cfg = tiny_config()
    run, infos = half_written_run(tmp_path, cfg)
    lines, say = report_sink()
    info = find_latest_valid(run, report=say)
    assert info.path == infos[2].path and info.deep_verified
    assert read_learner(info).state.online["w"][0] == 2.0
    assert len(lines) == 3
    assert "ckpt-000000000004: interrupted while being written" in lines[0]
    assert "ckpt-000000000005 is corrupt or incomplete" in lines[1] and MANIFEST in lines[1]
    assert "ckpt-000000000003 is corrupt or incomplete: learner.h5: crc32" in lines[2]
    # A PATH: the run, its checkpoints/ (newest valid), or a checkpoint (must be valid).
    assert locate_checkpoint(run, report=None).path == infos[2].path
    assert locate_checkpoint(os.path.join(run, "checkpoints"), report=None).path == \
        infos[2].path
    with pytest.raises(CheckpointError, match="ckpt-000000000003 is invalid: learner.h5"):
        locate_checkpoint(infos[3].path)
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        locate_checkpoint(str(tmp_path))
    os.makedirs(tmp_path / "empty" / "checkpoints")
    with pytest.raises(CheckpointError, match="empty: no valid checkpoint"):
        locate_checkpoint(str(tmp_path / "empty"), report=None)


def test_deep_may_name_the_files_whose_crc32_matters(tmp_path) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    write_checkpoint(run, 1, cfg, [])
    newest = write_checkpoint(run, 2, cfg, [])
    flip(os.path.join(newest.path, "actors.h5"))  # same size, wrong crc32
    assert find_latest_valid(run, report=None).step == 1
    only_learner = find_latest_valid(run, report=None, deep=("learner.h5",))
    assert only_learner.step == 2 and not only_learner.deep_verified
    truncate(os.path.join(newest.path, "actors.h5"))  # sizes are always checked
    assert find_latest_valid(run, report=None, deep=("learner.h5",)).step == 1

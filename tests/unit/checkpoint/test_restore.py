"""Restore: re-sharding keeps every sequence where the actors route it; a layout mismatch is named."""
from __future__ import annotations

import dataclasses

import pytest

from r2d2_hpc.checkpoint.records import CheckpointError
from r2d2_hpc.checkpoint.restore import restore_shard
from r2d2_hpc.replay.layout import split_keys
from r2d2_hpc.replay.routing import shard_for_stream, stream_id
from tests.helpers.checkpoints import (NUM_ENVS, actor_streams, as_snapshot_version_1, fill,
                                       filled_shard, live_records, new_shard, rewrite_snapshot_meta,
                                       write_checkpoint)
from tests.helpers.fakes import tiny_config


@pytest.mark.parametrize("old,new,num_actors", [(2, 1, 4), (1, 3, 6), (3, 2, 5)])
def test_reshard_keeps_every_sequence_on_the_actor_routed_shard(tmp_path, old, new,
                                                                num_actors) -> None:
    run = str(tmp_path / "run")
    shards = [new_shard(seed=i, C=200, S=60, shard_index=i) for i in range(old)]
    for a in range(num_actors):
        s = shard_for_stream(stream_id(a, 0, NUM_ENVS), NUM_ENVS, old)
        fill(shards[s], actor_streams([a]), seed=a, steps=10)
    expected = live_records(shards)
    info = write_checkpoint(run, 3, tiny_config(), shards)
    # Big enough targets (capacity scales with the shard count, as in make_shard).
    spec = dataclasses.replace(shards[0].spec, capacity_observations=200 * old,
                               capacity_sequences=60 * old)
    restored = [restore_shard(info, i, new, num_envs=NUM_ENVS, spec=spec, seed=i)
                for i in range(new)]
    assert live_records(restored) == expected
    for i, sh in enumerate(restored):
        streams = sh.sequence_info(sh.live_keys())["stream"]
        assert all(shard_for_stream(int(s), NUM_ENVS, new) == i for s in streams)
        assert sh.shard_index == i and set(split_keys(sh.live_keys()).shard.tolist()) == {i}
        assert sh.spec.capacity_observations == 200 * old
        sh.sample(4)  # sampling works on the new shard


def test_restore_into_another_replay_layout_names_the_field(tmp_path) -> None:
    run = str(tmp_path / "run")
    shard = filled_shard()
    info = write_checkpoint(run, 1, tiny_config(), [shard])
    spec = dataclasses.replace(shard.spec, state_size=4, frame_shape=(4, 4))
    with pytest.raises(CheckpointError) as exc:
        restore_shard(info, 0, 1, num_envs=NUM_ENVS, spec=spec)
    assert "state_size: checkpoint has 3, this run has 4" in str(exc.value)
    assert "frame_shape" in str(exc.value)


def test_checkpoint_of_version_1_snapshots_still_restores(tmp_path) -> None:
    """Snapshots written before keys named their shard: each loads as the shard its
    directory is, exactly or re-sharded."""
    run = str(tmp_path / "run")
    shards = [new_shard(seed=i, C=200, S=60, shard_index=i) for i in range(2)]
    for a in range(4):
        fill(shards[shard_for_stream(stream_id(a, 0, NUM_ENVS), NUM_ENVS, 2)],
             actor_streams([a]), seed=a, steps=10)
    expected = live_records(shards)
    info = write_checkpoint(run, 3, tiny_config(), shards)
    for i in range(2):
        rewrite_snapshot_meta(info.shard_dir(i), as_snapshot_version_1)
    exact = [restore_shard(info, i, 2, num_envs=NUM_ENVS, verify=False) for i in range(2)]
    assert [sh.shard_index for sh in exact] == [0, 1]
    assert all(sh.state().equals(old.state()) for sh, old in zip(exact, shards))
    one = restore_shard(info, 0, 1, num_envs=NUM_ENVS, spec=shards[0].spec, verify=False)
    assert live_records([one]) == expected

"""``r2d2-ckpt inspect``/``list`` in process: what it shows and its exit codes."""
from __future__ import annotations

import json
import os
from typing import Tuple

from r2d2_hpc.cli.ckpt import main as ckpt_main
from r2d2_hpc.config import save_config
from tests.helpers.checkpoints import (a_segment, fill, filled_shard, flip, new_shard, with_changes,
                                       write_checkpoint)
from tests.helpers.fakes import tiny_config


# r2d2-ckpt.

def _inspect(capsys, *args: str) -> Tuple[int, str, str]:
    rc = ckpt_main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_inspect_shows_step_frames_fill_files_and_config_differences(tmp_path, capsys) -> None:
    run = str(tmp_path / "run")
    cfg = tiny_config()
    shards = [new_shard(seed=0), new_shard(seed=1, shard_index=1)]
    fill(shards[0], [0, 1], seed=0)
    fill(shards[1], [2], seed=1)
    info = write_checkpoint(run, 42, cfg, shards)
    rc, out, err = _inspect(capsys, "inspect", info.path)
    assert rc == 0, err
    assert "status       VALID" in out and "crc32 checked" in out
    assert "step         42" in out
    assert "env frames   420" in out  # env_steps 420, non-Atari: one frame per step
    s0, s1 = shards[0], shards[1]
    assert (f"shard 0    sequences {s0.count}/24 ({100 * s0.count / 24:.1f}%), observations "
            f"{s0.num_steps}/96") in out
    assert f"shard 1    sequences {s1.count}/24" in out
    assert "ok  learner.h5" in out and "ok  shard-1/index.h5" in out
    # A run directory means its newest valid checkpoint; --json for scripts.
    rc, out, _ = _inspect(capsys, "inspect", run, "--json")
    report = json.loads(out)
    assert rc == 0 and report["step"] == 42 and report["valid"]
    assert [s["live_sequences"] for s in report["shards"]] == [s0.count, s1.count]
    # Config differences against a file, frozen ones marked.
    other = with_changes(with_changes(cfg, "learner", learning_rate=0.5), "network", lstm_size=16)
    cfg_file = str(tmp_path / "other.yaml")
    save_config(other, cfg_file)
    rc, out, _ = _inspect(capsys, "inspect", info.path, "--config", cfg_file)
    assert rc == 0
    assert "2 field(s) differ" in out and "1 cannot change on resume" in out
    assert "learner.learning_rate: checkpoint 0.01, config 0.5\n" in out or \
        "learner.learning_rate: checkpoint 0.0001, config 0.5\n" in out
    assert "network.lstm_size: checkpoint 8, config 16   (cannot change on resume)" in out


def test_inspect_exit_codes_on_missing_corrupt_and_bad_config(tmp_path, capsys) -> None:
    rc, _, err = _inspect(capsys, "inspect", str(tmp_path / "nope"))
    assert rc == 2 and "no such file or directory" in err
    rc, _, err = _inspect(capsys, "inspect", str(tmp_path))
    assert rc == 2 and "neither a checkpoint directory" in err
    run = str(tmp_path / "run")
    shard = filled_shard()
    info = write_checkpoint(run, 1, tiny_config(), [shard])
    seg = a_segment(info.path)
    flip(os.path.join(info.path, seg))
    rc, out, err = _inspect(capsys, "inspect", info.path)
    assert rc == 2 and f"BAD {seg}" in out and "corrupt or truncated" in err and seg in err
    rc, out, err = _inspect(capsys, "inspect", info.path, "--quick")  # sizes only: fine
    assert rc == 0
    rc, _, err = _inspect(capsys, "inspect", run)
    assert rc == 2 and "no valid checkpoint" in err and "ckpt-000000000001" in err
    rc, out, err = _inspect(capsys, "list", run)
    assert rc == 2 and "ckpt-000000000001  step 1  INVALID" in out
    bad_cfg = str(tmp_path / "bad.yaml")
    open(bad_cfg, "w").write("learner:\n  batch_size: -1\n")
    rc, _, err = _inspect(capsys, "inspect", info.path, "--config", bad_cfg)
    assert rc == 2 and "learner.batch_size" in err

"""Smoke test of the preemption benchmark, and its pure helpers.

``benchmarks/preempt_bench.py --quick`` runs the real job under ``mpiexec``
(Atari Pong, a tiny replay): fill, SIGUSR1 to mpiexec, exit 3 with a complete
checkpoint, resume with the same command, training again, a second SIGUSR1.
The test checks the JSON's schema and what must hold whatever the machine:
exit codes, checkpoint sizes against the manifest, bit-exact resume, the
order of the events. Never timing thresholds (the numbers depend on the
machine), except that everything happened inside the run.
The byte accounting and the helpers are checked against hand-computed tables.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks import preempt_bench
from r2d2_hpc.replay.shard import ReplayShard


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


# --------------------------------------------------------------------------- #
# Pure helpers, hand-computed.

@pytest.mark.parametrize("frame, dtype, stack, seq_len, H, obs_bytes, seq_bytes", [
    # 84x84 uint8: frame 7056 + action 8 + reward 4 + discount 4 + first 1 = 7073.
    # pos (4 - 1 + 120) * 4 = 492, length 4, start_step 8, h and c 2 * 64 * 4 = 512,
    # prev_action 8, prev_reward 4 -> 1028; slots: stream 8, oldest 8,
    # priority 8, generation 8, live 1, tree leaf 8 -> 41; 1028 + 41 = 1069.
    ((84, 84), "uint8", 4, 120, 64, 7073, 1069),
    # CartPole-like: 2 float32 = 8 + 17 = 25; pos (1 - 1 + 40) * 4 = 160,
    # 4 + 8 + 2 * 16 * 4 = 128 + 8 + 4 -> 312; + 41 = 353.
    ((2,), "float32", 1, 40, 16, 25, 353),
])
def test_row_bytes_of_the_shard_layout(frame, dtype, stack, seq_len, H, obs_bytes, seq_bytes):
    shard = ReplayShard(frame, capacity_observations=200, capacity_sequences=10,
                        sequence_length=seq_len, state_size=H, obs_dtype=dtype,
                        frame_stack=stack)
    rows = preempt_bench.row_bytes(shard.spec.field_layout())
    assert rows == {"observation": obs_bytes, "sequence": seq_bytes}


@pytest.mark.parametrize("obs, seqs, expected", [
    (141_000, 3_500, 141_000 * 7073 + 3_500 * 1069),   # ~1.0 GB
    (0, 0, 0),
    (math.nan, math.nan, 0),                           # no metrics row had them yet
    (10.0, math.nan, 70_730),
])
def test_replay_bytes(obs, seqs, expected):
    assert preempt_bench.replay_bytes(obs, seqs, {"observation": 7073, "sequence": 1069}) \
        == expected


def _rows(*steps):
    return [{"learner_step": float(s)} for s in steps]


@pytest.mark.parametrize("rows, start, step, expected", [
    (_rows(5, 9, 10, 10, 11, 12), 2, 10, 4),   # the resumed run's rows start at 2
    (_rows(5, 9, 12, 10, 11), 3, 10, 4),       # rows before `start` do not count
    (_rows(10, 10, math.nan), 0, 10, None),    # nothing past the checkpoint's step yet
    ([], 0, 0, None),
])
def test_first_row_after(rows, start, step, expected):
    assert preempt_bench.first_row_after(rows, start, step) == expected


@pytest.mark.parametrize("samples, threshold, expected", [
    ([(0.1, 5.0), (0.2, 50.0), (0.3, 100.0), (0.4, 120.0)], 100.0, 0.3),
    ([(0.1, 5.0), (0.2, 50.0)], 100.0, None),
    ([(0.5, 200.0)], 100.0, 0.5),
    ([], 1.0, None),
])
def test_first_crossing(samples, threshold, expected):
    assert preempt_bench.first_crossing(samples, threshold) == expected


@pytest.mark.parametrize("seconds, fraction, inside", [
    (30.0, 0.25, True), (119.9, 119.9 / 120, True), (120.0, 1.0, False), (150.0, 1.25, False),
])
def test_within_grace(seconds, fraction, inside):
    got = preempt_bench.within_grace(seconds)
    assert got == {"grace_s": 120.0, "fraction_of_grace": pytest.approx(fraction),
                   "within_grace": inside}


@pytest.mark.parametrize("seen, wall, start", [
    (20.0, 1.5, 18.5),    # row seen 20 s after launch, 1.5 s after the learner was built
    (12.25, 0.25, 12.0),
])
def test_loop_start_from_the_first_row(seen, wall, start):
    got = preempt_bench.loop_start(seen, {"wall_time_s": wall, "learner_step": 0.0})
    assert got == {"launch_to_first_metrics_row_s": seen,
                   "launch_to_learner_loop_start_s": pytest.approx(start)}


def test_train_command_runs_the_cli_with_every_setting(tmp_path):
    cmd = preempt_bench.train_command(str(tmp_path), ["a.b=1", "c.d=[2]"], 4)
    assert cmd[1:3] == ["-n", "4"] and cmd[4:6] == ["-m", "r2d2_hpc.cli"]
    i = cmd.index("--run-dir")
    assert cmd[i + 1] == str(tmp_path)
    assert cmd[-4:] == ["--set", "a.b=1", "--set", "c.d=[2]"]
    assert cmd[cmd.index("--config") + 1] == preempt_bench.CONFIG_FILE


def test_full_settings_fill_a_gigabyte_without_eviction():
    """The full run's replay can hold the target without overwriting anything."""
    cfg = preempt_bench.bench_config(preempt_bench.FULL_SETTINGS)
    assert cfg.env.name == "atari" and cfg.checkpoint.interval_seconds == 0
    rows = {"observation": 7073, "sequence": 1069}
    full = preempt_bench.replay_bytes(cfg.replay.capacity_observations,
                                      cfg.replay.capacity_sequences, rows)
    assert full > 1.05e9


# --------------------------------------------------------------------------- #
# The real job, tiny replay.

@pytest.mark.slow
def test_preempt_bench_quick(tmp_path):
    out = tmp_path / "preempt.json"
    res = preempt_bench.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text()) == res
    assert res["benchmark"] == "preempt" and res["quick"] is True
    assert "r2d2_hpc.cli" in res["command"] and "--run-dir" in res["command"]
    assert res["config"]["env"] == "atari"
    m = res["machine"]
    assert m["cpus"] >= 1 and len(m["load_average_start"]) == len(m["load_average_end"]) == 3

    fill = res["fill"]
    assert fill["replay_bytes"] >= res["target_replay_bytes"]
    assert fill["replay_bytes"] == (fill["replay_observations"] * res["row_bytes"]["observation"]
                                    + fill["replay_sequences"] * res["row_bytes"]["sequence"])
    assert fill["learner_step"] >= 1

    pre = res["preempt"]
    assert pre["exit_code"] == 3 and pre["every_rank_exit_code"] == [3]
    assert pre["stop_reason"] == "preempted by SIGUSR1"
    assert positive(pre["signal_to_all_exited_s"]) and positive(pre["checkpoint_write_s"])
    ckpt = pre["checkpoint"]
    assert ckpt["valid_deep"] is True and ckpt["step"] >= fill["learner_step"]
    # learner.h5 + the shard's files + a small actors.h5
    assert 0 < ckpt["bytes"] - ckpt["learner_bytes"] - ckpt["replay_file_bytes"] < 1 << 20
    # the shard stored at least what the fill saw, and its files hold at least its frames
    assert ckpt["replay_observations"] >= fill["replay_observations"]
    assert ckpt["replay_file_bytes"] >= ckpt["replay_observations"] * 84 * 84
    # events in order, all before mpiexec returned
    b = pre["breakdown_after_signal_s"]
    assert 0 <= b["checkpoint_started"] <= b["checkpoint_committed"]
    assert all(b["checkpoint_committed"] <= t for t in b["ranks_left_loop"].values())
    assert max(b["ranks_left_loop"].values()) <= b["summary_json_written"] \
        <= b["mpiexec_returned"] == pre["signal_to_all_exited_s"]
    assert set(b["processes"]) == {"0", "1", "2"}
    assert all(p["last_seen_s"] <= b["mpiexec_returned"] for p in b["processes"].values())

    off = res["restore_offline"]
    assert off["restored_observations"] == ckpt["replay_observations"]
    assert all(positive(off[k]) for k in ("resume_point_deep_validate_s", "read_learner_s",
                                          "restore_shards_s"))

    (cycle,) = res["resume_cycles"]
    r = cycle["resume"]
    assert r["resumed_from"] == ckpt["step"]
    assert r["learner_state_bit_exact"] is True and r["replay_state_bit_exact"] is True
    assert r["first_row_after_resume"]["learner_step"] > ckpt["step"]
    assert 0 < r["launch_to_resuming_line_s"] <= r["launch_to_first_metrics_row_s"] \
        <= r["launch_to_first_learner_step_s"]
    assert r["first_row_after_resume"]["replay_observations"] >= ckpt["replay_observations"]
    second = cycle["preempt"]
    assert second["exit_code"] == 3
    assert second["checkpoint"]["step"] > ckpt["step"]
    assert second["checkpoint"]["hard_linked_from"] == ckpt["name"]
    assert 0 < second["checkpoint"]["bytes_new"] <= second["checkpoint"]["bytes"]

    head = res["headline"]
    assert head["checkpoint_bytes"] == ckpt["bytes"]
    assert head["replay_bytes_at_checkpoint"] == ckpt["replay_bytes"]
    assert head["resume_bit_exact"] is True and head["exit_code"] == 3
    assert head["within_slurm_grace_120s"] == (pre["signal_to_all_exited_s"] < 120)
    assert len(head["resume_launch_to_first_learner_step_s"]) == 1
    assert np.isfinite(head["resume_launch_to_first_learner_step_s"][0])

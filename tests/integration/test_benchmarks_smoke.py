"""Smoke tests of the benchmarks (actor, Atari actor, learner, GPU learner, transport,
replay, allreduce).

Each benchmark's real entry point runs with ``--quick`` (tiny sizes, real
``mpiexec`` where the benchmark uses it); the tests check the JSON's schema,
that every rate and ratio is finite and positive, and that nothing sent was
lost. Never timing thresholds: the numbers depend on the machine.
The pure helpers (medians and ratios, the live run's steady-state window)
are checked against hand-computed tables.
"""
from __future__ import annotations

import json
import math
import os

import pytest

import numpy as np

from benchmarks import (actor_bench, allreduce_bench, atari_actor_bench, atari_learning,
                        gpu_learner_bench, gtrxl_bench, learner_bench, lstm_ablation,
                        replay_bench, transport_bench)


def positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def check_written(out, result) -> None:
    """--out holds exactly what main returned (and printed)."""
    assert json.loads(out.read_text()) == result


# --------------------------------------------------------------------------- #
# Pure helpers, hand-computed.

@pytest.mark.parametrize("actor, bare, ratio, ratio_cpu", [
    # one run each: plain quotients
    ([(100.0, 200.0)], [(400.0, 400.0)], 0.25, 0.5),
    # medians of three: actor 90 (of 80, 90, 300), cpu 100; bare 100, cpu 125
    ([(80.0, 100.0), (300.0, 300.0), (90.0, 90.0)],
     [(100.0, 125.0), (90.0, 120.0), (110.0, 130.0)], 0.9, 0.8),
    # median of two is their mean: actor (10+30)/2 = 20, bare (40+40)/2 = 40
    ([(10.0, 10.0), (30.0, 30.0)], [(40.0, 20.0), (40.0, 60.0)], 0.5, 0.5),
])
def test_actor_summarize_medians_and_ratios(actor, bare, ratio, ratio_cpu):
    runs_a = [{"env_steps_per_s": w, "env_steps_per_cpu_s": c} for w, c in actor]
    runs_b = [{"env_steps_per_s": w, "env_steps_per_cpu_s": c} for w, c in bare]
    s = actor_bench.summarize(runs_a, runs_b)
    assert s["ratio"] == pytest.approx(ratio)
    assert s["ratio_cpu_time"] == pytest.approx(ratio_cpu)
    assert s["actor_runs"] == runs_a and s["bare_runs"] == runs_b
    assert s["target_ratio_min"] == 0.9


def test_actor_totals_add_up_and_rates_per_tick():
    a = {"env_steps": 160, "ticks": 10, "seconds": 0.02, "cpu_seconds": 0.016,
         "phases": {"policy.act": 0.01, "env.step": 0.002}}
    b = {"env_steps": 320, "ticks": 20, "seconds": 0.04, "cpu_seconds": 0.024,
         "phases": {"policy.act": 0.02, "env.step": 0.004}}
    total = actor_bench.add_totals(actor_bench.add_totals({}, a), b)
    assert total["env_steps"] == 480 and total["ticks"] == 30
    assert total["phases"] == pytest.approx({"policy.act": 0.03, "env.step": 0.006})
    r = actor_bench.rates(total)
    assert r["env_steps_per_s"] == pytest.approx(480 / 0.06)        # 8000
    assert r["env_steps_per_cpu_s"] == pytest.approx(480 / 0.04)    # 12000
    # per tick: act 0.03 s / 30 = 1000 us, step 200 us, tick 2000 us, so other 800 us
    assert r["us_per_tick"] == pytest.approx({"policy.act": 1000.0, "env.step": 200.0,
                                              "other": 800.0})
    assert "phases" not in r


def test_actor_alternate_gives_each_side_the_same_time():
    calls = []

    def side(name):
        def run(secs):
            calls.append((name, secs))
            return {"env_steps": 16, "ticks": 1, "seconds": secs, "cpu_seconds": secs}
        return run

    a, b = actor_bench.alternate(side("actor"), side("bare"), 1.0, 0.4)
    # slices 0.4, 0.4, 0.2, actor first each time
    assert [n for n, _ in calls] == ["actor", "bare"] * 3
    assert [s for _, s in calls] == pytest.approx([0.4, 0.4, 0.4, 0.4, 0.2, 0.2])
    assert a["seconds"] == pytest.approx(1.0) and b["seconds"] == pytest.approx(1.0)
    assert a["env_steps_per_s"] == pytest.approx(48.0)


def _rows(*pairs):
    return [{"learner_step": float(s), "wall_time_s": float(t)} for s, t in pairs]


@pytest.mark.parametrize("rows, warmup, rate, steps, seconds", [
    # window from the first row with step >= 20: (20, 1.0) .. (120, 3.0): 100 / 2
    (_rows((0, 0.5), (20, 1.0), (70, 2.0), (120, 3.0)), 20, 50.0, 100, 2.0),
    # warm-up 0 keeps every row: (0, 0.5) .. (120, 3.0): 120 / 2.5
    (_rows((0, 0.5), (20, 1.0), (70, 2.0), (120, 3.0)), 0, 48.0, 120, 2.5),
    # the first row past warm-up need not hit it exactly: (25, 1.0) .. (45, 1.5)
    (_rows((5, 0.5), (25, 1.0), (45, 1.5)), 10, 40.0, 20, 0.5),
])
def test_learner_steady_rate_window(rows, warmup, rate, steps, seconds):
    got = learner_bench.steady_rate(rows, warmup)
    assert got["updates_per_s"] == pytest.approx(rate)
    assert got["steps"] == steps
    assert got["seconds"] == pytest.approx(seconds)


def test_learner_steady_rate_cpu_time_window():
    rows = [{"learner_step": s, "wall_time_s": t, "thread_cpu_s": c}
            for s, t, c in ((0, 0.5, 0.2), (20, 1.0, 0.6), (70, 2.0, 1.4), (120, 3.0, 2.6))]
    got = learner_bench.steady_rate(rows, 20)
    # window (20, 1.0, 0.6) .. (120, 3.0, 2.6): 100 steps in 2.0 CPU-seconds
    assert got["cpu_seconds"] == pytest.approx(2.0)
    assert got["updates_per_cpu_s"] == pytest.approx(50.0)
    assert got["updates_per_s"] == pytest.approx(50.0)
    # without CPU times in the rows: no CPU rate
    assert math.isnan(learner_bench.steady_rate(_rows((0, 0.5), (20, 1.0)), 0)
                      ["updates_per_cpu_s"])


@pytest.mark.parametrize("rows, warmup", [
    (_rows((0, 0.5), (10, 1.0)), 20),   # nothing past warm-up
    (_rows((0, 0.5), (30, 1.0)), 20),   # one row: no window
    (_rows((30, 1.0), (30, 1.0)), 20),  # no time between the rows
    ([], 0),
])
def test_learner_steady_rate_without_a_window_is_nan(rows, warmup):
    got = learner_bench.steady_rate(rows, warmup)
    assert math.isnan(got["updates_per_s"]) and got["steps"] == 0


def test_transport_chunk_cases_have_the_job_shapes():
    cases = transport_bench.build_cases(["cartpole", "atari_40", "atari_160"])
    expected = {  # name: (steps, sequences, obs shape, obs dtype, state size)
        "cartpole": (8, 1, (8, 2), "float32", 64),
        "atari_40": (40, 1, (40, 84, 84), "uint8", 512),
        "atari_160": (160, 2, (160, 84, 84), "uint8", 512),
    }
    for name, (steps, seqs, obs_shape, dtype, H) in expected.items():
        case, msgs = cases[name]
        fields = case.layout.unpack(case.packed)
        assert fields["obs"].shape == obs_shape and fields["obs"].dtype == dtype
        assert fields["seq_state_h"].shape == (seqs, H)
        assert len(fields["action"]) == steps
        # the packed bytes carry at least the frames
        assert case.nbytes >= steps * int(math.prod(obs_shape[1:])) * fields["obs"].itemsize
        assert case.layout is msgs.STEP_CHUNK


# --------------------------------------------------------------------------- #
# Real entry points, tiny sizes.

def test_transport_bench_quick(tmp_path):
    out = tmp_path / "transport.json"
    res = transport_bench.main(["--quick", "--cases", "cartpole,atari_40", "--out", str(out)])
    check_written(out, res)
    assert res["benchmark"] == "transport"
    assert set(res["cases"]) == {"cartpole", "atari_40"}
    for name, case in res["cases"].items():
        for mode in transport_bench.MODES:
            assert positive(case[mode]["MB_per_s"]), (name, mode)
            assert positive(case[mode]["messages_per_s"]), (name, mode)
            assert case[mode]["messages_per_run"] >= 1
        for key in ("ratio", "ratio_to_raw_issend", "ratio_try_send",
                    "raw_issend_over_raw_isend"):
            assert positive(case[key]), (name, key)
        assert case["target_ratio_min"] == 0.7
    assert res["cases"]["atari_40"]["message_bytes"] > 40 * 84 * 84
    costs = res["layout_costs_single_process"]
    assert all(positive(v) for c in costs.values() for v in c.values())


@pytest.mark.slow
def test_actor_bench_quick(tmp_path):
    out = tmp_path / "actor.json"
    res = actor_bench.main(["--quick", "--out", str(out)])
    check_written(out, res)
    assert res["benchmark"] == "actor"
    assert list(res["workloads"]) == ["default"]  # --quick runs the small workload only
    assert res["target"] == {"workload": "atari", "ratio_min": 0.9}
    res = res["workloads"]["default"]
    assert res["config"]["env"] == "cartpole_masked"
    for setup in ("inproc", "mpi"):
        r = res[setup]
        for key in ("actor_env_steps_per_s", "bare_env_steps_per_s", "ratio",
                    "actor_env_steps_per_cpu_s", "bare_env_steps_per_cpu_s", "ratio_cpu_time"):
            assert positive(r[key]), (setup, key)
        assert len(r["actor_runs"]) == len(r["bare_runs"]) == 1
    # in-process: every chunk the actor sent reached the shard
    inproc = res["inproc"]
    assert inproc["actor"]["chunks_sent"] == inproc["shard"]["chunks_received"] > 0
    assert inproc["actor"]["steps_sent"] == inproc["shard"]["steps_received"]
    # MPI: three ranks, clean shutdown, nothing lost on the way
    ranks = {r["role"]: r for r in res["mpi"]["ranks"]}
    assert set(ranks) == {"learner", "replay", "actor"}
    assert all(r["clean_shutdown"] for r in ranks.values())
    assert ranks["actor"]["chunks_sent"] == ranks["replay"]["chunks_received"] > 0
    assert ranks["actor"]["sequences_sent"] == (ranks["replay"]["inserted_sequences"]
                                                + ranks["replay"]["dropped_sequences"])


@pytest.mark.slow
def test_learner_bench_quick(tmp_path):
    out = tmp_path / "learner.json"
    res = learner_bench.main(["--quick", "--configs", "default", "--out", str(out)])
    check_written(out, res)
    assert res["benchmark"] == "learner"
    r = res["configs"]["default"]
    for key in ("live_updates_per_s", "in_memory_updates_per_s", "ratio",
                "live_updates_per_cpu_s", "in_memory_updates_per_cpu_s", "ratio_cpu_time",
                "live_mean_step_seconds", "in_memory_mean_step_seconds"):
        assert positive(r[key]), key
    assert r["live_summary"]["learner_step"] > 0
    assert r["live_summary"]["stop_reason"].startswith("learner.max_seconds")
    roles = sorted(x["role"] for x in r["live_ranks"])
    assert roles == ["actor", "learner", "replay"]
    assert all(x["clean_shutdown"] for x in r["live_ranks"])
    # the live run and the in-memory batches use the same shapes
    from r2d2_hpc.config import load_config
    from r2d2_hpc.presets import load_preset
    preset = load_config(None, base=load_preset("default"))
    assert r["batch_size"] == 8 and r["sequence_length"] == preset.replay.sequence_length


# --------------------------------------------------------------------------- #
# GPU learner benchmark (the CPU smoke run; the real figure needs a GPU).

def test_gpu_learner_synthetic_batch_is_a_valid_atari_batch():
    import numpy as np

    cfg = gpu_learner_bench.bench_config(batch_size=6, burn_in=3, trace_length=5,
                                         device="cpu")
    batch, weights = gpu_learner_bench.synthetic_batch(cfg, seed=1, episode_length=4.0)
    assert batch.obs.shape == (8, 6, 4, 84, 84) and batch.obs.dtype == np.uint8
    assert batch.state_h.shape == batch.state_c.shape == (6, 512)
    assert weights.shape == (6,) and np.all((weights >= 0.5) & (weights <= 1.0))
    assert batch.mask.all() and batch.first.any(axis=0).all()  # T/4 >= 1: all cross
    # an episode start follows a termination, and its previous action/reward are 0
    t, b = np.nonzero(batch.first)
    assert np.all(t >= 1) and np.all(batch.discount[t - 1, b] == 0.0)
    assert np.all(batch.prev_action[t, b] == 0) and np.all(batch.prev_reward[t, b] == 0.0)
    assert (batch.discount == 0.0).sum() == len(t)
    np.testing.assert_array_equal(batch.prev_action[1:][~batch.first[1:]],
                                  batch.action[:-1][~batch.first[1:]])


def test_gpu_learner_bench_quick(tmp_path):
    out = tmp_path / "gpu_learner.json"
    res = gpu_learner_bench.main(["--quick", "--out", str(out)])
    check_written(out, res)
    assert res["benchmark"] == "gpu_learner"
    assert res["reference"]["paper_updates_per_s"] == 5.0
    assert res["reference"]["goal_updates_per_s"] == 20.0
    c = res["config"]
    assert (c["batch_size"], c["sequence_length"]) == (4, 8) and c["quick"]
    assert (c["obs_shape"], c["num_actions"], c["torso"], c["lstm_size"]) == \
        ([4, 84, 84], 18, "atari", 512)
    assert c["num_params"] > 4_000_000  # the Atari network, not a toy
    assert sum(c["sequences_with_reset"]) > 0  # the reset path ran
    m = res["machine"]
    assert m["device"] == "cpu" and m["torch"] and m["device_name"]
    # --quick runs on the CPU: none and bf16 run, fp16 is refused with the fix
    assert set(res["modes"]) == {"none", "bf16"}
    assert "needs a CUDA learner" in res["modes_not_run"]["fp16"]
    for mode, r in res["modes"].items():
        assert r["mixed_precision"] == mode
        for key in ("updates_per_s", "ms_per_update", "step_ms_median", "sequences_per_s",
                    "forward_backward_ms_median", "optimizer_ms_median",
                    "host_to_device_ms_median", "batch_mb"):
            assert positive(r[key]), (mode, key)
        assert r["updates_per_s"] * r["ms_per_update"] == pytest.approx(1000.0)
        assert r["steps"] == 3 and r["warmup_steps"] == 1 and r["skipped_steps"] == 0
        assert r["losses_finite"] and r["params_float32"]
    assert res["best"]["mode"] in res["modes"]
    assert res["goal_met"] is None  # judged on CUDA only


def test_gtrxl_bench_quick(tmp_path):
    out = tmp_path / "gtrxl.json"
    res = gtrxl_bench.main(["--quick", "--time", "lstm,gtrxl_default", "--out", str(out)])
    check_written(out, res)
    assert set(res["cores"]) == {"lstm", "gtrxl", "gtrxl_default", "gtrxl_paper"}
    for name in ("lstm", "gtrxl_default"):
        r = res["cores"][name]
        assert positive(r["updates_per_s"]) and r["losses_finite"], name
        assert len(r["updates_per_s_repeats"]) == 2, name  # the cores alternated twice
    assert list(res["updates_per_s_vs_lstm"]) == ["gtrxl_default"]
    assert positive(res["updates_per_s_vs_lstm"]["gtrxl_default"])
    lstm = res["cores"]["lstm"]
    assert lstm["replay_bytes_per_sequence_stored"] == lstm["replay_bytes_per_sequence_zero"]
    for name in ("gtrxl", "gtrxl_default", "gtrxl_paper"):
        r = res["cores"][name]
        assert r["stored_state_size_zero"] == 1
        # the stored memory is the only difference: 2 halves of float32 per sequence
        assert r["replay_bytes_per_sequence_stored"] - r["replay_bytes_per_sequence_zero"] == \
            pytest.approx(8 * (r["stored_state_size_stored"] - 1))


# --------------------------------------------------------------------------- #
# Replay.

def test_replay_bench_quick_run(tmp_path):
    """The benchmark's real entry point, tiny sizes: JSON written, restore exact."""
    out = tmp_path / "bench.json"
    res = replay_bench.main(["--quick", "--out", str(out), "--dir", str(tmp_path),
                             "--samples", "2", "--repeats", "1"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["config"]["capacity_observations"] == 4000
    assert res["restore"]["state_identical"] and res["restore"]["next_sample_identical"]
    assert res["sample"]["obs_shape"] == [120, 64, 4, 84, 84]
    assert res["memory"]["ratio_to_raw_frame"] < 1.1
    assert res["snapshot"]["incremental"]["bytes"] < res["snapshot"]["full_bytes"]
    assert [f for f in os.listdir(tmp_path) if f != "bench.json"] == []   # cleaned up


# --------------------------------------------------------------------------- #
# Actors on Atari.

def test_atari_actor_bench_quick(tmp_path):
    out = tmp_path / "bench.json"
    res = atari_actor_bench.main(["--envs", "2", "--seconds", "0.2", "--repeats", "1",
                                  "--precisions", "float32,bf16", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    assert res["precisions"] == ["float32", "bf16", "auto"]
    assert "actor.inference_precision=auto" in res["auto_precision"]
    r = res["by_num_envs"]["2"]
    for loop in ("raw", "env", "actor", "actor_float32", "actor_bf16"):
        assert r[loop]["steps_per_s"] > 0 and r[loop]["steps_per_cpu_s"] > 0
        assert r[loop]["repeats"] == 1
    assert 0 < r["ratio_actor_to_raw"] and math.isfinite(r["ratio_actor_to_raw_cpu"])
    assert 0 < r["ratio_actor_bf16_to_raw"] and 0 < r["ratio_actor_float32_to_raw_cpu"]
    for p in ("float32", "bf16", "auto"):   # every phase timed, the shares add up
        ph = r["phases"][p]
        assert ph["ticks"] > 0 and all(v >= 0 for v in ph["us_per_tick"].values()), ph
        assert ph["us_per_tick"]["forward"] > 0 and ph["us_per_tick"]["env_step"] > 0
        assert sum(ph["share"].values()) == pytest.approx(1.0)
    assert res["torch_threads"] == 1 and res["network"]["lstm_size"] == 512
    # Hand-checked Ape-X epsilons: 0.4^(1 + 7 i / (N - 1)).
    np.testing.assert_allclose(atari_actor_bench.ape_x_epsilons(3),
                               [0.4, 0.4 ** 4.5, 0.4 ** 8])


# --------------------------------------------------------------------------- #
# Gradient allreduce over two learners.

def test_allreduce_bench_quick_reports_ratios_and_throughput(tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = allreduce_bench.main(["--quick", "--configs", "default", "--backends", "mpi",
                                   "--out", str(out)])
    assert json.loads(out.read_text()) == result
    s = result["configs"]["default"]["summary"]
    assert set(s["updates_per_s"]) == {"L1_t1", "L1_t2", "L2_mpi"}
    assert all(v > 0 for v in s["updates_per_s"].values())
    runs = result["configs"]["default"]["runs"]
    assert all(len(r) == 1 for r in runs.values())  # --quick: one repeat
    (two,) = runs["L2_mpi"]
    # sequences/s = L * batch * updates/s
    assert two["sequences_per_s"] == pytest.approx(2 * 8 * two["updates_per_s"])
    assert two["learners"] == 2 and len(two["per_learner"]) == 2
    assert s["ratio_alone"]["mpi"] == pytest.approx(two["alone_ms"] / two["compute_ms"])
    assert s["ratio_in_step"]["mpi"] > 0
    assert s["num_params"] == runs["L1_t1"][0]["num_params"] > 0
    assert s["sequences_per_s_L2_over_L1_t1"]["mpi"] == pytest.approx(
        two["sequences_per_s"] / runs["L1_t1"][0]["sequences_per_s"])


@pytest.mark.parametrize("runs, expected_updates, expected_ratio", [
    # one repeat: the values themselves; L1_t1 600 seq/s, L2 1000 -> 5/3
    ({"L1_t1": [(10.0, 600.0, 0.0, 0.0)], "L1_t2": [(12.0, 720.0, 0.0, 0.0)],
      "L2_mpi": [(8.0, 1000.0, 2.0, 0.1)]}, 8.0, 0.1),
    # three repeats: medians 8 (of 4, 8, 9) and ratio 0.2 (of 0.2, 0.3, 0.1)
    ({"L1_t1": [(10.0, 600.0, 0.0, 0.0)] * 3, "L1_t2": [(12.0, 720.0, 0.0, 0.0)] * 3,
      "L2_mpi": [(4.0, 500.0, 1.0, 0.2), (8.0, 1000.0, 1.0, 0.3), (9.0, 1100.0, 1.0, 0.1)]},
     8.0, 0.2),
])
def test_allreduce_bench_summary_takes_medians_over_repeats(runs, expected_updates,
                                                            expected_ratio) -> None:
    def row(updates, seqs, compute, ratio):
        return {"num_params": 100, "updates_per_s": updates, "sequences_per_s": seqs,
                "compute_ms": compute, "alone_ms": ratio * compute, "ratio_alone": ratio,
                "ratio_in_step": 2 * ratio}

    s = allreduce_bench.summarize({k: [row(*r) for r in v] for k, v in runs.items()})
    assert s["updates_per_s"]["L2_mpi"] == expected_updates
    assert s["ratio_alone"]["mpi"] == pytest.approx(expected_ratio)
    assert s["ratio_in_step"]["mpi"] == pytest.approx(2 * expected_ratio)
    assert s["sequences_per_s_L2_over_L1_t1"]["mpi"] == pytest.approx(
        s["sequences_per_s"]["L2_mpi"] / 600.0)
    assert s["gradient_mb"] == pytest.approx(4e-4) and s["repeats"] == len(runs["L1_t1"])


# --------------------------------------------------------------------------- #
# The Pong learning run's report.

def test_atari_learning_report_counts_each_segments_final_evaluation(tmp_path):
    """Two segments (100 s and 50 s of run clock): periodic evaluations at -21 and -17,
    the segments' final ones at -18 and -14.5; the goal (-15) is reached only by the
    second segment's final evaluation, inside the 150-minute budget, and the report
    says so; the run clock of each point adds the earlier segments' wall time."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("env: {name: atari}\n")
    cols = ["learner_step", "env_steps", "wall_time_s", "eval_return",
            "final_eval_return", "final_eval_return_std"]
    rows = [[10, 100, 40, -21, "", ""], [20, 200, 95, "", -18, 1.5],
            [30, 300, 20, -17, "", ""], [40, 400, 48, "", -14.5, 2.0]]
    (run / "metrics.csv").write_text("\n".join(",".join(map(str, r)) for r in [cols] + rows)
                                     + "\n")
    (run / atari_learning.STATE_FILE).write_text(json.dumps(
        [{"wall_seconds": 100.0, "rows": [0, 2]}, {"wall_seconds": 50.0, "rows": [2, 4]}]))
    out = tmp_path / "report.json"
    res = atari_learning.main(["--run-dir", str(run), "--report-only", "--out", str(out),
                               "--png", ""])
    assert [(e["kind"], e["eval_return"], e["run_clock_s"]) for e in res["evaluations"]] == [
        ("periodic", -21, 40), ("final", -18, 95), ("periodic", -17, 120),
        ("final", -14.5, 148)]
    assert res["evaluations"][-1]["eval_return_std"] == 2.0
    assert res["best_eval_return"] == -14.5 and res["goal_reached"] is True
    assert res["run_clock_minutes"] == pytest.approx(2.5)
    assert json.loads(out.read_text())["goal_reached"] is True
    res = atari_learning.main(["--run-dir", str(run), "--report-only", "--out", str(out),
                               "--png", "", "--budget-minutes", "2"])  # 148 s > 120 s
    assert res["goal_reached"] is False


def test_lstm_ablation_merge_keeps_other_runs_and_refuses_other_overrides(tmp_path):
    path = tmp_path / "lstm_ablation.json"
    report = {"extra_overrides": ["learner.max_steps=8000"],
              "variants": {"lstm": {"runs": [{"seed": 0}]},
                           "gtrxl": {"runs": [{"seed": 0}, {"seed": 1}]}}}
    path.write_text(json.dumps(report))
    kept = lstm_ablation.earlier_runs(str(path), ["learner.max_steps=8000"], ["gtrxl"], [1, 2])
    assert kept == {"lstm": [{"seed": 0}], "gtrxl": [{"seed": 0}]}  # gtrxl seed 1 made again
    assert lstm_ablation.earlier_runs(str(tmp_path / "none.json"), [], ["lstm"], [0]) == {}
    with pytest.raises(SystemExit, match="learner.max_steps=8000"):
        lstm_ablation.earlier_runs(str(path), ["learner.max_steps=100"], ["gtrxl"], [0])


def test_write_result_makes_the_output_folder(tmp_path):
    from benchmarks._common import write_result

    out = tmp_path / "new" / "deeper" / "r.json"
    assert write_result({"x": np.float32(1.5)}, str(out)) == {"x": 1.5}
    assert json.loads(out.read_text()) == {"x": 1.5}


def test_lstm_ablation_counts_runs_that_pass_the_learning_tests_judge():
    from tests.integration.test_learns import THRESHOLD

    def run(late):
        return {"final_eval_return": late, "late_eval_return": late, "job_wall_s": 1.0,
                "env_steps": 10, "learner_steps": 5, "delta_q_second_half": 0.1}

    summary = lstm_ablation.aggregate([run(THRESHOLD + 1), run(THRESHOLD), run(400.0)])
    assert summary["learns"].startswith("2 of 3 runs")
    assert summary["late_eval_return"]["min"] == THRESHOLD

"""Data-parallel learners: backend choice, the stop flag, gradient averaging, whole jobs.

Three levels:

* in-process: the backend table, the stop-flag code, the start-up check, and
  the real ``mpi`` and ``torch`` averagers on a one-learner group;
* ``mpiexec -n 2 tests/allreduce_worker.py``: two learners with different
  initial parameters, each stepping on half of every batch, against one
  learner on the whole batch (same gradients within rounding, replicas bit
  identical, learner 0's state restored bit for bit after a perturbation,
  the stop flag seen after the same step);
* ``mpiexec -n 5 r2d2_hpc.cli``: the real job with two learners, and a
  checkpoint/resume cycle with two learners.

The Horovod tests carry the ``horovod`` marker, which the README's test
command deselects (``tests/run_all.sh``); run them with
``python -m pytest -m horovod tests/test_allreduce.py`` after
``bash scripts/install_horovod.sh``. Selected without Horovod they fail,
naming the script; they never skip.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Dict, Tuple

import numpy as np
import pytest
import torch

from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.comm.allreduce import (AUTO_ORDER, BACKENDS, BackendUnavailable, HOROVOD_INSTALL,
                                     MpiAllreduceAverager, TorchDistAverager, auto_reason,
                                     backend_status, check_allreduce, choose_backend, decode_stop,
                                     encode_stop, horovod_status, make_averager)
from r2d2_hpc.config import load_config
from r2d2_hpc.presets import load_preset
from r2d2_hpc.storage.digest import replica_digest
from fakes import NUM_ACTIONS, OBS_SHAPE, random_sequence_batch, tiny_config
from test_job import ROOT, TINY, launch, mpiexec, sets

from mpi4py import MPI  # noqa: E402  (an install requirement: never skipped)

torch.set_num_threads(1)

WORKER = os.path.join(ROOT, "tests", "allreduce_worker.py")


def horovod_or_fail() -> None:
    """Horovod tests are deselected by default; selected, they need Horovod."""
    ok, reason = horovod_status()
    if not ok:
        pytest.fail(f"horovod is not usable ({reason}); build it with `{HOROVOD_INSTALL}` "
                    f"or deselect with -m 'not horovod'")


def backend_param(name: str):
    marks = [pytest.mark.horovod] if name == "horovod" else []
    # not the bare id "mpi": pytest-mpi would take it for its marker and skip
    return pytest.param(name, marks=marks, id=f"{name}_allreduce")


ALL_BACKENDS = [backend_param(b) for b in BACKENDS]


# --------------------------------------------------------------------------- #
# Choosing a backend.

Y, N = True, False


@pytest.mark.parametrize("requested, device, horovod, torch_ok, mpi, expected", [
    # CPU learners: mpi first (fastest in benchmarks/results/allreduce_bench.json)
    ("auto", "cpu", Y, Y, Y, "mpi"),
    ("auto", "cpu", N, N, Y, "mpi"),
    ("auto", "cpu", Y, Y, N, "horovod"),
    ("auto", "cpu", N, Y, N, "torch"),
    # CUDA learners: torch (NCCL) first, then horovod, then mpi
    ("auto", "cuda", Y, Y, Y, "torch"),
    ("auto", "cuda", Y, N, Y, "horovod"),
    ("auto", "cuda", N, N, Y, "mpi"),
    ("auto", "mps", Y, Y, Y, "mpi"),  # any other device type: the CPU order
    # an explicit choice ignores the device
    ("horovod", "cpu", Y, Y, Y, "horovod"),
    ("torch", "cpu", Y, Y, Y, "torch"),
    ("mpi", "cuda", Y, Y, Y, "mpi"),
    ("torch", "cuda", N, Y, N, "torch"),
])
def test_choose_backend_table(requested: str, device: str, horovod: bool, torch_ok: bool,
                              mpi: bool, expected: str) -> None:
    usable = {"horovod": horovod, "torch": torch_ok, "mpi": mpi}
    assert choose_backend(requested, usable, device) == expected


def test_choose_backend_defaults_to_the_cpu_order() -> None:
    assert choose_backend("auto", {"horovod": Y, "torch": Y, "mpi": Y}) == "mpi"
    assert AUTO_ORDER == {"cpu": ("mpi", "horovod", "torch"),
                          "cuda": ("torch", "horovod", "mpi")}
    assert all(sorted(order) == sorted(BACKENDS) for order in AUTO_ORDER.values())


@pytest.mark.parametrize("choice, device, usable, expected", [
    ("mpi", "cpu", {"horovod": Y, "torch": Y, "mpi": Y},
     "auto picked mpi for cpu learners (order mpi > horovod > torch)"),
    ("torch", "cpu", {"horovod": N, "torch": Y, "mpi": N},
     "auto picked torch for cpu learners (order mpi > horovod > torch; not usable: mpi, "
     "horovod)"),
    ("mpi", "cuda", {"horovod": N, "torch": N, "mpi": Y},
     "auto picked mpi for cuda learners (order torch > horovod > mpi; not usable: torch, "
     "horovod)"),
])
def test_auto_reason_names_the_choice_the_order_and_what_was_skipped(
        choice: str, device: str, usable: Dict[str, bool], expected: str) -> None:
    assert auto_reason(choice, device, usable) == expected


def test_auto_on_a_cpu_learner_logs_mpi_and_never_probes_horovod(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import r2d2_hpc.comm.allreduce as allreduce

    def no_probe() -> Tuple[bool, str]:
        raise AssertionError("auto on a CPU learner must not import horovod")

    monkeypatch.setattr(allreduce, "horovod_status", no_probe)
    averager = make_averager("auto", MPI.COMM_SELF, "cpu")
    try:
        assert isinstance(averager, MpiAllreduceAverager)
        assert averager.description.startswith("MPI Allreduce (")
        assert averager.description.endswith(
            "; auto picked mpi for cpu learners (order mpi > horovod > torch)")
    finally:
        averager.close()
    explicit = make_averager("mpi", MPI.COMM_SELF, "cpu")
    assert "auto" not in explicit.description
    explicit.close()


@pytest.mark.parametrize("requested, usable", [
    ("horovod", {"horovod": N, "torch": Y, "mpi": Y}),
    ("torch", {"horovod": Y, "torch": N, "mpi": Y}),
    ("mpi", {"horovod": Y, "torch": Y, "mpi": N}),
    ("auto", {"horovod": N, "torch": N, "mpi": N}),
])
def test_choose_backend_refuses_what_is_not_usable(requested: str,
                                                   usable: Dict[str, bool]) -> None:
    with pytest.raises(BackendUnavailable):
        choose_backend(requested, usable)


def test_choose_backend_rejects_an_unknown_name() -> None:
    with pytest.raises(ValueError, match="auto, horovod, torch, mpi"):
        choose_backend("nccl", {"mpi": True})


def fake_status(horovod: bool) -> Dict[str, Tuple[bool, str]]:
    return {"horovod": (horovod, "" if horovod else "ModuleNotFoundError: No module named "
                        "'horovod'"), "torch": (True, ""), "mpi": (True, "")}


def cfg_with(*overrides: str):
    return load_config(None, list(overrides), base=load_preset("default"))


def test_check_allreduce_names_the_install_script_when_horovod_is_missing() -> None:
    cfg = cfg_with("topology.learners=2", "learner.allreduce=horovod")
    errors = check_allreduce(cfg, status=lambda device: fake_status(False))
    assert len(errors) == 1
    assert errors[0].startswith("learner.allreduce: 'horovod' is not usable here "
                                "(ModuleNotFoundError: No module named 'horovod')")
    assert HOROVOD_INSTALL in errors[0] and "learner.allreduce=auto" in errors[0]


@pytest.mark.parametrize("learners, allreduce, horovod, expected_errors", [
    (2, "horovod", True, 0),
    (1, "horovod", False, 0),  # one learner: nothing is averaged
    (2, "auto", False, 0),
    (2, "torch", False, 0),
    (3, "horovod", False, 1),
])
def test_check_allreduce_table(learners: int, allreduce: str, horovod: bool,
                               expected_errors: int) -> None:
    cfg = cfg_with(f"topology.learners={learners}", f"learner.allreduce={allreduce}")
    assert len(check_allreduce(cfg, status=lambda device: fake_status(horovod))) == \
        expected_errors


def test_check_allreduce_probes_nothing_for_auto() -> None:
    def no_probe(device: str) -> Dict[str, Tuple[bool, str]]:
        raise AssertionError("auto must not import horovod at start-up")

    cfg = cfg_with("topology.learners=2", "learner.allreduce=auto")
    assert check_allreduce(cfg, status=no_probe) == []


def test_horovod_status_reports_a_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "horovod", None)
    monkeypatch.setitem(sys.modules, "horovod.torch", None)
    ok, reason = horovod_status()
    assert not ok and "horovod" in reason


def test_backend_status_of_this_environment() -> None:
    status = backend_status("cpu")
    assert set(status) == set(BACKENDS)
    assert status["mpi"] == (True, "")       # mpi4py is a dependency
    assert status["torch"] == (True, "")     # the CPU torch wheel has gloo


# --------------------------------------------------------------------------- #
# The stop flag.

@pytest.mark.parametrize("codes, expected", [
    ([None], (False, 0)),
    ([None, None, None], (False, 0)),
    ([0, None], (True, 0)),        # budget spent: stop with exit code 0
    ([3, None], (True, 3)),        # preempted: stop, exit 3 (requeue)
    ([None, None, 1], (True, 1)),
])
def test_stop_flag_sum_decodes_to_the_code_of_the_one_learner_that_stops(codes, expected) -> None:
    total = np.float32(0)
    for c in codes:
        total += np.float32(encode_stop(c))
    assert decode_stop(float(total)) == expected


def test_encode_stop_rejects_negative_codes() -> None:
    with pytest.raises(ValueError):
        encode_stop(-1)


# --------------------------------------------------------------------------- #
# Real averagers on a one-learner group (COMM_SELF).

def small_learner(seed: int = 0) -> Learner:
    torch.manual_seed(seed)
    return Learner(tiny_config(), OBS_SHAPE, NUM_ACTIONS, device="cpu")


@pytest.mark.parametrize("make", [MpiAllreduceAverager, TorchDistAverager],
                         ids=["mpi_allreduce", "torch_allreduce"])
def test_one_learner_group_leaves_the_gradient_and_state_alone(make) -> None:
    averager = make(MPI.COMM_SELF)
    try:
        assert (averager.rank, averager.size) == (0, 1)
        flat = torch.linspace(-1.0, 2.0, 7)
        expected = flat.clone()
        averager.want_stop = encode_stop(None)
        averager(flat)
        assert torch.equal(flat, expected) and not averager.stop
        averager.want_stop = encode_stop(3)
        averager(flat)
        assert torch.equal(flat, expected)
        assert (averager.stop, averager.stop_code, averager.calls) == (True, 3, 2)

        learner = small_learner()
        batch = random_sequence_batch(learner.cfg, seed=1)
        learner.step(batch, np.ones(5, np.float32))      # Adam state exists now
        before = replica_digest(learner.state())
        averager.broadcast_learner(learner)
        assert replica_digest(learner.state()) == before

        # fp16's loss scale travels with the state (a CPU GradScaler stands in)
        learner.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 9, growth_interval=3)
        learner.step(batch, np.ones(5, np.float32))      # growth tracker 1
        before = replica_digest(learner.state())
        assert learner.state()["grad_scaler"]["_growth_tracker"] == 1
        averager.broadcast_learner(learner)
        assert replica_digest(learner.state()) == before
        assert learner.scaler.state_dict() == {"scale": 512.0, "growth_factor": 2.0,
                                               "backoff_factor": 0.5, "growth_interval": 3,
                                               "_growth_tracker": 1}
    finally:
        averager.close()


def test_replica_digest_covers_parameters_and_optimizer_but_not_rng() -> None:
    a, b = small_learner(0), small_learner(0)
    assert replica_digest(a.state()) == replica_digest(b.state())
    torch.manual_seed(123)  # only the RNG differs
    assert replica_digest(a.state()) == replica_digest(b.state())
    a.step(random_sequence_batch(a.cfg, seed=2), np.ones(5, np.float32))
    assert replica_digest(a.state()) != replica_digest(b.state())


# --------------------------------------------------------------------------- #
# Two learners (mpiexec -n 2) against one learner with the union batch.

def run_worker(backend: str, tmp_path, n: int = 2) -> dict:
    out = tmp_path / f"worker_{backend}.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([mpiexec(), "-n", str(n), sys.executable, WORKER, "--backend",
                           backend, "--out", str(out)], env=env, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_two_learners_equal_one_learner_with_the_union_batch(backend: str, tmp_path) -> None:
    if backend == "horovod":
        horovod_or_fail()
    r = run_worker(backend, tmp_path)
    assert r["backend"] == backend and r["size"] == 2
    (d0, d1) = r["digests"]
    assert d0["before"] != d1["before"]              # different initialisations ...
    assert d0["after"] == d1["after"]                # ... identical after broadcast + 6 steps
    # mean of the half-batch gradients == gradient of the whole batch (loss is a batch mean)
    assert len(r["grad_err"]) == 9
    for err, scale in zip(r["grad_err"], r["grad_scale"]):
        assert scale > 1e-3 and err <= 1e-6 * scale + 1e-8, (err, scale)
    assert r["param_err"] < 1e-6
    # resume: the perturbed learner 1 gets learner 0's state back bit for bit
    (s0, s1) = r["resume"]
    assert s1["perturbed"] != s0["perturbed"]
    assert s1["restored"] == s0["restored"] == s0["perturbed"]
    assert s0["final"] == s1["final"]
    assert s0["step_count"] == s1["step_count"] == 9
    assert s0["params_version"] == s1["params_version"] == 9
    # learner 0 raised the stop flag (exit code 3) before step 4: both saw it after step 4
    expected = [[i == 4, 3 if i == 4 else 0] for i in range(6)]
    assert r["stops"] == [expected, expected]


# --------------------------------------------------------------------------- #
# The real job under mpiexec: 2 learners + 1 shard + 2 actors.

JOB = TINY + ["logging.eval_interval_steps=0", "logging.final_eval_episodes=0",
              "topology.learners=2"]


def learners_of(run) -> list:
    ranks = json.loads((run / "summary.json").read_text())
    assert [r["role"] for r in ranks] == ["learner", "learner", "replay", "actor", "actor"]
    assert all(r["clean_shutdown"] for r in ranks), ranks
    return ranks[:2]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_two_learner_job_keeps_the_replicas_identical(backend: str, tmp_path) -> None:
    if backend == "horovod":
        horovod_or_fail()
    run = tmp_path / "run"
    proc, _ = launch(5, ["--run-dir", str(run)]
                     + sets(*JOB, f"learner.allreduce={backend}", "learner.max_steps=40"),
                     tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gradient allreduce over 2 learners: " in proc.stdout
    lead, other = learners_of(run)
    assert lead["allreduce_backend"] == other["allreduce_backend"] == backend
    # the step budget's stop rides in the last step's allreduce: both end on step 40
    assert lead["learner_step"] == other["learner_step"] == 40
    assert lead["params_version"] == other["params_version"] == 40
    assert lead["params_digest"] == other["params_digest"]
    assert lead["stop_reason"] == "learner.max_steps=40 reached"
    assert lead["exit_code"] == other["exit_code"] == 0
    assert lead["allreduce_seconds"] > 0 and other["allreduce_seconds"] > 0


def test_two_learner_job_resumes_both_learners_bit_identically(tmp_path) -> None:
    """Checkpoint at the end of a 2-learner run, resume it with a larger budget.

    Uses ``auto``: whatever it picks here (see ``backend_status``)."""
    expected = choose_backend("auto", {k: v[0] for k, v in backend_status("cpu").items()})
    run = tmp_path / "run"
    proc, _ = launch(5, ["--run-dir", str(run)]
                     + sets(*JOB, "learner.allreduce=auto", "learner.max_steps=20"), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"auto picked {expected} for cpu learners" in proc.stdout  # the lead logs it
    first_lead, first_other = learners_of(run)
    assert first_lead["allreduce_backend"] == expected
    assert first_lead["learner_step"] == first_other["learner_step"] == 20
    assert first_lead["params_digest"] == first_other["params_digest"]
    written = first_lead["checkpoint_digests"]["20"]

    proc, _ = launch(5, ["--resume", str(run)] + sets("learner.max_steps=35"), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resuming from checkpoint" in proc.stdout
    lead, other = learners_of(run)
    # both learners read the state learner 0 wrote, bit for bit ...
    assert lead["resumed_from"] == other["resumed_from"] == 20
    assert lead["resume_digest"] == other["resume_digest"] == written
    # ... and went on in lockstep
    assert lead["learner_step"] == other["learner_step"] == 35
    assert lead["params_digest"] == other["params_digest"] != first_lead["params_digest"]


# --------------------------------------------------------------------------- #
# The benchmark's real entry point, tiny.

def test_allreduce_bench_quick_reports_ratios_and_throughput(tmp_path) -> None:
    bench_dir = os.path.join(ROOT, "benchmarks")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    import allreduce_bench

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
    bench_dir = os.path.join(ROOT, "benchmarks")
    if bench_dir not in sys.path:
        sys.path.insert(0, bench_dir)
    import allreduce_bench

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

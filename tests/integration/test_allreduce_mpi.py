"""Several learners under ``mpiexec``: gradient averaging and whole jobs.

* ``mpiexec -n 2 python -m tests.helpers.allreduce_worker``: two learners with different
  initial parameters, each stepping on half of every batch, against one
  learner on the whole batch (same gradients within rounding, replicas bit
  identical, learner 0's state restored bit for bit after a perturbation,
  the stop flag seen after the same step);
* ``mpiexec -n 5 python -m r2d2_hpc.cli``: the real job with two learners, and a
  checkpoint/resume cycle with two learners.

The Horovod tests carry the ``horovod`` marker, which the README's test
command deselects (``tests/run_all.sh``); run them with
``python -m pytest -m horovod tests/integration/test_allreduce_mpi.py`` after
``bash scripts/install_horovod.sh``. Selected without Horovod they fail,
naming the script; they never skip.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from r2d2_hpc.comm.allreduce import (BACKENDS, HOROVOD_INSTALL, backend_status, choose_backend,
                                     horovod_status)
from tests.helpers.launcher import CORE_SETS, ROOT, TINY, launch, mpiexec_cmd, sets

#: The two-learner check, run as a module from the repository root.
WORKER = "tests.helpers.allreduce_worker"


def horovod_or_fail() -> None:
    """Horovod tests are deselected by default; selected, they need Horovod."""
    ok, reason = horovod_status()
    if not ok:
        pytest.fail(f"horovod is not usable ({reason}); build it with `{HOROVOD_INSTALL}` "
                    f"or deselect with -m 'not horovod'")


def backend_param(name: str, core: str = ""):
    marks = [pytest.mark.horovod] if name == "horovod" else []
    # not the bare id "mpi": pytest-mpi would take it for its marker and skip
    if core:
        return pytest.param(name, core, marks=marks, id=f"{name}_allreduce-{core}")
    return pytest.param(name, marks=marks, id=f"{name}_allreduce")


ALL_BACKENDS = [backend_param(b) for b in BACKENDS]
#: Every backend with the LSTM, and the GTrXL core with one of them.
JOB_CASES = [backend_param(b, "lstm") for b in BACKENDS] + [backend_param("mpi", "gtrxl")]


# --------------------------------------------------------------------------- #
# Two learners (mpiexec -n 2) against one learner with the union batch.

def run_worker(backend: str, tmp_path, n: int = 2) -> dict:
    out = tmp_path / f"worker_{backend}.json"
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([*mpiexec_cmd(), "-n", str(n), sys.executable, "-m", WORKER, "--backend",
                           backend, "--out", str(out)], cwd=ROOT, env=env, capture_output=True,
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


@pytest.mark.parametrize("backend, core", JOB_CASES)
def test_two_learner_job_keeps_the_replicas_identical(backend: str, core: str,
                                                      tmp_path) -> None:
    if backend == "horovod":
        horovod_or_fail()
    run = tmp_path / "run"
    proc, _ = launch(5, ["--run-dir", str(run)]
                     + sets(*JOB, *CORE_SETS[core], f"learner.allreduce={backend}",
                            "learner.max_steps=40"),
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

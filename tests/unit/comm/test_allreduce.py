"""Data-parallel learners in one process: backend choice, the stop flag, the start-up check,
and the real ``mpi`` and ``torch`` averagers on a one-learner group.

Several learners under ``mpiexec``: tests/integration/test_allreduce_mpi.py.
"""
from __future__ import annotations

import sys
from typing import Dict, Tuple

import numpy as np
import pytest
import torch
from mpi4py import MPI  # an install requirement: never skipped

import r2d2_hpc.comm.allreduce as allreduce
from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.comm.allreduce import (AUTO_ORDER, BACKENDS, BackendUnavailable, HOROVOD_INSTALL,
                                     MpiAllreduceAverager, TorchDistAverager, auto_reason,
                                     backend_status, check_allreduce, choose_backend, decode_stop,
                                     encode_stop, horovod_status, make_averager)
from r2d2_hpc.comm.rendezvous import listening_socket
from r2d2_hpc.config import load_config
from r2d2_hpc.presets import load_preset
from r2d2_hpc.storage.digest import replica_digest
from tests.helpers.fakes import NUM_ACTIONS, OBS_SHAPE, random_sequence_batch, tiny_config

torch.set_num_threads(1)


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
        assert learner.state().grad_scaler["_growth_tracker"] == 1
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


def test_the_rendezvous_listens_on_its_host_address_only():
    sock = listening_socket("127.0.0.1")
    try:
        host, port = sock.getsockname()[:2]
        assert host == "127.0.0.1" and port > 0  # not 0.0.0.0: no other interface
    finally:
        sock.close()


def test_a_torch_averager_serves_its_rendezvous_on_loopback_when_learners_share_a_node():
    averager = TorchDistAverager(MPI.COMM_SELF)
    try:
        address, port = averager.listen_address
        assert address == "127.0.0.1" and f"rendezvous 127.0.0.1:{port}" in averager.description
    finally:
        averager.close()

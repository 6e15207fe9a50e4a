"""MPI tests (run by tests/run_all.sh under mpiexec with --with-mpi)."""
from __future__ import annotations

import pytest

from r2d2_hpc.config import Config, load_config


@pytest.mark.mpi(min_size=2)
def test_config_broadcast_from_rank0_round_trips():
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    cfg = load_config(None, ["learner.n_step=3", "network.mlp_hidden=[7, 9]"]) \
        if comm.Get_rank() == 0 else None
    data = comm.bcast(cfg.to_dict() if cfg is not None else None, root=0)
    got = Config.from_dict(data)
    assert got.learner.n_step == 3 and got.network.mlp_hidden == (7, 9)
    # every rank holds the identical config
    assert comm.allgather(got.to_dict()) == [got.to_dict()] * comm.Get_size()

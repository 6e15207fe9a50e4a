"""One MPI rank of the data-parallel learner check (``tests/integration/test_allreduce_mpi.py``).

Run from the repository root as
``mpiexec -n L python -m tests.helpers.allreduce_worker --backend B --out F``.
Each rank is a learner with a deliberately *different* random initialisation;
``broadcast_learner`` must make them identical. Every step draws one global
batch ``X`` of ``L·b`` sequences (same seed on every rank); learner ``r``
steps on its columns ``X_r = X[:, r·b:(r+1)·b]`` and the gradients are
averaged by the backend. Rank 0 also steps a reference learner (a copy of the
broadcast state, no averaging) on the whole of ``X``: since the loss is a
batch mean, ``mean_r ∇L(X_r) = ∇L(X)``, so the replicas must follow the
reference within floating-point tolerance and each other bit for bit.

Then the "resume" part: learners 1.. perturb their whole state (parameters,
target, Adam moments, counters); ``broadcast_learner`` must restore learner
0's bit for bit, and they must stay identical for more steps.

Learner 0 raises the stop flag (exit code 3) before step ``--stop-at``; every
learner must see it after that same step.

Rank 0 writes a JSON report to ``--out``.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List

import numpy as np
import torch

from tests.helpers.fakes import NUM_ACTIONS, OBS_SHAPE, random_sequence_batch, select_columns, tiny_config

from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.comm.allreduce import encode_stop, make_averager
from r2d2_hpc.storage.digest import replica_digest


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--per-learner", type=int, default=5)
    p.add_argument("--stop-at", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    b = args.per_learner
    # No target update inside the run, lr large enough that steps move the parameters.
    cfg = tiny_config(batch_size=b, learning_rate=1e-2, target_update_period=3)

    torch.manual_seed(1000 + rank)  # different on purpose
    learner = Learner(cfg, OBS_SHAPE, NUM_ACTIONS, device="cpu")
    before = replica_digest(learner.state())
    averager = make_averager(args.backend, comm, "cpu")
    grads: List[torch.Tensor] = []

    def reduce(flat: torch.Tensor) -> None:
        averager(flat)
        grads.append(flat.clone())

    learner.grad_reducer = reduce
    averager.broadcast_learner(learner)
    report: Dict[str, Any] = {"backend": averager.backend, "description": averager.description,
                              "size": size}

    ref = ref_grads = None
    if rank == 0:
        ref = Learner(cfg, OBS_SHAPE, NUM_ACTIONS, device="cpu")
        ref.load_state(learner.state())
        ref_grads = []
        ref.grad_reducer = lambda flat: ref_grads.append(flat.clone())

    def step(i: int) -> None:
        full = random_sequence_batch(cfg, batch_size=size * b, seed=500 + i)
        weights = np.random.default_rng(900 + i).uniform(0.2, 1.0, size * b).astype(np.float32)
        cols = np.arange(rank * b, (rank + 1) * b)
        learner.step(select_columns(full, cols), weights[cols])
        if ref is not None:
            ref.step(full, weights)

    stops = []
    for i in range(args.steps):
        averager.want_stop = encode_stop(3) if (rank == 0 and i == args.stop_at) else 0.0
        step(i)
        stops.append([bool(averager.stop), int(averager.stop_code)])
    averager.want_stop = 0.0
    digests = comm.gather({"before": before, "after": replica_digest(learner.state())}, root=0)

    # "Resume": the others' state is garbage until learner 0's is broadcast.
    if rank != 0:
        with torch.no_grad():
            for p in list(learner.online.parameters()) + list(learner.target.parameters()):
                p.add_(torch.randn_like(p))
            for st in learner.optimizer.state.values():
                st["exp_avg"].mul_(3.0)
                st["exp_avg_sq"].add_(1.0)
                st["step"].add_(7)
        learner.step_count += 11
        learner.params_version += 13
    perturbed = replica_digest(learner.state())
    averager.broadcast_learner(learner)
    restored = replica_digest(learner.state())
    for i in range(args.steps, args.steps + 3):
        step(i)
    final = replica_digest(learner.state())
    resume = comm.gather({"perturbed": perturbed, "restored": restored, "final": final,
                          "step_count": learner.step_count,
                          "params_version": learner.params_version}, root=0)
    all_stops = comm.gather(stops, root=0)

    if rank == 0:
        assert ref is not None and ref_grads is not None
        grad_err = [float((g - r).abs().max()) for g, r in zip(grads, ref_grads)]
        grad_scale = [float(r.abs().max()) for r in ref_grads]
        param_err = max(float((p.detach() - q.detach()).abs().max())
                        for p, q in zip(learner.online.parameters(), ref.online.parameters()))
        report.update(digests=digests, resume=resume, stops=all_stops, grad_err=grad_err,
                      grad_scale=grad_scale, param_err=param_err,
                      ref_digest=replica_digest(ref.state()),
                      seconds=averager.seconds, calls=averager.calls)
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
    averager.close()


if __name__ == "__main__":
    main()

"""Data-parallel learner benchmark: allreduce cost per update, and L = 1 vs L = 2.

For each configuration and each usable backend (``mpi``, ``torch``,
``horovod``) it starts ``mpiexec -n 2`` learners (1 torch thread each) that
run ``Learner.step`` on synthetic batches already in memory, with the
backend's averager as ``grad_reducer``. Each learner's step is split by the
step's own timers (``Learner.step`` metrics)::

    compute   = time_forward_backward_s + time_optimizer_s   (per update)
    in_step   = time_reduce_s   the averager inside the step: allreduce
                                plus waiting for the slower learner
    alone     = the same averager on the same flat gradient, after a
                barrier, outside any step: the communication itself

``step_cpu_ms`` against ``step_wall_ms`` (the main thread's CPU time
in a step against its wall time) tells a step slowed by losing its core (to
the other learner, a backend's threads or other processes) from one that
computes more.

``ratio_in_step = in_step / compute`` and ``ratio_alone = alone / compute``
(medians over the measured updates, learner 0's figures; both learners'
are in ``per_learner``; the summary takes the median over ``--repeats``
runs of every variant, run alternately) are measured in the same run, so the machine's
load at that moment affects numerator and denominator alike.

Throughput: ``updates_per_s`` of the group (learners step in lockstep) and
``sequences_per_s = L * batch_size * updates_per_s``, for

* ``L1_t1``: one learner, 1 torch thread (``mpiexec -n 1``, no averager);
* ``L1_t2``: one learner, 2 torch threads (all the cores of a 2-core machine);
* ``L2_<backend>``: two learners, 1 thread each.

Batches are synthetic (uniform observations, all steps valid, random
actions and rewards, zero stored states): the step's cost does not depend
on the values. Configurations: ``default`` (the embedded default job:
MLP 64, LSTM 64, batch 32, 8 + 16 steps) and ``lstm512`` (paper widths:
MLP 512, LSTM 512, head 512, batch 32, 8 + 16 steps; ~3 M parameters, a
12 MB gradient).

Usage::

    python benchmarks/allreduce_bench.py [--configs default,lstm512] [--steps 60]
                                         [--backends mpi,torch,horovod] [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import run_worker, write_result  # noqa: E402

CONFIGS: Dict[str, List[str]] = {
    "default": [],
    "lstm512": ["network.lstm_size=512", "network.mlp_hidden=[512]",
                "network.head_hidden=512"],
}

#: Overrides of every run: a CPU learner, no target update inside the run.
COMMON = ["learner.device=cpu", "learner.target_update_period=100000"]


def bench_config(overrides: Sequence[str]) -> Any:
    """The embedded default job's config with ``overrides`` applied."""
    from r2d2_hpc.config import load_config
    from r2d2_hpc.presets import load_preset

    return load_config(None, list(overrides), base=load_preset("default"))


def synthetic_batch(cfg: Any, obs_shape: Sequence[int], num_actions: int, batch_size: int,
                    rng: np.random.Generator) -> Any:
    """A valid ``SequenceBatch`` ``[T, B, ...]`` of random values (every step valid)."""
    from r2d2_hpc.types import SequenceBatch

    t = cfg.replay.sequence_length
    h = cfg.network.lstm_size
    action = rng.integers(0, num_actions, (t, batch_size)).astype(np.int64)
    reward = rng.standard_normal((t, batch_size)).astype(np.float32)
    prev_action = np.concatenate([np.zeros((1, batch_size), np.int64), action[:-1]])
    prev_reward = np.concatenate([np.zeros((1, batch_size), np.float32), reward[:-1]])
    return SequenceBatch(
        obs=rng.uniform(-1, 1, (t, batch_size, *obs_shape)).astype(np.float32),
        action=action, reward=reward, discount=np.ones((t, batch_size), np.float32),
        first=np.zeros((t, batch_size), bool), mask=np.ones((t, batch_size), bool),
        prev_action=prev_action, prev_reward=prev_reward,
        state_h=np.zeros((batch_size, h), np.float32),
        state_c=np.zeros((batch_size, h), np.float32),
        keys=np.arange(batch_size, dtype=np.int64),
        probs=np.full(batch_size, 1.0 / batch_size))


def median(xs: Sequence[float]) -> float:
    """Median (mean of the middle two for an even count); NaN when empty."""
    return float(np.median(np.asarray(xs, np.float64))) if len(xs) else float("nan")


def worker(a: argparse.Namespace) -> None:
    """One rank of ``mpiexec -n L allreduce_bench.py --worker``."""
    import torch
    from mpi4py import MPI

    from r2d2_hpc.comm.allreduce import make_averager
    from r2d2_hpc.agent.learner import Learner
    from r2d2_hpc.job.role import job_spec

    torch.set_num_threads(a.threads)
    comm = MPI.COMM_WORLD
    cfg = bench_config(CONFIGS[a.config] + COMMON + list(a.overrides))
    spec = job_spec(cfg)
    learner = Learner(cfg, spec.obs_shape, spec.num_actions, device="cpu")
    averager = None
    if a.backend != "none":
        averager = make_averager(a.backend, comm, "cpu")
        learner.grad_reducer = averager
        averager.broadcast_learner(learner)
    rng = np.random.default_rng(comm.Get_rank())
    b = cfg.learner.batch_size
    batches = [synthetic_batch(cfg, spec.obs_shape, spec.num_actions, b, rng) for _ in range(4)]
    weights = np.ones(b, np.float32)
    rows = []
    comm.Barrier()
    start = 0.0
    for i in range(a.warmup + a.steps):
        if i == a.warmup:
            comm.Barrier()
            start = time.perf_counter()
        w0, c0 = time.perf_counter(), time.thread_time()
        m = learner.step(batches[i % len(batches)], weights).metrics
        if i >= a.warmup:
            rows.append(dict(m, wall_s=time.perf_counter() - w0,
                             cpu_s=time.thread_time() - c0))
    elapsed = time.perf_counter() - start
    alone: List[float] = []
    if averager is not None:
        flat = torch.randn(learner.num_params)
        for _ in range(a.alone_reps):
            comm.Barrier()
            t0 = time.perf_counter()
            averager(flat)
            alone.append(time.perf_counter() - t0)
    compute = [r["time_forward_backward_s"] + r["time_optimizer_s"] for r in rows]
    in_step = [r["time_reduce_s"] for r in rows]
    mine = {"rank": comm.Get_rank(), "updates": len(rows), "seconds": elapsed,
            "updates_per_s": len(rows) / elapsed,
            "compute_ms": 1e3 * median(compute), "in_step_ms": 1e3 * median(in_step),
            "alone_ms": 1e3 * median(alone) if alone else 0.0,
            "step_wall_ms": 1e3 * median([r["wall_s"] for r in rows]),
            "step_cpu_ms": 1e3 * median([r["cpu_s"] for r in rows])}
    everyone = comm.gather(mine, root=0)
    if comm.Get_rank() == 0:
        size = comm.Get_size()
        lead = everyone[0]
        out = {"learners": size, "threads": a.threads, "backend": a.backend,
               "description": averager.description if averager else "no averaging",
               "num_params": learner.num_params, "batch_size": b,
               "sequence_length": cfg.replay.sequence_length,
               # lockstep: the group's rate is its slowest learner's
               "updates_per_s": min(e["updates_per_s"] for e in everyone),
               "compute_ms": lead["compute_ms"], "in_step_ms": lead["in_step_ms"],
               "alone_ms": lead["alone_ms"], "step_wall_ms": lead["step_wall_ms"],
               "step_cpu_ms": lead["step_cpu_ms"], "per_learner": everyone}
        out["sequences_per_s"] = size * b * out["updates_per_s"]
        if averager is not None:
            out["ratio_in_step"] = lead["in_step_ms"] / lead["compute_ms"]
            out["ratio_alone"] = lead["alone_ms"] / lead["compute_ms"]
        with open(a.worker, "w", encoding="utf-8") as fh:
            json.dump(out, fh)
    if averager is not None:
        averager.close()


def summarize(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    """Medians over the repeats of each variant (``L1_t1``, ``L1_t2``, ``L2_<backend>``).

    Args:
      runs: variant -> the workers' JSON of each repeat.

    Returns:
      ``num_params``, ``gradient_mb``, ``updates_per_s`` and ``sequences_per_s``
      per variant; ``ratio_in_step``, ``ratio_alone``, ``compute_ms``,
      ``alone_ms`` per backend; ``sequences_per_s_L2_over_L1_t1`` and
      ``..._over_L1_t2`` per backend (quotients of the medians).
    """
    def med(key: str, field: str) -> float:
        return median([r[field] for r in runs[key]])

    base = runs["L1_t1"][0]
    two = [k for k in runs if k.startswith("L2_")]
    out: Dict[str, Any] = {
        "num_params": base["num_params"],
        "gradient_mb": 4 * base["num_params"] / 1e6,
        "repeats": len(runs["L1_t1"]),
        "updates_per_s": {k: med(k, "updates_per_s") for k in runs},
        "sequences_per_s": {k: med(k, "sequences_per_s") for k in runs},
        "compute_ms": {k: med(k, "compute_ms") for k in runs},
        "alone_ms": {k[3:]: med(k, "alone_ms") for k in two},
        "ratio_in_step": {k[3:]: med(k, "ratio_in_step") for k in two},
        "ratio_alone": {k[3:]: med(k, "ratio_alone") for k in two},
    }
    for base_key in ("L1_t1", "L1_t2"):
        out[f"sequences_per_s_L2_over_{base_key}"] = {
            k[3:]: out["sequences_per_s"][k] / out["sequences_per_s"][base_key] for k in two}
    return out


def launch(n: int, backend: str, threads: int, config: str, steps: int, warmup: int,
           alone_reps: int, overrides: Sequence[str]) -> Dict[str, Any]:
    """One ``mpiexec -n n`` worker run; its JSON."""
    return run_worker(__file__, n, "--worker",
                      ["--backend", backend, "--threads", str(threads), "--configs", config,
                       "--steps", str(steps), "--warmup", str(warmup),
                       "--alone-reps", str(alone_reps)], overrides, threads=threads,
                      what=f"allreduce worker ({n} ranks, {backend})")


def usable_backends(requested: Sequence[str]) -> Dict[str, str]:
    """backend -> '' if usable, else why not."""
    from r2d2_hpc.comm.allreduce import backend_status

    status = backend_status("cpu")
    return {b: ("" if status[b][0] else status[b][1]) for b in requested}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="default,lstm512",
                   help=f"comma-separated, from {sorted(CONFIGS)}")
    p.add_argument("--backends", default="mpi,torch,horovod",
                   help="comma-separated; unusable ones are reported, not run")
    p.add_argument("--steps", type=int, default=60, help="measured updates per run")
    p.add_argument("--warmup", type=int, default=5, help="updates before the clock starts")
    p.add_argument("--alone-reps", type=int, default=30, help="allreduces timed alone")
    p.add_argument("--repeats", type=int, default=2,
                   help="runs of every variant, alternating (medians reported)")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   metavar="SECTION.FIELD=VALUE", help="extra config override (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--backend", default="none", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        a.config = a.configs
        worker(a)
        return {}
    names = [n for n in a.configs.split(",") if n]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    steps, warmup, reps, extra = a.steps, a.warmup, a.alone_reps, list(a.overrides)
    repeats = a.repeats
    if a.quick:
        steps, warmup, reps, repeats = 4, 1, 3, 1
        extra += ["network.lstm_size=16", "network.mlp_hidden=[16]", "network.head_hidden=16",
                  "learner.batch_size=8"]
    backends = usable_backends([b for b in a.backends.split(",") if b])
    import torch

    result: Dict[str, Any] = {
        "benchmark": "allreduce",
        "metric": "allreduce time per update / compute time per update, per backend; "
                  "learner updates/s and sequences/s for L = 1 vs 2",
        "config": {"configs": names, "steps": steps, "warmup": warmup, "alone_reps": reps,
                   "repeats": repeats, "overrides": extra, "quick": a.quick},
        "backends_not_usable": {b: why for b, why in backends.items() if why},
        "machine": {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
                    "python": platform.python_version(), "torch": torch.__version__,
                    "platform": platform.platform()},
        "configs": {},
    }
    for name in names:
        variants = [("L1_t1", 1, "none", 1), ("L1_t2", 1, "none", 2)]
        variants += [(f"L2_{b}", 2, b, 1) for b, why in backends.items() if not why]
        runs: Dict[str, List[Dict[str, Any]]] = {v[0]: [] for v in variants}
        for _ in range(repeats):  # variants alternate, so slow phases of the machine spread
            for key, n, backend, threads in variants:
                runs[key].append(launch(n, backend, threads, name, steps, warmup, reps, extra))
        result["configs"][name] = {"summary": summarize(runs), "runs": runs}
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    return write_result(result, a.out)


if __name__ == "__main__":
    main()

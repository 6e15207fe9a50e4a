"""Learner benchmark: updates/s in a live MPI job against ``Learner.step`` alone.

Numerator ("live"): the real job (``job.run_mpi``, every rank's real role) under
``mpiexec -n 3``: learner 0, replay shard 1, one actor 2. The learner samples
over the transport (``learner.samples_in_flight`` requests ahead), steps, sends
priorities, publishes parameters, logs. On a small machine actors compete with
the learner for the CPU, so the actor is throttled by the shard's rate limiter
(``replay.samples_per_insert``, ``--samples-per-insert``): it runs only as fast
as the learner consumes, as a real deployment's actor fleet on its own cores
would let the learner do. Rate = learner steps / wall time between the first
metrics row at or after ``--warmup-steps`` learner steps and the last row
(excludes start-up and the replay's minimum fill).

Denominator ("in-memory"): the same ``Learner.step`` (same config, network,
batch size, sequence length, device ``cpu``) on batches already in memory:
batches sampled from a ``ReplayShard`` filled by a real ``ActorRank`` (same
env), cycled; importance weights as the learner rank computes them. Measured in
this process right before and right after the live run (mean of the two rates).

``ratio = live updates/s / in-memory updates/s`` (target >= 0.9: sampling and
transport hidden behind compute). Both sides run torch with 1 thread
(``OMP_NUM_THREADS=1`` for the job, ``torch.set_num_threads(1)`` here), so the
ratio compares like with like on a shared 2-core machine.

Configurations (``--configs``):

* ``default``: the embedded default job (``presets/default.yaml``: masked
  CartPole, MLP 64, LSTM 64, batch 32, sequences of 8 + 16 steps);
* ``big``: the same with LSTM 256, MLP 256, head 256, batch 64, closer to
  Atari scale, where compute dominates more.

``ratio_cpu_time`` compares updates per CPU-second of the learner's thread
(live: from the CPU time the benchmark adds to each metrics row), which
other processes taking the core away does not change: it is the learner
rank's own per-step overhead (receiving, assembling, weights, priorities,
publishing, logging). ``batch_copies`` gives the host bytes the learner rank
copies per batch (``batch_copy_bytes``). Also reported, to tell why a ratio is
below 1: the live run's mean time inside ``Learner.step`` (``compute_seconds /
steps``, contention shows here) against the in-memory step time, and the live
fraction of wall time spent in steps.

Usage::

    python benchmarks/learner_bench.py [--configs default,big] [--seconds 20]
                                       [--samples-per-insert 16] [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import run_worker, write_result  # noqa: E402

CONFIGS: Dict[str, List[str]] = {
    "default": [],
    "big": ["network.lstm_size=256", "network.mlp_hidden=[256]", "network.head_hidden=256",
            "learner.batch_size=64"],
}

#: Settings of every live run on top of a configuration.
LIVE_SETTINGS = ["learner.device=cpu", "logging.tensorboard=false",
                 "logging.log_interval_seconds=0.5", "learner.max_steps=0",
                 "logging.eval_interval_steps=0"]


def bench_config(overrides: Sequence[str]) -> Any:
    """The embedded default job's config with ``overrides`` applied."""
    from r2d2_hpc.config import load_config
    from r2d2_hpc.presets import load_preset

    return load_config(None, list(overrides), base=load_preset("default"))


# --------------------------------------------------------------------------- #
# In-memory: Learner.step on batches sampled before the clock starts.

def replay_batches(cfg: Any, count: int, seed: int = 0) -> Tuple[List[Any], List[np.ndarray]]:
    """``count`` batches and their importance weights from a shard filled by an actor.

    A real ActorRank (the config's env and network) steps until its shard
    holds enough sequences; no learner and no MPI. The shard's rate limiter is
    off here (nothing samples while it fills).
    """
    import dataclasses

    import torch

    from r2d2_hpc.config import TopologyConfig
    from r2d2_hpc.agent.learner import Learner
    from r2d2_hpc.agent.losses import importance_weights
    from r2d2_hpc.job.actor import ActorRank
    from r2d2_hpc.comm.messages import job_messages
    from r2d2_hpc.job.role import job_spec
    from r2d2_hpc.job.replay import ReplayRank
    from r2d2_hpc.comm.topology import assign_role
    from r2d2_hpc.comm.memory_endpoint import InMemoryHub

    cfg = cfg.replace(replay=dataclasses.replace(cfg.replay, samples_per_insert=0.0))
    spec = job_spec(cfg)
    topo = TopologyConfig(learners=1, replay_shards=1)
    infos = [assign_role(r, 3, topo) for r in range(3)]
    hub = InMemoryHub(job_messages(cfg, spec), 3)
    lep = hub.endpoint(0)
    shard = ReplayRank(cfg, spec, hub.endpoint(1), infos[1])
    actor = ActorRank(cfg, spec, hub.endpoint(2), infos[2])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        flat = Learner(cfg, spec.obs_shape, spec.num_actions, device="cpu").flat_params()
    lep.publish_params(1, 0, flat, [2])
    need = max(4 * cfg.learner.batch_size, 64)
    for _ in range(100 * need):
        if shard.shard.count >= need:
            break
        actor.tick()
        shard.tick()
        for name in ("SHARD_STATS", "ACTOR_REPORT"):
            lep.poll(name)
            lep.release(name)
    if shard.shard.count < need:
        raise RuntimeError(f"the shard holds {shard.shard.count} sequences after "
                           f"{100 * need} actor ticks, fewer than {need}")
    rng = np.random.default_rng(seed)
    batches, weights = [], []
    for _ in range(count):
        b = shard.shard.sample(cfg.learner.batch_size, rng)
        batches.append(b)
        weights.append(np.asarray(importance_weights(
            np.asarray(b.probs), shard.shard.count,
            cfg.replay.importance_sampling_exponent), np.float32))
    actor.close()
    return batches, weights


def bench_in_memory(cfg: Any, batches: List[Any], weights: List[np.ndarray], seconds: float,
                    warmup_steps: int) -> Dict[str, float]:
    """``Learner.step`` on the given batches, cycled, for about ``seconds``."""
    import torch

    from r2d2_hpc.agent.learner import Learner
    from r2d2_hpc.job.role import job_spec

    torch.set_num_threads(1)
    spec = job_spec(cfg)
    learner = Learner(cfg, spec.obs_shape, spec.num_actions, device="cpu")
    for i in range(warmup_steps):
        learner.step(batches[i % len(batches)], weights[i % len(weights)])
    steps = 0
    start, cpu0 = time.perf_counter(), time.thread_time()
    deadline = start + seconds
    while True:
        learner.step(batches[steps % len(batches)], weights[steps % len(weights)])
        steps += 1
        now = time.perf_counter()
        if now >= deadline:
            break
    cpu = time.thread_time() - cpu0
    return {"steps": steps, "seconds": now - start, "cpu_seconds": cpu,
            "updates_per_s": steps / (now - start), "updates_per_cpu_s": steps / cpu,
            "mean_step_seconds": (now - start) / steps}


def batch_copy_bytes(batches: List[Any], num_shards: int = 2) -> Dict[str, Any]:
    """Host bytes the learner rank copies per batch, before and after ``BatchAssembler``.

    Each batch is cut into ``num_shards`` replies (views, as the receive buffers
    hold them) and assembled by the learner rank's ``BatchAssembler``, which
    counts the bytes it copies ("after": one copy into a reused buffer, which a
    CUDA learner sends to the device as it is). "Before" is the old path's count
    on the same batch: ``np.array`` of every reply, ``np.concatenate`` of the
    replies, and on CUDA a copy into a pinned staging buffer (3 copies; 2 on a
    CPU learner, whose tensors shared the concatenated arrays).
    """
    from r2d2_hpc.replay.assembly import BatchAssembler, batch_axis

    size = int(np.shape(batches[0].keys)[0])
    assembler = BatchAssembler(size)
    bounds = np.linspace(0, size, num_shards + 1).astype(int)
    for rid, batch in enumerate(batches):
        parts = [(s, int(hi - lo)) for s, (lo, hi) in enumerate(zip(bounds, bounds[1:]))]
        assembler.expect(rid, parts)
        for s, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            assembler.add(rid, s, type(batch)(*(
                a[(slice(None),) * batch_axis(n) + (slice(lo, hi),)]
                for n, a in zip(type(batch)._fields, batch))))
        assembler.take(rid)
    batch_bytes = int(sum(np.asarray(a).nbytes for a in batches[0]))
    return {
        "num_shards": num_shards,
        "batch_bytes": batch_bytes,
        "obs_bytes": int(np.asarray(batches[0].obs).nbytes),
        "host_bytes_copied_per_batch_before_cuda": 3 * batch_bytes,
        "host_bytes_copied_per_batch_before_cpu": 2 * batch_bytes,
        "host_bytes_copied_per_batch_after": assembler.bytes_copied / assembler.batches,
    }


# --------------------------------------------------------------------------- #
# Live: the real job under mpiexec.

def live_worker(overrides: Sequence[str], out_path: str) -> None:
    """Each rank of ``mpiexec -n 3 learner_bench.py --live-worker``: the real job."""
    from mpi4py import MPI

    from r2d2_hpc.job.runner import run_mpi

    from r2d2_hpc.job import learner as learner_rank

    # Instrumentation of this benchmark only: each metrics row also carries the
    # learner thread's CPU time, so the steady window has a CPU-time rate too.
    metrics_row = learner_rank.LearnerRank.metrics_row

    def metrics_row_with_cpu(self: Any) -> Dict[str, float]:
        row = metrics_row(self)
        row["thread_cpu_s"] = time.thread_time()
        return row

    learner_rank.LearnerRank.metrics_row = metrics_row_with_cpu  # type: ignore[method-assign]
    world = MPI.COMM_WORLD
    cfg = bench_config(overrides)
    cpu0 = time.thread_time()
    summary = run_mpi(cfg, world, run_dir=None, quiet=True)
    cpu = time.thread_time() - cpu0
    cpus = world.gather(cpu, root=0)
    if world.Get_rank() == 0:
        summary["thread_cpu_seconds_by_rank"] = cpus
        with open(out_path, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, default=float)


def steady_rate(rows: List[Dict[str, float]], warmup_steps: int) -> Dict[str, float]:
    """Learner steps per second between the first row at/after ``warmup_steps`` and the last.

    Args:
      rows: the lead learner's metrics rows (``learner_step``, ``wall_time_s``
        and, when instrumented, ``thread_cpu_s``), in order.
      warmup_steps: steps excluded at the start.

    Returns:
      ``updates_per_s`` and the window's ``steps`` and ``seconds``; with
      ``thread_cpu_s`` in the rows also ``cpu_seconds`` and ``updates_per_cpu_s``
      (the learner thread's CPU time). Rates are NaN if the window holds fewer
      than two rows or no time.
    """
    window = [r for r in rows if r["learner_step"] >= warmup_steps]
    nan = {"updates_per_s": math.nan, "steps": 0, "seconds": 0.0,
           "cpu_seconds": 0.0, "updates_per_cpu_s": math.nan}
    if len(window) < 2 or window[-1]["wall_time_s"] <= window[0]["wall_time_s"]:
        return nan
    steps = window[-1]["learner_step"] - window[0]["learner_step"]
    secs = window[-1]["wall_time_s"] - window[0]["wall_time_s"]
    out = {"updates_per_s": steps / secs, "steps": steps, "seconds": secs,
           "cpu_seconds": 0.0, "updates_per_cpu_s": math.nan}
    if "thread_cpu_s" in window[0] and "thread_cpu_s" in window[-1]:
        cpu = window[-1]["thread_cpu_s"] - window[0]["thread_cpu_s"]
        out.update(cpu_seconds=cpu, updates_per_cpu_s=steps / cpu if cpu > 0 else math.nan)
    return out


def bench_live(overrides: Sequence[str], timeout: float) -> Dict[str, Any]:
    """Runs the real job under ``mpiexec -n 3``; returns learner 0's summary."""
    return run_worker(__file__, 3, "--live-worker", (), overrides, timeout=timeout,
                      what="live learner run")


def bench_one(name: str, overrides: Sequence[str], seconds: float, baseline_seconds: float,
              warmup_steps: int) -> Dict[str, Any]:
    """Baseline, live run, baseline again, for one configuration."""
    cfg = bench_config(overrides)
    batches, weights = replay_batches(cfg, 4)
    before = bench_in_memory(cfg, batches, weights, baseline_seconds, warmup_steps=3)
    live = bench_live(overrides, timeout=120 + 3 * seconds)
    after = bench_in_memory(cfg, batches, weights, baseline_seconds, warmup_steps=3)
    rows = live.get("metrics", [])
    steady = steady_rate(rows, warmup_steps)
    base_rate = 0.5 * (before["updates_per_s"] + after["updates_per_s"])
    base_cpu_rate = 0.5 * (before["updates_per_cpu_s"] + after["updates_per_cpu_s"])
    base_step = 0.5 * (before["mean_step_seconds"] + after["mean_step_seconds"])
    steps = int(live["learner_step"])
    live_step = live["compute_seconds"] / steps if steps else math.nan
    ranks = live.get("ranks", [])
    return {
        "overrides": list(overrides),
        "batch_size": cfg.learner.batch_size,
        "sequence_length": cfg.replay.sequence_length,
        "lstm_size": cfg.network.lstm_size,
        "samples_in_flight": cfg.learner.samples_in_flight,
        "live_updates_per_s": steady["updates_per_s"],
        "in_memory_updates_per_s": base_rate,
        "ratio": steady["updates_per_s"] / base_rate,
        "target_ratio_min": 0.9,
        "live_updates_per_cpu_s": steady["updates_per_cpu_s"],
        "in_memory_updates_per_cpu_s": base_cpu_rate,
        "ratio_cpu_time": steady["updates_per_cpu_s"] / base_cpu_rate,
        "live_window": steady,
        "live_mean_step_seconds": live_step,
        "in_memory_mean_step_seconds": base_step,
        "live_step_slowdown": live_step / base_step,
        "batch_copies": batch_copy_bytes(batches),
        "live_fraction_of_wall_in_step": steady["updates_per_s"] * live_step,
        "in_memory_before": before,
        "in_memory_after": after,
        "live_summary": {k: live.get(k) for k in ("learner_step", "env_steps", "stop_reason",
                                                  "compute_seconds", "params_version")},
        "live_thread_cpu_seconds_by_rank": live.get("thread_cpu_seconds_by_rank"),
        "live_ranks": [{k: r.get(k) for k in ("rank", "role", "env_steps", "inserted_sequences",
                                               "sampled_sequences", "rate_limited_samples",
                                               "insert_waits", "backpressure_waits",
                                               "param_updates", "clean_shutdown")
                        if k in r} for r in ranks],
        "live_rows": [{k: r.get(k) for k in ("learner_step", "wall_time_s", "thread_cpu_s",
                                             "updates_per_s", "env_steps_per_s", "sample_per_s",
                                             "insert_per_s")}
                      for r in rows],
    }


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="default,big",
                   help=f"comma-separated, from {sorted(CONFIGS)} (default: both)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="learner.max_seconds of each live run (default 20)")
    p.add_argument("--baseline-seconds", type=float, default=6.0,
                   help="seconds of each in-memory measurement (before and after)")
    p.add_argument("--samples-per-insert", type=float, default=16.0,
                   help="replay.samples_per_insert of the live run (throttles the actor)")
    p.add_argument("--warmup-steps", type=int, default=20,
                   help="learner steps excluded at the start of the live run")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   metavar="SECTION.FIELD=VALUE", help="extra config override (repeatable)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--live-worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.live_worker:
        live_worker(a.overrides, a.live_worker)
        return {}
    names = [n for n in a.configs.split(",") if n]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {sorted(CONFIGS)}")
    if a.quick:
        seconds, base_s, warmup = 2.0, 0.3, 2
        quick = ["network.lstm_size=16", "network.mlp_hidden=[16]", "network.head_hidden=16",
                 "learner.batch_size=8", "replay.min_fill_sequences=16",
                 "actor.num_envs=4", "learner.publish_period=2"]
    else:
        seconds, base_s, warmup, quick = a.seconds, a.baseline_seconds, a.warmup_steps, []
    import torch

    result: Dict[str, Any] = {
        "benchmark": "learner",
        "metric": "learner updates/s, live mpiexec -n 3 job / Learner.step on in-memory batches",
        "config": {"configs": names, "live_seconds": seconds, "baseline_seconds": base_s,
                   "samples_per_insert": a.samples_per_insert, "warmup_steps": warmup,
                   "ranks": 3, "torch_threads": 1, "overrides": list(a.overrides) + quick,
                   "quick": a.quick},
        "machine": {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
                    "python": platform.python_version(), "numpy": np.__version__,
                    "torch": torch.__version__, "platform": platform.platform()},
        "configs": {},
    }
    for name in names:
        overrides = (CONFIGS[name] + quick + list(a.overrides) + LIVE_SETTINGS
                     + [f"replay.samples_per_insert={a.samples_per_insert}",
                        f"learner.max_seconds={seconds}"])
        result["configs"][name] = bench_one(name, overrides, seconds, base_s, warmup)
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    return write_result(result, a.out)


if __name__ == "__main__":
    main()

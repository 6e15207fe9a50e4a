"""Actor benchmark: the actor rank's env steps/s against bare env stepping plus inference.

Numerator: the real :class:`~r2d2_hpc.job.actor.ActorRank` tick (batched
``ActorPolicy.act``, vector env step, ``SequenceAdder`` cutting and initial
priorities, episode stats, STEP_CHUNK sends through the endpoint, parameter
refresh) with its chunks taken in by a real
:class:`~r2d2_hpc.job.replay.ReplayRank`.

Denominator ("bare"): the same vector env (same config, same seed) and the same
``ActorPolicy`` (same parameters, epsilons and seed) in the loop
``act -> env.step -> observe`` and nothing else.

``ratio = actor env steps/s / bare env steps/s`` (target >= 0.9), measured in
this one run, ``torch.set_num_threads(1)`` as on an actor rank of a job. Each
of ``--repeats`` measurements alternates actor and bare in slices of
``--slice`` seconds until each side had ``--seconds``, so a machine whose load
drifts (other processes on a shared machine) weighs on both sides alike;
medians over the repeats are reported, and the ratio of the medians.
``ratio_cpu_time`` uses the CPU time of the thread instead of wall time: the
same comparison with the time other processes took the core away removed.

Two setups:

* ``inproc``: the actor and the shard in this process over an in-memory hub
  (``r2d2-train --serial``'s transport); only the time inside ``actor.tick()``
  counts for the actor, as the shard has its own rank in a job. The time inside
  ``shard.tick()`` is reported beside it.
* ``mpi`` (unless ``--no-mpi``): ``mpiexec -n 3`` of this script: rank 0 publishes
  the parameters once (the learner's role for the actor), rank 1 runs the real
  ``ReplayRank`` loop, rank 2 the real ``ActorRank`` over ``MPIEndpoint``
  (STEP_CHUNK ``Issend`` path) in the job runner's loop (a short sleep when
  backpressure stops a tick); rates are wall-clock on the actor's rank, and the
  bare loop runs on that same rank while the shard idles.

Every measurement also reports ``us_per_tick``: microseconds per tick inside
``policy.act``, ``env.step``, ``adder.add``, ``ep.try_send`` (STEP_CHUNK
packing and sending) and ``episodes.update``, and the rest (``other``), on
both sides, to show where the actor's extra time goes.

Two workloads (``--workload``), each with the shard's rate limiter off
(nothing samples here):

* ``atari``: the paper's actor: Pong through the ALE vector env (84x84
  grayscale, 4-frame stacks, frame skip 4), the Atari network (Nature convs,
  LSTM 512, dueling 512), sequences of 40 + 80 steps every 40, parameters
  refreshed every 400 env steps, 16 envs per actor. The target (ratio >= 0.9)
  is judged here: this is what the product's actors do.
* ``default``: the embedded default job (``r2d2_hpc/presets/default.yaml``:
  masked CartPole, MLP 64, LSTM 64, 16 envs per actor). A stress case for the
  actor's own Python cost: the bare loop takes about 0.35 ms per tick for 16
  envs, so the adder's per-step bookkeeping and the sends (tens of
  microseconds each) show as a large fraction. Reported beside the target with
  the per-phase microseconds that explain it.

Usage::

    python benchmarks/actor_bench.py [--workload all|atari|default] [--seconds 4]
                                     [--repeats 3] [--slice 0.25] [--no-mpi] [--quick]
                                     [--set section.field=value ...] [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import run_worker, write_result  # noqa: E402

import torch  # noqa: E402

from r2d2_hpc.agent.policy import ActorPolicy  # noqa: E402
from r2d2_hpc.comm.messages import Command  # noqa: E402
from r2d2_hpc.comm.messages import job_messages  # noqa: E402
from r2d2_hpc.comm.topology import assign_role  # noqa: E402
from r2d2_hpc.config import Config, TopologyConfig, load_config  # noqa: E402
from r2d2_hpc.envs.factory import make_vector_env  # noqa: E402
from r2d2_hpc.job.actor import ActorRank  # noqa: E402
from r2d2_hpc.job.replay import ReplayRank  # noqa: E402
from r2d2_hpc.job.role import Role, job_spec
from r2d2_hpc.presets import load_preset  # noqa: E402
from r2d2_hpc.types import JobSpec

#: Ranks of the benchmark job: learner (parameter publisher), shard, actor.
LEARNER, SHARD, ACTOR = 0, 1, 2

#: Nothing samples in this benchmark, so the shard's rate limiter is off
#: (with ``samples_per_insert > 0`` it would stop taking chunks after the minimum fill).
ACTOR_SETTINGS = ["replay.samples_per_insert=0"]

#: Config overrides of each workload (on top of the embedded default preset).
WORKLOADS: Dict[str, List[str]] = {
    "atari": ["env.name=atari", "env.game=Pong", "env.frame_stack=4",
              "env.max_episode_steps=27000", "network.torso=atari", "network.lstm_size=512",
              "network.head_hidden=512", "replay.burn_in=40", "replay.trace_length=80",
              "replay.sequence_period=40", "replay.capacity_observations=200000",
              "actor.param_refresh_period=400"],
    "default": [],
}

#: The workload whose ratio is held to the target.
TARGET_WORKLOAD = "atari"
TARGET_RATIO = 0.9

#: A measurement's raw totals: numbers, and ``phases`` (label -> seconds).
Totals = Dict[str, Any]


def bench_config(overrides: Sequence[str] = ()) -> Config:
    """The embedded default job's config, rate limiter off, with ``overrides`` applied."""
    return load_config(None, ACTOR_SETTINGS + list(overrides), base=load_preset("default"))


def initial_params(cfg: Config, spec: JobSpec) -> np.ndarray:
    """A flat parameter vector as the learner would publish it at version 1."""
    policy = ActorPolicy(cfg, spec.obs_shape, spec.num_actions,
                         np.zeros(cfg.actor.num_envs), seed=cfg.seed + 12345)
    return policy.flat_params()


class BareLoop:
    """The denominator: the actor's env and policy, built the same way, stepped alone.

    Args:
      cfg: run config.
      spec: the job's shapes.
      actor: the ActorRank whose env seed, epsilons and policy seed it copies.
      params: the parameters the actor acts with.
    """

    def __init__(self, cfg: Config, spec: JobSpec, actor: ActorRank, params: np.ndarray) -> None:
        n = cfg.actor.num_envs
        seed = actor.seed
        self.env = make_vector_env(cfg.env, n, seed=seed)
        self.policy = ActorPolicy(cfg, spec.obs_shape, spec.num_actions, actor.epsilons, seed)
        self.policy.load_flat_params(params, 1)
        self.obs = self.env.reset(seed=seed)
        self.first = np.ones(n, bool)
        self.env_steps = 0
        self.ticks = 0

    def tick(self) -> None:
        out = self.policy.act(self.obs, self.first)
        res = self.env.step(out.action)
        self.policy.observe(res.reward)
        self.obs = res.obs
        self.first = np.asarray(res.terminated, bool) | np.asarray(res.truncated, bool)
        self.env_steps += self.env.num_envs
        self.ticks += 1


class PhaseTimers:
    """Wall time inside named methods of the actor's parts (where a tick goes).

    ``wrap`` shadows a bound method by a timed one on that instance only; the
    cost is two ``perf_counter`` calls per call, on both sides alike.
    """

    def __init__(self) -> None:
        self.seconds: Dict[str, float] = {}

    def wrap(self, obj: Any, method: str, label: str) -> None:
        inner = getattr(obj, method)
        seconds = self.seconds
        seconds.setdefault(label, 0.0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - t0

        setattr(obj, method, timed)

    def snapshot(self) -> Dict[str, float]:
        return dict(self.seconds)

    def since(self, before: Dict[str, float]) -> Dict[str, float]:
        return {k: v - before.get(k, 0.0) for k, v in self.seconds.items()}


def time_actor(timers: PhaseTimers, actor: ActorRank) -> None:
    """Times the parts of an actor tick (policy, env, adder, sends, episode stats)."""
    timers.wrap(actor.policy, "act", "policy.act")
    timers.wrap(actor.env, "step", "env.step")
    timers.wrap(actor.adder, "add", "adder.add")
    timers.wrap(actor.ep, "try_send", "ep.try_send")
    timers.wrap(actor.episodes, "update", "episodes.update")


def time_bare(timers: PhaseTimers, loop: BareLoop) -> None:
    timers.wrap(loop.policy, "act", "policy.act")
    timers.wrap(loop.env, "step", "env.step")


def add_totals(a: Totals, b: Totals) -> Totals:
    """Field-wise sum of two measurements (``phases`` summed per label)."""
    out = dict(a)
    for k, v in b.items():
        if k == "phases":
            ph = dict(out.get("phases", {}))
            for label, s in v.items():
                ph[label] = ph.get(label, 0.0) + s
            out["phases"] = ph
        else:
            out[k] = out.get(k, 0) + v
    return out


def rates(t: Totals) -> Dict[str, Any]:
    """A measurement with its rates: env steps per wall second (``seconds``) and
    per CPU second, and microseconds per tick of each phase (``other``: the rest
    of ``seconds``)."""
    out = {k: v for k, v in t.items() if k != "phases"}
    out["env_steps_per_s"] = t["env_steps"] / t["seconds"]
    out["env_steps_per_cpu_s"] = t["env_steps"] / t["cpu_seconds"]
    ticks = max(1, t["ticks"])
    us = {k: 1e6 * s / ticks for k, s in t.get("phases", {}).items()}
    us["other"] = 1e6 * t["seconds"] / ticks - sum(us.values())
    out["us_per_tick"] = us
    return out


def alternate(run_actor: Callable[[float], Totals], run_bare: Callable[[float], Totals],
              seconds: float, slice_s: float) -> tuple:
    """Alternates actor and bare slices until each ran ``seconds``; returns both totals."""
    a: Totals = {}
    b: Totals = {}
    done = 0.0
    while done < seconds:
        s = min(slice_s, seconds - done)
        a = add_totals(a, run_actor(s))
        b = add_totals(b, run_bare(s))
        done += s
    return rates(a), rates(b)


def bare_runner(loop: BareLoop, timers: PhaseTimers) -> Callable[[float], Totals]:
    """Runs the bare loop for about ``secs``; its totals."""
    def run(secs: float) -> Totals:
        phases = timers.snapshot()
        start, cpu0 = time.perf_counter(), time.thread_time()
        steps0, ticks0 = loop.env_steps, loop.ticks
        deadline = start + secs
        while True:
            for _ in range(4):
                loop.tick()
            now = time.perf_counter()
            if now >= deadline:
                break
        return {"env_steps": loop.env_steps - steps0, "ticks": loop.ticks - ticks0,
                "seconds": now - start, "cpu_seconds": time.thread_time() - cpu0,
                "phases": timers.since(phases)}
    return run


def summarize(actor_runs: List[Dict[str, float]],
              bare_runs: List[Dict[str, float]]) -> Dict[str, Any]:
    """Medians of both sides and their ratios, by wall clock and by the thread's CPU time.

    Args:
      actor_runs: each with ``env_steps_per_s`` and ``env_steps_per_cpu_s``.
      bare_runs: likewise.

    Returns:
      ``ratio = median(actor) / median(bare)`` (wall clock; the headline) and
      ``ratio_cpu_time`` (what is left when other processes take the core away).
    """
    def med(runs: List[Dict[str, float]], key: str) -> float:
        return float(statistics.median(r[key] for r in runs))

    a, b = med(actor_runs, "env_steps_per_s"), med(bare_runs, "env_steps_per_s")
    ac, bc = med(actor_runs, "env_steps_per_cpu_s"), med(bare_runs, "env_steps_per_cpu_s")
    return {"actor_env_steps_per_s": a, "bare_env_steps_per_s": b, "ratio": a / b,
            "actor_env_steps_per_cpu_s": ac, "bare_env_steps_per_cpu_s": bc,
            "ratio_cpu_time": ac / bc, "target_ratio_min": TARGET_RATIO,
            "actor_runs": actor_runs, "bare_runs": bare_runs}


# --------------------------------------------------------------------------- #
# In-process: actor and shard over the in-memory hub.

def bench_inproc(cfg: Config, seconds: float, repeats: int, slice_s: float) -> Dict[str, Any]:
    """Actor tick time against the bare loop, shard drained in the same process."""
    from r2d2_hpc.comm.memory_endpoint import InMemoryHub

    torch.set_num_threads(1)
    spec = job_spec(cfg)
    size = 3
    topo = TopologyConfig(learners=1, replay_shards=1)
    infos = [assign_role(r, size, topo) for r in range(size)]
    # Bounded chunk queue, as run_serial: a slow shard would show as backpressure.
    hub = InMemoryHub(job_messages(cfg, spec), size, capacity={"STEP_CHUNK": 64})
    learner_ep = hub.endpoint(LEARNER)
    shard = ReplayRank(cfg, spec, hub.endpoint(SHARD), infos[SHARD])
    actor = ActorRank(cfg, spec, hub.endpoint(ACTOR), infos[ACTOR])
    params = initial_params(cfg, spec)
    learner_ep.publish_params(1, 0, params, [ACTOR])
    bare = BareLoop(cfg, spec, actor, params)
    timers, bare_timers = PhaseTimers(), PhaseTimers()
    time_actor(timers, actor)
    time_bare(bare_timers, bare)

    def run_actor(secs: float) -> Totals:
        t_actor = t_shard = cpu_actor = 0.0
        steps0, ticks0, phases = actor.env_steps, actor.ticks, timers.snapshot()
        chunks0, waits0 = actor.chunks_sent, actor.backpressure_waits
        deadline = time.perf_counter() + secs
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            actor.tick()
            t1, c1 = time.perf_counter(), time.thread_time()
            shard.tick()
            t2 = time.perf_counter()
            t_actor += t1 - t0
            cpu_actor += c1 - c0
            t_shard += t2 - t1
            if t2 >= deadline:
                break
        for name in ("SHARD_STATS", "ACTOR_REPORT"):  # nobody else reads them
            learner_ep.poll(name)
            learner_ep.release(name)
        return {"env_steps": actor.env_steps - steps0, "ticks": actor.ticks - ticks0,
                "seconds": t_actor, "cpu_seconds": cpu_actor, "shard_tick_seconds": t_shard,
                "chunks_sent": actor.chunks_sent - chunks0,
                "backpressure_waits": actor.backpressure_waits - waits0,
                "phases": timers.since(phases)}

    run_bare = bare_runner(bare, bare_timers)
    alternate(run_actor, run_bare, min(0.5, seconds), slice_s)   # warm-up
    actor_runs, bare_runs = [], []
    for _ in range(repeats):
        a, b = alternate(run_actor, run_bare, seconds, slice_s)
        a["env_steps_per_s_actor_and_shard_one_core"] = (
            a["env_steps"] / (a["seconds"] + a["shard_tick_seconds"]))
        actor_runs.append(a)
        bare_runs.append(b)
    out = summarize(actor_runs, bare_runs)
    out["actor_and_shard_one_core_env_steps_per_s"] = statistics.median(
        r["env_steps_per_s_actor_and_shard_one_core"] for r in actor_runs)
    out["shard"] = shard.summary()
    out["actor"] = actor.summary()
    actor.close()
    return out


# --------------------------------------------------------------------------- #
# MPI: learner stub, real shard rank, real actor rank.

class ParamsOnce(Role):
    """Rank 0 of the benchmark job: publishes the parameters once, then only
    drains what shard and actor send to a learner, until CONTROL STOP."""

    name = "learner"

    def __init__(self, ep: Any, params: np.ndarray) -> None:
        self.ep = ep
        ep.publish_params(1, 0, params, [ACTOR])

    def listen_names(self) -> Sequence[str]:
        return ("SHARD_STATS", "ACTOR_REPORT", "CONTROL")

    def tick(self) -> bool:
        from r2d2_hpc.job.role import poll_control, stop_requested

        stop_requested(self, poll_control(self.ep))
        for name in ("SHARD_STATS", "ACTOR_REPORT"):
            self.ep.poll(name)
            self.ep.release(name)
        self.ep.progress()
        return False


def loop_until_done(role: Role, idle_s: float = 0.002) -> Dict[str, float]:
    """The job runner's loop (``job.run_mpi``): tick, sleep a little when idle.

    Returns:
      ticks, ticks that did work, seconds asleep, CPU seconds of the thread.
    """
    sleep, ticks, worked, slept = 0.0001, 0, 0, 0.0
    cpu0 = time.thread_time()
    while not role.done:
        ticks += 1
        if role.tick():
            worked += 1
            sleep = 0.0001
        else:
            t0 = time.perf_counter()
            time.sleep(sleep)
            slept += time.perf_counter() - t0
            sleep = min(sleep * 2, idle_s)
    return {"ticks": ticks, "busy_ticks": worked, "sleep_seconds": slept,
            "cpu_seconds": time.thread_time() - cpu0}


def mpi_worker(overrides: Sequence[str], seconds: float, repeats: int, slice_s: float,
               out_path: str) -> None:
    """Body of each rank of ``mpiexec -n 3 actor_bench.py --mpi-worker``."""
    from mpi4py import MPI

    from r2d2_hpc.job.role import drain_and_close
    from r2d2_hpc.comm.mpi_endpoint import MPIEndpoint

    world = MPI.COMM_WORLD
    if world.Get_size() != 3:
        raise SystemExit("the MPI actor benchmark needs exactly 3 ranks")
    rank = world.Get_rank()
    torch.set_num_threads(1)
    cfg = bench_config(overrides)
    spec = job_spec(cfg)
    info = assign_role(rank, 3, TopologyConfig(learners=1, replay_shards=1))
    ep = MPIEndpoint(world, job_messages(cfg, spec),   # same depths as job.run_mpi
                     send_depth={"STEP_CHUNK": cfg.actor.send_pool, "SAMPLE_REPLY": 2},
                     recv_depth={"SAMPLE_REPLY": max(2, cfg.learner.samples_in_flight)})
    result: Optional[Dict[str, Any]] = None
    if rank == LEARNER:
        role: Role = ParamsOnce(ep, initial_params(cfg, spec))
    elif rank == SHARD:
        role = ReplayRank(cfg, spec, ep, info)
    else:
        role = ActorRank(cfg, spec, ep, info)
    for name in role.listen_names():
        ep.listen(name)
    loop: Dict[str, float] = {}
    if rank != ACTOR:
        loop = loop_until_done(role)
    else:
        actor = role
        assert isinstance(actor, ActorRank)
        while not actor.have_params:   # the initial publication
            actor.tick()
            time.sleep(0.001)
        bare = BareLoop(cfg, spec, actor, initial_params(cfg, spec))
        timers, bare_timers = PhaseTimers(), PhaseTimers()
        time_actor(timers, actor)
        time_bare(bare_timers, bare)

        def run_actor(secs: float) -> Totals:
            steps0, ticks0, phases = actor.env_steps, actor.ticks, timers.snapshot()
            chunks0, waits0 = actor.chunks_sent, actor.backpressure_waits
            stalls0 = ep.stalls("STEP_CHUNK")
            start, cpu0 = time.perf_counter(), time.thread_time()
            deadline = start + secs
            sleep, slept = 0.0001, 0.0
            while True:
                if actor.tick():
                    sleep = 0.0001
                else:   # backpressure: the job runner sleeps the same way
                    t0 = time.perf_counter()
                    time.sleep(sleep)
                    slept += time.perf_counter() - t0   # with the scheduler's overshoot
                    sleep = min(sleep * 2, 0.002)
                now = time.perf_counter()
                if now >= deadline:
                    break
            t = {"env_steps": actor.env_steps - steps0, "ticks": actor.ticks - ticks0,
                 "seconds": now - start, "cpu_seconds": time.thread_time() - cpu0,
                 "backpressure_sleep_seconds": slept,
                 "chunks_sent": actor.chunks_sent - chunks0,
                 "backpressure_waits": actor.backpressure_waits - waits0,
                 "send_stalls": ep.stalls("STEP_CHUNK") - stalls0,
                 "phases": timers.since(phases)}
            t["phases"]["backpressure sleep"] = slept
            return t

        run_bare_inner = bare_runner(bare, bare_timers)

        def run_bare(secs: float) -> Totals:
            ep.progress()   # keep the transport moving between slices
            return run_bare_inner(secs)

        alternate(run_actor, run_bare, min(0.5, seconds), slice_s)   # warm-up
        actor_runs, bare_runs = [], []
        for _ in range(repeats):
            a, b = alternate(run_actor, run_bare, seconds, slice_s)
            actor_runs.append(a)
            bare_runs.append(b)
        result = summarize(actor_runs, bare_runs)
        result["actor"] = actor.summary()
        for r in (LEARNER, SHARD):
            ep.send("CONTROL", r, timeout=30.0, command=int(Command.STOP), argument=0)
        actor.done = True
    clean = drain_and_close(ep, role, comm=world, timeout=20.0)
    summaries = world.gather({"rank": rank, "role": role.name, "clean_shutdown": clean,
                              "loop": loop, **role.summary()}, root=ACTOR)
    if rank == ACTOR:
        assert result is not None
        result["ranks"] = summaries
        with open(out_path, "w", encoding="utf-8") as fh:
            json.dump(result, fh, default=float)
    role.close()


def bench_mpi(overrides: Sequence[str], seconds: float, repeats: int, slice_s: float,
              timeout: float) -> Dict[str, Any]:
    """Launches the 3-rank MPI benchmark and returns the actor rank's result."""
    return run_worker(__file__, 3, "--mpi-worker",
                      ["--seconds", str(seconds), "--repeats", str(repeats),
                       "--slice", str(slice_s)], overrides, timeout=timeout,
                      what="MPI actor benchmark")


# --------------------------------------------------------------------------- #

def machine_info() -> Dict[str, Any]:
    return {"cpus": os.cpu_count(), "load_average_1min": os.getloadavg()[0],
            "python": platform.python_version(), "numpy": np.__version__,
            "torch": torch.__version__, "platform": platform.platform()}


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=4.0,
                   help="seconds per side (actor, bare) in each measurement (default 4)")
    p.add_argument("--repeats", type=int, default=3,
                   help="measurements per setup; medians reported (default 3)")
    p.add_argument("--slice", type=float, default=0.25, dest="slice_s",
                   help="seconds per alternated actor/bare slice (default 0.25)")
    p.add_argument("--no-mpi", action="store_true", help="skip the mpiexec -n 3 setup")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    p.add_argument("--set", action="append", default=[], dest="overrides",
                   metavar="SECTION.FIELD=VALUE", help="config override (repeatable)")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--mpi-worker", default=None, help=argparse.SUPPRESS)
    p.add_argument("--workload", default=None, choices=["all"] + list(WORKLOADS),
                   help="which workload(s) to run (default all; --quick: default)")
    a = p.parse_args(argv)
    seconds, repeats, slice_s = (0.2, 1, 0.1) if a.quick else (a.seconds, a.repeats, a.slice_s)
    if a.mpi_worker:
        mpi_worker(a.overrides, seconds, repeats, slice_s, a.mpi_worker)
        return {}
    chosen = a.workload or ("default" if a.quick else "all")
    names = list(WORKLOADS) if chosen == "all" else [chosen]
    result: Dict[str, Any] = {
        "benchmark": "actor",
        "metric": "actor env steps/s / (same vector env + ActorPolicy.act alone) env steps/s",
        "target": {"workload": TARGET_WORKLOAD, "ratio_min": TARGET_RATIO},
        "machine": machine_info(),
        "workloads": {},
    }
    for name in names:
        overrides = WORKLOADS[name] + list(a.overrides)
        cfg = bench_config(overrides)
        w: Dict[str, Any] = {"config": {
            "env": cfg.env.name, "game": cfg.env.game if cfg.env.name == "atari" else None,
            "num_envs": cfg.actor.num_envs,
            "network": {"torso": cfg.network.torso, "mlp_hidden": list(cfg.network.mlp_hidden),
                        "lstm_size": cfg.network.lstm_size,
                        "head_hidden": cfg.network.head_hidden},
            "sequence_length": cfg.replay.sequence_length,
            "sequence_period": cfg.replay.sequence_period,
            "overrides": ACTOR_SETTINGS + overrides, "seconds": seconds,
            "repeats": repeats, "slice_seconds": slice_s, "torch_threads": 1,
            "quick": a.quick}}
        w["inproc"] = bench_inproc(cfg, seconds, repeats, slice_s)
        if not a.no_mpi:
            w["mpi"] = bench_mpi(overrides, seconds, repeats, slice_s,
                                 timeout=180 + 4 * seconds * repeats)
        result["workloads"][name] = w
    target = result["workloads"].get(TARGET_WORKLOAD)
    if target is not None:
        setups = {k: target[k]["ratio"] for k in ("inproc", "mpi") if k in target}
        result["target"].update({"ratios": setups,
                                 "met": all(r >= TARGET_RATIO for r in setups.values())})
    result["machine"]["load_average_1min_end"] = os.getloadavg()[0]
    return write_result(result, a.out)


if __name__ == "__main__":
    main()

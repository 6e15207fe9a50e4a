"""Running a job: the MPI runner (one role per rank) and the serial runner.

Both build the same role objects (:mod:`r2d2_hpc.job.actor`, ``replay``,
``learner``); only the transport
differs: :class:`~r2d2_hpc.comm.mpi_endpoint.MPIEndpoint` over the world communicator
handed in by the entry point, or an :class:`~r2d2_hpc.comm.memory_endpoint.InMemoryHub`
shared by all roles of one process (``r2d2-train --serial``).

Failure policy: an exception on any rank prints the rank, its role and the
traceback once, then aborts the whole job (``comm.Abort``) so nothing hangs.
Shutdown: learner 0 sends CONTROL STOP when the budget is spent; every rank
then drains its traffic and meets the others in a nonblocking barrier
(:func:`~r2d2_hpc.job.role.drain_and_close`), bounded in time.
"""
from __future__ import annotations

import math
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from r2d2_hpc.checkpoint.preemption import EXIT_REQUEUE, PreemptionFlag
from r2d2_hpc.checkpoint.records import CheckpointInfo
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.heartbeat import ABORT_FLUSH_S, Heartbeat, long_phase
from r2d2_hpc.comm.memory_endpoint import InMemoryEndpoint, InMemoryHub
from r2d2_hpc.comm.messages import job_messages
from r2d2_hpc.comm.mpi_endpoint import MPIEndpoint
from r2d2_hpc.comm.topology import RoleInfo, assign_role, node_size, split_communicators
from r2d2_hpc.config import Config
from r2d2_hpc.job.actor import ActorRank
from r2d2_hpc.job.learner import LearnerRank
from r2d2_hpc.job.metrics import (Budget, MetricsWriter, ProgressPrinter, WandbLogger,
                                  launch_epoch)
from r2d2_hpc.job.outputs import write_run_outputs
from r2d2_hpc.job.replay import ReplayRank
from r2d2_hpc.job.role import Role, drain_and_close, job_spec
from r2d2_hpc.storage.files import write_json_atomic
from r2d2_hpc.types import JobSpec

#: Seconds a rank may spend draining at shutdown before it gives up.
SHUTDOWN_TIMEOUT_S = 20.0


class RunHooks:
    """Test hooks: inject a failure into one rank.

    Args:
      fail_actor_at_step: actor 0 raises at this env step (0 = never).
      fail: ``"ROLE:INDEX:SECONDS[:WHAT]"``: once that rank's loop has run that
        many seconds it raises (WHAT = ``raise``, the default), its loop hangs
        (``hang``: sleeps outside any long phase, a stuck rank), it spends N
        seconds in a long phase and goes on (``phase=N``: a long checkpoint or
        evaluation), or learner 0 raises while a checkpoint it started is
        still being written (``checkpoint``: at the first such loop iteration
        after SECONDS). E.g. ``"replay:0:5"``, ``"actor:1:5:hang"``,
        ``"learner:0:5:checkpoint"``; empty = never.
    """

    def __init__(self, fail_actor_at_step: int = 0, fail: str = "") -> None:
        self.fail_actor_at_step = fail_actor_at_step
        self.fail_role, self.fail_index, self.fail_after_s = "", -1, math.inf
        self.fail_what = "raise"
        if fail:
            role, index, seconds, *what = fail.split(":")
            self.fail_role, self.fail_index, self.fail_after_s = role, int(index), float(seconds)
            self.fail_what = what[0] if what else "raise"

    def check(self, info: RoleInfo, seconds: float, role: Optional[Role] = None) -> None:
        """Injects the failure when it is this rank's and its time has come."""
        if (info.role != self.fail_role or info.index != self.fail_index
                or seconds < self.fail_after_s):
            return
        what = self.fail_what
        if what == "checkpoint" and getattr(getattr(role, "checkpoints", None), "pending",
                                            None) is None:
            return  # armed until a checkpoint is being written
        self.fail_role = ""  # once
        if what == "hang":
            while True:
                time.sleep(1.0)
        if what.startswith("phase="):
            with long_phase():
                time.sleep(float(what.split("=", 1)[1]))
            return
        raise RuntimeError(f"injected failure in {info.role} {info.index} after "
                           f"{self.fail_after_s:g} s"
                           + (" during a checkpoint" if what == "checkpoint" else ""))


def build_role(cfg: Config, spec: JobSpec, ep: Endpoint, info: RoleInfo,
               learner_comm: Any = None,
               on_metrics: Optional[Callable[[Dict[str, float]], None]] = None,
               hooks: Optional[RunHooks] = None, run_dir: Optional[str] = None,
               resume: Optional[CheckpointInfo] = None) -> Role:
    """The role object of one rank (restored from checkpoint ``resume`` if given)."""
    hooks = hooks or RunHooks()
    if info.role == "learner":
        return LearnerRank(cfg, spec, ep, info, learner_comm=learner_comm,
                           on_metrics=on_metrics, run_dir=run_dir, resume=resume)
    if info.role == "replay":
        return ReplayRank(cfg, spec, ep, info, run_dir=run_dir, resume=resume)
    fail = hooks.fail_actor_at_step if info.index == 0 else 0
    return ActorRank(cfg, spec, ep, info, fail_after_steps=fail, resume=resume)


class MetricsSink:
    """Learner 0's metrics: CSV/TensorBoard in the run directory plus log lines."""

    def __init__(self, cfg: Config, run_dir: Optional[str], quiet: bool = False) -> None:
        self.writer = (MetricsWriter(run_dir, cfg.logging.tensorboard, launch_time=launch_epoch())
                       if run_dir else None)
        self.wandb = WandbLogger(cfg, run_dir) if run_dir and cfg.logging.wandb else None
        self.printer = None if quiet else ProgressPrinter(budget=Budget.of(cfg))
        self.rows: List[Dict[str, float]] = []

    def __call__(self, row: Dict[str, float]) -> None:
        self.rows.append(row)
        if self.writer is not None:
            self.writer.write(row)
        if self.wandb is not None:
            self.wandb.log(row)
        if self.printer is not None:
            self.printer.show(row)

    def close(self) -> None:
        """Ends the progress line and closes the writers (idempotent)."""
        if self.printer is not None:
            self.printer.finish()
            self.printer = None
        if self.writer is not None:
            self.writer.close()
        if self.wandb is not None:
            self.wandb.close()
            self.wandb = None

    @property
    def all_rows(self) -> List[Dict[str, float]]:
        """Every row of the run directory's metrics (a resumed run's earlier ones too)."""
        return self.writer.rows if self.writer is not None else list(self.rows)


def write_lead_outputs(cfg: Config, run_dir: str, sink: MetricsSink, role: Role) -> None:
    """Learner 0's end-of-run files: learning curve PNG and ``learner_final.h5``.

    See :mod:`r2d2_hpc.job.outputs`. Called after every rank left the
    shutdown barrier, so it delays nobody.
    """
    lead = role if isinstance(role, LearnerRank) else None
    summary = role.summary()
    extra = {k: summary[k] for k in ("final_eval_return", "final_eval_episodes",
                                     "final_eval_epsilon") if k in summary}
    write_run_outputs(run_dir, cfg, sink.all_rows,
                      lead.learner.state() if lead is not None else None,
                      counters=lead.counters() if lead is not None else None,
                      job_spec=lead.spec if lead is not None else None, extra=extra)


def run_serial(cfg: Config, run_dir: Optional[str] = None, num_actors: int = 1,
               quiet: bool = False, hooks: Optional[RunHooks] = None,
               resume: Optional[CheckpointInfo] = None) -> Dict[str, Any]:
    """Runs every role in this process over in-memory queues.

    The topology is ``topology.learners`` forced to 1, ``topology.replay_shards``
    shards and ``num_actors`` actors; roles take turns calling ``tick()``.

    Returns:
      Summary: each role's ``summary()`` by role and index, and the metric rows.
    """
    spec = job_spec(cfg)
    messages = job_messages(cfg, spec)
    topo = cfg.topology.__class__(learners=1, replay_shards=cfg.topology.replay_shards)
    size = topo.learners + topo.replay_shards + num_actors
    # Bounded chunk queues: a rate-limited shard then slows the actors (backpressure).
    hub = InMemoryHub(messages, size, capacity={"STEP_CHUNK": 64})
    sink = MetricsSink(cfg, run_dir, quiet=quiet)
    roles: List[Role] = []
    for rank in range(size):
        info = assign_role(rank, size, topo)
        ep = InMemoryEndpoint(hub, rank)
        roles.append(build_role(cfg, spec, ep, info,
                                on_metrics=sink if rank == 0 else None, hooks=hooks,
                                run_dir=run_dir, resume=resume))
    flag = _preemption_flag()
    try:
        while not all(r.done for r in roles):
            if flag is not None and not roles[0].done:
                signum = flag.take()
                if signum is not None:
                    roles[0].on_preempt(signum)
            for role in roles:
                if not role.done:
                    role.tick()
        for role in roles:  # in-memory queues: one pass takes in everything left
            role.drain(role.ep)
    finally:
        if flag is not None:
            flag.uninstall()
        for role in roles:
            role.finish()
            role.close()
        sink.close()
    summaries = [{"role": r.name, "index": assign_role(i, size, topo).index, "rank": i,
                  **r.summary()} for i, r in enumerate(roles)]
    if run_dir:
        write_json_atomic(os.path.join(run_dir, "summary.json"), summaries, default=float)
        if roles[0].exit_code != EXIT_REQUEUE:  # as run_mpi
            write_lead_outputs(cfg, run_dir, sink, roles[0])
    return {"roles": [(r.name, r.summary()) for r in roles], "ranks": summaries,
            "metrics": sink.rows, "exit_code": roles[0].exit_code}


def _preemption_flag() -> Optional[PreemptionFlag]:
    """SIGUSR1/SIGTERM -> a polled flag (installed after MPI_Init: MPICH's own
    SIGUSR1 handler would otherwise swallow the signal)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return PreemptionFlag().install()


def torch_threads(role: str, cores: int, ranks_on_node: int) -> int:
    """Intra-op threads of one rank: its fair share of the node's cores.

    ``threads = 1`` for actors (one small forward per step), else
    ``max(1, cores // ranks_on_node)``. More threads than that only fight the
    other ranks for the cores: OpenMP spin-waits while its peer thread is
    descheduled (measurements: docs/decisions.md, "Torch threads per rank").

    Args:
      role: ``'learner'``, ``'replay'`` or ``'actor'``.
      cores: cores this process may run on (``os.sched_getaffinity``).
      ranks_on_node: MPI ranks sharing this node.

    Returns:
      The thread count for ``torch.set_num_threads``.
    """
    if role == "actor":
        return 1
    return max(1, int(cores) // max(1, int(ranks_on_node)))


def _node_cores_and_ranks(world: Any) -> Tuple[int, int]:
    """(cores this process may use, ranks of ``world`` on this node); collective."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return cores, node_size(world)


#: Seconds a rank that noticed a dead peer leaves the lowest surviving rank to
#: say so (and abort the job) before it says so itself.
REPORT_GRACE_S = 3.0


def _process_gone(pid: int) -> bool:
    """The process has exited (gone, or a zombie not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def dead_peers(peers: Sequence[Tuple[str, int]]) -> List[int]:
    """Ranks on this node whose process is gone (``peers``: rank -> (host, pid))."""
    host = socket.gethostname()
    return [r for r, (h, pid) in enumerate(peers) if h == host and _process_gone(pid)]


#: Seconds an MPI error waits for its dead peer to show as exited: a killed process
#: closes its sockets (the error) before the kernel marks it a zombie, and on a loaded
#: node that window lasts (CI saw a learner blame itself for a killed shard).
DEAD_PEER_WAIT_S = 2.0


def wait_for_dead_peers(peers: Sequence[Tuple[str, int]], wait_s: float = DEAD_PEER_WAIT_S,
                        find: Callable[[Sequence[Tuple[str, int]]], List[int]] = dead_peers
                        ) -> List[int]:
    """:func:`dead_peers`, looked for again for at most ``wait_s`` while none is found."""
    deadline = time.monotonic() + wait_s
    while True:
        dead = find(peers)
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.05)


def report_failure(world: Any, cfg: Config, role_name: str, exc: BaseException,
                   peers: Sequence[Tuple[str, int]] = ()) -> None:
    """Says once why the job is being aborted: this rank failed, or (an MPI error
    after a peer died) which rank died and what its role was.

    Args:
      peers: every rank's (host, pid), gathered at start: a dead peer on this
        node is found by its pid (MPI's own error names no rank).

    For a dead peer only the lowest surviving rank speaks at once; another rank
    that noticed waits :data:`REPORT_GRACE_S` (the abort usually ends it first).
    """
    me = world.Get_rank()
    dead = wait_for_dead_peers(peers) if hasattr(exc, "Get_error_class") and peers else []
    if not dead:
        sys.stderr.write(f"r2d2-train: rank {me} ({role_name}) failed; aborting the whole "
                         f"job:\n{traceback.format_exc()}")
        sys.stderr.flush()
        return
    size = world.Get_size()
    if me != min(r for r in range(size) if r not in dead):
        time.sleep(REPORT_GRACE_S)
    names = ", ".join(f"rank {r} ({_role_name(r, size, cfg)})" for r in dead)
    sys.stderr.write(f"r2d2-train: {names} died; rank {me} ({role_name}) noticed it "
                     f"({exc}); aborting the whole job\n")
    sys.stderr.flush()


def _role_name(rank: int, size: int, cfg: Config) -> str:
    info = assign_role(rank, size, cfg.topology)
    return f"{info.role} {info.index}"


def _idle(sleep_s: float) -> float:
    time.sleep(sleep_s)
    return min(sleep_s * 2, 0.002)


def run_mpi(cfg: Config, world: Any, run_dir: Optional[str], quiet: bool = False,
            hooks: Optional[RunHooks] = None,
            resume: Optional[CheckpointInfo] = None) -> Dict[str, Any]:
    """Runs this rank's role of an MPI job; every rank of ``world`` calls it.

    Returns:
      This rank's summary (learner 0's includes the metric rows).
    """
    comms = split_communicators(world, cfg.topology)
    info = comms.role_info
    role_name = f"{info.role} {info.index}"
    # Who is where, for naming a rank that dies (collective, before anything can fail).
    peers: List[Tuple[str, int]] = world.allgather((socket.gethostname(), os.getpid()))
    if world.Get_rank() == 0:  # maps a launcher's "PID ... killed" report to a rank
        print("r2d2-train: rank pids: " + ", ".join(f"{r}:{host}:{pid}" for r, (host, pid)
                                                    in enumerate(peers)), flush=True)
    # Collective (its own communicator); setup is a long phase (a replay restore).
    heartbeat = Heartbeat(world, cfg.topology.heartbeat_timeout_seconds,
                          lambda r: _role_name(r, world.Get_size(), cfg)).start()
    role: Optional[Role] = None
    sink: Optional[MetricsSink] = None
    try:
        with long_phase():
            spec = job_spec(cfg)
            # SAMPLE_REPLY buffers hold whole batches (217 MB at paper scale): few of them.
            ep = MPIEndpoint(world, job_messages(cfg, spec),
                             send_depth={"STEP_CHUNK": cfg.actor.send_pool, "SAMPLE_REPLY": 2},
                             recv_depth={"SAMPLE_REPLY": max(2, cfg.learner.samples_in_flight)})
            sink = MetricsSink(cfg, run_dir, quiet=quiet) if info.is_lead else None
            torch.set_num_threads(torch_threads(info.role, *_node_cores_and_ranks(world)))
            role = build_role(cfg, spec, ep, info, learner_comm=comms.learners,
                              on_metrics=sink, hooks=hooks, run_dir=run_dir, resume=resume)
            for name in role.listen_names():
                ep.listen(name)
        flag = _preemption_flag()
        sleep = 0.0001
        hooks = hooks or RunHooks()
        loop_start = time.monotonic()
        while not role.done:
            heartbeat.beat()
            hooks.check(info, time.monotonic() - loop_start, role)
            signum = flag.take() if flag is not None else None
            if signum is not None:
                role.on_preempt(signum)  # learner 0 coordinates
            if role.tick():
                sleep = 0.0001
            else:
                sleep = _idle(sleep)
        heartbeat.stop()  # a final heartbeat: this rank's watcher stops watching
        role.finish()
        clean = drain_and_close(ep, role, comm=world, timeout=SHUTDOWN_TIMEOUT_S)
        summary = {"role": info.role, "index": info.index, "rank": info.rank,
                   "clean_shutdown": clean, "exit_time": time.time(),
                   "exit_code": role.exit_code, **role.summary()}
        role.close()
        # Every rank has left the drain barrier: a collective is safe here.
        everyone = world.gather(summary, root=0)
        if info.is_lead:
            summary["ranks"] = everyone
            if run_dir:
                write_json_atomic(os.path.join(run_dir, "summary.json"), everyone, default=float)
                if sink is not None:
                    sink.close()  # the last TensorBoard events, before the plot
                    if role.exit_code != EXIT_REQUEUE:
                        # Preempted: the checkpoint holds the state and the
                        # requeued job writes these at its real end; the
                        # grace time is better spent exiting (~4 s at Atari scale).
                        write_lead_outputs(cfg, run_dir, sink, role)
        if sink is not None:
            summary["metrics"] = sink.rows
        return summary
    except BaseException as exc:
        report_failure(world, cfg, role_name, exc, peers)
        time.sleep(ABORT_FLUSH_S)  # the launcher forwards the message before the abort
        world.Abort(1)
        raise
    finally:
        if sink is not None:
            sink.close()

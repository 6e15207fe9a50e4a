"""What every rank of a job shares: the job's shapes, the role interface, control, shutdown.

A role is a state machine with ``tick()``: one bounded unit of nonblocking
work (an env step, a learner step, a round of message handling). The MPI
runner calls one role's ``tick()`` in a loop on each rank; the serial runner
(``r2d2-train --serial``) calls every role's ``tick()`` in turn in one process.
The role code is the same; only the :class:`~r2d2_hpc.comm.endpoint.Endpoint` differs.
"""
from __future__ import annotations

import abc
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

import numpy as np
import torch

from r2d2_hpc.agent.network import R2D2Network
from r2d2_hpc.agent.params import num_elements
from r2d2_hpc.comm.endpoint import Endpoint
from r2d2_hpc.comm.messages import Command
from r2d2_hpc.comm.topology import RoleInfo
from r2d2_hpc.config import Config
from r2d2_hpc.envs.factory import make_vector_env
from r2d2_hpc.types import JobSpec

__all__ = ["Control", "Role", "drain_and_close", "job_spec", "poll_control", "stop_requested"]


def job_spec(cfg: Config) -> JobSpec:
    """Builds one environment and one network to read the job's shapes."""
    env = make_vector_env(cfg.env, 1, seed=cfg.seed)
    try:
        obs_shape = tuple(int(d) for d in env.observation_shape)
        dtype = np.dtype(env.observation_dtype).name
        num_actions = int(env.num_actions)
    finally:
        env.close()
    k = cfg.env.frame_stack
    frame_shape = obs_shape[1:] if k > 1 else obs_shape
    with torch.random.fork_rng():
        net = R2D2Network(obs_shape, num_actions, cfg.network)
    num_params = num_elements(net.parameters())
    return JobSpec(obs_shape, frame_shape, dtype, num_actions, int(net.state_size),
                   int(num_params), k)


class Role(abc.ABC):
    """One rank's work. ``tick`` never blocks for long; ``done`` ends the loop.

    Attributes:
      ep: this rank's endpoint.
      info: this rank's role and where the others are.
    """

    #: 'learner', 'replay' or 'actor'
    name: str = "role"
    done: bool = False
    #: Process exit code once done (0; EXIT_REQUEUE after a preemption checkpoint).
    exit_code: int = 0
    ep: Endpoint
    info: RoleInfo

    @abc.abstractmethod
    def tick(self) -> bool:
        """Does one unit of work; returns False when there was nothing to do."""

    def listen_names(self) -> Sequence[str]:
        """Message names this role receives (drained at shutdown)."""
        return ()

    def summary(self) -> Dict[str, Any]:
        """Counters for the end-of-run summary and the tests."""
        return {}

    def on_preempt(self, signum: int) -> None:
        """A SIGUSR1/SIGTERM reached this rank: tell learner 0, which coordinates."""
        self.ep.send("CONTROL", self.info.learner_ranks[0], timeout=30.0,
                     command=int(Command.PREEMPT), argument=int(signum))

    def drain(self, ep: Endpoint) -> None:
        """At shutdown: takes in what still arrives (default: discards it)."""
        for name in self.listen_names():
            ep.poll(name)
            ep.release(name)

    def finish(self) -> None:
        """Called once when the loop ends, before the shutdown drain (e.g. a last report)."""

    def close(self) -> None:
        """Frees what the role holds (not the endpoint)."""


class Control(NamedTuple):
    """One CONTROL message: who sent it, the command and its argument."""

    source: int
    command: int
    argument: int


def poll_control(ep: Endpoint) -> List[Control]:
    """The CONTROL messages that arrived (never blocks)."""
    out = [Control(m.source, int(m.fields["command"]), int(m.fields["argument"]))
           for m in ep.poll("CONTROL")]
    ep.release("CONTROL")
    return out


def stop_requested(role: Role, controls: Sequence[Control]) -> bool:
    """Applies STOP/ABORT among ``controls`` to ``role`` (done, exit code)."""
    for c in controls:
        if c.command == int(Command.STOP):
            role.done, role.exit_code = True, c.argument
            return True
        if c.command == int(Command.ABORT):
            role.done, role.exit_code = True, 1
            return True
    return False


def drain_and_close(ep: Endpoint, role: Role, comm: Optional[Any] = None,
                    timeout: float = 20.0) -> bool:
    """Ends a rank's traffic without deadlock, then closes the endpoint.

    Keeps receiving (``role.drain``: a shard still stores late chunks, others
    discard) so that every peer's pending sends can complete, until its own
    sends completed and, over MPI (``comm``, an mpi4py communicator), a
    nonblocking barrier with every other rank completed (each rank enters it
    only once its own sends are done, so when it completes nobody sends any
    more). Gives up after ``timeout`` seconds.

    Returns:
      True if everything completed in time.
    """
    deadline = time.monotonic() + timeout
    barrier = None
    flushed = False
    ok = False
    while time.monotonic() < deadline:
        role.drain(ep)
        ep.progress()
        if not flushed:
            flushed = ep.flush(0.0)
        if flushed and barrier is None:
            if comm is None:
                ok = True
                break
            barrier = comm.Ibarrier()
        if barrier is not None and barrier.Test():
            ok = True
            break
        time.sleep(0.0005)
    ep.close(timeout=1.0)
    return ok

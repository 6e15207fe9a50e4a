"""Heartbeats: a rank that stops making progress ends the job instead of hanging it.

Every rank runs one daemon thread on its own duplicate of the world
communicator. The ranks form a ring: rank ``r`` sends a small HEARTBEAT to rank
``r + 1`` every ``period`` seconds and watches rank ``r - 1``'s (so rank 0 is
watched too, by rank 1). A rank sends only while it makes progress: its main
loop calls :meth:`Heartbeat.beat` each iteration, and a long legitimate phase
(restoring a replay, writing a checkpoint, an Atari evaluation of minutes) runs
inside :func:`long_phase`, and a wait on a busy peer (a full send pool) inside
:func:`waiting_on_peer`; during both the thread keeps sending. A rank that is
stopped (SIGSTOP, a frozen node) sends nothing; one whose loop is stuck
outside those stops sending once ``timeout / 2`` has passed without a beat.
When the watched rank has been silent for ``timeout`` seconds the watcher
prints one message naming it and its role and aborts the whole job (``Abort``
on the world communicator, from the thread).

A rank in a long phase of its own does not judge its watched rank: its main
loop is not receiving then, and MPICH's shared-memory transport carries all of
a pair of ranks' messages in one queue, so data the watched rank sent ahead of
its heartbeats (and that waits for this rank's receives) holds the heartbeats
back. Found by ``tests/integration/test_faults.py``: a shard in a 15 s phase
heard nothing from a healthy learner for 5 s. The silence does not grow during
such a phase; a rank stopped meanwhile is named once ``timeout`` seconds of
silence have passed outside this rank's phases.

A rank that finishes sends a last heartbeat marked final, after which its
watcher stops watching it, so ranks that end at different times raise no
alarm. MPI must be initialised with ``MPI_THREAD_MULTIPLE`` (mpi4py's default).
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Any, Callable, ContextManager, Iterator, Optional

import numpy as np

#: Tag of HEARTBEAT messages (on the heartbeat's own communicator).
HEARTBEAT_TAG = 7
#: Heartbeat payload: 1 = alive, 2 = final (the sender is done).
ALIVE, FINAL = 1, 2
#: Seconds between a failure message and ``Abort``: MPICH's launcher could lose
#: a line written just before the abort (seen in CI).
ABORT_FLUSH_S = 1.0



class _Nesting:
    """How many threads of this process are inside a phase of one kind."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1

    @property
    def active(self) -> bool:
        return self._depth > 0


_long_phases = _Nesting()
_peer_waits = _Nesting()


def long_phase() -> ContextManager[None]:
    """Marks a long legitimate phase of this process's own work (a restore, a
    checkpoint, an evaluation): heartbeats keep flowing, and this rank does not
    judge its watched rank meanwhile (see the module docstring)."""
    return _long_phases()


def waiting_on_peer() -> ContextManager[None]:
    """Marks a wait on another rank (a receiver's full pool): heartbeats keep
    flowing (a stuck receiver is named by its own watcher), and this rank still
    judges its watched rank, which may be the one it waits on."""
    return _peer_waits()


def in_long_phase() -> bool:
    """Whether this process is inside :func:`long_phase`."""
    return _long_phases.active


def sends_now(since_beat: float, timeout: float) -> bool:
    """Whether a rank whose loop last beat ``since_beat`` seconds ago sends a heartbeat."""
    return _long_phases.active or _peer_waits.active or since_beat < timeout / 2


class Silence:
    """Seconds the watched rank has been silent, as far as this rank can judge.

    Time this rank spends in long phases of its own does not count: the clock
    pauses there and goes on after (frequent short phases, such as checkpoints
    every few steps, must not keep a stopped rank from being named).

    Args:
      now: the clock when watching starts.
    """

    def __init__(self, now: float) -> None:
        self.silent = 0.0
        self._last = now

    def update(self, now: float, heard: bool, judging: bool) -> float:
        """The silence at ``now``; ``heard``: a heartbeat arrived; ``judging``:
        False while this rank is in a long phase (the silence does not grow)."""
        if heard:
            self.silent = 0.0
        elif judging:
            self.silent += now - self._last
        self._last = now
        return self.silent


class Heartbeat:
    """The heartbeat thread of one rank (see the module docstring).

    Args:
      world: the job's communicator (duplicated here; collective).
      timeout: seconds of silence after which the watched rank is declared stuck.
      describe: rank -> ``"role index"`` for the message.
      clock: time source.
    """

    def __init__(self, world: Any, timeout: float, describe: Callable[[int], str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.world = world
        self.comm = world.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.timeout = float(timeout)
        self.period = max(0.05, self.timeout / 10.0)
        self.describe = describe
        self.clock = clock
        self._last_beat = clock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.alarm = ""

    @property
    def watched(self) -> int:
        """The rank whose heartbeats this rank receives."""
        return (self.rank - 1) % self.size

    def beat(self) -> None:
        """The main loop made progress."""
        self._last_beat = self.clock()

    def start(self) -> "Heartbeat":
        """Starts the thread (no-op for a one-rank job)."""
        if self.size > 1 and self.timeout > 0:
            self._thread = threading.Thread(target=self._run, name="r2d2-heartbeat",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Says a final heartbeat and ends the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def _run(self) -> None:
        out = np.zeros(1, np.int32)
        inbox = np.zeros(1, np.int32)
        sends = []
        recv = self.comm.Irecv(inbox, source=self.watched, tag=HEARTBEAT_TAG)
        silence = Silence(self.clock())
        watching = True
        nxt = self.rank + 1 if self.rank + 1 < self.size else 0
        next_send = 0.0
        while True:
            now = self.clock()
            stopping = self._stop.is_set()
            if stopping or (now >= next_send and sends_now(now - self._last_beat, self.timeout)):
                out[0] = FINAL if stopping else ALIVE
                sends.append(self.comm.Isend(out.copy(), dest=nxt, tag=HEARTBEAT_TAG))
                next_send = now + self.period
            sends = [s for s in sends if not s.Test()]
            if stopping:
                break
            heard = False
            while watching and recv.Test():
                heard = True
                if inbox[0] == FINAL:
                    watching = False
                else:
                    recv = self.comm.Irecv(inbox, source=self.watched, tag=HEARTBEAT_TAG)
            silent = silence.update(now, heard, judging=not in_long_phase())
            if watching and silent > self.timeout:
                self._raise_alarm(silent)
                return
            time.sleep(min(self.period / 2, 0.5))
        # Leave the final heartbeat to complete where it can (the job is ending).
        deadline = self.clock() + 2.0
        while sends and self.clock() < deadline:
            sends = [s for s in sends if not s.Test()]
            time.sleep(0.01)
        if watching:
            recv.Cancel()

    def _raise_alarm(self, silent: float) -> None:
        who = self.watched
        self.alarm = (f"r2d2-train: rank {who} ({self.describe(who)}) sent no heartbeat for "
                      f"{silent:.0f} s (stopped or stuck; topology.heartbeat_timeout_seconds="
                      f"{self.timeout:g}); rank {self.rank} ({self.describe(self.rank)}) "
                      f"noticed it; aborting the whole job")
        sys.stderr.write(self.alarm + "\n")
        sys.stderr.flush()
        time.sleep(ABORT_FLUSH_S)
        self.world.Abort(1)

"""Preemption: signals become a polled flag, a checkpoint, and exit code 3; the periodic schedule.

Preemption. :class:`PreemptionFlag` turns SIGUSR1/SIGTERM into a flag that the
rank loops poll (the handler never raises, so a second signal during a
checkpoint changes nothing); after the coordinated checkpoint every rank exits
with :data:`EXIT_REQUEUE` (3), which ``slurm/*.sh`` answer with ``scontrol
requeue``; the requeued job resumes from the run directory by itself.
:class:`CheckpointSchedule` decides when a periodic checkpoint is due
(``checkpoint.interval_seconds`` / ``interval_steps``).
"""
from __future__ import annotations

import signal
import time
from typing import Any, Dict, Iterable, Optional

from r2d2_hpc.config import CheckpointConfig

__all__ = ["EXIT_CHECKPOINT_FAILED", "EXIT_REQUEUE", "CheckpointSchedule", "PreemptionFlag",
           "signal_name"]

#: Exit code of every rank after the checkpoint a preemption signal asked for:
#: "checkpointed, requeue me". ``slurm/*.sh`` requeue the job on it.
EXIT_REQUEUE = 3
#: Exit code of every rank when the checkpoint a stop asked for (a preemption's,
#: or ``checkpoint.at_end``) could not be written (a full disk): not 3, so
#: ``slurm/*.sh`` do not requeue a job whose disk needs attention first.
EXIT_CHECKPOINT_FAILED = 4


def signal_name(signum: int) -> str:
    """``'SIGUSR1'`` for a known signal number, else ``'signal <n>'``."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class CheckpointSchedule:
    """Periodic checkpoints every ``interval_steps`` learner steps or ``interval_seconds``.

    Whichever comes first; 0 disables that criterion. Never due at the step
    of the last checkpoint (a learner waiting for replay fill writes nothing new).
    """

    def __init__(self, cfg: CheckpointConfig, step: int = 0,
                 now: Optional[float] = None) -> None:
        self.cfg = cfg
        self.last_step = int(step)
        self.last_time = time.monotonic() if now is None else float(now)

    def due(self, step: int, now: Optional[float] = None) -> bool:
        """True when a periodic checkpoint is due at ``step``."""
        now = time.monotonic() if now is None else now
        c = self.cfg
        by_steps = c.interval_steps > 0 and step - self.last_step >= c.interval_steps
        by_time = c.interval_seconds > 0 and now - self.last_time >= c.interval_seconds
        return bool(by_steps or by_time) and step != self.last_step

    def mark(self, step: int, now: Optional[float] = None) -> None:
        """Records that a checkpoint was written at ``step``."""
        self.last_step = int(step)
        self.last_time = time.monotonic() if now is None else float(now)


class PreemptionFlag:
    """SIGUSR1/SIGTERM -> a flag the rank loop polls (``requested``).

    The handler only counts: it never raises, so a signal that arrives while a
    checkpoint is being written (a second SIGUSR1, SLURM's SIGTERM) cannot
    interrupt or corrupt it. Install it on every rank; before or after
    ``MPI_Init`` both work (the MPICH wheel's libmpi installs a SIGUSR1
    handler at ``MPI_Init`` that swallows the signal but chains to a handler
    installed before it; one installed after replaces it). Without it SIGUSR1
    is silently ignored under MPICH and kills the process elsewhere. The lead
    acts on it (coordinated checkpoint, then every rank exits
    :data:`EXIT_REQUEUE`); a non-lead rank that sees it should tell the lead.

    Usage::

        flag = PreemptionFlag().install()
        ...
        if flag.requested: ...
        flag.uninstall()
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGUSR1, signal.SIGTERM)) -> None:
        self.signals = tuple(signals)
        self.count = 0
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum: int, _frame: Any) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum

    @property
    def requested(self) -> bool:
        """True once any of the signals arrived (or ``trigger`` was called)."""
        return self.count > 0

    @property
    def signal_name(self) -> str:
        """Name of the first signal ('' if none)."""
        return "" if self.signum is None else signal_name(self.signum)

    def take(self) -> Optional[int]:
        """The first signal's number if signals arrived since the last ``take``
        (0 if unknown), else None; clears the count (a rank's polling loop)."""
        if not self.count:
            return None
        self.count = 0
        return self.signum or 0

    def trigger(self, signum: int = signal.SIGUSR1) -> None:
        """Raises the flag without a signal (e.g. a peer rank reported one)."""
        self._handle(signum, None)

    def install(self) -> "PreemptionFlag":
        """Installs the handlers (main thread only); returns self."""
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def uninstall(self) -> None:
        """Restores the handlers that were there before ``install``."""
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()

    def __enter__(self) -> "PreemptionFlag":
        return self.install()

    def __exit__(self, *exc: Any) -> None:
        self.uninstall()

"""Gradient averaging across data-parallel learners: MPI, torch.distributed, Horovod.

With ``topology.learners = L > 1`` every learner samples its own batch of
``B = learner.batch_size`` sequences, computes its gradient ``g_l`` and,
before clipping and the Adam step, replaces it by the mean over learners::

    ḡ = (1/L) Σ_l g_l                                  <float32>[num_params]

Since the loss is a batch mean (``losses.sequence_loss``:
``loss = 1/B Σ_i w_i L_i``), ``ḡ`` is the gradient of one learner's loss on
the union of the ``L`` batches (``L·B`` sequences) with the same weights,
up to floating-point rounding. (In the job each learner normalises its
importance weights by its own batch's maximum, Ape-X style, so the weights
differ from one ``L·B`` batch's by that per-learner factor.)

Every learner applies the same ``ḡ`` to the same parameters and optimizer
state, so the replicas stay bit-identical: each backend reduces every element
on one process and distributes the result (recursive doubling with a
commutative sum, or reduce-scatter + allgather), so every learner receives the
same bits, and the division by ``L`` is the same operation everywhere.

One step of :class:`GradientAverager` (the ``Learner.grad_reducer`` hook)::

    flag  <float32>[1] = want_stop          (exit code + 1; 0 = go on)
    start   allreduce_sum(flag)             nonblocking, hidden behind ↓
    allreduce_sum(flat)                     in place on the flat gradient
    wait    flag                            stop = flag > 0, code = flag - 1
    flat /= L

The stop flag rides in the same step as the gradient, so all learners learn
of a stop (and its exit code) after the same step, whatever the backend, and
no extra blocking collective is paid. Only learner 0 raises it (the others
never decide a stop), so the sum is learner 0's code + 1.

Backends (``learner.allreduce``):

* ``mpi``: mpi4py ``Allreduce`` on the learners' sub-communicator, in place
  on the CPU gradient (a CUDA gradient is staged through host memory).
* ``torch``: ``torch.distributed`` over the learners only: gloo on CPU, NCCL
  for a CUDA learner. Learner 0 opens the rendezvous ``TCPStore`` on a socket
  bound to ``host``'s address only, port 0 (the OS picks a free port, no
  pick-then-bind race), and broadcasts ``host:port`` over the sub-communicator;
  ``host`` is ``127.0.0.1`` when every learner shares learner 0's node, else
  ``$R2D2_DIST_HOST`` or learner 0's host name.
* ``horovod``: ``hvd.init(comm=learner_subcomm)`` and ``hvd.allreduce_`` on
  the flat gradient. That is what ``hvd.DistributedOptimizer`` does, fused:
  it registers per-parameter hooks that allreduce gradients as backward
  produces them, packing small ones into a fusion buffer. Our hook receives
  the gradient already as one contiguous tensor, i.e. pre-fused, in one
  negotiation under a fixed name (so Horovod's response cache hits every
  step). What it gives up is overlapping communication with backward, and for
  R2D2 there is little to overlap: backpropagation through time finishes the
  LSTM's gradients (most parameters) and the torso's only when it reaches
  the first time step, at the end of backward; and clipping needs the whole
  averaged gradient anyway.
* ``auto``: the first usable backend in the order of the learner's device
  (:data:`AUTO_ORDER`): on CPU learners mpi, then horovod, then torch
  (``benchmarks/results/allreduce_bench.json``: on CPU, MPI's allreduce cost
  0.4% of compute against 6.6% for Horovod and 12% for gloo, and mpi4py is
  always there when the job runs); on CUDA learners torch (NCCL reduces on the
  GPU, no host staging), then horovod, then mpi (staged through host memory).
  The lead logs the choice.

Horovod is optional: ``scripts/install_horovod.sh`` builds it against the
installed torch and MPI; :func:`check_allreduce` reports its absence at
start-up with that fix.
"""
from __future__ import annotations

import abc
import datetime
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch

from r2d2_hpc.agent.learner import Learner
from r2d2_hpc.agent.params import flatten, unflatten_into
from r2d2_hpc.comm.rendezvous import gpu_identity, listening_socket, rendezvous_host
from r2d2_hpc.config import ALLREDUCE_CHOICES, Config

#: Concrete backends.
BACKENDS: Tuple[str, ...] = ALLREDUCE_CHOICES[1:]

#: ``auto``'s order of preference by the learner's device type (module docstring).
AUTO_ORDER: Dict[str, Tuple[str, ...]] = {
    "cpu": ("mpi", "horovod", "torch"),
    "cuda": ("torch", "horovod", "mpi"),
}

#: Values of ``learner.allreduce``.
CHOICES: Tuple[str, ...] = ALLREDUCE_CHOICES

#: The command that installs Horovod (named in error messages).
HOROVOD_INSTALL = "bash scripts/install_horovod.sh"

#: How long a torch.distributed collective may wait for its peers. A learner
#: waits in the allreduce while learner 0 writes a checkpoint (replay shards
#: included), which can take minutes at paper scale.
TORCH_TIMEOUT = datetime.timedelta(hours=2)

class BackendUnavailable(RuntimeError):
    """The requested allreduce backend cannot be used in this environment."""


# --------------------------------------------------------------------------- #
# Choosing a backend.

def horovod_status() -> Tuple[bool, str]:
    """Whether ``horovod.torch`` imports and was built with MPI.

    Returns:
      ``(usable, reason)``; ``reason`` says why not (empty when usable).
    """
    try:
        import horovod.torch as hvd
    except Exception as exc:  # ImportError, or an ABI mismatch with this torch
        return False, f"{type(exc).__name__}: {exc}".strip()
    if not hvd.mpi_built():
        return False, "horovod was built without MPI"
    return True, ""


def torch_distributed_status(device: str = "cpu") -> Tuple[bool, str]:
    """Whether ``torch.distributed`` has a backend for ``device``.

    Args:
      device: the learner's device type (``'cpu'`` or ``'cuda'``).

    Returns:
      ``(usable, reason)``; gloo serves CPU (and CUDA by host copies), NCCL CUDA.
    """
    import torch.distributed as dist

    if not dist.is_available():
        return False, "this torch was built without torch.distributed"
    if dist.is_gloo_available() or (device == "cuda" and dist.is_nccl_available()):
        return True, ""
    return False, f"torch.distributed has no gloo{' or NCCL' if device == 'cuda' else ''}"


def mpi_status() -> Tuple[bool, str]:
    """Whether mpi4py imports."""
    try:
        from mpi4py import MPI  # noqa: F401
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    return True, ""


def backend_status(device: str = "cpu") -> Dict[str, Tuple[bool, str]]:
    """``(usable, reason)`` of every backend in this environment.

    Args:
      device: the learner's device type.

    Returns:
      ``{'horovod': ..., 'torch': ..., 'mpi': ...}``.
    """
    return {"horovod": horovod_status(), "torch": torch_distributed_status(device),
            "mpi": mpi_status()}


def choose_backend(requested: str, usable: Mapping[str, bool], device: str = "cpu") -> str:
    """The backend a job uses: the requested one, or ``auto``'s first usable.

    ============  ======  =======  =====  ===  ==========
    requested     device  horovod  torch  mpi  result
    ============  ======  =======  =====  ===  ==========
    auto          cpu     any      any    yes  mpi
    auto          cpu     yes      any    no   horovod
    auto          cpu     no       yes    no   torch
    auto          cuda    any      yes    any  torch
    auto          cuda    yes      no     any  horovod
    auto          cuda    no       no     yes  mpi
    torch         any     any      yes    any  torch
    horovod       any     no       any    any  error
    ============  ======  =======  =====  ===  ==========

    Args:
      requested: ``learner.allreduce`` (one of :data:`CHOICES`).
      usable: backend name -> whether it works here.
      device: the learner's device type, ``'cpu'`` or ``'cuda'`` (picks
        :data:`AUTO_ORDER`; any other type counts as ``'cpu'``).

    Returns:
      One of :data:`BACKENDS`.

    Raises:
      BackendUnavailable: the requested backend (or, for ``auto``, every
        backend) is not usable.
      ValueError: ``requested`` is not one of :data:`CHOICES`.
    """
    if requested not in CHOICES:
        raise ValueError(f"learner.allreduce must be one of {', '.join(CHOICES)}, "
                         f"got {requested!r}")
    if requested == "auto":
        for name in AUTO_ORDER.get(device, AUTO_ORDER["cpu"]):
            if usable.get(name, False):
                return name
        raise BackendUnavailable("no allreduce backend is usable (mpi4py does not import)")
    if not usable.get(requested, False):
        raise BackendUnavailable(f"learner.allreduce={requested} is not usable here")
    return requested


def check_allreduce(cfg: Config,
                    status: Optional[Callable[[str], Dict[str, Tuple[bool, str]]]] = None
                    ) -> List[str]:
    """Start-up check (rank 0): is ``learner.allreduce`` usable for this job?

    Only matters with several learners; ``auto`` always finds a backend where
    the job can run at all (MPI), so only an explicit choice is probed.

    Args:
      cfg: the run's config.
      status: ``device type -> backend_status``-like mapping (tests).

    Returns:
      Error messages, each naming the field and the fix; empty if fine.
    """
    requested = cfg.learner.allreduce
    if cfg.topology.learners < 2 or requested == "auto":
        return []
    device = "cuda" if cfg.learner.device.startswith("cuda") else "cpu"
    if cfg.learner.device == "auto" and torch.cuda.is_available():
        device = "cuda"
    found = (status or backend_status)(device)
    try:
        choose_backend(requested, {k: v[0] for k, v in found.items()})
    except BackendUnavailable:
        reason = found.get(requested, (False, "no backend usable"))[1]
        if requested == "horovod":
            return [f"learner.allreduce: 'horovod' is not usable here ({reason}); install it "
                    f"with `{HOROVOD_INSTALL}` (builds Horovod 0.28.1 against the installed "
                    f"torch and MPI, ~12 minutes), or set learner.allreduce=auto, torch or "
                    f"mpi"]
        return [f"learner.allreduce: {requested!r} is not usable here ({reason}); set "
                f"learner.allreduce=auto or mpi"]
    return []


# --------------------------------------------------------------------------- #
# The stop flag.

def encode_stop(exit_code: Optional[int]) -> float:
    """What a learner contributes to the stop flag: ``exit_code + 1``, or 0 to go on.

    Args:
      exit_code: the exit code to stop with, or None to go on.

    Returns:
      The flag value (an integer, exact in float32 below 2**24).
    """
    if exit_code is None:
        return 0.0
    if exit_code < 0:
        raise ValueError(f"exit code must be >= 0, got {exit_code}")
    return float(exit_code + 1)


def decode_stop(total: float) -> Tuple[bool, int]:
    """The summed stop flag as ``(stop, exit_code)``.

    ``total = 0`` -> ``(False, 0)``; ``total = c + 1`` -> ``(True, c)``.
    """
    code = int(round(float(total)))
    return code > 0, max(0, code - 1)


# --------------------------------------------------------------------------- #
# Averagers.

class GradientAverager(abc.ABC):
    """Averages the flat gradient in place over the learners (a ``GradReducer``).

    Attributes:
      backend: ``'mpi'``, ``'torch'`` or ``'horovod'``.
      description: backend and transport in words (logged once).
      rank: this learner's index in the group.
      size: number of learners ``L``.
      want_stop: this learner's stop flag for the next call (see
        :func:`encode_stop`; the rank sets it before each step).
      stop: after a call: some learner asked to stop after this step.
      stop_code: after a call: the exit code it asked for.
      seconds: time spent in calls (allreduce plus staging).
      calls: number of calls.
    """

    backend = ""

    def __init__(self, rank: int, size: int) -> None:
        self.rank = int(rank)
        self.size = int(size)
        self.description = self.backend
        self.want_stop = 0.0
        self.stop = False
        self.stop_code = 0
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, flat: torch.Tensor) -> None:
        """Replaces ``flat`` (``<float32>[num_params]``) by its mean over the learners."""
        t0 = time.perf_counter()
        total = self._reduce(flat, float(self.want_stop))
        self.stop, self.stop_code = decode_stop(total)
        flat.div_(self.size)
        self.seconds += time.perf_counter() - t0
        self.calls += 1

    @abc.abstractmethod
    def _reduce(self, flat: torch.Tensor, flag: float) -> float:
        """Sums ``flat`` in place over the learners; returns the summed ``flag``."""

    @abc.abstractmethod
    def broadcast_(self, tensor: torch.Tensor, root: int = 0) -> None:
        """Overwrites ``tensor`` with learner ``root``'s (same shape and dtype everywhere)."""

    def broadcast_learner(self, learner: Learner, root: int = 0) -> None:
        """Makes every learner's state learner ``root``'s: parameters, target, Adam, counters.

        Collective. Called at start (identical initial parameters) and after a
        resume (every learner read the same checkpoint; this keeps them
        identical even if a file system served different bytes).

        Args:
          learner: the ``Learner``.
          root: the learner whose state wins.
        """
        has_state = torch.tensor([float(bool(learner.optimizer.state))])
        self.broadcast_(has_state, root)
        params = list(learner.online.parameters())
        if has_state.item() > 0:
            _ensure_adam_state(learner.optimizer, params)
        else:
            learner.optimizer.state.clear()
        with torch.no_grad():
            tensors = params + list(learner.target.parameters())
            if has_state.item() > 0:
                for p in params:
                    st = learner.optimizer.state[p]
                    tensors += [st["exp_avg"], st["exp_avg_sq"], st["step"]]
            packed = flatten(tensors, device="cpu")
            self.broadcast_(packed, root)
            unflatten_into(packed, tensors)
        counters = torch.tensor([learner.step_count, learner.params_version], dtype=torch.int64)
        self.broadcast_(counters, root)
        learner.step_count, learner.params_version = (int(v) for v in counters.tolist())
        self.broadcast_scaler(learner, root)

    def broadcast_scaler(self, learner: Learner, root: int = 0) -> None:
        """Makes the fp16 loss scale and its growth counter learner ``root``'s.

        Collective; a no-op for learners without a ``GradScaler`` (every
        learner has the same config, so all or none have one). Equal scales
        matter: the allreduce sums gradients scaled by each learner's ``S``.
        """
        scaler = getattr(learner, "scaler", None)
        if scaler is None:
            return
        state = scaler.state_dict()
        packed = torch.tensor([float(state["scale"]), float(state["_growth_tracker"])],
                              dtype=torch.float64)
        self.broadcast_(packed, root)
        state["scale"] = float(packed[0])
        state["_growth_tracker"] = int(packed[1])
        scaler.load_state_dict(state)

    def close(self) -> None:
        """Frees what the backend holds (collective for some backends)."""


def _ensure_adam_state(optimizer: torch.optim.Optimizer, params: List[torch.Tensor]) -> None:
    """Creates zero Adam state where a parameter has none (it is then overwritten)."""
    for p in params:
        st = optimizer.state[p]
        if "step" not in st:
            st["step"] = torch.zeros((), dtype=torch.float32)
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)


class MpiAllreduceAverager(GradientAverager):
    """mpi4py ``Allreduce`` over the learners' sub-communicator.

    Args:
      comm: the learners' communicator (mpi4py), passed in.
    """

    backend = "mpi"

    def __init__(self, comm: Any) -> None:
        from mpi4py import MPI

        super().__init__(comm.Get_rank(), comm.Get_size())
        self._mpi = MPI
        self.comm = comm
        self._flag = np.zeros(1, np.float32)
        self.description = f"MPI Allreduce ({MPI.Get_library_version().splitlines()[0]})"

    def _reduce(self, flat: torch.Tensor, flag: float) -> float:
        MPI = self._mpi
        self._flag[0] = flag
        req = self.comm.Iallreduce(MPI.IN_PLACE, self._flag, op=MPI.SUM)
        if flat.device.type == "cpu":
            self.comm.Allreduce(MPI.IN_PLACE, flat.detach().numpy(), op=MPI.SUM)
        else:  # no CUDA-aware MPI assumed: stage through host memory
            host = flat.detach().cpu()
            self.comm.Allreduce(MPI.IN_PLACE, host.numpy(), op=MPI.SUM)
            flat.copy_(host)
        req.Wait()
        return float(self._flag[0])

    def broadcast_(self, tensor: torch.Tensor, root: int = 0) -> None:
        host = tensor.detach().cpu() if tensor.device.type != "cpu" else tensor.detach()
        self.comm.Bcast(host.numpy(), root=root)
        if host is not tensor:
            tensor.copy_(host)


class TorchDistAverager(GradientAverager):
    """``torch.distributed`` allreduce (gloo on CPU, NCCL on CUDA) over the learners only.

    Initialises the default process group with the learners' ranks and size;
    the rendezvous (learner 0's ``TCPStore`` on an OS-chosen port) is agreed
    over ``comm``. :meth:`close` destroys the group. NCCL refuses two ranks
    on one GPU, so when learners share a GPU (e.g. two learners with
    ``learner.device=cuda`` on a one-GPU node) the group uses gloo, which
    reduces CUDA tensors through host memory, and the description says so.

    Args:
      comm: the learners' communicator (mpi4py).
      device: the learner's device.
    """

    backend = "torch"

    def __init__(self, comm: Any, device: torch.device = torch.device("cpu")) -> None:
        import torch.distributed as dist

        super().__init__(comm.Get_rank(), comm.Get_size())
        if dist.is_initialized():
            raise BackendUnavailable("torch.distributed is already initialised in this "
                                     "process; the learner group needs its own")
        self._dist = dist
        self.device = torch.device(device)
        pg_backend = ("nccl" if self.device.type == "cuda" and dist.is_nccl_available()
                      else "gloo")
        note = ""
        if pg_backend == "nccl":
            gpus = comm.allgather(gpu_identity(self.device))
            if len(set(gpus)) < len(gpus):
                pg_backend = "gloo"
                note = "; learners share a GPU, which NCCL does not allow"
        host = rendezvous_host(comm)
        store = None
        port = 0
        #: learner 0: the (address, port) its rendezvous listens on
        self.listen_address: Optional[Tuple[str, int]] = None
        if self.rank == 0:
            # Port 0: the OS picks a free port (no pick-then-bind race), broadcast below.
            listener = listening_socket(host)
            self.listen_address = tuple(listener.getsockname()[:2])
            port = int(self.listen_address[1])
            # The store takes the socket over (and closes it with itself).
            store = dist.TCPStore(host, port, self.size, True, timeout=TORCH_TIMEOUT,
                                  wait_for_workers=False, master_listen_fd=listener.detach())
        port = int(comm.bcast(port, root=0))
        if self.rank != 0:
            store = dist.TCPStore(host, port, self.size, False, timeout=TORCH_TIMEOUT)
        dist.init_process_group(pg_backend, store=store, rank=self.rank, world_size=self.size,
                                timeout=TORCH_TIMEOUT)
        self._store = store
        self._flag = torch.zeros(1, dtype=torch.float32, device=self._comm_device())
        self.description = f"torch.distributed {pg_backend} (rendezvous {host}:{port}){note}"

    def _comm_device(self) -> torch.device:
        nccl = self._dist.get_backend() == "nccl"
        return self.device if nccl else torch.device("cpu")

    def _reduce(self, flat: torch.Tensor, flag: float) -> float:
        dist = self._dist
        self._flag.fill_(flag)
        work = dist.all_reduce(self._flag, op=dist.ReduceOp.SUM, async_op=True)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        work.wait()
        return float(self._flag.item())

    def broadcast_(self, tensor: torch.Tensor, root: int = 0) -> None:
        target = tensor.to(self._comm_device())
        self._dist.broadcast(target, src=root)
        if target is not tensor:
            tensor.copy_(target)

    def close(self) -> None:
        if self._dist.is_initialized():
            self._dist.destroy_process_group()
        self._store = None


class HorovodAverager(GradientAverager):
    """Horovod ``allreduce_`` over the learners' sub-communicator.

    ``hvd.init(comm=comm)``; the flat gradient and the stop flag are reduced
    under fixed names (Horovod's response cache then skips the negotiation).
    :meth:`broadcast_learner` uses Horovod's own ``broadcast_parameters`` /
    ``broadcast_optimizer_state``.

    Args:
      comm: the learners' communicator (mpi4py).
      device: the learner's device (a CUDA gradient is staged through host
        memory unless Horovod was built with GPU operations).
    """

    backend = "horovod"

    def __init__(self, comm: Any, device: torch.device = torch.device("cpu")) -> None:
        ok, reason = horovod_status()
        if not ok:
            raise BackendUnavailable(f"learner.allreduce=horovod: {reason}; install it with "
                                     f"`{HOROVOD_INSTALL}`")
        import horovod
        import horovod.torch as hvd

        hvd.init(comm=comm)
        super().__init__(hvd.rank(), hvd.size())
        if (self.rank, self.size) != (comm.Get_rank(), comm.Get_size()):
            raise RuntimeError(f"horovod rank/size {self.rank}/{self.size} differ from the "
                               f"learner communicator's {comm.Get_rank()}/{comm.Get_size()}")
        self._hvd = hvd
        self.device = torch.device(device)
        self._stage = self.device.type == "cuda" and not (hvd.nccl_built() or hvd.cuda_built())
        self._flag = torch.zeros(1, dtype=torch.float32)
        self.description = (f"Horovod {horovod.__version__} allreduce_ over MPI "
                            f"({'threads ok' if hvd.mpi_threads_supported() else 'no MPI threads'})")

    def _reduce(self, flat: torch.Tensor, flag: float) -> float:
        hvd = self._hvd
        self._flag.fill_(flag)
        handle = hvd.allreduce_async_(self._flag, op=hvd.Sum, name="r2d2.stop_flag")
        if self._stage:
            host = flat.detach().cpu()
            hvd.allreduce_(host, op=hvd.Sum, name="r2d2.flat_grad")
            flat.copy_(host)
        else:
            hvd.allreduce_(flat, op=hvd.Sum, name="r2d2.flat_grad")
        hvd.synchronize(handle)
        return float(self._flag.item())

    def broadcast_(self, tensor: torch.Tensor, root: int = 0) -> None:
        host = tensor.detach().cpu() if self._stage else tensor.detach()
        self._hvd.broadcast_(host, root_rank=root, name=f"r2d2.bcast.{tuple(host.shape)}")
        if host is not tensor:
            tensor.copy_(host)

    def broadcast_learner(self, learner: Learner, root: int = 0) -> None:
        """Horovod's ``broadcast_parameters`` and ``broadcast_optimizer_state``.

        ``broadcast_optimizer_state`` on an optimizer without state first runs
        a zero-gradient step to create it, which would count one Adam step
        (``step = 1``) and make the bias correction differ from a single
        learner's. So it only runs when learner ``root`` has optimizer state
        (after a resume); a fresh start has none anywhere.
        """
        hvd = self._hvd
        hvd.broadcast_parameters(learner.online.state_dict(), root_rank=root)
        hvd.broadcast_parameters(learner.target.state_dict(), root_rank=root)
        has_state = torch.tensor([float(bool(learner.optimizer.state))])
        self.broadcast_(has_state, root)
        if has_state.item() > 0:
            _ensure_adam_state(learner.optimizer, list(learner.online.parameters()))
            hvd.broadcast_optimizer_state(learner.optimizer, root_rank=root)
        else:
            learner.optimizer.state.clear()
        counters = torch.tensor([learner.step_count, learner.params_version], dtype=torch.int64)
        self.broadcast_(counters, root)
        learner.step_count, learner.params_version = (int(v) for v in counters.tolist())
        self.broadcast_scaler(learner, root)

    def close(self) -> None:
        self._hvd.shutdown()


def make_averager(requested: str, comm: Any, device: Any = "cpu",
                  usable: Optional[Mapping[str, bool]] = None) -> GradientAverager:
    """The averager for ``learner.allreduce`` over the learners' communicator.

    Collective over ``comm``: every learner must call it with the same
    ``requested`` (the choice for ``auto`` is learner 0's, broadcast, so that
    learners with different installations cannot pick different backends).
    For ``auto`` the averager's ``description`` (which the lead logs) ends
    with what was picked and why.

    Args:
      requested: one of :data:`CHOICES`.
      comm: the learners' sub-communicator (mpi4py), size >= 1.
      device: the learner's device (``torch.device`` or string).
      usable: backend -> usable (tests); default: probed here, lazily, so
        that ``auto`` on a CPU learner never imports Horovod.

    Returns:
      The averager; ``close()`` it at the end.

    Raises:
      BackendUnavailable: the requested backend cannot run here.
    """
    device = torch.device(device)
    kind = "cuda" if device.type == "cuda" else "cpu"
    if usable is None:
        usable = _LazyUsable(kind)
    choice = choose_backend(requested, usable, kind) if comm.Get_rank() == 0 else None
    choice = comm.bcast(choice, root=0)
    if not usable.get(choice, False):
        raise BackendUnavailable(f"learner {comm.Get_rank()}: learner 0 chose allreduce "
                                 f"backend {choice!r}, which is not usable here")
    averager: GradientAverager
    if choice == "horovod":
        averager = HorovodAverager(comm, device)
    elif choice == "torch":
        averager = TorchDistAverager(comm, device)
    else:
        averager = MpiAllreduceAverager(comm)
    if requested == "auto":
        averager.description += f"; {auto_reason(choice, kind, usable)}"
    return averager


class _LazyUsable(Mapping[str, bool]):
    """Backend -> usable, each probed (and cached) on first look-up."""

    def __init__(self, device: str) -> None:
        self._probes: Dict[str, Callable[[], Tuple[bool, str]]] = {
            "horovod": horovod_status,
            "torch": lambda: torch_distributed_status(device),
            "mpi": mpi_status,
        }
        self._cache: Dict[str, bool] = {}

    def __getitem__(self, name: str) -> bool:
        if name not in self._cache:
            self._cache[name] = self._probes[name]()[0]
        return self._cache[name]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._probes)

    def __len__(self) -> int:
        return len(self._probes)


def auto_reason(choice: str, device: str, usable: Mapping[str, bool]) -> str:
    """Why ``auto`` picked ``choice``, in words, for the start-up log line.

    Example: ``auto picked torch for cpu learners (order mpi > horovod > torch;
    not usable: mpi, horovod)`` (the backends ahead of the choice).
    """
    order = AUTO_ORDER.get(device, AUTO_ORDER["cpu"])
    ahead = order[:order.index(choice)] if choice in order else order
    missing = [name for name in ahead if not usable.get(name, False)]
    tail = f"; not usable: {', '.join(missing)}" if missing else ""
    return (f"auto picked {choice} for {device} learners (order {' > '.join(order)}"
            f"{tail})")

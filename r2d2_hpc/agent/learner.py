"""The R2D2 learner: one gradient step on a batch of replayed sequences.

``Learner`` is the algorithm object of the learner rank and knows nothing of
MPI (STYLE habit 2): it takes numpy ``SequenceBatch`` records and importance
weights, and returns new priorities. The rank wraps it in its message loop and
supplies, for several learners, a ``grad_reducer`` that averages the flat
gradient in place (an allreduce).

One ``step``::

    numpy batch ──(pinned when CUDA: host_array, else a staging copy)──► device
    losses.sequence_loss(online, target, ...) ──► loss, priorities
    loss.backward()
    flat = flat_grads(online)                  one contiguous <float32>[num_params]
    grad_reducer(flat)                         optional, in place (allreduce mean)
    flat *= min(1, max_grad_norm / ‖flat‖₂)    only if max_grad_norm > 0
    set_grads(online, flat)                    what the optimizer uses
    Adam(lr, eps=1e-3).step()
    step_count += 1; params_version += 1
    if step_count % target_update_period == 0: target ◄── online

Mixed precision (``learner.mixed_precision``)::

    mode   forward (torso, core, head)           backward              optimizer
    none   float32                               float32               Adam on float32
    bf16   autocast bfloat16; core in float32    float32 grads         Adam on float32
    fp16   autocast float16 (cuDNN LSTM fp16)    loss × S, grads / S   skipped if inf/nan
           CUDA only                             GradScaler S          S halves / doubles

Parameters, gradients and Adam state stay float32 in every mode; Q-values
leave the network as float32, so targets, TD errors, the loss and the
priorities are computed in float32. ``bf16`` keeps the recurrent core out of
the autocast region: CUDA autocast runs a cuDNN RNN in float16 whatever the
autocast dtype, and float16 LSTM gradients without loss scaling underflow
(``dL/dq`` is about ``|δ| / (B · trace)``, ~1e-6). ``fp16`` is the standard
AMP recipe (``torch.amp.GradScaler``): the scaled gradient is averaged over
learners, then unscaled; a step whose averaged gradient holds inf/nan is
skipped by every learner alike, which keeps replicas identical. The scaler's
state is part of ``state()``.

Target network schedule (paper, section 2.3: "copied from the online network
parameters every 2500 learner steps"): the target starts as a copy of the
online network; the update is done *after* the optimizer step of the step that
makes ``step_count`` a multiple of ``target_update_period``. So with period
``P`` the calls numbered ``1 .. P`` (1-based) bootstrap from the initial
parameters, calls ``P+1 .. 2P`` from the online parameters after call ``P``,
and so on; right after call ``kP`` target and online are equal.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple, Union

import numpy as np
import torch

from r2d2_hpc.agent import losses
from r2d2_hpc.agent.device import AUTOCAST_DTYPES, DeviceSpec, device_errors, resolve_device
from r2d2_hpc.agent.network import R2D2Network, TorchState
from r2d2_hpc.agent.params import (flat_grads, load_flat_array, num_elements, set_grads,
                                   to_flat_array)
from r2d2_hpc.config import Config, ConfigError
from r2d2_hpc.types import SequenceBatch

#: Averages a flat ``<float32>[num_params]`` gradient in place (e.g. an allreduce).
GradReducer = Callable[[torch.Tensor], None]

#: Keys of ``LearnerStepResult.metrics``.
METRIC_KEYS: Tuple[str, ...] = (
    "loss",
    "mean_abs_td",
    "mean_q",
    "mean_target",
    "num_valid",
    "grad_norm",
    "target_updated",
    "time_forward_backward_s",
    "time_reduce_s",
    "time_optimizer_s",
    "loss_scale",
    "skipped_step",
)

#: Where ``q_value_discrepancy`` compares the two unrolls.
STALENESS_POSITIONS: Tuple[str, ...] = ("first", "last")


def mixed_precision_forward(net: R2D2Network, dtype: Optional[torch.dtype],
                            obs: torch.Tensor, prev_action: torch.Tensor,
                            prev_reward: torch.Tensor, first: torch.Tensor,
                            state: Optional[TorchState]) -> Tuple[torch.Tensor, TorchState]:
    """``net(obs, prev_action, prev_reward, first, state)`` under autocast ``dtype``.

    The network's own forward inside ``torch.autocast(device, dtype)``: torso
    and head in ``dtype``; the core in float32 for bfloat16
    (``core_float32``, see the module docstring) and under the autocast for
    float16. ``dtype=None`` is the plain float32 forward.

    Args:
      net: the network.
      dtype: ``torch.bfloat16``, ``torch.float16`` or None.
      obs: ``<uint8|float32>[T, B, ...]``.
      prev_action: ``<int64>[T, B]``.
      prev_reward: ``<float32>[T, B]``.
      first: ``<bool>[T, B]``.
      state: ``(h, c)``, each ``<float32>[B, H]``, or None (zeros).

    Returns:
      ``(q <float32>[T, B, A], (h, c) <float32>[B, H] each)``.
    """
    if dtype is None:
        return net(obs, prev_action, prev_reward, first, state)
    with torch.autocast(obs.device.type, dtype=dtype):
        q, (h, c) = net(obs, prev_action, prev_reward, first, state,
                        core_float32=dtype == torch.bfloat16)
    return q.float(), (h.float(), c.float())


class _MixedPrecisionQ:
    """A ``losses.RecurrentQFunction``: a network's forward under autocast."""

    def __init__(self, net: R2D2Network, dtype: Optional[torch.dtype]) -> None:
        self.net = net
        self.dtype = dtype

    def __call__(self, obs: torch.Tensor, prev_action: torch.Tensor,
                 prev_reward: torch.Tensor, first: torch.Tensor,
                 state: TorchState) -> Tuple[torch.Tensor, TorchState]:
        return mixed_precision_forward(self.net, self.dtype, obs, prev_action, prev_reward,
                                       first, state)


def q_value_discrepancy(q_hat: torch.Tensor, q_true: torch.Tensor, valid: torch.Tensor,
                        position: str = "first") -> torch.Tensor:
    """The paper's Q-value discrepancy ``ΔQ`` per sequence (R2D2 section 3).

    ``ΔQ = ‖q(ŝ_{t+i}; θ) − q(s_{t+i}; θ)‖₂ / |max_{a, j} q(ŝ_{t+j}; θ)_a|``

    with ``ŝ`` the recurrent states of the training strategy, ``s`` the
    reference ("true") states, ``θ`` the current parameters, ``‖·‖₂`` over the
    actions, ``i`` the first or the last valid step of the trace (the paper's
    Figure 1 shows both) and ``j`` over the valid trace steps.

    Args:
      q_hat: ``<float>[T, B, A]`` Q-values on the trace from the states ``ŝ``.
      q_true: ``<float>[T, B, A]`` Q-values on the trace from the states ``s``.
      valid: ``<bool>[T, B]`` trace steps to consider (the mask); sequences
        with no valid step get NaN.
      position: ``'first'`` or ``'last'`` valid step of each sequence.

    Returns:
      ``<float>[B]`` ``ΔQ`` (NaN where a sequence has no valid step; the
      denominator is floored at 1e-8).
    """
    if position not in STALENESS_POSITIONS:
        raise ValueError(f"position must be one of {STALENESS_POSITIONS}, got {position!r}")
    valid = valid.bool()
    num_steps = valid.shape[0]
    t_idx = torch.arange(num_steps, device=valid.device).unsqueeze(-1).expand_as(valid)
    if position == "first":
        step = torch.where(valid, t_idx, torch.full_like(t_idx, num_steps)).min(dim=0).values
    else:
        step = torch.where(valid, t_idx, torch.full_like(t_idx, -1)).max(dim=0).values
    has_valid = valid.any(dim=0)
    step = step.clamp(0, num_steps - 1)
    index = step.view(1, -1, 1).expand(1, q_hat.shape[1], q_hat.shape[2])
    diff = (q_hat.gather(0, index) - q_true.gather(0, index)).squeeze(0)
    numerator = torch.linalg.vector_norm(diff, dim=-1)
    q_max = torch.where(valid.unsqueeze(-1), q_hat,
                        torch.full_like(q_hat, -torch.inf)).amax(dim=(0, 2))
    denominator = q_max.abs().clamp(min=1e-8)
    return torch.where(has_valid, numerator / denominator,
                       torch.full_like(numerator, float("nan")))


class LearnerStepResult(NamedTuple):
    """What ``Learner.step`` returns.

    Attributes:
      priorities: ``<float64>[B]`` new priorities of the batch's sequences
        (``p = η max|δ| + (1 − η) mean|δ|``), in batch order.
      loss: the loss value of this step (before the update).
      metrics: ``METRIC_KEYS`` -> float; times in seconds; ``loss_scale``
        the GradScaler's scale used by the step (1 without one),
        ``skipped_step`` 1 when the scaler skipped the Adam step (inf/nan).
    """

    priorities: np.ndarray
    loss: float
    metrics: Dict[str, float]


class LearnerState(NamedTuple):
    """Everything a checkpoint keeps of a ``Learner``: what ``state()`` returns and
    ``load_state`` takes back (Acme's ``Saveable``); numpy arrays and Python numbers.

    Attributes:
      online: ``{param name: <float32>[...]}``, the online network.
      target: ``{param name: <float32>[...]}``, the target network.
      optimizer: Adam's state, ``{"exp_avg": {name: array}, "exp_avg_sq": {name:
        array}, "step": {name: <float32>[] array}}`` (inner dicts empty before step 1).
      step_count: completed ``step`` calls.
      params_version: version of the online parameters.
      torch_rng_state: ``<uint8>[...]``, torch's CPU generator.
      cuda_rng_state: ``<uint8>[...]``, the CUDA generator (None off CUDA).
      grad_scaler: the GradScaler's ``state_dict()`` as Python numbers (None
        without one: only ``fp16`` has a scaler).
    """

    online: Dict[str, np.ndarray]
    target: Dict[str, np.ndarray]
    optimizer: Dict[str, Dict[str, np.ndarray]]
    step_count: int
    params_version: int
    torch_rng_state: np.ndarray
    cuda_rng_state: Optional[np.ndarray] = None
    grad_scaler: Optional[Dict[str, Union[int, float]]] = None


class Learner:
    """Online and target R2D2 networks, Adam, and the gradient step.

    Attributes:
      cfg: the run configuration.
      device: where the networks live.
      online: the network being trained.
      target: the target network (no gradient; see the module docstring for
        when it is copied).
      optimizer: ``torch.optim.Adam`` with ``cfg.learner.learning_rate`` and
        ``cfg.learner.adam_epsilon`` (paper: 1e-4 and 1e-3).
      step_count: completed ``step`` calls (restored by ``load_state``).
      params_version: version of the online parameters, +1 per step; the
        parameter publication carries it.
      mixed_precision: ``cfg.learner.mixed_precision`` (``none``, ``bf16``,
        ``fp16``).
      scaler: the ``torch.amp.GradScaler`` of ``fp16``, else None (a step
        uses whatever scaler is set here; its state goes into ``state()``).
    """

    def __init__(self, cfg: Config, obs_shape: Tuple[int, ...], num_actions: int,
                 device: DeviceSpec = "cpu",
                 grad_reducer: Optional[GradReducer] = None) -> None:
        """Args:
          cfg: run configuration; uses ``cfg.network``, ``cfg.learner`` and
            ``cfg.replay.burn_in`` / ``priority_eta``.
          obs_shape: shape of one observation.
          num_actions: number of discrete actions.
          device: see ``resolve_device``; the learner rank passes
            ``cfg.learner.device``.
          grad_reducer: called once per step with the flat gradient, which it
            must overwrite in place (e.g. with the mean over learners).

        Raises:
          ConfigError: (a ``ValueError``) naming the field and the fix when the
            device or ``learner.mixed_precision`` cannot run here (see
            ``device_errors``).
        """
        self.cfg = cfg
        self.device = resolve_device(device)
        self.mixed_precision = cfg.learner.mixed_precision
        errors = device_errors(self.device, self.mixed_precision)
        if errors:
            raise ConfigError(errors)
        self._autocast_dtype = AUTOCAST_DTYPES[self.mixed_precision]
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(self.device.type) if self.mixed_precision == "fp16" else None)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.num_actions = int(num_actions)
        self.grad_reducer = grad_reducer
        self.online = R2D2Network(self.obs_shape, self.num_actions, cfg.network).to(self.device)
        self.target = copy.deepcopy(self.online)
        for p in self.target.parameters():
            p.requires_grad_(False)
        self.online.train()
        self.target.eval()
        self._online_q = _MixedPrecisionQ(self.online, self._autocast_dtype)
        self._target_q = _MixedPrecisionQ(self.target, self._autocast_dtype)
        self.optimizer = torch.optim.Adam(self.online.parameters(),
                                          lr=cfg.learner.learning_rate,
                                          eps=cfg.learner.adam_epsilon)
        self._params: List[torch.nn.Parameter] = list(self.online.parameters())
        self._names: List[str] = [name for name, _ in self.online.named_parameters()]
        self.num_params: int = num_elements(self._params)
        self.step_count: int = 0
        self.params_version: int = 0
        # Reused page-locked staging buffers, one per batch field (CUDA only).
        self._pinned: Dict[str, torch.Tensor] = {}

    # ------------------------------------------------------------------ #
    # Moving data.

    def host_array(self, shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """An uninitialised host array the device copy can read directly.

        Page-locked on CUDA (``batch_to_device`` then copies it to the device
        without staging), plain ``np.empty`` otherwise. For buffers reused
        across steps, e.g. the learner rank's batch assembly.

        Args:
          shape: array shape.
          dtype: numpy dtype.

        Returns:
          The array; on CUDA a view of a pinned byte tensor that it keeps alive.
        """
        dtype = np.dtype(dtype)
        if self.device.type != "cuda":
            return np.empty(shape, dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return pinned.numpy().view(dtype).reshape(shape)

    def _to_device(self, name: str, array: np.ndarray) -> torch.Tensor:
        """A numpy array as a tensor on the device; via a pinned buffer for CUDA.

        On the CPU the tensor shares the array's memory (no copy). On CUDA an
        array already in page-locked memory (``host_array``) is copied straight
        to the device; any other is first copied to a reused pinned buffer.
        """
        host = torch.from_numpy(np.ascontiguousarray(array))
        if self.device.type != "cuda":
            return host
        if host.is_pinned():
            return host.to(self.device, non_blocking=True)
        buf = self._pinned.get(name)
        if buf is None or buf.shape != host.shape or buf.dtype != host.dtype:
            buf = torch.empty(host.shape, dtype=host.dtype).pin_memory()
            self._pinned[name] = buf
        # Safe to overwrite: the previous step synchronised (loss.item()) after
        # its non_blocking copies out of this buffer had been consumed.
        buf.copy_(host)
        return buf.to(self.device, non_blocking=True)

    def batch_to_device(self, batch: SequenceBatch) -> SequenceBatch:
        """The numpy batch as torch tensors on the learner's device.

        Args:
          batch: a ``SequenceBatch`` of numpy arrays, ``[T, B, ...]``.

        Returns:
          The same record of tensors (``keys`` and ``probs`` included), the stored
          ``state_h/c`` turned into the core's start state (``R2D2Network.start_state``).
        """
        tb = SequenceBatch(*(self._to_device(name, np.asarray(value))
                             for name, value in zip(SequenceBatch._fields, batch)))
        h, c = self.online.start_state((tb.state_h, tb.state_c))
        return tb._replace(state_h=h, state_c=c)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------------ #
    # The step.

    def step(self, batch: SequenceBatch, weights: np.ndarray) -> LearnerStepResult:
        """One gradient step (see the module docstring for its order).

        Args:
          batch: ``SequenceBatch`` of numpy arrays, ``T = burn_in + trace``.
          weights: ``<float>[B]`` importance weights, computed by the caller with
            ``losses.importance_weights`` (it knows the global N and P(i)).

        Returns:
          A ``LearnerStepResult``.
        """
        num_batch = int(np.asarray(batch.action).shape[1])
        weights = np.asarray(weights, dtype=np.float32)
        if weights.shape != (num_batch,):
            raise ValueError(f"weights must have shape ({num_batch},), got {weights.shape}")
        lcfg = self.cfg.learner

        self._sync()
        t0 = time.perf_counter()
        tbatch = self.batch_to_device(batch)
        tweights = self._to_device("weights", weights)
        out = losses.sequence_loss(
            self._online_q, self._target_q, tbatch, tweights,
            burn_in=self.cfg.replay.burn_in, n=lcfg.n_step, gamma=lcfg.discount,
            eps=lcfg.value_rescaling_epsilon, eta=self.cfg.replay.priority_eta,
            reduction=lcfg.loss_reduction)
        self.optimizer.zero_grad(set_to_none=False)
        scaler = self.scaler
        loss_scale = 1.0
        if scaler is not None:
            loss_scale = float(scaler.get_scale())
            scaler.scale(out.loss).backward()
        else:
            out.loss.backward()
        flat = flat_grads(self._params)
        self._sync()
        t1 = time.perf_counter()

        if self.grad_reducer is not None:
            self.grad_reducer(flat)  # the scaled gradient: S is the same on every learner
            self._sync()
        t2 = time.perf_counter()

        if scaler is not None:
            # Unscale the averaged gradient through the scaler, which records
            # inf/nan for its step(); every learner sees the same flat.
            set_grads(self._params, flat)
            scaler.unscale_(self.optimizer)
            flat = flat_grads(self._params)
        grad_norm = torch.linalg.vector_norm(flat)
        if lcfg.max_grad_norm > 0:
            flat.mul_(torch.clamp(lcfg.max_grad_norm / (grad_norm + 1e-6), max=1.0))
        set_grads(self._params, flat)
        skipped = False
        if scaler is not None:
            scaler.step(self.optimizer)  # skipped when the gradient holds inf/nan
            scaler.update()
            skipped = float(scaler.get_scale()) < loss_scale
        else:
            self.optimizer.step()
        self.step_count += 1
        self.params_version += 1
        target_updated = self.step_count % lcfg.target_update_period == 0
        if target_updated:
            self.update_target()

        priorities = out.priorities.detach().double().cpu().numpy()
        num_valid = int(out.num_valid)
        loss_value = float(out.loss.detach())
        t3 = time.perf_counter()  # .cpu()/float() above synchronised the device
        mean_abs_td = float(out.abs_td_error.sum()) / max(1, num_valid)
        metrics = {
            "loss": loss_value,
            "mean_abs_td": mean_abs_td,
            "mean_q": float(out.mean_q),
            "mean_target": float(out.mean_target),
            "num_valid": float(num_valid),
            "grad_norm": float(grad_norm),
            "target_updated": float(target_updated),
            "time_forward_backward_s": t1 - t0,
            "time_reduce_s": t2 - t1,
            "time_optimizer_s": t3 - t2,
            "loss_scale": loss_scale,
            "skipped_step": float(skipped),
        }
        return LearnerStepResult(priorities=priorities, loss=loss_value, metrics=metrics)

    def update_target(self) -> None:
        """Hard target update: ``target ← online``."""
        with torch.no_grad():
            for t, o in zip(self.target.parameters(), self._params):
                t.copy_(o)

    # ------------------------------------------------------------------ #
    # Parameter publication.

    def flat_params(self) -> np.ndarray:
        """Online parameters as one contiguous buffer (the publication body).

        Returns:
          ``<float32>[num_params]``, parameters in ``named_parameters()`` order,
          each flattened row-major; a fresh array.
        """
        return to_flat_array(self._params)

    def load_flat_params(self, flat: np.ndarray, version: Optional[int] = None,
                         update_target: bool = False) -> None:
        """Overwrites the online parameters from a ``flat_params`` buffer.

        Args:
          flat: ``<float32>[num_params]``.
          version: if given, the new ``params_version``.
          update_target: also copy into the target network (e.g. when several
            learners start from rank 0's parameters).

        Raises:
          ValueError: if ``flat`` is not ``[num_params]``.
        """
        load_flat_array(self._params, flat)
        if version is not None:
            self.params_version = int(version)
        if update_target:
            self.update_target()

    # ------------------------------------------------------------------ #
    # Checkpoint state.

    def state(self) -> LearnerState:
        """Everything a checkpoint needs, as numpy arrays and Python numbers (copies)."""
        def params_of(net: R2D2Network) -> Dict[str, np.ndarray]:
            return {name: p.detach().cpu().numpy().copy() for name, p in net.named_parameters()}

        opt: Dict[str, Dict[str, np.ndarray]] = {"exp_avg": {}, "exp_avg_sq": {}, "step": {}}
        for name, p in zip(self._names, self._params):
            st = self.optimizer.state.get(p)
            if not st:
                continue
            for key in opt:
                value = st[key]
                value = value.detach().cpu().numpy().copy() if isinstance(value, torch.Tensor) \
                    else np.asarray(value, dtype=np.float32)
                opt[key][name] = value
        cuda = self.device.type == "cuda"
        return LearnerState(
            online=params_of(self.online), target=params_of(self.target), optimizer=opt,
            step_count=int(self.step_count), params_version=int(self.params_version),
            torch_rng_state=torch.get_rng_state().numpy().copy(),
            cuda_rng_state=torch.cuda.get_rng_state(self.device).numpy().copy() if cuda
            else None,
            grad_scaler=None if self.scaler is None else
            {k: (float(v) if isinstance(v, float) else int(v))
             for k, v in self.scaler.state_dict().items()})

    def load_state(self, state: LearnerState) -> None:
        """Restores what ``state`` returned (same config and shapes).

        ``grad_scaler`` is restored when this learner has a scaler (fp16);
        without one (``mixed_precision`` changed on resume) it is ignored, and
        an fp16 learner given a state without it keeps its fresh scaler.

        Args:
          state: a ``LearnerState``.

        Raises:
          TypeError: ``state`` is not a ``LearnerState``.
          ValueError: naming every missing or mis-shaped parameter.
        """
        if not isinstance(state, LearnerState):
            raise TypeError(f"load_state takes a LearnerState, got {type(state).__name__}")
        errors: List[str] = []
        shapes = {name: tuple(p.shape) for name, p in zip(self._names, self._params)}
        for group in ("online", "target"):
            arrays = getattr(state, group)
            for name, shape in shapes.items():
                if name not in arrays:
                    errors.append(f"{group}/{name}: missing")
                elif tuple(np.shape(arrays[name])) != shape:
                    errors.append(f"{group}/{name}: shape {tuple(np.shape(arrays[name]))}, "
                                  f"expected {shape}")
        opt = state.optimizer
        opt_names = set(opt.get("step", {}))
        if opt_names and opt_names != set(shapes):
            errors.append(f"optimizer state covers {len(opt_names)} of {len(shapes)} parameters")
        if errors:
            raise ValueError("invalid learner state: " + "; ".join(errors))

        with torch.no_grad():
            for arrays, net in ((state.online, self.online), (state.target, self.target)):
                for name, p in net.named_parameters():
                    p.copy_(torch.from_numpy(np.asarray(arrays[name])))
        opt_sd = self.optimizer.state_dict()
        new_state: Dict[int, Dict[str, torch.Tensor]] = {}
        if opt_names:
            for idx, name in enumerate(self._names):
                new_state[idx] = {
                    "step": torch.from_numpy(np.array(opt["step"][name], dtype=np.float32)),
                    "exp_avg": torch.from_numpy(np.array(opt["exp_avg"][name])),
                    "exp_avg_sq": torch.from_numpy(np.array(opt["exp_avg_sq"][name])),
                }
        opt_sd["state"] = new_state
        self.optimizer.load_state_dict(opt_sd)
        self.step_count = int(state.step_count)
        self.params_version = int(state.params_version)
        torch.set_rng_state(torch.from_numpy(np.array(state.torch_rng_state, dtype=np.uint8)))
        if self.device.type == "cuda" and state.cuda_rng_state is not None:
            torch.cuda.set_rng_state(
                torch.from_numpy(np.array(state.cuda_rng_state, dtype=np.uint8)), self.device)
        if self.scaler is not None and state.grad_scaler is not None:
            self.scaler.load_state_dict({k: _py_number(v)
                                         for k, v in state.grad_scaler.items()})

    # ------------------------------------------------------------------ #
    # Diagnostics.

    def q_staleness(self, batch: SequenceBatch, position: str = "first") -> float:
        """Recurrent-state staleness ``ΔQ`` of the paper (section 3), batch mean.

        Both unrolls use the current online parameters over the whole stored
        sequence (burn-in and trace, with the in-sequence resets at ``first``):

        * ``ŝ``, the training strategy: from the stored state (``state_h/c``),
          exactly as the loss unrolls the online network;
        * ``s``, the reference: from zeros, so the state at the trace start is
          the current network's own summary of the burn-in.

        The paper's "true" state unrolls the current network over the whole
        episode so far; a batch holds only the burn-in of that history, so the
        zero-start burn-in unroll stands in for it. ``ΔQ`` is 0 exactly where
        the episode starts inside the burn-in (both unrolls reset there) and
        grows with how much the stored state (written by an actor with older
        parameters) disagrees with what the current network computes.
        See ``q_value_discrepancy`` for the formula.

        Args:
          batch: ``SequenceBatch`` of numpy arrays.
          position: ``'first'`` or ``'last'`` valid trace step.

        Returns:
          Mean ``ΔQ`` over the sequences with a valid trace step (NaN if none).
        """
        tb = self.batch_to_device(batch)
        burn_in = self.cfg.replay.burn_in
        first = tb.first.bool()
        zeros = self.online.initial_state(tb.action.shape[1], device=self.device)
        stored: TorchState = (tb.state_h.float(), tb.state_c.float())
        with torch.no_grad():
            q_hat, _ = self.online(tb.obs, tb.prev_action, tb.prev_reward, first, stored)
            q_true, _ = self.online(tb.obs, tb.prev_action, tb.prev_reward, first, zeros)
            dq = q_value_discrepancy(q_hat[burn_in:], q_true[burn_in:],
                                     tb.mask[burn_in:].bool(), position)
            dq = dq[~torch.isnan(dq)]
            return float(dq.mean()) if dq.numel() > 0 else float("nan")


def _py_number(value: object) -> Union[int, float]:
    """A Python int or float from a number, numpy scalar or 0-d array."""
    item = np.asarray(value).item()
    return item if isinstance(item, (int, float)) else float(item)


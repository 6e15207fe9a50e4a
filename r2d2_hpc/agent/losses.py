"""The R2D2 learning math as pure functions (Kapturowski et al., ICLR 2019).

Everything here is a module-level function of tensors; nothing knows about MPI,
replay or optimisers. Shapes are time first, ``<dtype>[T, B, ...]``, as in
``r2d2_hpc.types.SequenceBatch``. Step ``t`` of a stored sequence holds

* ``o_t``  the observation, ``a_t`` the action taken there,
* ``r_t``  the reward received after ``a_t``,
* ``d_t``  the discount, 0 when the episode terminated after ``a_t`` (else 1),
* ``m_t``  the mask, False on padding after the episode's last step,
* ``first_t`` True where an episode starts at ``t``.

Pieces, each with its paper reference:

* ``signed_hyperbolic`` / ``signed_parabolic``: the value rescaling ``h`` and its
  inverse (paper section 2.3, from Pohlen et al., 2018), ``eps = 1e-3``.
* ``n_step_double_q_targets``: the transformed n-step double-Q target (paper eq. in
  section 2.3, n = 5 in table 2).
* ``sequence_loss``: burn-in, unroll of online and target networks, masked TD loss
  weighted by prioritised-replay importance weights (paper section 3).
* ``sequence_priorities``: ``p = eta max|delta| + (1 - eta) mean|delta|``
  (paper section 2.3, eta = 0.9 from table 2).
* ``importance_weights``: ``w_i = (N P(i))^-beta / max_j w_j`` (Schaul et al., 2016).

The exploration rates of Ape-X are in :mod:`r2d2_hpc.agent.exploration`.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Protocol, Tuple, TypeVar

import numpy as np
import torch

from r2d2_hpc.config import LOSS_REDUCTIONS
from r2d2_hpc.types import SequenceBatch

#: ``(h, c)`` recurrent state of the core, each ``<float32>[B, H]``.
TorchState = Tuple[torch.Tensor, torch.Tensor]

#: The value rescaling epsilon of the paper (section 2.3): ``1e-3``.
#: (Some reimplementations use 1e-2; that is not the paper's value.)
RESCALE_EPSILON = 1e-3
#: Priority mix of max and mean absolute TD error, ``eta`` (paper, table 2).
PRIORITY_ETA = 0.9

_ArrayOrTensor = TypeVar("_ArrayOrTensor", np.ndarray, torch.Tensor, float)


class RecurrentQFunction(Protocol):
    """What the loss needs of a network: ``r2d2_hpc.agent.network.R2D2Network.forward``.

    ``net(obs[T, B, ...], prev_action[T, B], prev_reward[T, B], first[T, B],
    state) -> (q[T, B, A], final_state)``; the network zeros its state before every
    step with ``first`` True.
    """

    def __call__(self, obs: torch.Tensor, prev_action: torch.Tensor,
                 prev_reward: torch.Tensor, first: torch.Tensor,
                 state: TorchState) -> Tuple[torch.Tensor, TorchState]:
        ...


def _xp(x: object):
    """numpy for numpy arrays and Python numbers, torch for tensors."""
    return torch if isinstance(x, torch.Tensor) else np


# ---------------------------------------------------------------------------
# Value rescaling.
# ---------------------------------------------------------------------------


def signed_hyperbolic(x: _ArrayOrTensor, eps: float = RESCALE_EPSILON) -> _ArrayOrTensor:
    """The value rescaling ``h`` of R2D2 (section 2.3).

    ``h(x) = sign(x) (sqrt(|x| + 1) - 1) + eps x``

    Args:
      x: any shape, tensor or numpy array.
      eps: the linear term's weight; paper: 1e-3.

    Returns:
      ``h(x)``, same shape and type as ``x``.
    """
    xp = _xp(x)
    return xp.sign(x) * (xp.sqrt(xp.abs(x) + 1.0) - 1.0) + eps * x


def signed_parabolic(x: _ArrayOrTensor, eps: float = RESCALE_EPSILON) -> _ArrayOrTensor:
    """The exact inverse ``h^-1`` of ``signed_hyperbolic``.

    ``h^-1(x) = sign(x) ( ((sqrt(1 + 4 eps (|x| + 1 + eps)) - 1) / (2 eps))^2 - 1 )``

    Computed in the algebraically identical form
    ``(sqrt(1 + u) - 1) / (2 eps) = 2 (|x| + 1 + eps) / (sqrt(1 + u) + 1)`` with
    ``u = 4 eps (|x| + 1 + eps)``, which avoids the cancellation of
    ``sqrt(1 + u) - 1`` (u is about 4e-3 near 0): in float32 ``h^-1(0)`` is 0 exactly
    because ``1 + u = (1 + 2 eps)^2`` there.

    Args:
      x: any shape, tensor or numpy array.
      eps: must match the ``eps`` of ``signed_hyperbolic``; must be > 0.

    Returns:
      ``h^-1(x)``, same shape and type as ``x``.
    """
    if eps <= 0:
        raise ValueError(f"signed_parabolic needs eps > 0, got {eps}")
    xp = _xp(x)
    a = xp.abs(x) + 1.0 + eps
    root = 2.0 * a / (xp.sqrt(1.0 + 4.0 * eps * a) + 1.0)
    return xp.sign(x) * (root * root - 1.0)


# ---------------------------------------------------------------------------
# n-step double-Q targets.
# ---------------------------------------------------------------------------


def _shift(x: torch.Tensor, k: int, fill: float) -> torch.Tensor:
    """``out[t] = x[t + k]`` for ``t + k < T``, else ``fill``. ``x``: ``[T, B]``."""
    if k == 0:
        return x
    pad = torch.full((k,) + tuple(x.shape[1:]), fill, dtype=x.dtype, device=x.device)
    return torch.cat([x[k:], pad], dim=0)[: x.shape[0]]


def episode_run_end(mask: torch.Tensor, first: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Last index of the run of valid same-episode steps that contains ``t``.

    ``L_t = max{s >= t : m_t, ..., m_s all True and first_{t+1..s} all False}``
    (``L_t = t`` where ``m_t`` is False). Steps ``t..L_t`` are the only ones the
    n-step target of step ``t`` may read.

    Args:
      mask: ``<bool>[T, B]``.
      first: optional ``<bool>[T, B]``; where given, an episode start inside the
        sequence ends the run before it (needed only when an episode can end
        without termination and a new one follow in the same sequence).

    Returns:
      ``<int64>[T, B]`` ``L_t``.
    """
    mask = mask.bool()
    num_steps = mask.shape[0]
    # cont[t]: step t + 1 continues the run of step t.
    cont = torch.zeros_like(mask)
    cont[:-1] = mask[:-1] & mask[1:]
    if first is not None:
        cont[:-1] &= ~first[1:].bool()
    t_idx = torch.arange(num_steps, device=mask.device).unsqueeze(-1).expand_as(mask)
    # A run ends at the first s >= t with cont[s] False (cont[T-1] is always False):
    # a reversed running minimum over those stop indices.
    stops = torch.where(cont, torch.full_like(t_idx, num_steps - 1), t_idx)
    return torch.flip(torch.cummin(torch.flip(stops, [0]), dim=0).values, [0])


def n_step_double_q_targets(
    reward: torch.Tensor,
    discount: torch.Tensor,
    mask: torch.Tensor,
    q_online: torch.Tensor,
    q_target: torch.Tensor,
    n: int,
    gamma: float,
    eps: float = RESCALE_EPSILON,
    first: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Transformed n-step double-Q targets (R2D2 section 2.3).

    For every valid step ``t`` with horizon ``H_t`` (below)::

      y_t = h( sum_{k < H} gamma^k (prod_{j < k} d_{t+j}) r_{t+k}
               + gamma^H (prod_{j < H} d_{t+j}) h^-1(Q_target(o_{t+H}, a*)) ),
      a*  = argmax_a Q_online(o_{t+H}, a)

    The bootstrap is from ``t + H`` with ``H >= 1``, never from ``t`` itself. With
    ``L_t`` the last valid step of ``t``'s episode in the sequence
    (``episode_run_end``) and ``R = L_t - t + 1`` the valid steps from ``t`` on::

      case                                   H          bootstrap     valid
      t + n <= L_t (o_{t+n} stored)          n          o_{t+n}       yes
      episode terminates in t..L_t (d = 0)   min(n, R)  zeroed by d   yes
      sequence ends first, no termination    R - 1      o_{L_t}       iff t < L_t

    Windows for n = 3 (``r`` reward summed, ``B`` bootstrap observation,
    ``x`` padding, ``|`` termination after that step)::

      t        0 1 2 3 4 5        t        0 1 2 3|x x        t        0 1 2 3 4 5
      y_0      r r r B            y_1        r r r|           y_3            r r B
      y_2          r r r B        y_3            r|           y_5   invalid (no o_6)

    Padded steps (``m`` False) are never read: their rewards, discounts and
    Q-values may be anything, NaN included (selected out with ``torch.where``).
    Targets carry no gradient.

    Args:
      reward: ``<float>[T, B]`` ``r_t``.
      discount: ``<float>[T, B]`` ``d_t`` in {0, 1}.
      mask: ``<bool>[T, B]`` ``m_t``.
      q_online: ``<float>[T, B, A]`` online network's Q, used for the argmax only.
      q_target: ``<float>[T, B, A]`` target network's Q, used for the value.
      n: the n of n-step returns, >= 1 (paper: 5).
      gamma: discount factor (paper: 0.997).
      eps: value rescaling epsilon (paper: 1e-3).
      first: optional ``<bool>[T, B]``; an episode start at ``t + k`` ends the
        window of ``t`` before it even without a termination (see
        ``episode_run_end``).

    Returns:
      ``(targets, valid)``: ``<float>[T, B]`` ``y_t`` (0 where not valid) and
      ``<bool>[T, B]`` True where step ``t`` has a target.
    """
    if n < 1:
        raise ValueError(f"n-step targets need n >= 1, got {n}")
    with torch.no_grad():
        dtype = q_target.dtype
        mask = mask.bool()
        reward = reward.to(dtype)
        discount = discount.to(dtype)
        num_steps = reward.shape[0]
        t_idx = torch.arange(num_steps, device=reward.device).unsqueeze(-1).expand_as(mask)
        remaining = episode_run_end(mask, first) - t_idx + 1  # R_t >= 1

        # returns[k] = sum_{j<k} gamma^j D_j r_{t+j}; discounts[k] = D_k = prod_{j<k} d_{t+j};
        # only steps inside t..L_t enter, so padding (maybe NaN) never does.
        zeros = torch.zeros_like(reward)
        returns, discounts = [zeros], [torch.ones_like(reward)]
        for k in range(n):
            inside = remaining > k
            r_k = _shift(reward, k, 0.0)
            d_k = _shift(discount, k, 1.0)
            returns.append(returns[k] + torch.where(inside, (gamma ** k) * discounts[k] * r_k, zeros))
            discounts.append(torch.where(inside, discounts[k] * d_k, discounts[k]))
        returns_k = torch.stack(returns)  # [n + 1, T, B]
        discounts_k = torch.stack(discounts)

        full = remaining.clamp(max=n)  # min(n, R) in [1, n]
        has_next = full < remaining  # o_{t + full} is stored and in the same episode
        terminated = discounts_k.gather(0, full.unsqueeze(0)).squeeze(0) == 0
        truncated = ~has_next & ~terminated
        horizon = torch.where(truncated, full - 1, full)
        valid = mask & (horizon >= 1)

        ret = returns_k.gather(0, horizon.unsqueeze(0)).squeeze(0)
        disc = discounts_k.gather(0, horizon.unsqueeze(0)).squeeze(0)
        use_bootstrap = valid & (disc != 0)

        # h^-1(Q_target(o_s, argmax_a Q_online(o_s, a))) for every s, then read at t + H.
        best = q_online.argmax(dim=-1, keepdim=True)
        bootstrap_all = signed_parabolic(q_target.gather(-1, best).squeeze(-1), eps)
        index = (t_idx + horizon).clamp(max=num_steps - 1)
        bootstrap = bootstrap_all.gather(0, index)
        gamma_h = torch.pow(torch.full_like(ret, gamma), horizon.to(dtype))
        total = ret + torch.where(use_bootstrap, gamma_h * disc * bootstrap, zeros)
        targets = torch.where(valid, signed_hyperbolic(total, eps), zeros)
    return targets, valid


# ---------------------------------------------------------------------------
# Priorities and importance weights.
# ---------------------------------------------------------------------------


def sequence_priorities(abs_td: torch.Tensor, valid: torch.Tensor,
                        eta: float = PRIORITY_ETA) -> torch.Tensor:
    """Sequence priorities from absolute TD errors (R2D2 section 2.3).

    ``p = eta max_t |delta_t| + (1 - eta) mean_t |delta_t|``, max and mean over the
    valid steps only. A sequence with no valid step gets priority 0: it holds
    nothing to learn from, so it should not be sampled again.

    Args:
      abs_td: ``<float>[T, B]`` ``|delta_t|``; entries where not valid are ignored
        (NaN allowed).
      valid: ``<bool>[T, B]``.
      eta: weight of the max; paper: 0.9.

    Returns:
      ``<float>[B]`` priorities (no gradient).
    """
    with torch.no_grad():
        valid = valid.bool()
        zeros = torch.zeros_like(abs_td)
        abs_td = torch.where(valid, abs_td, zeros)  # |delta| >= 0, so 0 is neutral for max
        count = valid.sum(dim=0)
        max_td = abs_td.max(dim=0).values
        mean_td = abs_td.sum(dim=0) / count.clamp(min=1).to(abs_td.dtype)
        priority = eta * max_td + (1.0 - eta) * mean_td
        return torch.where(count > 0, priority, torch.zeros_like(priority))


def importance_weights(probs: _ArrayOrTensor, num_items: int,
                       beta: float = 0.6) -> _ArrayOrTensor:
    """Prioritised-replay importance-sampling weights (Schaul et al., 2016, sec. 3.4).

    ``w_i = (N P(i))^-beta / max_j w_j`` over the sampled batch, so the largest
    weight is 1 and weights only ever scale the update down.

    Args:
      probs: ``<float>[B]`` probability ``P(i)`` with which each sequence was
        sampled; > 0. Tensor or numpy array.
      num_items: ``N``, number of sequences in the replay (or shard) sampled from.
      beta: importance sampling exponent; R2D2 table 2: 0.6.

    Returns:
      ``<float>[B]`` weights in (0, 1], same type as ``probs``.
    """
    weights = (num_items * probs) ** (-beta)
    return weights / weights.max()


# ---------------------------------------------------------------------------
# The sequence loss.
# ---------------------------------------------------------------------------


class SequenceLossOutput(NamedTuple):
    """What ``sequence_loss`` returns; everything but ``loss`` is detached.

    Attributes:
      loss: scalar, with gradient into the online network.
      priorities: ``<float>[B]`` new sequence priorities (``sequence_priorities``).
      abs_td_error: ``<float>[T - burn_in, B]`` ``|delta_t|`` on the trace (0 where
        not valid).
      valid: ``<bool>[T - burn_in, B]`` trace steps that entered the loss.
      targets: ``<float>[T - burn_in, B]`` ``y_t`` (0 where not valid).
      mean_q: scalar, mean of ``Q_online(o_t, a_t)`` over valid trace steps.
      mean_target: scalar, mean of ``y_t`` over valid trace steps.
      num_valid: scalar int, number of valid trace steps in the batch.
    """

    loss: torch.Tensor
    priorities: torch.Tensor
    abs_td_error: torch.Tensor
    valid: torch.Tensor
    targets: torch.Tensor
    mean_q: torch.Tensor
    mean_target: torch.Tensor
    num_valid: torch.Tensor


def sequence_loss(
    online_network: RecurrentQFunction,
    target_network: RecurrentQFunction,
    batch: SequenceBatch,
    weights: torch.Tensor,
    *,
    burn_in: int,
    n: int,
    gamma: float,
    eps: float = RESCALE_EPSILON,
    eta: float = PRIORITY_ETA,
    reduction: str = "sum",
) -> SequenceLossOutput:
    """The R2D2 loss on a batch of stored sequences (paper sections 2.3 and 3).

    ::

      t      0 ........ burn_in-1 | burn_in ............... T-1
      online  no_grad, from state | with grad, Q(o_t, a_t) and argmax for targets
      target  no_grad, whole sequence from the stored state

    1. Burn-in: the online network unrolls ``o_0 .. o_{burn_in-1}`` from the stored
       state under ``torch.no_grad()``; its final state starts the trace unroll.
    2. The online network unrolls the trace ``o_burn_in .. o_{T-1}`` with gradient.
    3. The target network unrolls the whole sequence from the stored state
       without gradient.
    4. ``y_t`` = ``n_step_double_q_targets`` on the trace,
       ``delta_t = y_t - Q_online(o_t, a_t)``.
    5. ``reduction="sum"`` (Acme ``agents/jax/r2d2/learning.py``, SEED RL
       ``agents/r2d2/learner.py``): ``loss = 1/B sum_i w_i sum_t v_ti delta_ti^2 / 2``
       with ``v`` the valid trace steps: the squared TD error summed over time,
       weighted by the importance weights, averaged over the batch.
       ``reduction="mean"`` divides each sequence's sum by ``max(1, sum_t v_ti)``
       (a per-sequence mean; with Adam's eps = 1e-3 this shrinks the effective
       step and gives short end-of-episode sequences more weight per step).

    ``first`` goes to every unroll, so the network's state reset keeps burn-in and
    trace from reaching into a previous episode. Padded steps enter neither
    targets nor loss, but they are fed through the networks, so their
    observations, previous actions and previous rewards must be finite (NaN there
    would give NaN weight gradients through ``0 * NaN``); the replay zero-pads.

    Args:
      online_network: the network being trained (``RecurrentQFunction``).
      target_network: the periodically copied target network.
      batch: a ``SequenceBatch`` of torch tensors, ``[T, B, ...]``; ``keys`` and
        ``probs`` are not used here.
      weights: ``<float>[B]`` importance weights (``importance_weights``).
      burn_in: burn-in length, ``0 <= burn_in < T`` (paper: 40).
      n: n-step return length (paper: 5).
      gamma: discount (paper: 0.997).
      eps: value rescaling epsilon (paper: 1e-3).
      eta: priority mix (paper: 0.9).
      reduction: ``"sum"`` or ``"mean"`` over the valid trace steps of a sequence.

    Returns:
      A ``SequenceLossOutput``.
    """
    if reduction not in LOSS_REDUCTIONS:
        raise ValueError(f"reduction must be one of {LOSS_REDUCTIONS}, got {reduction!r}")
    num_steps = batch.action.shape[0]
    if not 0 <= burn_in < num_steps:
        raise ValueError(f"burn_in must be in [0, T) = [0, {num_steps}), got {burn_in}")
    first = batch.first.bool()
    mask = batch.mask.bool()
    state: TorchState = (batch.state_h, batch.state_c)

    def unroll(net: RecurrentQFunction, lo: int, hi: int,
               start: TorchState) -> Tuple[torch.Tensor, TorchState]:
        return net(batch.obs[lo:hi], batch.prev_action[lo:hi], batch.prev_reward[lo:hi],
                   first[lo:hi], start)

    online_state = state
    if burn_in > 0:
        with torch.no_grad():
            _, online_state = unroll(online_network, 0, burn_in, state)
        online_state = (online_state[0].detach(), online_state[1].detach())
    q_trace, _ = unroll(online_network, burn_in, num_steps, online_state)
    with torch.no_grad():
        q_target_all, _ = unroll(target_network, 0, num_steps, state)

    trace = slice(burn_in, num_steps)
    targets, valid = n_step_double_q_targets(
        batch.reward[trace], batch.discount[trace], mask[trace], q_trace.detach(),
        q_target_all[trace], n=n, gamma=gamma, eps=eps, first=first[trace])

    q_taken = q_trace.gather(-1, batch.action[trace].long().unsqueeze(-1)).squeeze(-1)
    zeros = torch.zeros_like(q_taken)
    # torch.where, not a product with the mask: garbage Q on padding stays out.
    td_error = torch.where(valid, targets - q_taken, zeros)
    count = valid.sum(dim=0)
    per_sequence = (0.5 * td_error.pow(2)).sum(dim=0)
    if reduction == "mean":
        per_sequence = per_sequence / count.clamp(min=1).to(q_taken.dtype)
    loss = (weights.to(q_taken.dtype) * per_sequence).mean()

    with torch.no_grad():
        abs_td = td_error.detach().abs()
        total_valid = valid.sum()
        denom = total_valid.clamp(min=1).to(q_taken.dtype)
        mean_q = torch.where(valid, q_taken.detach(), zeros).sum() / denom
        mean_target = targets.sum() / denom
        priorities = sequence_priorities(abs_td, valid, eta)
    return SequenceLossOutput(
        loss=loss, priorities=priorities, abs_td_error=abs_td, valid=valid,
        targets=targets, mean_q=mean_q, mean_target=mean_target, num_valid=total_valid)

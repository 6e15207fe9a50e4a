"""The actor's batched epsilon-greedy inference (no MPI).

An actor rank steps ``N`` environments as one vector and calls ``ActorPolicy``
once per step: one forward of the recurrent network with ``T = 1`` and batch
``N``. The policy keeps, per environment, the recurrent state, the previous
action and the previous reward, the core's extra inputs (paper, section 2).

The step protocol, per vector step::

    out = policy.act(obs, first)          # obs o_t of every env, first_t
    obs', reward, ... = envs.step(out.action)
    policy.observe(reward)                # r_t, the prev_reward of step t+1

``act`` and ``observe`` alternate strictly (``act`` raises otherwise), so a
forgotten ``observe`` cannot silently feed a stale reward. Rewards are given
to ``observe`` rather than to the next ``act`` because the adder stores
``r_t`` with step ``t`` as soon as the environment returns it.

Where ``first[i]`` is True, env ``i``'s state, previous action and previous
reward are zeroed *before* the forward, as the network does at ``first`` in a
learner unroll; so ``act`` over ``T`` calls gives the same Q-values as one
``R2D2Network.forward`` over the ``[T, N]`` sequence from a zero state.

Exploration is epsilon-greedy with a fixed epsilon per env (Ape-X:
``losses.apex_epsilon``) from one ``np.random.Generator`` seeded with ``seed``.
Every ``act`` draws ``N`` uniforms and ``N`` random actions in two vector
calls, whether used or not, so the random stream does not depend on the
Q-values: with the same seed the exploration decisions are the same whatever
the parameters.

Precision (``actor.inference_precision``, :func:`~r2d2_hpc.agent.device.resolve_inference_precision`):
under ``bf16`` the forward runs in a bfloat16 autocast region (torso and head
matrices in bf16; the LSTM runs in float32, as CPU autocast leaves it), and
everything that leaves the forward is float32: the Q-values (so the actions,
the adder's initial priorities and the evaluation returns are computed in
float32 from the bf16-rounded Q), and the recurrent state carried from step to
step and stored at sequence starts (so bf16 rounding does not compound
through a carried bf16 state).
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional, Tuple

import numpy as np
import torch

from r2d2_hpc.agent.device import resolve_inference_precision
from r2d2_hpc.agent.network import R2D2Network
from r2d2_hpc.agent.params import load_flat_array, num_elements, to_flat_array
from r2d2_hpc.config import Config


class ActOutput(NamedTuple):
    """What ``ActorPolicy.act`` returns for one vector step (``N`` envs).

    Attributes:
      action: ``<int64>[N]`` epsilon-greedy action ``a_t``.
      q: ``<float32>[N, A]`` ``Q(o_t, ·)``.
      state_h: ``<float32>[N, H]`` LSTM ``h`` used to process ``o_t`` (before
        this step's update; zeros where ``first``) as the replay keeps it
        (``R2D2Network.stored_state``): what the sequence adder stores at a
        sequence start.
      state_c: ``<float32>[N, H]`` LSTM ``c``, likewise.
      prev_action: ``<int64>[N]`` ``a_{t-1}`` fed to the core (0 where ``first``).
      prev_reward: ``<float32>[N]`` ``r_{t-1}`` fed to the core (0 where ``first``).
      greedy: ``<bool>[N]`` True where the action is the greedy one.
    """

    action: np.ndarray
    q: np.ndarray
    state_h: np.ndarray
    state_c: np.ndarray
    prev_action: np.ndarray
    prev_reward: np.ndarray
    greedy: np.ndarray


class ActorPolicy:
    """Recurrent epsilon-greedy policy for ``N`` environments on the CPU.

    ``torch.set_num_threads`` is left to the caller (the actor rank).

    Attributes:
      network: the CPU ``R2D2Network`` in eval mode.
      epsilons: ``<float64>[N]`` exploration rate of each env.
      num_envs: ``N``.
      params_version: version of the loaded parameters (0 = initial).
      autocast_dtype: ``torch.bfloat16`` under bf16 inference, else None (float32).
      precision_reason: what ``actor.inference_precision`` resolved to, and why.
    """

    def __init__(self, cfg: Config, obs_shape: Tuple[int, ...], num_actions: int,
                 epsilons: np.ndarray, seed: int) -> None:
        """Args:
          cfg: run configuration; uses ``cfg.network`` and
            ``cfg.actor.inference_precision``.
          obs_shape: shape of one observation.
          num_actions: number of discrete actions ``A``.
          epsilons: ``<float>[N]`` per-env epsilon in [0, 1].
          seed: seeds the exploration generator and the initial network parameters.
        """
        epsilons = np.asarray(epsilons, dtype=np.float64)
        if epsilons.ndim != 1 or epsilons.size < 1:
            raise ValueError(f"epsilons must be a non-empty 1-D array, got shape {epsilons.shape}")
        if np.any((epsilons < 0) | (epsilons > 1)):
            raise ValueError(f"epsilons must lie in [0, 1], got {epsilons}")
        self.epsilons = epsilons
        self.num_envs = int(epsilons.size)
        self.num_actions = int(num_actions)
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG alone
            torch.manual_seed(int(seed))
            self.network = R2D2Network(tuple(obs_shape), self.num_actions, cfg.network)
        self.network.eval()
        for p in self.network.parameters():
            p.requires_grad_(False)
        self._params = list(self.network.parameters())
        self.num_params = num_elements(self._params)
        self.params_version = 0
        self.autocast_dtype, self.precision_reason = resolve_inference_precision(
            cfg.actor.inference_precision)
        self._rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
        self._h, self._c = self.network.initial_state(self.num_envs, device="cpu")
        self._prev_action = np.zeros(self.num_envs, dtype=np.int64)
        self._prev_reward = np.zeros(self.num_envs, dtype=np.float32)
        self._awaiting_reward = False

    def act(self, obs: np.ndarray, first: np.ndarray) -> ActOutput:
        """One batched forward (``T = 1``) and epsilon-greedy actions.

        Args:
          obs: ``<uint8|float32>[N, *obs_shape]`` observations ``o_t``.
          first: ``<bool>[N]`` True where ``o_t`` starts an episode: that env's
            state, previous action and previous reward are zeroed first.

        Returns:
          An ``ActOutput``.

        Raises:
          RuntimeError: if the previous ``act`` was not followed by ``observe``.
          ValueError: on shapes that do not match ``N``.
        """
        if self._awaiting_reward:
            raise RuntimeError("ActorPolicy.act called twice without observe(reward) between")
        obs = np.asarray(obs)
        first = np.asarray(first, dtype=bool)
        if obs.shape[:1] != (self.num_envs,) or first.shape != (self.num_envs,):
            raise ValueError(f"expected obs [{self.num_envs}, ...] and first [{self.num_envs}], "
                             f"got {obs.shape} and {first.shape}")
        reset = torch.from_numpy(first)
        keep = (~reset).unsqueeze(-1)
        h = torch.where(keep, self._h, torch.zeros_like(self._h))
        c = torch.where(keep, self._c, torch.zeros_like(self._c))
        prev_action = np.where(first, 0, self._prev_action).astype(np.int64)
        prev_reward = np.where(first, 0.0, self._prev_reward).astype(np.float32)

        cast = self.autocast_dtype
        precision = (torch.autocast("cpu", dtype=cast) if cast is not None
                     else contextlib.nullcontext())
        with torch.inference_mode(), precision:
            q, (h_next, c_next) = self.network(
                torch.from_numpy(np.ascontiguousarray(obs)).unsqueeze(0),
                torch.from_numpy(prev_action).unsqueeze(0),
                torch.from_numpy(prev_reward).unsqueeze(0),
                None, (h, c))
        q_np = q[0].float().numpy().astype(np.float32, copy=True)

        greedy_action = np.argmax(q_np, axis=-1).astype(np.int64)
        explore = self._rng.random(self.num_envs) < self.epsilons
        random_action = self._rng.integers(self.num_actions, size=self.num_envs)
        action = np.where(explore, random_action, greedy_action).astype(np.int64)

        store_h, store_c = self.network.stored_state((h, c))
        out = ActOutput(action=action, q=q_np, state_h=store_h.numpy().copy(),
                        state_c=store_c.numpy().copy(), prev_action=prev_action,
                        prev_reward=prev_reward, greedy=~explore)
        self._h = h_next.to(torch.float32, copy=True)
        self._c = c_next.to(torch.float32, copy=True)
        self._prev_action = action.copy()
        self._awaiting_reward = True
        return out

    def observe(self, reward: np.ndarray) -> None:
        """Records ``r_t``, the reward after this step's action, per env.

        Args:
          reward: ``<float>[N]``; becomes the next step's ``prev_reward``
            (unless that step has ``first``).
        """
        reward = np.asarray(reward, dtype=np.float32)
        if reward.shape != (self.num_envs,):
            raise ValueError(f"reward must have shape ({self.num_envs},), got {reward.shape}")
        self._prev_reward = reward.copy()
        self._awaiting_reward = False

    def load_flat_params(self, flat: np.ndarray, version: int) -> None:
        """Loads a ``Learner.flat_params`` buffer (the parameter publication).

        The recurrent states are kept: the actor continues its episodes with
        the new parameters, as the paper's actors do.

        Args:
          flat: ``<float32>[num_params]``.
          version: the learner's ``params_version`` of these parameters.

        Raises:
          ValueError: if ``flat`` is not ``[num_params]``.
        """
        load_flat_array(self._params, flat)
        self.params_version = int(version)

    def flat_params(self) -> np.ndarray:
        """The policy's parameters as ``<float32>[num_params]`` (same layout as the learner's)."""
        return to_flat_array(self._params)

    @property
    def state(self) -> Tuple[np.ndarray, np.ndarray]:
        """Current recurrent state ``(h, c)``, each ``<float32>[N, H]`` (a copy)."""
        return self._h.numpy().copy(), self._c.numpy().copy()

    def reset(self, env_index: Optional[np.ndarray] = None) -> None:
        """Zeros state, previous action and reward of some envs (default: all).

        ``act`` does this itself at ``first``; this is for a caller that drops
        an episode without a new observation (e.g. on a parameter reload at
        startup).

        Args:
          env_index: indices or a ``<bool>[N]`` mask; None = every env.
        """
        idx = slice(None) if env_index is None else np.asarray(env_index)
        tidx = idx if env_index is None else torch.as_tensor(idx)
        self._h[tidx] = 0.0
        self._c[tidx] = 0.0
        self._prev_action[idx] = 0
        self._prev_reward[idx] = 0.0

"""The R2D2 recurrent Q-network (Kapturowski et al., ICLR 2019, section 2 and appendix).

Layout, time first (``[T, B, ...]``) as everywhere in ``r2d2_hpc``::

    obs_t ──torso──► x_t ─┬─ concat(x_t, onehot(a_{t-1}), r_{t-1}) ──core──► y_t ──(+ P x_t)──► head ──► Q(o_t, ·)
                          └──────────────────────── res_link only ─────────────────┘

* torso: the Nature DQN convolutions (Mnih et al., 2015) for ``<uint8>[C, H, W]`` frame
  stacks, or an MLP for vector observations;
* core: an LSTM with 512 units (paper: "LSTM with 512 units"), or, for the paper's
  feed-forward ablation, a Linear+ReLU of the same width whose recurrent state is
  passed through untouched, or a Gated Transformer-XL (``agent.gtrxl``; Parisotto
  et al., 2019) whose memory is packed into the same ``(h, c)`` pair;
* head: dueling (Wang et al., 2016), ``Q = V + A - mean_a A``, or a plain linear layer.

Episode boundaries inside an unrolled sequence are handled by ``first``: where
``first[t, b]`` is True, the recurrent state of batch element ``b`` is set to zeros
*before* step ``t`` is processed. The unroll splits the sequence at the time steps
where any element resets and calls ``nn.LSTM`` once per segment (a single cuDNN call
when no reset happens after ``t = 0``)::

    t        0  1  2  3  4  5  6  7
    first b0 F  F  F  T  F  F  F  F
    first b1 T  F  F  F  F  T  F  F
    segments [0 ...... 3)[3 ... 5)[5 .. 8)     (3 nn.LSTM calls)

The GTrXL masks attention across ``first`` instead, in one call.

What the replay keeps of the state at a sequence start is ``stored_state`` of the
core's state (the state itself, or, for gtrxl's ``zero`` start state, a ``[B, 1]``
zero); the learner turns it back into the core's start state with ``start_state``.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from r2d2_hpc.agent.gtrxl import GTrXLCore
from r2d2_hpc.config import CORES, TORSOS, NetworkConfig

#: Recurrent state of the core as torch tensors, ``(h, c)``, each ``<float32>[B, H]``
#: (the numpy counterpart is ``r2d2_hpc.types.RecurrentState``).
TorchState = Tuple[torch.Tensor, torch.Tensor]

#: Nature DQN convolutions: (out_channels, kernel, stride).
NATURE_CONVS: Tuple[Tuple[int, int, int], ...] = ((32, 8, 4), (64, 4, 2), (64, 3, 1))
#: Width of the linear layer after the Nature DQN convolutions.
ATARI_TORSO_WIDTH = 512
#: Small-screen convolutions of OpenAI's universe-starter-agent (``model.py``):
#: this many layers of 32 filters, 3x3, stride 2, 'same' padding ELU.
UNIVERSE_LAYERS = 4
UNIVERSE_CHANNELS = 32


def dueling_combine(value: torch.Tensor, advantage: torch.Tensor) -> torch.Tensor:
    """Combines the dueling streams into Q-values (Wang et al., 2016, eq. 9).

    ``Q(s, a) = V(s) + A(s, a) - 1/|A| sum_a' A(s, a')``

    Args:
      value: ``<float32>[..., 1]`` state value ``V``.
      advantage: ``<float32>[..., num_actions]`` advantages ``A``.

    Returns:
      ``<float32>[..., num_actions]`` Q-values; ``mean_a Q = V``.
    """
    return value + advantage - advantage.mean(dim=-1, keepdim=True)


def reset_state(state: TorchState, first: torch.Tensor) -> TorchState:
    """Zeros the recurrent state of the batch elements that start an episode.

    ``h'_b = 0 if first_b else h_b`` (same for ``c``).

    Args:
      state: ``(h, c)``, each ``<float32>[B, H]``.
      first: ``<bool>[B]`` True where the element starts a new episode.

    Returns:
      ``(h', c')``, each ``<float32>[B, H]``.
    """
    keep = ~first.to(device=state[0].device, dtype=torch.bool).unsqueeze(-1)
    h, c = state
    # torch.where rather than a 0/1 product: exact zeros even if h holds inf/nan.
    return torch.where(keep, h, torch.zeros_like(h)), torch.where(keep, c, torch.zeros_like(c))


def segment_starts(first: torch.Tensor) -> List[int]:
    """Start indices of the segments an unroll is split into.

    A segment starts at ``t = 0`` and at every ``t > 0`` where some batch element has
    ``first[t, b]`` True.

    Args:
      first: ``<bool>[T, B]``.

    Returns:
      Sorted start indices, always beginning with 0, e.g. ``[0, 3, 5]`` for the
      example in the module docstring.
    """
    if first.shape[0] <= 1:
        return [0]
    later = first[1:].any(dim=1).nonzero().flatten() + 1
    return [0] + [int(t) for t in later.tolist()]


def conv_output_hw(height: int, width: int) -> Tuple[int, int]:
    """Spatial size after the Nature DQN convolutions (no padding).

    ``out = (in - kernel) // stride + 1`` per layer; 84x84 gives 7x7.

    Args:
      height: input height.
      width: input width.

    Returns:
      ``(height, width)`` of the last convolution's output.

    Raises:
      ValueError: if the input is too small for the kernels (below 36x36).
    """
    h, w = height, width
    for _, kernel, stride in NATURE_CONVS:
        if h < kernel or w < kernel:
            raise ValueError(
                f"observation {height}x{width} is too small for the Nature DQN "
                f"convolutions (needs at least 36x36)")
        h, w = (h - kernel) // stride + 1, (w - kernel) // stride + 1
    return h, w


def _to_float(obs: torch.Tensor) -> torch.Tensor:
    """``uint8`` pixels are scaled by 1/255 into [0, 1]; other dtypes are cast as is."""
    if obs.dtype == torch.uint8:
        return obs.float().mul_(1.0 / 255.0)  # one pass over the fresh copy
    return obs.float()


def _chw(obs_shape: Tuple[int, ...], torso: str) -> Tuple[int, int, int]:
    """``obs_shape`` as ``(C, H, W)``; ValueError naming ``torso`` if it is not 3-D."""
    if len(obs_shape) != 3:
        raise ValueError(f"{torso} torso needs a (C, H, W) observation, got {obs_shape}")
    channels, height, width = obs_shape
    return int(channels), int(height), int(width)


class AtariTorso(nn.Module):
    """Nature DQN torso: conv 32 8x8/4, conv 64 4x4/2, conv 64 3x3/1, linear 512, ReLUs.

    Input ``<uint8>[N, C, H, W]`` is scaled by 1/255; floating input is taken to be
    already in [0, 1]. Output ``<float32>[N, 512]``.
    """

    def __init__(self, obs_shape: Tuple[int, ...]) -> None:
        """Args:
          obs_shape: ``(C, H, W)``, e.g. ``(4, 84, 84)``.
        """
        super().__init__()
        channels, height, width = _chw(obs_shape, "atari")
        out_h, out_w = conv_output_hw(height, width)
        layers: List[nn.Module] = []
        in_ch = channels
        for out_ch, kernel, stride in NATURE_CONVS:
            layers += [nn.Conv2d(in_ch, out_ch, kernel, stride), nn.ReLU()]
            in_ch = out_ch
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(in_ch * out_h * out_w, ATARI_TORSO_WIDTH)
        self.output_size = ATARI_TORSO_WIDTH

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Args:
          obs: ``<uint8|float32>[N, C, H, W]``.

        Returns:
          ``<float32>[N, 512]``.
        """
        x = self.convs(_to_float(obs))
        return F.relu(self.linear(x.flatten(start_dim=1)))


class UniverseTorso(nn.Module):
    """Small-screen torso: 4 x (conv 32 3x3/2, padding 1, ELU), flattened (ours, not R2D2's).

    The convolutions of OpenAI's universe-starter-agent (``model.py``), which
    learned Pong from 42x42 frames. At 42x42 they keep a 3x3 grid (288
    features), where the Nature convolutions end at 1x1 and lose where the ball
    is: on a fixed batch of real Pong sequences the Nature torso's loss stalls
    after a ~5x fall, this one's falls by over 100x (docs/decisions.md). No
    linear layer: the grid goes to the core as is, as in the starter agent. ELU as
    there: with ReLU the same fit fell only 4.5x. The frames go in channels-last:
    on one core of this machine's CPU (oneDNN) that makes the torso's forward
    and backward over 1,040 42x42 stacks 1.45x faster (1.05 s -> 0.73 s).

    Input ``<uint8>[N, C, H, W]`` is scaled by 1/255. Output
    ``<float32>[N, 32 * ceil(H/16) * ceil(W/16)]``.
    """

    def __init__(self, obs_shape: Tuple[int, ...]) -> None:
        """Args:
          obs_shape: ``(C, H, W)``, e.g. ``(4, 42, 42)``.
        """
        super().__init__()
        in_ch, height, width = _chw(obs_shape, "universe")
        layers: List[nn.Module] = []
        for _ in range(UNIVERSE_LAYERS):
            layers += [nn.Conv2d(in_ch, UNIVERSE_CHANNELS, 3, 2, padding=1), nn.ELU()]
            in_ch = UNIVERSE_CHANNELS
            height, width = (height + 1) // 2, (width + 1) // 2
        self.convs = nn.Sequential(*layers)
        self.output_size = UNIVERSE_CHANNELS * height * width

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Args:
          obs: ``<uint8|float32>[N, C, H, W]``.

        Returns:
          ``<float32>[N, output_size]``.
        """
        x = _to_float(obs).contiguous(memory_format=torch.channels_last)
        return self.convs(x).flatten(start_dim=1)


class MLPTorso(nn.Module):
    """MLP torso for vector observations: ``Linear + ReLU`` per entry of ``hidden``.

    Input ``<float32>[N, *obs_shape]`` (flattened; ``uint8`` is scaled by 1/255),
    output ``<float32>[N, hidden[-1]]`` (the flattened input if ``hidden`` is empty).
    """

    def __init__(self, obs_shape: Tuple[int, ...], hidden: Tuple[int, ...]) -> None:
        """Args:
          obs_shape: observation shape, e.g. ``(D,)``.
          hidden: layer widths, e.g. ``(256, 256)``.
        """
        super().__init__()
        in_size = 1
        for dim in obs_shape:
            in_size *= int(dim)
        layers: List[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_size, int(width)), nn.ReLU()]
            in_size = int(width)
        self.layers = nn.Sequential(*layers)
        self.output_size = in_size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Args:
          obs: ``<float32|uint8>[N, *obs_shape]``.

        Returns:
          ``<float32>[N, output_size]``.
        """
        return self.layers(_to_float(obs).flatten(start_dim=1))


class R2D2Network(nn.Module):
    """Recurrent dueling Q-network of R2D2, unrolled over ``[T, B, ...]`` sequences.

    Attributes:
      num_actions: size of the action set.
      torso: ``AtariTorso``, ``UniverseTorso`` or ``MLPTorso``.
      core_input_size: torso width + ``num_actions`` (prev action) + 1 (prev reward).
      core_output_size: width of the core's output (``lstm_size`` or ``gtrxl_dim``).
      core_state_size: width of each of ``h`` and ``c`` while the core runs
        (``cfg.core_state_size``).
      state_size: ``H``, the width of the stored ``state_h``/``state_c`` the replay
        keeps (``cfg.stored_state_size``; the core's unless gtrxl's ``zero`` start state).
    """

    def __init__(self, obs_shape: Tuple[int, ...], num_actions: int,
                 cfg: "NetworkConfig") -> None:
        """Args:
          obs_shape: shape of one observation, ``(C, H, W)`` for frame stacks or
            ``(D,)`` for vectors.
          num_actions: number of discrete actions.
          cfg: network configuration. With ``res_link`` the torso output is added to
            the core output; when their widths differ the torso output goes through
            a linear projection (no bias) first, otherwise it is added unchanged.
        """
        super().__init__()
        obs_shape = tuple(int(d) for d in obs_shape)
        errors = []
        if num_actions < 1:
            errors.append(f"num_actions must be >= 1, got {num_actions}")
        if cfg.torso not in TORSOS:
            errors.append(f"torso must be one of {', '.join(TORSOS)}, got {cfg.torso!r}")
        if cfg.core not in CORES:
            errors.append(f"core must be one of {', '.join(CORES)}, got {cfg.core!r}")
        if cfg.lstm_size < 1:
            errors.append(f"lstm_size must be >= 1, got {cfg.lstm_size}")
        if cfg.core == "gtrxl" and (min(cfg.gtrxl_layers, cfg.gtrxl_heads, cfg.gtrxl_dim,
                                        cfg.gtrxl_memory_length) < 1
                                    or cfg.gtrxl_dim % cfg.gtrxl_heads):
            errors.append("gtrxl sizes must be >= 1 with gtrxl_heads dividing gtrxl_dim")
        if cfg.dueling and cfg.head_hidden < 1:
            errors.append(f"head_hidden must be >= 1, got {cfg.head_hidden}")
        if errors:
            raise ValueError("invalid network config: " + "; ".join(errors))

        self.obs_shape = obs_shape
        self.num_actions = int(num_actions)
        self.cfg = cfg
        torso = cfg.torso
        if torso == "auto":
            torso = "atari" if len(obs_shape) == 3 else "mlp"
        self.torso_kind = torso
        self.torso: nn.Module
        if torso == "atari":
            self.torso = AtariTorso(obs_shape)
        elif torso == "universe":
            self.torso = UniverseTorso(obs_shape)
        else:
            self.torso = MLPTorso(obs_shape, tuple(cfg.mlp_hidden))
        torso_size: int = self.torso.output_size

        self.core_input_size = (torso_size + (self.num_actions if cfg.use_prev_action else 0)
                                + (1 if cfg.use_prev_reward else 0))
        self.core_state_size = int(cfg.core_state_size)
        self.state_size = int(cfg.stored_state_size)
        self._empty_start = cfg.core == "gtrxl" and cfg.gtrxl_start_state == "zero"
        self.lstm: Optional[nn.LSTM] = None
        self.feedforward: Optional[nn.Linear] = None
        self.gtrxl: Optional[GTrXLCore] = None
        if cfg.core == "lstm":
            self.lstm = nn.LSTM(self.core_input_size, self.core_state_size)
        elif cfg.core == "gtrxl":
            self.gtrxl = GTrXLCore(self.core_input_size, cfg.gtrxl_layers, cfg.gtrxl_heads,
                                   cfg.gtrxl_dim, cfg.gtrxl_memory_length, cfg.gtrxl_gate_bias,
                                   self.core_state_size)
        else:
            self.feedforward = nn.Linear(self.core_input_size, self.core_state_size)
        self.core_output_size = int(cfg.gtrxl_dim if cfg.core == "gtrxl" else cfg.lstm_size)
        width = self.core_output_size

        self.res_proj: Optional[nn.Linear] = None
        if cfg.res_link and torso_size != width:
            self.res_proj = nn.Linear(torso_size, width, bias=False)

        if cfg.dueling:
            self.value_head: Optional[nn.Sequential] = nn.Sequential(
                nn.Linear(width, cfg.head_hidden), nn.ReLU(),
                nn.Linear(cfg.head_hidden, 1))
            self.advantage_head: Optional[nn.Sequential] = nn.Sequential(
                nn.Linear(width, cfg.head_hidden), nn.ReLU(),
                nn.Linear(cfg.head_hidden, self.num_actions))
            self.q_head: Optional[nn.Linear] = None
        else:
            self.value_head = None
            self.advantage_head = None
            self.q_head = nn.Linear(width, self.num_actions)

    def initial_state(self, batch_size: int,
                      device: Optional[torch.device | str] = None) -> TorchState:
        """Zero recurrent state (for gtrxl: the empty memory).

        Args:
          batch_size: ``B``.
          device: where to allocate (default: the device of the parameters).

        Returns:
          ``(h, c)``, each ``<float32>[B, core_state_size]`` of zeros.
        """
        if device is None:
            device = next(self.parameters()).device
        zeros = torch.zeros(batch_size, self.core_state_size, device=device)
        return zeros, zeros.clone()

    def stored_state(self, state: TorchState) -> TorchState:
        """What the replay keeps of the core's state at a sequence start.

        The state itself (R2D2's stored state), or, for gtrxl with
        ``gtrxl_start_state: zero``, ``[B, 1]`` zeros: nothing of the memory is
        kept, and ``start_state`` starts the learner from an empty one.

        Args:
          state: ``(h, c)``, each ``<float32>[B, core_state_size]``.

        Returns:
          ``(h, c)``, each ``<float32>[B, state_size]``.
        """
        if not self._empty_start:
            return state
        zeros = state[0].new_zeros(state[0].shape[0], self.state_size)
        return zeros, zeros.clone()

    def start_state(self, stored: TorchState) -> TorchState:
        """The core's state to unroll a replayed sequence from (inverse of ``stored_state``).

        Args:
          stored: ``(state_h, state_c)``, each ``<float32>[B, state_size]``.

        Returns:
          ``(h, c)``, each ``<float32>[B, core_state_size]``: ``stored`` itself, or
          the empty memory for gtrxl's ``zero`` start state.
        """
        if not self._empty_start:
            return stored
        return self.initial_state(stored[0].shape[0], device=stored[0].device)

    def embed(self, obs: torch.Tensor, prev_action: Optional[torch.Tensor],
              prev_reward: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        """Torso output and core input for a whole sequence.

        Args:
          obs: ``<uint8|float32>[T, B, *obs_shape]``.
          prev_action: ``<int64>[T, B]`` (required if ``cfg.use_prev_action``).
          prev_reward: ``<float32>[T, B]`` (required if ``cfg.use_prev_reward``).

        Returns:
          ``(torso_out <float32>[T, B, torso], core_in <float32>[T, B, core_input_size])``.
        """
        t_len, batch = obs.shape[0], obs.shape[1]
        torso_out = self.torso(obs.reshape(t_len * batch, *obs.shape[2:]))
        torso_out = torso_out.reshape(t_len, batch, -1)
        parts = [torso_out]
        if self.cfg.use_prev_action:
            if prev_action is None:
                raise ValueError("prev_action is required when cfg.use_prev_action is set")
            parts.append(F.one_hot(prev_action.long(), self.num_actions).to(torso_out.dtype))
        if self.cfg.use_prev_reward:
            if prev_reward is None:
                raise ValueError("prev_reward is required when cfg.use_prev_reward is set")
            parts.append(prev_reward.to(torso_out.dtype).unsqueeze(-1))
        core_in = torch.cat(parts, dim=-1) if len(parts) > 1 else torso_out
        return torso_out, core_in

    def unroll_core(self, core_in: torch.Tensor, first: Optional[torch.Tensor],
                    state: TorchState) -> Tuple[torch.Tensor, TorchState]:
        """Runs the core over a sequence with in-sequence resets.

        ``state_t = 0 if first_t else state_{t-1}`` before step ``t``; the LSTM runs
        once per segment (see ``segment_starts``). The feed-forward core ignores the
        state and returns it unchanged. The GTrXL masks its memory at ``first``
        (``gtrxl.attention_mask``), which is the same as zeroing its state there.

        Args:
          core_in: ``<float32>[T, B, core_input_size]``.
          first: ``<bool>[T, B]`` or None (no resets).
          state: ``(h, c)``, each ``<float32>[B, core_state_size]``, the state
            before step 0.

        Returns:
          ``(core_out <float32>[T, B, core_output_size], (h, c))`` with the state
          after step ``T-1``.
        """
        if self.feedforward is not None:
            return F.relu(self.feedforward(core_in)), state
        if self.gtrxl is not None:
            return self.gtrxl(core_in, first, state)
        assert self.lstm is not None
        if first is None:
            starts = [0]
        else:
            first = first.to(device=core_in.device, dtype=torch.bool)
            starts = segment_starts(first)
        t_len = core_in.shape[0]
        ends = starts[1:] + [t_len]
        outputs = []
        h, c = state
        for start, end in zip(starts, ends):
            if first is not None:
                h, c = reset_state((h, c), first[start])
            out, (h_n, c_n) = self.lstm(core_in[start:end], (h.unsqueeze(0), c.unsqueeze(0)))
            outputs.append(out)
            h, c = h_n.squeeze(0), c_n.squeeze(0)
        core_out = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=0)
        return core_out, (h, c)

    def dueling_streams(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Value and advantage streams of the dueling head.

        Args:
          x: ``<float32>[..., core_output_size]`` core output (after the residual link).

        Returns:
          ``(V <float32>[..., 1], A <float32>[..., num_actions])``.
        """
        if self.value_head is None or self.advantage_head is None:
            raise RuntimeError("dueling_streams needs cfg.dueling")
        return self.value_head(x), self.advantage_head(x)

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Q-values from the core output.

        Args:
          x: ``<float32>[..., core_output_size]``.

        Returns:
          ``<float32>[..., num_actions]``: ``V + A - mean_a A`` (dueling) or ``W x + b``.
        """
        if self.q_head is not None:
            return self.q_head(x)
        return dueling_combine(*self.dueling_streams(x))

    def forward(self, obs: torch.Tensor, prev_action: Optional[torch.Tensor],
                prev_reward: Optional[torch.Tensor], first: Optional[torch.Tensor],
                state: Optional[TorchState] = None, *,
                core_float32: bool = False) -> Tuple[torch.Tensor, TorchState]:
        """Unrolls the network over a sequence: torso, core, residual link, head.

        The only composition of the network; the learner's mixed precision calls
        it inside a ``torch.autocast`` region (``agent.learner.mixed_precision_forward``).

        Args:
          obs: ``<uint8>[T, B, C, H, W]`` frame stacks (scaled by 1/255 here) or
            ``<float32>[T, B, D]`` vectors.
          prev_action: ``<int64>[T, B]`` action at ``t-1`` (ignored unless
            ``cfg.use_prev_action``).
          prev_reward: ``<float32>[T, B]`` reward at ``t-1`` (ignored unless
            ``cfg.use_prev_reward``).
          first: ``<bool>[T, B]``, True where step ``t`` starts an episode: the state
            is zeroed before step ``t``. None means no resets.
          state: ``(h, c)``, each ``<float32>[B, core_state_size]``, before step 0;
            None means zeros.
          core_float32: run the core with autocast disabled, on its input and
            state cast to float32 (inside an autocast region; outside one it
            changes nothing).

        Returns:
          ``(q <float32>[T, B, num_actions], (h, c))`` with ``(h, c)`` the state after
          the last step (in the region's dtypes under autocast).
        """
        if obs.dim() < 3:
            raise ValueError(f"obs must be [T, B, *obs_shape], got shape {tuple(obs.shape)}")
        if state is None:
            state = self.initial_state(obs.shape[1], device=obs.device)
        torso_out, core_in = self.embed(obs, prev_action, prev_reward)
        if core_float32:
            with torch.autocast(obs.device.type, enabled=False):
                core_out, new_state = self.unroll_core(
                    core_in.float(), first, (state[0].float(), state[1].float()))
        else:
            core_out, new_state = self.unroll_core(core_in, first, state)
        if self.cfg.res_link:
            core_out = core_out + (self.res_proj(torso_out) if self.res_proj is not None
                                   else torso_out)
        return self.head(core_out), new_state

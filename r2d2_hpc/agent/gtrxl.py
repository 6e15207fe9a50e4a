"""The Gated Transformer-XL core (GTrXL; Parisotto et al., 2019, "Stabilizing
Transformers for Reinforcement Learning"), a recurrent function beside the LSTM.

Each layer ``l`` keeps a memory ``m_l``: its own inputs at the last ``M`` steps
(Transformer-XL's cached hidden states). A step's layer input ``x`` attends over
``[m_l; x]`` with relative positions, and the layer is, as in the paper (eq. 1-4
and the GRU gate of section 3.2)::

    ȳ = RelMHA(LN([m_l; x]))                    layer norm on the sublayer input
    y = g(x, ReLU(ȳ))                           gate instead of the residual x + ȳ
    ē = MLP(LN(y))
    e = g(y, ReLU(ē))                           the layer's output, layer l+1's input

    g(x, y) = (1 - z) * x + z * ĥ,  r = σ(W_r y + U_r x),  z = σ(W_z y + U_z x - b_g),
    ĥ = tanh(W_g y + U_g (r * x))

with ``b_g`` initialised to ``network.gtrxl_gate_bias`` (paper: 2), so that ``z``
starts near 0 and every layer near the identity. Relative attention is
Transformer-XL's (Dai et al., 2019, section 3.3): ``score(i, j) = (q_i + u)·k_j +
(q_i + v)·W_R R_{i-j}`` with sinusoidal ``R`` and learned ``u``, ``v``.

Where we depart from the paper, and why:

* **A sliding window.** Every query attends to exactly the ``M`` steps before it
  and itself, in the memory or in the unrolled sequence alike. Transformer-XL
  lets a segment's queries see the whole memory plus the segment so far, so what
  a step sees would depend on where the segment boundaries fall; R2D2's actor
  runs ``T = 1`` steps and its learner ``T = 120``, and both must compute the
  same function of the episode (tested: step-by-step equals one unroll).
* **Episode boundaries.** Where ``first[t, b]``, nothing before step ``t`` is
  attended to from ``t`` on, as the LSTM's state is zeroed there (tested:
  observations before a boundary change no output after it). Entries that can
  never be attended to again are zeroed in the carried memory.
* **The state is packed into the LSTM's** ``(h, c)``: the memory
  ``<float32>[L, M, B, D]`` and its validity flags ``<bool>[B, M]`` as one flat
  vector per batch element, split in two halves (``pack_memory``), so the
  actor, the sequence adder, the replay and the wire carry it unchanged
  (docs/decisions.md). Zeros are the empty memory, so zeroing a state at
  ``first`` means the same as for the LSTM.
* **Sizes.** Ours are small (``network.gtrxl_*``); the paper's DMLab-30 agent
  has 12 layers of width 256, 8 heads and a memory of 512. The embedding is one
  linear layer; the position-wise MLP has the layer's width.

Shapes are time first, ``[T, B, ...]``, as everywhere in ``r2d2_hpc``.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

#: Core state as ``(h, c)``, each ``<float32>[B, H]`` (the same type as the LSTM's).
TorchState = Tuple[torch.Tensor, torch.Tensor]


def relative_positions(max_distance: int, dim: int) -> torch.Tensor:
    """Sinusoidal encodings ``R_d`` of the distances ``d = 0 .. max_distance``.

    ``R_d[2k] = sin(d / 10000^(2k/D))``, ``R_d[2k+1] = cos(d / 10000^(2k/D))``
    (Vaswani et al., 2017, section 3.5; Transformer-XL uses them for ``i - j``).

    Args:
      max_distance: the largest distance, ``M``.
      dim: ``D``.

    Returns:
      ``<float32>[max_distance + 1, dim]``; row ``d`` encodes distance ``d``.
    """
    distance = torch.arange(max_distance + 1, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(max_distance + 1, dim)
    enc[:, 0::2] = torch.sin(distance * freq)
    enc[:, 1::2] = torch.cos(distance * freq[: dim // 2])
    return enc


def attention_mask(first: torch.Tensor,
                   valid: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Which keys each step may attend to, and which memory entries stay valid.

    The keys are the timeline ``[memory (M steps, oldest first); sequence (T steps)]``,
    positions ``p = 0 .. M+T-1``; step ``t`` is at ``q = M + t``. Key ``p`` is
    allowed for step ``t`` iff

    * ``q - M <= p <= q`` (the sliding window: the ``M`` steps before and itself),
    * ``p`` is a sequence step or a valid memory entry (``valid[b, p]``),
    * ``p`` is not before the latest ``first`` at or before ``q``.

    For example ``M = 2``, ``T = 4``, no valid memory and ``first`` at ``t = 2``::

        key p      0  1  2  3  4  5        (0, 1: memory; 2..5: t = 0..3)
        t = 0      .  .  x  .  .  .
        t = 1      .  .  x  x  .  .
        t = 2      .  .  .  .  x  .        first: the episode starts here
        t = 3      .  .  .  .  x  x
        carried valid (p = 4, 5): [True, True]

    Args:
      first: ``<bool>[T, B]``, True where step ``t`` starts an episode.
      valid: ``<bool>[B, M]`` validity of the incoming memory entries.

    Returns:
      ``(allowed <bool>[B, T, M+T], valid_out <bool>[B, M])``: ``valid_out`` flags
      the last ``M`` positions of the timeline that a later step may still see
      (after the last ``first``, and valid).
    """
    batch, mem = valid.shape
    device = valid.device
    steps = first.shape[0]
    keys = mem + steps
    pos = torch.arange(keys, device=device)
    query = pos[mem:]
    key_ok = torch.cat([valid.bool(), torch.ones(batch, steps, dtype=torch.bool,
                                                 device=device)], dim=1)       # [B, K]
    # Position where the episode of each step starts (0: before the timeline).
    marks = torch.where(first.to(device=device, dtype=torch.bool).t(), query.unsqueeze(0),
                        torch.zeros_like(query).unsqueeze(0))                  # [B, T]
    episode_start = marks.cummax(dim=1).values                                 # [B, T]
    window = (pos.unsqueeze(0) <= query.unsqueeze(1)) & (pos.unsqueeze(0) >= query.unsqueeze(1)
                                                         - mem)                # [T, K]
    allowed = (window.unsqueeze(0) & key_ok.unsqueeze(1)
               & (pos.view(1, 1, keys) >= episode_start.unsqueeze(2)))
    kept = pos[steps:]
    valid_out = key_ok[:, steps:] & (kept.unsqueeze(0) >= episode_start[:, -1:])
    return allowed, valid_out


def key_distances(steps: int, memory_length: int, device: torch.device) -> torch.Tensor:
    """Distance from each step to each key of its timeline, clamped to ``[0, M]``.

    ``d(t, p) = M + t - p`` (``relative_positions`` row); outside the window
    ``attention_mask`` masks the key anyway.

    Args:
      steps: ``T``.
      memory_length: ``M``.
      device: where to allocate.

    Returns:
      ``<int64>[T, M+T]``.
    """
    step = torch.arange(steps, device=device).unsqueeze(1)
    key = torch.arange(memory_length + steps, device=device).unsqueeze(0)
    return (step + memory_length - key).clamp(0, memory_length)


def pack_memory(memory: torch.Tensor, valid: torch.Tensor, state_size: int) -> TorchState:
    """The memory and its validity flags as one ``(h, c)`` pair.

    Per batch element, the flat vector ``[memory[0, 0], ..., memory[L-1, M-1],
    valid[0 .. M-1] as 0.0/1.0]`` (length ``L*M*D + M``), zero-padded to
    ``2 * state_size``; ``h`` is its first half, ``c`` its second.

    Args:
      memory: ``<float>[L, M, B, D]``, oldest entry first.
      valid: ``<bool>[B, M]``.
      state_size: ``H`` (``NetworkConfig.core_state_size``).

    Returns:
      ``(h, c)``, each ``<float>[B, H]`` in ``memory``'s dtype.

    Raises:
      ValueError: if the flat vector does not fit in ``2 * state_size``.
    """
    layers, mem, batch, dim = memory.shape
    flat = torch.cat([memory.permute(2, 0, 1, 3).reshape(batch, layers * mem * dim),
                      valid.to(memory.dtype)], dim=1)
    pad = 2 * state_size - flat.shape[1]
    if pad < 0:
        raise ValueError(f"a memory of {flat.shape[1]} values does not fit in 2 x {state_size}")
    flat = F.pad(flat, (0, pad))
    return flat[:, :state_size], flat[:, state_size:]


def unpack_memory(state: TorchState, layers: int, memory_length: int,
                  dim: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inverse of ``pack_memory``.

    Args:
      state: ``(h, c)``, each ``<float>[B, H]``; zeros are the empty memory.
      layers: ``L``.
      memory_length: ``M``.
      dim: ``D``.

    Returns:
      ``(memory <float>[L, M, B, D], valid <bool>[B, M])``.
    """
    flat = torch.cat(state, dim=1)
    batch = flat.shape[0]
    size = layers * memory_length * dim
    memory = flat[:, :size].reshape(batch, layers, memory_length, dim).permute(1, 2, 0, 3)
    valid = flat[:, size:size + memory_length] > 0.5
    return memory, valid


class GRUGate(nn.Module):
    """GTrXL's GRU-type gate ``g(x, y)`` (Parisotto et al., 2019, section 3.2).

    ``r = σ(W_r y + U_r x)``, ``z = σ(W_z y + U_z x - b_g)``,
    ``ĥ = tanh(W_g y + U_g (r * x))``, ``g = (1 - z) * x + z * ĥ``; ``b_g`` is a
    learned ``<float32>[D]`` initialised to ``gate_bias``.
    """

    def __init__(self, dim: int, gate_bias: float) -> None:
        """Args:
          dim: ``D``.
          gate_bias: initial ``b_g`` (paper: 2; larger starts nearer the identity).
        """
        super().__init__()
        self.from_y = nn.Linear(dim, 3 * dim, bias=False)   # W_r, W_z, W_g
        self.from_x = nn.Linear(dim, 2 * dim, bias=False)   # U_r, U_z
        self.reset_x = nn.Linear(dim, dim, bias=False)      # U_g
        self.gate_bias = nn.Parameter(torch.full((dim,), float(gate_bias)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Args:
          x: ``<float>[..., D]`` the stream (what the residual would carry).
          y: ``<float>[..., D]`` the sublayer's output.

        Returns:
          ``<float>[..., D]``.
        """
        wr, wz, wg = self.from_y(y).chunk(3, dim=-1)
        ur, uz = self.from_x(x).chunk(2, dim=-1)
        r = torch.sigmoid(wr + ur)
        z = torch.sigmoid(wz + uz - self.gate_bias)
        h = torch.tanh(wg + self.reset_x(r * x))
        return (1.0 - z) * x + z * h


class GTrXLLayer(nn.Module):
    """One GTrXL layer: gated relative multi-head attention, then a gated MLP."""

    def __init__(self, dim: int, heads: int, gate_bias: float) -> None:
        """Args:
          dim: ``D``, divisible by ``heads``.
          heads: attention heads.
          gate_bias: initial ``b_g`` of both gates.
        """
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.attn_norm = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim, bias=False)
        self.key_value = nn.Linear(dim, 2 * dim, bias=False)
        self.position = nn.Linear(dim, dim, bias=False)                      # W_R
        self.content_bias = nn.Parameter(torch.zeros(heads, self.head_dim))  # u
        self.position_bias = nn.Parameter(torch.zeros(heads, self.head_dim))  # v
        self.attn_out = nn.Linear(dim, dim)
        self.attn_gate = GRUGate(dim, gate_bias)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.mlp_gate = GRUGate(dim, gate_bias)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, allowed: torch.Tensor,
                distance: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Args:
          x: ``<float>[T, B, D]`` the layer's input over the sequence.
          memory: ``<float>[M, B, D]`` its inputs at the ``M`` steps before.
          allowed: ``<bool>[B, T, M+T]`` from ``attention_mask``.
          distance: ``<int64>[T, M+T]`` from ``key_distances``.
          positions: ``<float>[M+1, D]`` ``relative_positions(M, D)``.

        Returns:
          ``<float>[T, B, D]`` the layer's output.
        """
        steps, batch, dim = x.shape
        mem = memory.shape[0]
        heads, head_dim = self.heads, self.head_dim
        context = self.attn_norm(torch.cat([memory, x], dim=0))               # [K, B, D]
        q = self.query(context[mem:]).view(steps, batch, heads, head_dim)
        k, v = self.key_value(context).view(mem + steps, batch, 2, heads, head_dim).unbind(2)
        r = self.position(positions.to(q.dtype)).view(mem + 1, heads, head_dim)
        content = torch.einsum("tbhd,kbhd->bhtk", q + self.content_bias, k)
        by_distance = torch.einsum("tbhd,rhd->bhtr", q + self.position_bias, r)
        position = by_distance.gather(3, distance.expand(batch, heads, steps, mem + steps))
        scores = (content + position) * (1.0 / math.sqrt(head_dim))
        scores = scores.masked_fill(~allowed.unsqueeze(1), float("-inf"))
        weights = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        attended = torch.einsum("bhtk,kbhd->tbhd", weights, v).reshape(steps, batch, dim)
        y = self.attn_gate(x, F.relu(self.attn_out(attended)))
        return self.mlp_gate(y, F.relu(self.mlp(self.mlp_norm(y))))


class GTrXLCore(nn.Module):
    """The GTrXL as a recurrent core: ``(core_in, first, state) -> (out, state)``.

    The same interface as ``R2D2Network``'s LSTM unroll; the state is the packed
    memory (``pack_memory``).

    Attributes:
      layers, heads, dim, memory_length: the sizes (``network.gtrxl_*``).
      state_size: ``H`` of the packed state.
    """

    def __init__(self, input_size: int, layers: int, heads: int, dim: int,
                 memory_length: int, gate_bias: float, state_size: int) -> None:
        """Args:
          input_size: width of the core input (torso + previous action and reward).
          layers: ``L``.
          heads: attention heads, dividing ``dim``.
          dim: ``D``.
          memory_length: ``M``.
          gate_bias: initial ``b_g`` of every gate.
          state_size: ``H`` (``NetworkConfig.core_state_size``).
        """
        super().__init__()
        self.layers, self.heads, self.dim = int(layers), int(heads), int(dim)
        self.memory_length, self.state_size = int(memory_length), int(state_size)
        self.embedding = nn.Linear(input_size, dim)
        self.blocks = nn.ModuleList(GTrXLLayer(dim, heads, gate_bias) for _ in range(layers))
        # A buffer, not a parameter: it is no part of the published parameters.
        self.register_buffer("positions", relative_positions(memory_length, dim),
                             persistent=False)

    def forward(self, core_in: torch.Tensor, first: Optional[torch.Tensor],
                state: TorchState) -> Tuple[torch.Tensor, TorchState]:
        """Unrolls the core over a sequence.

        Args:
          core_in: ``<float>[T, B, input_size]``.
          first: ``<bool>[T, B]`` or None (no resets).
          state: ``(h, c)``, each ``<float>[B, H]``: the packed memory before step 0.

        Returns:
          ``(out <float>[T, B, D], (h, c))`` with the memory after step ``T-1``.
        """
        steps, batch = core_in.shape[0], core_in.shape[1]
        if first is None:
            first = torch.zeros(steps, batch, dtype=torch.bool, device=core_in.device)
        memory, valid = unpack_memory(state, self.layers, self.memory_length, self.dim)
        allowed, valid_out = attention_mask(first, valid)
        distance = key_distances(steps, self.memory_length, core_in.device)
        x = self.embedding(core_in)
        carried: List[torch.Tensor] = []
        keep = valid_out.t().unsqueeze(-1)                                      # [M, B, 1]
        for block, mem in zip(self.blocks, memory.to(x.dtype).unbind(0)):
            timeline = torch.cat([mem, x], dim=0)[steps:]
            carried.append(torch.where(keep, timeline, torch.zeros_like(timeline)))
            x = block(x, mem, allowed, distance, self.positions)
        return x, pack_memory(torch.stack(carried), valid_out, self.state_size)

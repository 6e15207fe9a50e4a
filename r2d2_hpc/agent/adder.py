"""Sequence cutting on the actor: which steps and sequences go to replay (no MPI).

R2D2 (Kapturowski et al., ICLR 2019, section 3) replays fixed-length sequences
of ``L = burn_in + trace_length`` steps (paper: 40 + 80 = 120); a new one
starts every ``sequence_period`` steps (paper: 40), so consecutive sequences
overlap by ``L - period`` steps, and each keeps the recurrent state the actor
had at its first step ("stored state"). The replay shard
(``r2d2_hpc.replay.shard``) stores every step once and a sequence as a
reference to its steps, so the actor sends each step once (``add_steps``) and
the sequences as ``(start step, valid length, state, ...)`` (``add_sequences``).

Windows of one episode (``b`` burn-in, ``t`` trace, ``x`` padding; burn_in 2,
trace_length 4, so ``L = 6``, period 3; the episode's last step is 12)::

    step        0  1  2  3  4  5  6  7  8  9 10 11 12  | 13: next episode's first step
    window @0   b  b  t  t  t  t                                      complete at 5
    window @3            b  b  t  t  t  t                             complete at 8
    window @6                     b  b  t  t  t  t                    complete at 11
    window @9                              b  b  t  t  x  x           closed at 12, padded
    window @12                                      b  x  x  x  x  x  no trace step: dropped
    window @13  ...  a fresh set of windows for the next episode

* Windows start at the episode's first step and every ``period`` steps after
  it; they never cross an episode start.
* A window is *complete* when its ``L``-th step is added (while the episode
  runs, or on its last step).
* At an episode end every open window is *closed*: its valid length is
  ``last step - start + 1 < L`` and the rest is padding (``mask`` False in
  replay).
* A sequence is *dropped* when no trace step would have a learning target
  (``n_step_double_q_targets`` valid nowhere on ``[burn_in, L)``): its episode
  ended inside the burn-in from that start, or its trace holds only one step
  that is the last of a truncated episode. Replay would learn nothing from it.

What is sent, per stream (each actor environment is a stream with id
``stream_id_offset + i``; steps are numbered per stream consecutively, one per
``add`` call, and never reset except by ``restart``)::

    chunk emitted at                  steps sent                 sequences
    a window completing (episode on)  all unsent steps up to t   the completed one
    the episode's end                 unsent steps up to the     the closed (and
                                      end of the last kept       completed) ones
                                      sequence                   that are kept

In the picture: at step 5 steps 0..5 and @0, at 8 steps 6..8 and @3, at 11
steps 9..11 and @6, at 12 step 12 and @9. So chunks are about ``period`` steps
long (the first of an episode ``L``), every step is sent once, before or
together with every sequence that references it, and steps that no kept
sequence references (the tail of an episode after its last kept sequence, a
whole episode shorter than the burn-in) are never sent. Such a gap in the step
numbers is always followed by an episode's first step, which the shard accepts
(a new *epoch* of the stream).
A chunk can have sequences but no new steps (``obs`` with zero rows): send
only its sequences then.

A stream's data begins at an episode start: steps added before the first
``first`` flag of a stream (a fresh adder or a ``restart`` in mid-episode) are
ignored, since the shard starts a stream only at an episode start.

Initial priorities (Ape-X / R2D2 section 2.3): from the actor's own Q-values,
which serve as both online and target values, ``delta_t = y_t - Q(o_t, a_t)``
on the trace with ``y_t`` the transformed n-step target
(``r2d2_hpc.agent.losses.n_step_double_q_targets``), then
``p = eta max_t |delta_t| + (1 - eta) mean_t |delta_t|`` over the valid trace steps
(``r2d2_hpc.agent.losses.sequence_priorities``), computed in one batch for all the
sequences of the chunks returned together.

When chunks are returned: ``add`` returns those due every ``emit_period``
steps (1: at once; a larger period batches the priority computation, which
dominates the adder's cost with small networks, at that many steps of latency);
``flush`` returns the ones held back; ``end_episodes`` closes the open episodes
as if truncated (end of a run) and returns everything.

With ``trace_length == 1`` a complete window's only trace step has a target only
when it is terminal, so most complete windows are dropped although their steps
were sent (the config allows it; the paper uses 80).
"""
from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Protocol, Tuple

import numpy as np
import torch

from r2d2_hpc.agent.losses import n_step_double_q_targets, sequence_priorities
from r2d2_hpc.config import Config
from r2d2_hpc.replay.layout import sequence_windows  # re-exported: the adder's windows

__all__ = ["StreamChunk", "SequenceAdder", "insert_chunk", "sequence_windows"]

_WAITING, _OPEN, _CLOSED = 0, 1, 2


class StreamChunk(NamedTuple):
    """New steps and completed sequences of one stream, ready for its shard.

    Steps ``first_step_index .. first_step_index + n - 1`` and ``M`` sequences
    over steps sent in this or earlier chunks of the stream.

    Attributes:
      stream_id: stream (actor environment) id.
      first_step_index: number of ``obs[0]`` in the stream.
      obs: ``<obs_dtype>[n, *frame_shape]`` newest frame of each step (``n`` may be 0).
      action: ``<int64>[n]`` action ``a_t`` taken at step t.
      reward: ``<float32>[n]`` reward ``r_t`` after it.
      discount: ``<float32>[n]`` 0 where the episode terminated after ``a_t``.
      first: ``<bool>[n]`` True where step t starts an episode.
      seq_start: ``<int64>[M]`` step number of each sequence's first step.
      seq_length: ``<int64>[M]`` valid steps (``L`` unless closed at an episode end).
      state_h: ``<float32>[M, H]`` LSTM h the actor used at the first step.
      state_c: ``<float32>[M, H]`` LSTM c the actor used at the first step.
      seq_prev_action: ``<int64>[M]`` previous action fed at the first step.
      seq_prev_reward: ``<float32>[M]`` previous reward fed at the first step.
      priority: ``<float32>[M]`` initial priority from the actor's Q-values.
    """

    stream_id: int
    first_step_index: int
    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    first: np.ndarray
    seq_start: np.ndarray
    seq_length: np.ndarray
    state_h: np.ndarray
    state_c: np.ndarray
    seq_prev_action: np.ndarray
    seq_prev_reward: np.ndarray
    priority: np.ndarray

    @property
    def num_steps(self) -> int:
        """Steps in this chunk, ``n``."""
        return int(self.action.shape[0])

    @property
    def num_sequences(self) -> int:
        """Sequences in this chunk, ``M``."""
        return int(self.seq_start.shape[0])

    def message_fields(self) -> Dict[str, Any]:
        """The arrays under the field names of the ``STEP_CHUNK`` message
        (``r2d2_hpc.comm.messages``), ready for ``Layout.pack(buf, **fields)``."""
        return {
            "stream_id": self.stream_id, "first_step_index": self.first_step_index,
            "obs": self.obs, "action": self.action, "reward": self.reward,
            "discount": self.discount, "first": self.first,
            "seq_start_step": self.seq_start, "seq_length": self.seq_length,
            "seq_state_h": self.state_h, "seq_state_c": self.state_c,
            "seq_prev_action": self.seq_prev_action, "seq_prev_reward": self.seq_prev_reward,
            "seq_priority": self.priority,
        }


class _ShardLike(Protocol):
    def add_steps(self, stream_id: int, first_step_index: int, obs: np.ndarray,
                  action: np.ndarray, reward: np.ndarray, discount: np.ndarray,
                  first: np.ndarray) -> None: ...

    def add_sequences(self, stream_id: int, start_step: np.ndarray, length: np.ndarray,
                      state_h: np.ndarray, state_c: np.ndarray, prev_action: np.ndarray,
                      prev_reward: np.ndarray,
                      priority: Optional[np.ndarray] = None) -> np.ndarray: ...


def insert_chunk(shard: _ShardLike, chunk: StreamChunk) -> np.ndarray:
    """Hands one chunk to a ``ReplayShard`` (serial mode and tests).

    Args:
      shard: a ``r2d2_hpc.replay.shard.ReplayShard`` (or anything with its
        ``add_steps``/``add_sequences``).
      chunk: a chunk from ``SequenceAdder``.

    Returns:
      ``<int64>[M]`` replay keys (empty if the chunk holds no sequence).
    """
    if chunk.num_steps:
        shard.add_steps(chunk.stream_id, chunk.first_step_index, chunk.obs, chunk.action,
                        chunk.reward, chunk.discount, chunk.first)
    if not chunk.num_sequences:
        return np.zeros(0, np.int64)
    return shard.add_sequences(chunk.stream_id, chunk.seq_start, chunk.seq_length,
                               chunk.state_h, chunk.state_c, chunk.seq_prev_action,
                               chunk.seq_prev_reward, chunk.priority)


class _Pending(NamedTuple):
    """Sequences and the step range to send for one stream, before priorities."""

    stream: int
    send_from: int
    send_to: Optional[int]  # exclusive end; None = up to the last kept sequence's end
    starts: List[int]
    lengths: List[int]


class SequenceAdder:
    """Cuts the steps of ``N`` actor streams into R2D2 sequences (see module docstring).

    One ``add`` per environment step for all ``N`` streams at once; per step it
    writes one row per field into a ring of the last ``L`` steps (NumPy over the
    streams) and loops in Python only over the streams that emit a chunk or
    start a window.

    The recurrent state is kept only where a window starts (every ``period``
    steps of an episode), until that window's sequence is emitted or dropped:
    about ``N * ceil(L / period)`` rows instead of a row per step of the ring,
    which matters for a large state (a GTrXL memory of 4 x 64 x 256 is 65,600
    floats per row: 1.0 GB per actor rank of 32 envs in a per-step ring at the
    paper's ``L`` of 120, about 70 MB this way).
    """

    def __init__(self, num_streams: int, *, burn_in: int, trace_length: int,
                 sequence_period: int, n_step: int, discount: float, state_size: int,
                 stream_id_offset: int = 0, frame_stack: int = 1, eta: float = 0.9,
                 value_rescaling_eps: float = 1e-3, first_step_index: int = 0,
                 emit_period: int = 1) -> None:
        """Creates the adder.

        Args:
          num_streams: ``N``, environments of this actor rank.
          burn_in: burn-in steps (paper: 40).
          trace_length: trace steps (paper: 80).
          sequence_period: steps between sequence starts (paper: 40); must be
            ``<= trace_length`` so every step lies in some trace.
          n_step: n of the n-step target used for initial priorities (paper: 5).
          discount: gamma (paper: 0.997).
          state_size: ``H``, LSTM units of the stored state.
          stream_id_offset: stream ``i`` has id ``stream_id_offset + i``.
          frame_stack: ``k``; with ``k > 1`` observations are ``[N, k, *frame]``
            and only the newest frame ``obs[:, -1]`` is sent.
          eta: priority mix (paper: 0.9).
          value_rescaling_eps: epsilon of ``h`` (paper: 1e-3).
          first_step_index: number of the first step of every stream.
          emit_period: ``add`` returns the chunks due every this many steps
            (1: at once). Larger values batch the priority computation of
            more sequences into one call (cheaper per step with small
            networks) at the cost of that many steps of latency.
        """
        errors = []
        for name, value, lo in (("num_streams", num_streams, 1), ("burn_in", burn_in, 0),
                                ("trace_length", trace_length, 1),
                                ("sequence_period", sequence_period, 1), ("n_step", n_step, 1),
                                ("state_size", state_size, 1), ("frame_stack", frame_stack, 1),
                                ("stream_id_offset", stream_id_offset, 0),
                                ("first_step_index", first_step_index, 0),
                                ("emit_period", emit_period, 1)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                errors.append(f"{name}: must be an int >= {lo}, got {value!r}")
        if not errors and sequence_period > trace_length:
            errors.append(f"sequence_period: {sequence_period} > trace_length {trace_length} "
                          f"would leave steps in no trace")
        if not 0.0 < discount <= 1.0:
            errors.append(f"discount: must be in (0, 1], got {discount}")
        if not 0.0 <= eta <= 1.0:
            errors.append(f"eta: must be in [0, 1], got {eta}")
        if not value_rescaling_eps > 0:
            errors.append(f"value_rescaling_eps: must be > 0, got {value_rescaling_eps}")
        if errors:
            raise ValueError("SequenceAdder: " + "; ".join(errors))
        self.num_streams = int(num_streams)
        self.stream_id_offset = int(stream_id_offset)
        self.burn_in = int(burn_in)
        self.trace_length = int(trace_length)
        self.sequence_length = self.burn_in + self.trace_length
        self.sequence_period = int(sequence_period)
        self.n_step = int(n_step)
        self.discount = float(discount)
        self.state_size = int(state_size)
        self.frame_stack = int(frame_stack)
        self.eta = float(eta)
        self.value_rescaling_eps = float(value_rescaling_eps)
        self.emit_period = int(emit_period)
        # Every step read when chunks are built lies within the last
        # L + emit_period - 1 steps (argued in _emit), so the ring holds them.
        self._ring_size = self.sequence_length + self.emit_period - 1
        self._ring: Optional[Dict[str, np.ndarray]] = None
        #: Sequences not stored because no trace step had a target.
        self.num_dropped_sequences = 0
        #: Sequences emitted.
        self.num_sequences = 0
        #: Steps emitted.
        self.num_sent_steps = 0
        self.restart(first_step_index)

    @classmethod
    def from_config(cls, cfg: Config, num_streams: int, stream_id_offset: int = 0,
                    first_step_index: int = 0, emit_period: int = 1) -> "SequenceAdder":
        """An adder with the replay layout and target settings of a run config.

        Args:
          cfg: the run's ``Config`` (``replay``, ``learner``, ``env``, ``network``).
          num_streams: environments of this actor rank.
          stream_id_offset: id of this rank's first stream.
          first_step_index: number of the first step of every stream.
          emit_period: see ``__init__``.

        Returns:
          The adder.
        """
        r, lrn = cfg.replay, cfg.learner
        return cls(num_streams, burn_in=r.burn_in, trace_length=r.trace_length,
                   sequence_period=r.sequence_period, n_step=lrn.n_step,
                   discount=lrn.discount, state_size=cfg.network.stored_state_size,
                   stream_id_offset=stream_id_offset, frame_stack=cfg.env.frame_stack,
                   eta=r.priority_eta, value_rescaling_eps=lrn.value_rescaling_epsilon,
                   first_step_index=first_step_index, emit_period=emit_period)

    # ------------------------------------------------------------------ state
    @property
    def next_step_index(self) -> int:
        """Number the next ``add`` gives its step (the same in every stream)."""
        return self._t

    def restart(self, first_step_index: int = 0) -> None:
        """Forgets every open episode, unsent step and chunk not yet returned;
        numbering restarts.

        Each stream then waits for its next episode start (``first``).

        Args:
          first_step_index: number of the next added step.
        """
        n = self.num_streams
        self._t = int(first_step_index)
        self._mode = np.full(n, _WAITING, np.int8)
        self._ep_start = np.zeros(n, np.int64)
        self._unsent = np.zeros(n, np.int64)
        self._pending: List[_Pending] = []
        self._adds_since_emit = 0
        #: Per stream: window start step -> (h, c) the actor used there, kept until
        #: the window's sequence is emitted or dropped.
        self._start_states: List[Dict[int, Tuple[np.ndarray, np.ndarray]]] = [
            {} for _ in range(n)]

    @property
    def stored_state_rows(self) -> int:
        """Window-start states held (each ``2 x state_size`` floats)."""
        return sum(len(d) for d in self._start_states)

    def _allocate(self, frame: np.ndarray, num_actions: int) -> Dict[str, np.ndarray]:
        r, n = self._ring_size, self.num_streams
        return {
            "frame": np.zeros((r, n) + frame.shape[1:], frame.dtype),
            "action": np.zeros((r, n), np.int64),
            "reward": np.zeros((r, n), np.float32),
            "discount": np.zeros((r, n), np.float32),
            "first": np.zeros((r, n), bool),
            "q": np.zeros((r, n, num_actions), np.float32),
            "prev_action": np.zeros((r, n), np.int64),
            "prev_reward": np.zeros((r, n), np.float32),
        }

    # ------------------------------------------------------------------ adding
    def add(self, obs: np.ndarray, action: np.ndarray, reward: np.ndarray,
            discount: np.ndarray, first: np.ndarray, state_h: np.ndarray,
            state_c: np.ndarray, q_values: np.ndarray, prev_action: np.ndarray,
            prev_reward: np.ndarray, last: Optional[np.ndarray] = None) -> List[StreamChunk]:
        """Adds step ``t`` of every stream; returns the chunks now due.

        Args:
          obs: ``[N, *obs_shape]`` observation ``o_t`` (``[N, k, *frame]`` with
            frame stacking; only ``obs[:, -1]`` is kept).
          action: ``<int>[N]`` action ``a_t`` taken at ``o_t``.
          reward: ``<float>[N]`` reward ``r_t`` after it.
          discount: ``<float>[N]`` 0 where the episode terminated after ``a_t``, else 1.
          first: ``<bool>[N]`` True where ``o_t`` is an episode's first observation.
          state_h: ``<float>[N, H]`` LSTM h used to process ``o_t``.
          state_c: ``<float>[N, H]`` LSTM c used to process ``o_t``.
          q_values: ``<float>[N, A]`` the actor's ``Q(o_t, .)``.
          prev_action: ``<int>[N]`` previous action fed to the network at t.
          prev_reward: ``<float>[N]`` previous reward fed to the network at t.
          last: optional ``<bool>[N]``, True where the episode ended after step t
            (terminated or truncated); its windows then close at once. Without
            it an episode's end is noticed from the next step's ``first``.

        Returns:
          The chunks due (every ``emit_period`` steps; else empty), in the
          order they must reach replay (a stream's chunks are in step order).

        Raises:
          ValueError: on a shape mismatch, or a step after ``last`` that is not
            ``first``. Nothing is changed then.
        """
        n = self.num_streams
        obs = np.asarray(obs)
        if obs.ndim < 1 or obs.shape[0] != n:
            raise ValueError(f"add: obs: expected {n} rows, got shape {obs.shape}")
        frame = obs[:, -1] if self.frame_stack > 1 else obs
        if self.frame_stack > 1 and (obs.ndim < 2 or obs.shape[1] != self.frame_stack):
            raise ValueError(f"add: obs: expected [N, {self.frame_stack}, ...] with frame "
                             f"stacking, got shape {obs.shape}")
        q_values = np.asarray(q_values)
        if q_values.ndim != 2 or q_values.shape[0] != n:
            raise ValueError(f"add: q_values: expected shape ({n}, A), got {q_values.shape}")
        first = np.asarray(first, bool)
        vectors = {"action": action, "reward": reward, "discount": discount, "first": first,
                   "prev_action": prev_action, "prev_reward": prev_reward}
        if last is not None:
            last = np.asarray(last, bool)
            vectors["last"] = last
        for name, value in vectors.items():
            if np.shape(value) != (n,):
                raise ValueError(f"add: {name}: expected shape ({n},), got {np.shape(value)}")
        for name, value in (("state_h", state_h), ("state_c", state_c)):
            if np.shape(value) != (n, self.state_size):
                raise ValueError(f"add: {name}: expected shape ({n}, {self.state_size}), "
                                 f"got {np.shape(value)}")
        bad = (self._mode == _CLOSED) & ~first
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"add: first: stream {self.stream_id_offset + i} ended its episode "
                             f"with last=True, so step {self._t} must start one (first=True)")
        ring = self._ring
        if ring is None:
            ring = self._ring = self._allocate(frame, q_values.shape[1])
        elif frame.shape[1:] != ring["frame"].shape[2:] or q_values.shape[1] != ring["q"].shape[2]:
            raise ValueError(f"add: obs/q_values: shapes {frame.shape[1:]}/{q_values.shape[1:]} "
                             f"differ from earlier steps' {ring['frame'].shape[2:]}/"
                             f"{ring['q'].shape[2:]}")

        # ---- validated: write step t of every stream.
        t = self._t
        row = t % self._ring_size
        ring["frame"][row] = frame
        ring["action"][row] = action
        ring["reward"][row] = reward
        ring["discount"][row] = discount
        ring["first"][row] = first
        ring["q"][row] = q_values
        ring["prev_action"][row] = prev_action
        ring["prev_reward"][row] = prev_reward

        pending = self._pending
        # Episodes whose end shows only now, as a new start without `last`.
        for i in np.flatnonzero((self._mode == _OPEN) & first).tolist():
            pending.append(self._close(i, t - 1))
        # New episodes: a fresh set of windows.
        self._mode[first] = _OPEN
        self._ep_start[first] = t
        self._unsent[first] = t

        L, P = self.sequence_length, self.sequence_period
        starting = (self._mode == _OPEN) & ((t - self._ep_start) % P == 0)
        for i in np.flatnonzero(starting).tolist():
            self._start_states[i][t] = (np.array(state_h[i], np.float32),
                                        np.array(state_c[i], np.float32))
        done = np.zeros(n, bool) if last is None else last
        since = t - self._ep_start + 1 - L
        complete = (self._mode == _OPEN) & (since >= 0) & (since % P == 0)
        for i in np.flatnonzero(complete | ((self._mode == _OPEN) & done)).tolist():
            starts = [t - L + 1] if complete[i] else []
            lengths = [L] if complete[i] else []
            if done[i]:
                closed = self._close(i, t)
                pending.append(closed._replace(starts=starts + closed.starts,
                                               lengths=lengths + closed.lengths))
            else:
                # The episode goes on: every unsent step up to t will be referenced.
                pending.append(_Pending(i, int(self._unsent[i]), t + 1, starts, lengths))
                self._unsent[i] = t + 1
        self._t = t + 1
        self._adds_since_emit += 1
        if self._adds_since_emit >= self.emit_period:
            return self.flush()
        return []

    def flush(self) -> List[StreamChunk]:
        """Returns every chunk due but not yet returned (see ``emit_period``).

        Returns:
          The chunks, in the order they must reach replay.
        """
        pending, self._pending = self._pending, []
        self._adds_since_emit = 0
        return self._emit(pending)

    def end_episodes(self) -> List[StreamChunk]:
        """Closes every open episode at the last added step, as if truncated there.

        For the end of a run (or before a checkpoint that does not keep the
        adder): the open windows become sequences padded after that step; the
        streams then wait for their next episode start.

        Returns:
          Every chunk not yet returned, those of the closed episodes included.
        """
        for i in np.flatnonzero(self._mode == _OPEN).tolist():
            self._pending.append(self._close(i, self._t - 1))
        self._mode[:] = _WAITING
        return self.flush()

    def _close(self, i: int, last_step: int) -> _Pending:
        """Closes stream ``i``'s episode after ``last_step``: its windows not yet complete."""
        L, P = self.sequence_length, self.sequence_period
        e = int(self._ep_start[i])
        k_lo = max(0, (last_step - e - L + 1) // P + 1)  # first window not complete
        starts = list(range(e + k_lo * P, last_step + 1, P))
        lengths = [last_step - s + 1 for s in starts]
        self._mode[i] = _CLOSED
        return _Pending(i, int(self._unsent[i]), None, starts, lengths)

    # --------------------------------------------------------------- emitting
    def _emit(self, pending: List[_Pending]) -> List[StreamChunk]:
        """Computes priorities of all pending sequences at once and builds chunks."""
        if not pending:
            return []
        ring = self._ring
        assert ring is not None
        R, L = self._ring_size, self.sequence_length
        streams = np.asarray([p.stream for p in pending for _ in p.starts], np.int64)
        starts = np.asarray([s for p in pending for s in p.starts], np.int64)
        lengths = np.asarray([x for p in pending for x in p.lengths], np.int64)
        if starts.size:
            priority, keep = self._priorities(streams, starts, lengths)
            rows = starts % R
            seq_fields = {name: ring[name][rows, streams]
                          for name in ("prev_action", "prev_reward")}
            held = [self._start_states[i].pop(int(st))
                    for i, st in zip(streams.tolist(), starts.tolist())]
            seq_fields["state_h"] = np.stack([h for h, _ in held])
            seq_fields["state_c"] = np.stack([c for _, c in held])
        else:
            priority = np.zeros(0, np.float32)
            keep = np.zeros(0, bool)
            seq_fields = {}
        chunks: List[StreamChunk] = []
        j = 0
        for p in pending:
            m = len(p.starts)
            sel = np.arange(j, j + m)[keep[j:j + m]]
            j += m
            send_to = p.send_to
            if send_to is None:
                ends = starts[sel] + lengths[sel]
                send_to = int(ends.max()) if ends.size else p.send_from
            send_to = max(send_to, p.send_from)
            # When a _Pending is made at step t, the steps it sends lie within
            # t - L + 1 .. t: unsent steps all belong to the current episode,
            # whose first window completes L steps after its start and the next
            # ones every period <= L steps. It is emitted by step
            # t + emit_period - 1, so a ring of L + emit_period - 1 rows still
            # holds them (and the sequences' steps, which start after t - L).
            assert send_to - p.send_from <= L, (p, self._t)
            steps = np.arange(p.send_from, send_to, dtype=np.int64) % R
            if steps.size == 0 and sel.size == 0:
                continue
            i = p.stream
            chunks.append(StreamChunk(
                stream_id=self.stream_id_offset + i,
                first_step_index=p.send_from,
                obs=ring["frame"][steps, i],
                action=ring["action"][steps, i],
                reward=ring["reward"][steps, i],
                discount=ring["discount"][steps, i],
                first=ring["first"][steps, i],
                seq_start=starts[sel],
                seq_length=lengths[sel],
                state_h=seq_fields["state_h"][sel] if sel.size else
                np.zeros((0, self.state_size), np.float32),
                state_c=seq_fields["state_c"][sel] if sel.size else
                np.zeros((0, self.state_size), np.float32),
                seq_prev_action=seq_fields["prev_action"][sel] if sel.size else
                np.zeros(0, np.int64),
                seq_prev_reward=seq_fields["prev_reward"][sel] if sel.size else
                np.zeros(0, np.float32),
                priority=priority[sel]))
            self.num_sent_steps += int(steps.size)
            self.num_sequences += int(sel.size)
        self.num_dropped_sequences += int((~keep).sum())
        return chunks

    def _priorities(self, streams: np.ndarray, starts: np.ndarray,
                    lengths: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Initial priorities of ``M`` sequences and which have a valid trace step.

        Args:
          streams: ``<int64>[M]`` stream index of each sequence.
          starts: ``<int64>[M]`` first step numbers.
          lengths: ``<int64>[M]`` valid lengths.

        Returns:
          ``(<float32>[M] priority, <bool>[M] keep)``.
        """
        ring = self._ring
        assert ring is not None
        R, L, B = self._ring_size, self.sequence_length, self.burn_in
        offs = np.arange(B, L, dtype=np.int64)[:, None]                 # [T, 1]
        rows = (starts[None, :] + offs) % R                              # [T, M]
        cols = np.broadcast_to(streams[None, :], rows.shape)
        mask = offs < lengths[None, :]
        q = torch.from_numpy(ring["q"][rows, cols])                     # [T, M, A]
        action = torch.from_numpy(ring["action"][rows, cols])
        targets, valid = n_step_double_q_targets(
            torch.from_numpy(ring["reward"][rows, cols]),
            torch.from_numpy(ring["discount"][rows, cols]),
            torch.from_numpy(mask), q, q, n=self.n_step, gamma=self.discount,
            eps=self.value_rescaling_eps, first=torch.from_numpy(ring["first"][rows, cols]))
        q_taken = q.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        abs_td = torch.where(valid, (targets - q_taken).abs(), torch.zeros_like(q_taken))
        priority = sequence_priorities(abs_td, valid, self.eta)
        return priority.numpy().astype(np.float32), valid.any(dim=0).numpy()

    def stats(self) -> Dict[str, Any]:
        """Counters for logging."""
        return {"sent_steps": self.num_sent_steps, "sequences": self.num_sequences,
                "dropped_sequences": self.num_dropped_sequences}

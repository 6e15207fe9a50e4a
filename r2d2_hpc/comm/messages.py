"""Every MPI message of r2d2_hpc, declared once: tags, fields, dtypes (STYLE.md habit 6).

Nothing else in the package invents a tag or a byte offset: a message is a
:class:`~r2d2_hpc.comm.wire.Layout` (header, aligned fields, count
dimensions; see that module) built here by :func:`declare_messages`.

The R2D2 messages (:func:`declare_messages`); ``n``, ``m``, ``k``, ``e`` are
count dimensions, ``T`` the stored sequence length, ``H`` the recurrent state
size, ``A`` the number of actions, ``P`` the number of parameters:

==============  ===  =========================  =========================================================
message         tag  direction                  fields (dtype[shape])
==============  ===  =========================  =========================================================
STEP_CHUNK      101  actor -> its replay shard  stream_id i64, first_step_index i64; steps:
                                                obs obs_dtype[n, *frame], action i64[n], reward f32[n],
                                                discount f32[n], first bool[n]; completed sequences:
                                                seq_start_step i64[m], seq_length i64[m],
                                                seq_state_h f32[m, H], seq_state_c f32[m, H],
                                                seq_prev_action i64[m], seq_prev_reward f32[m],
                                                seq_priority f64[m]
SAMPLE_REQUEST  102  learner -> shard           request_id i64, num_sequences i64, num_demo i64
SAMPLE_REPLY    103  shard -> learner           request_id i64, num_sequences i64, num_demo i64;
                                                a SequenceBatch (agent rows, then num_demo demo rows):
                                                obs obs_dtype[T, k, *obs], action i64[T, k],
                                                reward f32[T, k], discount f32[T, k], first bool[T, k],
                                                mask bool[T, k], prev_action i64[T, k],
                                                prev_reward f32[T, k], state_h f32[k, H],
                                                state_c f32[k, H], keys i64[k], probs f64[k];
                                                shard stats when sampled: total_priority f64,
                                                count i64, max_priority f64, and its demo
                                                table's: demo_total_priority f64,
                                                demo_count i64, demo_max_priority f64
PRIORITY_UPDATE 104  learner -> shard           keys i64[k], priorities f64[k]
SHARD_STATS     105  shard -> every learner     total_priority f64, count i64, max_priority f64,
                                                inserted_sequences i64, sampled_sequences i64,
                                                observations_stored i64, demo_total_priority f64,
                                                demo_count i64, demo_max_priority f64
PARAMS          106  learner 0 -> actors        version i64, learner_step i64, params f32[P]
ACTOR_REPORT    107  actor -> learner 0         env_steps i64, params_version i64,
                                                episode_return f64[e], episode_length i64[e],
                                                episode_epsilon f64[e], action_counts i64[A]
CONTROL         108  any -> all                 command i64 (a :class:`Command`), argument i64
==============  ===  =========================  =========================================================

Scalars such as ACTOR_REPORT's ``env_steps`` and ``action_counts`` are running
totals of the sender (robust to a report being skipped); the per-field comments
in :func:`declare_messages` say what each field holds.
"""
from __future__ import annotations

import enum
import math
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from r2d2_hpc.comm.wire import Field, Layout, MessageError, Var
from r2d2_hpc.config import Config
from r2d2_hpc.replay.sampling import ShardStats
from r2d2_hpc.types import JobSpec, SequenceBatch

__all__ = ["TAGS", "Command", "Messages", "declare_messages", "default_chunk_limits", "job_messages",
           "sample_reply_arrays", "sequence_batch_of", "shard_stats_of", "demo_stats_of",
           "stats_fields", "NO_TABLE"]

#: The MPI tag (= message type id) of every message; unique, declared here only.
TAGS: Dict[str, int] = {
    "STEP_CHUNK": 101,
    "SAMPLE_REQUEST": 102,
    "SAMPLE_REPLY": 103,
    "PRIORITY_UPDATE": 104,
    "SHARD_STATS": 105,
    "PARAMS": 106,
    "ACTOR_REPORT": 107,
    "CONTROL": 108,
}
_NAME_OF_TAG = {tag: name for name, tag in TAGS.items()}


class Command(enum.IntEnum):
    """CONTROL message commands."""

    STOP = 1
    """Finish: flush what is in flight and exit cleanly (argument: the exit code, 0 or 3)."""
    CHECKPOINT = 2
    """Save state for checkpoint number ``argument``."""
    ABORT = 3
    """Stop at once after an error elsewhere (argument: the failing rank)."""
    PREEMPT = 4
    """To learner 0: this rank received SIGUSR1/SIGTERM (argument: the signal number)."""
    CHECKPOINT_DONE = 5
    """To learner 0: this shard wrote its part of checkpoint ``argument`` (-1: it failed)."""


class Messages(NamedTuple):
    """The layouts of every R2D2 message (see the module docstring's table)."""

    STEP_CHUNK: Layout
    SAMPLE_REQUEST: Layout
    SAMPLE_REPLY: Layout
    PRIORITY_UPDATE: Layout
    SHARD_STATS: Layout
    PARAMS: Layout
    ACTOR_REPORT: Layout
    CONTROL: Layout

    def get(self, name: str) -> Layout:
        """The layout called ``name``; MessageError listing the names otherwise."""
        if name not in self._fields:
            raise MessageError(f"unknown message {name!r}; messages are {list(self._fields)}")
        return getattr(self, name)


def _layout(name: str, fields: Sequence[Field]) -> Layout:
    """The layout of message ``name`` with its tag from :data:`TAGS`."""
    return Layout(name, TAGS[name], fields, tag_names=_NAME_OF_TAG)


def default_chunk_limits(sequence_length: int, sequence_period: int,
                         max_chunk_steps: Optional[int] = None) -> Tuple[int, int]:
    """Maximum steps ``n`` and completed sequences ``m`` of one STEP_CHUNK.

    ``n`` defaults to ``L + P`` (sequence length plus period). ``m = n + ceil(L / P)``
    always suffices: a sequence completed in a chunk either starts at one of its
    at most ``n`` steps or was already open when the chunk began, and at most
    ``ceil(L / P)`` sequences are open at once (one starts every ``P`` steps and
    each lives ``L`` steps), however short the episodes.

    Args:
      sequence_length: ``L = burn_in + trace_length``.
      sequence_period: ``P``.
      max_chunk_steps: ``n``, or None for ``L + P``.

    Returns:
      ``(n, m)``.
    """
    n = sequence_length + sequence_period if max_chunk_steps is None else int(max_chunk_steps)
    return n, n + math.ceil(sequence_length / sequence_period)


def declare_messages(cfg: Config, obs_frame_shape: Sequence[int], obs_dtype: Any, state_size: int,
                     num_params: int, num_actions: int, *,
                     obs_shape: Optional[Sequence[int]] = None,
                     max_chunk_steps: Optional[int] = None,
                     max_chunk_sequences: Optional[int] = None,
                     max_report_episodes: Optional[int] = None) -> Messages:
    """Declares every R2D2 message for one run's shapes.

    Every rank must call it with the same arguments; the header fingerprint
    rejects messages from a rank that did not.

    Args:
      cfg: the run's :class:`~r2d2_hpc.config.Config`.
      obs_frame_shape: shape of one stored frame (``(84, 84)`` for Atari; the
        observation vector's shape otherwise); actors send frames, the shard
        rebuilds stacks.
      obs_dtype: dtype of frames and observations (uint8 for Atari, float32 for vectors).
      state_size: ``H``, size of each of the LSTM's h and c.
      num_params: ``P``, length of the flat float32 parameter vector.
      num_actions: ``A``, size of ACTOR_REPORT's action histogram.
      obs_shape: shape of one observation in a SAMPLE_REPLY (``(frame_stack, 84, 84)``
        for stacked Atari frames); None means ``obs_frame_shape``.
      max_chunk_steps: ``n``, most steps per STEP_CHUNK; None means
        ``sequence_length + sequence_period``.
      max_chunk_sequences: ``m``, most completed sequences per STEP_CHUNK; None
        means enough for any chunk (:func:`default_chunk_limits`).
      max_report_episodes: ``e``, most finished episodes per ACTOR_REPORT; None
        means ``max(256, 4 * actor.num_envs)``. An actor with more sends several.

    Returns:
      Messages, one Layout per message, each with its tag from :data:`TAGS`.
    """
    r, l = cfg.replay, cfg.learner
    frame = tuple(int(d) for d in obs_frame_shape)
    obs = frame if obs_shape is None else tuple(int(d) for d in obs_shape)
    obs_dt = np.dtype(obs_dtype)
    H = int(state_size)
    T = r.sequence_length
    for what, value in (("state_size", H), ("num_params", num_params),
                        ("num_actions", num_actions)):
        if value < 1:
            raise ValueError(f"{what} must be >= 1, got {value}")
    n_max, m_default = default_chunk_limits(T, r.sequence_period, max_chunk_steps)
    m_max = m_default if max_chunk_sequences is None else int(max_chunk_sequences)
    e_max = (max(256, 4 * cfg.actor.num_envs) if max_report_episodes is None
             else int(max_report_episodes))
    n = Var("steps", n_max)
    m = Var("sequences", m_max)
    k = Var("batch", l.batch_size)
    e = Var("episodes", e_max)
    i64, f32, f64 = np.int64, np.float32, np.float64

    step_chunk = _layout("STEP_CHUNK", [
        Field("stream_id", i64),            # replay.routing.stream_id(actor, env, num_envs)
        Field("first_step_index", i64),     # stream step number of obs[0]
        Field("obs", obs_dt, (n, *frame)),  # o_t, one frame per step
        Field("action", i64, (n,)),         # a_t
        Field("reward", f32, (n,)),         # r_t, received after a_t
        Field("discount", f32, (n,)),       # 0.0 if the episode terminated after a_t
        Field("first", np.bool_, (n,)),     # step t starts an episode
        Field("seq_start_step", i64, (m,)),  # stream step number where the sequence starts
        Field("seq_length", i64, (m,)),     # valid steps (< T when cut by an episode end)
        Field("seq_state_h", f32, (m, H)),  # LSTM h at the sequence start
        Field("seq_state_c", f32, (m, H)),  # LSTM c at the sequence start
        Field("seq_prev_action", i64, (m,)),  # a_{start-1} (0 at an episode start)
        Field("seq_prev_reward", f32, (m,)),  # r_{start-1} (0.0 at an episode start)
        Field("seq_priority", f64, (m,)),   # initial priority
    ])
    sample_request = _layout("SAMPLE_REQUEST", [
        Field("request_id", i64),
        Field("num_sequences", i64),        # k, as given by sampling.allocate_batch
        Field("num_demo", i64),             # of which from the demo table (R2D3)
    ])
    sample_reply = _layout("SAMPLE_REPLY", [
        Field("request_id", i64),
        Field("num_sequences", i64),
        Field("num_demo", i64),             # the last num_demo rows are demo items
        Field("obs", obs_dt, (T, k, *obs)),
        Field("action", i64, (T, k)),
        Field("reward", f32, (T, k)),
        Field("discount", f32, (T, k)),
        Field("first", np.bool_, (T, k)),
        Field("mask", np.bool_, (T, k)),
        Field("prev_action", i64, (T, k)),
        Field("prev_reward", f32, (T, k)),
        Field("state_h", f32, (k, H)),
        Field("state_c", f32, (k, H)),
        Field("keys", i64, (k,)),
        Field("probs", f64, (k,)),          # local probabilities p_j / m_s
        Field("total_priority", f64),       # the shard's stats when it sampled
        Field("count", i64),
        Field("max_priority", f64),
        Field("demo_total_priority", f64),  # the demo table's (zeros: none)
        Field("demo_count", i64),
        Field("demo_max_priority", f64),
    ])
    priority_update = _layout("PRIORITY_UPDATE", [
        Field("keys", i64, (k,)),
        Field("priorities", f64, (k,)),
    ])
    shard_stats = _layout("SHARD_STATS", [
        Field("total_priority", f64),
        Field("count", i64),
        Field("max_priority", f64),
        Field("inserted_sequences", i64),   # totals since the run started
        Field("sampled_sequences", i64),
        Field("observations_stored", i64),  # currently held
        Field("demo_total_priority", f64),  # the demo table's (zeros: none)
        Field("demo_count", i64),
        Field("demo_max_priority", f64),
    ])
    params = _layout("PARAMS", [
        Field("version", i64),
        Field("learner_step", i64),
        Field("params", f32, (int(num_params),)),
    ])
    actor_report = _layout("ACTOR_REPORT", [
        Field("env_steps", i64),            # agent steps this actor took in total
        Field("params_version", i64),       # version of the params it acts with
        Field("episode_return", f64, (e,)),  # episodes finished since its previous report
        Field("episode_length", i64, (e,)),
        Field("episode_epsilon", f64, (e,)),
        Field("action_counts", i64, (int(num_actions),)),  # actions taken in total, per action
    ])
    control = _layout("CONTROL", [
        Field("command", i64),
        Field("argument", i64),
    ])
    return Messages(step_chunk, sample_request, sample_reply, priority_update, shard_stats,
                    params, actor_report, control)


def job_messages(cfg: Config, spec: JobSpec) -> Messages:
    """The run's message layouts from its config and shapes (identical on every rank)."""
    return declare_messages(cfg, spec.frame_shape, spec.obs_dtype, spec.state_size,
                            spec.num_params, spec.num_actions, obs_shape=spec.obs_shape)


def sequence_batch_of(fields: Mapping[str, np.ndarray]) -> SequenceBatch:
    """The SequenceBatch inside an unpacked SAMPLE_REPLY (views, no copies)."""
    return SequenceBatch(*(fields[name] for name in SequenceBatch._fields))


#: A table that does not exist (no demonstrations): what its stats fields carry.
NO_TABLE = ShardStats(0.0, 0, 0.0)


def stats_fields(stats: ShardStats, demo: ShardStats = NO_TABLE) -> Dict[str, Any]:
    """The stats fields of SHARD_STATS / SAMPLE_REPLY: a shard's and its demo table's."""
    return dict(total_priority=stats.total_priority, count=stats.count,
                max_priority=stats.max_priority, demo_total_priority=demo.total_priority,
                demo_count=demo.count, demo_max_priority=demo.max_priority)


def sample_reply_arrays(request_id: int, batch: SequenceBatch, total_priority: float,
                        count: int, max_priority: float, num_demo: int = 0,
                        demo: ShardStats = NO_TABLE) -> Dict[str, Any]:
    """Keyword arrays for ``SAMPLE_REPLY.pack`` / ``Endpoint.send("SAMPLE_REPLY", ...)``;
    ``batch``'s last ``num_demo`` rows are from the demo table whose stats are ``demo``."""
    out: Dict[str, Any] = dict(batch._asdict())
    out.update(request_id=request_id, num_sequences=int(np.shape(batch.keys)[0]),
               num_demo=int(num_demo),
               **stats_fields(ShardStats(total_priority, count, max_priority), demo))
    return out


def shard_stats_of(fields: Mapping[str, np.ndarray]) -> ShardStats:
    """The :class:`~r2d2_hpc.replay.sampling.ShardStats` in a SHARD_STATS or SAMPLE_REPLY."""
    return ShardStats(float(fields["total_priority"]), int(fields["count"]),
                      float(fields["max_priority"]))


def demo_stats_of(fields: Mapping[str, np.ndarray]) -> ShardStats:
    """The demo table's :class:`ShardStats` in a SHARD_STATS or SAMPLE_REPLY."""
    return ShardStats(float(fields["demo_total_priority"]), int(fields["demo_count"]),
                      float(fields["demo_max_priority"]))

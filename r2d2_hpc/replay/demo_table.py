"""R2D3's demonstration replay: demo episodes as a prioritized table beside the agent's.

Each replay rank ``s`` of ``S`` owns, besides its agent shard, one demo table:
a :class:`~r2d2_hpc.replay.shard.ReplayShard` whose keys carry
``shard_index = s | DEMO_TABLE_BIT`` (``replay.layout.demo_table_index``), so a
learner's priority update for a demo item reaches rank ``s`` by the same
routing rule as an agent item's, and the rank tells the two apart by the key.

Episodes are dealt round robin over the concatenation of every file's
episodes: episode ``e`` goes to shard ``e mod S`` (:func:`episodes_for_shard`).
Each episode is one stream of its table (stream id = its position in that
shard's share) and is cut exactly as an actor's stream is: windows of
``burn_in + trace_length`` steps starting every ``sequence_period`` steps from
the episode's first step, the last ones cut short at the episode's end, a
window with no trace step dropped (``agent.adder``'s rule).

What demonstrations lack, and what we chose (R2D3 paper, Paine et al. 2019,
does not say how its demo sequences are initialised):

* **Recurrent state**: a demonstrator's play has no state of our network, so
  every demo sequence starts from the zero state, and its burn-in warms the
  state up as R2D2's "zero start state + burn-in" strategy does.
* **Initial priority**: the table's largest priority so far
  (``INITIAL_MAX_PRIORITY`` when new), as Schaul et al. (2016) give new items
  and the issue asks; updates after each learner step move them like the
  agent's.

The table is sized to hold its share exactly (:func:`demo_table_spec`), so no
demo item is ever evicted.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np

from r2d2_hpc.replay.demos import DemoEpisodes
from r2d2_hpc.replay.layout import ShardSpec, demo_table_index, sequence_windows, shard_spec
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.types import TIME_MAJOR_FIELDS, SequenceBatch

__all__ = ["DemoShare", "build_demo_table", "concat_batches", "demo_table_spec",
           "episodes_for_shard", "episode_windows"]


class DemoShare:
    """The episodes one shard holds: ``(frames, action, reward, discount)`` per episode."""

    def __init__(self, episodes: List[Tuple[np.ndarray, ...]], frame_shape: Tuple[int, ...],
                 obs_dtype: np.dtype) -> None:
        self.episodes = episodes
        self.frame_shape = tuple(frame_shape)
        self.obs_dtype = np.dtype(obs_dtype)

    @property
    def steps(self) -> int:
        return int(sum(e[1].shape[0] for e in self.episodes))


def _episode_bounds(first: np.ndarray) -> List[Tuple[int, int]]:
    starts = np.flatnonzero(first).tolist()
    ends = starts[1:] + [int(first.shape[0])]
    return list(zip(starts, ends))


def episodes_for_shard(demos: Sequence[DemoEpisodes], shard: int,
                       num_shards: int) -> DemoShare:
    """Shard ``shard``'s share: episode ``e`` of all files, in order, when ``e mod S = shard``."""
    if not demos:
        raise ValueError("episodes_for_shard: no demonstrations given")
    mine: List[Tuple[np.ndarray, ...]] = []
    e = 0
    for d in demos:
        for lo, hi in _episode_bounds(d.first):
            if e % num_shards == shard:
                mine.append((d.frames[lo:hi], d.action[lo:hi].astype(np.int64),
                             d.reward[lo:hi], d.discount[lo:hi]))
            e += 1
    return DemoShare(mine, demos[0].frame_shape, demos[0].frames.dtype)


def episode_windows(length: int, burn_in: int, trace_length: int,
                    period: int) -> List[Tuple[int, int]]:
    """``(start, valid length)`` of an episode's sequences: every window with a trace step."""
    wins = sequence_windows(0, length - 1, burn_in + trace_length, period)
    return [(s, n) for s, n in wins if n > burn_in]


def _num_sequences(share: DemoShare, burn_in: int, trace_length: int, period: int) -> int:
    return sum(len(episode_windows(e[1].shape[0], burn_in, trace_length, period))
               for e in share.episodes)


def demo_table_spec(share: DemoShare, *, burn_in: int, trace_length: int,
                    sequence_period: int, state_size: int, frame_stack: int,
                    priority_exponent: float) -> ShardSpec:
    """A layout that holds ``share`` exactly (nothing is ever evicted); the memory check
    and :func:`build_demo_table` use it."""
    length = burn_in + trace_length
    seqs = _num_sequences(share, burn_in, trace_length, sequence_period)
    return shard_spec(share.frame_shape, capacity_observations=max(length, share.steps),
                      capacity_sequences=max(1, seqs), sequence_length=length,
                      state_size=state_size, obs_dtype=share.obs_dtype.name,
                      frame_stack=frame_stack, priority_exponent=priority_exponent)


def build_demo_table(share: DemoShare, shard: int, *, burn_in: int, trace_length: int,
                     sequence_period: int, state_size: int, frame_stack: int,
                     priority_exponent: float, seed: int = 0) -> ReplayShard:
    """Demo table of replay rank ``shard``: every episode of ``share`` cut into sequences
    (module docstring), zero start states, the table's max priority each."""
    spec = demo_table_spec(share, burn_in=burn_in, trace_length=trace_length,
                           sequence_period=sequence_period, state_size=state_size,
                           frame_stack=frame_stack, priority_exponent=priority_exponent)
    table = ReplayShard.from_spec(spec, seed=seed, shard_index=demo_table_index(shard))
    for sid, (frames, action, reward, discount) in enumerate(share.episodes):
        n = action.shape[0]
        first = np.zeros(n, bool)
        first[0] = True
        table.add_steps(sid, 0, frames, action, reward, discount, first)
        wins = episode_windows(n, burn_in, trace_length, sequence_period)
        if not wins:
            continue
        starts = np.array([s for s, _ in wins], np.int64)
        lens = np.array([m for _, m in wins], np.int64)
        before = np.maximum(starts - 1, 0)
        prev_action = np.where(starts > 0, action[before], 0)
        prev_reward = np.where(starts > 0, reward[before], 0.0).astype(np.float32)
        zeros = np.zeros((starts.size, state_size), np.float32)
        table.add_sequences(sid, starts, lens, zeros, zeros, prev_action, prev_reward, None)
    # sized to hold everything: a demo item is never dropped or evicted
    assert table.count == spec.capacity_sequences or table.count == 0
    assert table.num_evicted_sequences == 0 and table.num_dropped_sequences == 0
    return table


def concat_batches(parts: Sequence[SequenceBatch]) -> SequenceBatch:
    """The rows of ``parts`` one after another (``[T, B, ...]`` fields along B)."""
    return SequenceBatch(*(np.concatenate([getattr(p, f) for p in parts],
                                          axis=1 if f in TIME_MAJOR_FIELDS else 0)
                           for f in SequenceBatch._fields))

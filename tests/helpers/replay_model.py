"""A reference model of a replay shard: plays actor streams into a shard, keeps a copy of
every step sent and an independent model of FIFO eviction, and checks what reads back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List

import numpy as np
import pytest

from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.types import SequenceBatch

#: Frame shape the model's streams use.
FRAME = (6, 6)


@dataclass
class Epoch:
    """Reference copy of one stream epoch (from a (re)start)."""

    base: int
    obs: List[np.ndarray] = field(default_factory=list)
    action: List[int] = field(default_factory=list)
    reward: List[float] = field(default_factory=list)
    discount: List[float] = field(default_factory=list)
    first: List[bool] = field(default_factory=list)
    abs: List[int] = field(default_factory=list)

    @property
    def next_step(self) -> int:
        return self.base + len(self.first)

    def episode_start(self, step: int) -> int:
        i = step - self.base
        while not self.first[i]:
            i -= 1
        return i + self.base


@dataclass
class SeqRef:
    epoch: Epoch
    start: int
    length: int
    h: np.ndarray
    c: np.ndarray
    prev_action: int
    prev_reward: float
    priority: float
    counter: int          # insertion order, for the FIFO slot model
    needed: List[int]     # abs of every step the sequence needs (pre-start frames included)


def expected_batch(ref: SeqRef, T: int, k: int, fill: str) -> Dict[str, np.ndarray]:
    """Independent computation of one sequence's batch column."""
    e = ref.epoch
    zero = np.zeros(FRAME, np.uint8)
    obs = np.zeros((T, k) + FRAME, np.uint8)
    out = {n: np.zeros(T, d) for n, d in (("action", np.int64), ("reward", np.float32),
                                          ("discount", np.float32), ("first", bool),
                                          ("mask", bool))}
    for t in range(ref.length):
        step = ref.start + t
        i = step - e.base
        ep0 = e.episode_start(step)
        for j in range(k):
            s = step - (k - 1) + j
            if s >= ep0:
                obs[t, j] = e.obs[s - e.base]
            else:
                obs[t, j] = e.obs[ep0 - e.base] if fill == "first" else zero
        out["action"][t] = e.action[i]
        out["reward"][t] = e.reward[i]
        out["discount"][t] = e.discount[i]
        out["first"][t] = e.first[i]
        out["mask"][t] = True
    pa = np.r_[ref.prev_action, out["action"][:-1]]
    pr = np.r_[np.float32(ref.prev_reward), out["reward"][:-1]].astype(np.float32)
    out.update(obs=obs if k > 1 else obs[:, 0], prev_action=pa, prev_reward=pr)
    return out


def check_batch_column(b: SequenceBatch, col: int, ref: SeqRef, T: int, k: int, fill: str):
    exp = expected_batch(ref, T, k, fill)
    for n in ("obs", "action", "reward", "discount", "first", "mask", "prev_action",
              "prev_reward"):
        np.testing.assert_array_equal(getattr(b, n)[:, col], exp[n], err_msg=n)
    np.testing.assert_array_equal(b.state_h[col], ref.h)
    np.testing.assert_array_equal(b.state_c[col], ref.c)


class Driver:
    """Plays actor streams into a shard and keeps the reference model."""

    def __init__(self, shard: ReplayShard, rng: np.random.Generator):
        self.shard, self.rng = shard, rng
        sp = shard.spec
        self.C, self.S, self.T, self.k = (sp.capacity_observations, sp.capacity_sequences,
                                          sp.sequence_length, sp.frame_stack)
        self.fill = sp.stack_fill
        self.epochs: Dict[int, Epoch] = {}
        self.write = 0
        self.seq_counter = 0
        self.dropped = 0
        self.refs: Dict[int, SeqRef] = {}

    def steps(self, stream: int, n: int, p_first: float, restart: bool) -> None:
        e = self.epochs.get(stream)
        if e is None or restart:
            e = Epoch(base=int(self.rng.integers(0, 50)))
            self.epochs[stream] = e
            start_first = True
        else:
            start_first = False
        start = e.next_step
        obs = self.rng.integers(0, 256, (n,) + FRAME, dtype=np.uint8)
        first = self.rng.random(n) < p_first
        first[0] |= start_first
        action = self.rng.integers(0, 18, n)
        reward = self.rng.normal(size=n).astype(np.float32)
        discount = (self.rng.random(n) < 0.9).astype(np.float32)
        self.shard.add_steps(stream, start, obs, action, reward, discount, first)
        e.obs.extend(obs)
        e.action.extend(action.tolist())
        e.reward.extend(reward.tolist())
        e.discount.extend(discount.tolist())
        e.first.extend(first.tolist())
        e.abs.extend(range(self.write, self.write + n))
        self.write += n

    def needed(self, e: Epoch, start: int, length: int) -> List[int]:
        need = [e.abs[s - e.base] for s in range(start, start + length)]
        ep0 = e.episode_start(start)
        for s in range(max(ep0, start - (self.k - 1)), start):
            need.append(e.abs[s - e.base])
        return need

    def sequences(self, stream: int, count: int) -> None:
        e = self.epochs[stream]
        refs = []
        for _ in range(count):
            start = int(self.rng.integers(e.base, e.next_step))
            # longest length that stays in the episode and in what was sent
            end = start + 1
            while end < e.next_step and end - start < self.T and not e.first[end - e.base]:
                end += 1
            length = int(self.rng.integers(1, end - start + 1))
            refs.append(SeqRef(e, start, length, self.rng.normal(size=self.shard.spec.state_size)
                               .astype(np.float32), self.rng.normal(size=self.shard.spec.state_size)
                               .astype(np.float32), int(self.rng.integers(0, 18)),
                               float(np.float32(self.rng.normal())), float(self.rng.random() * 3),
                               -1, self.needed(e, start, length)))
        keys = self.shard.add_sequences(
            stream, np.array([r.start for r in refs]), np.array([r.length for r in refs]),
            np.stack([r.h for r in refs]), np.stack([r.c for r in refs]),
            np.array([r.prev_action for r in refs]),
            np.array([r.prev_reward for r in refs], np.float32),
            np.array([r.priority for r in refs]))
        for key, r in zip(keys.tolist(), refs):
            dropped = min(r.needed) < self.write - self.C
            assert (key == -1) == dropped, (key, r.start, r.length)
            self.dropped += dropped
            if key >= 0:
                r.counter = self.seq_counter
                self.seq_counter += 1
                self.refs[key] = r

    def model_live(self) -> List[int]:
        return sorted(k for k, r in self.refs.items()
                      if min(r.needed) >= self.write - self.C and
                      r.counter >= self.seq_counter - self.S)

    def check(self) -> None:
        live = self.shard.live_keys()
        assert sorted(live.tolist()) == self.model_live()
        assert self.shard.count == live.size
        # the books: every sequence sent is live, evicted or was dropped on arrival
        assert self.shard.num_dropped_sequences == self.dropped
        assert self.shard.num_evicted_sequences == self.seq_counter - live.size
        if live.size:
            b = self.shard.read(live)
            for col, key in enumerate(live.tolist()):
                check_batch_column(b, col, self.refs[key], self.T, self.k, self.fill)
            prios = np.array([self.refs[k].priority for k in live.tolist()])
            assert self.shard.stats().total_priority == pytest.approx(
                np.sum(prios ** 0.9), rel=1e-9, abs=1e-12)
            if self.shard.stats().total_priority > 0:
                s = self.shard.sample(6)
                for col, key in enumerate(s.keys.tolist()):
                    check_batch_column(s, col, self.refs[key], self.T, self.k, self.fill)

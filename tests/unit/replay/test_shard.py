"""Tests for r2d2_hpc.replay.shard.ReplayShard.

The property test drives a shard with many interleaved actor streams of random
episode lengths and a small capacity, keeps a reference copy of every step sent
and an independent model of FIFO eviction, and checks after every operation
that the set of live sequences is exactly what the model says and that every
live sequence reads back exactly as it was inserted.
"""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from r2d2_hpc.replay.layout import split_keys
from r2d2_hpc.replay.reshard import reshard
from r2d2_hpc.replay.routing import shard_for_stream
from r2d2_hpc.replay.sampling import ShardStats, allocate_batch, global_probabilities
from r2d2_hpc.replay.shard import ReplayShard
from r2d2_hpc.types import SequenceBatch
from tests.helpers.chi2 import chi2_goodness_of_fit, chi2_two_sample
from tests.helpers.replay_model import FRAME, Driver


def make_shard(**kw) -> ReplayShard:
    args = dict(capacity_observations=64, capacity_sequences=16, sequence_length=5,
                state_size=3, frame_stack=3, seed=0)
    args.update(kw)
    return ReplayShard(kw.pop("frame_shape", FRAME), **{k: v for k, v in args.items()
                                                         if k != "frame_shape"})


def id_frames(ids: np.ndarray) -> np.ndarray:
    """Frames whose every pixel is the frame id (so a stack reads back as ids)."""
    ids = np.asarray(ids)
    return np.broadcast_to(ids.astype(np.uint8)[:, None, None], (ids.size,) + FRAME).copy()


def add_id_steps(shard: ReplayShard, stream: int, start: int, firsts: List[int],
                 n: int, id_offset: int = 1) -> None:
    """Adds n steps whose frame id is ``step + id_offset``, action = step, reward = step/10."""
    steps = np.arange(start, start + n)
    first = np.isin(steps, firsts)
    shard.add_steps(stream, start, id_frames(steps + id_offset), steps.astype(np.int64),
                    (steps / 10).astype(np.float32), np.ones(n, np.float32), first)


def add_seq(shard: ReplayShard, stream: int, start: int, length: int,
            priority: Optional[float] = None, prev_action: int = 0) -> int:
    h = shard.spec.state_size
    keys = shard.add_sequences(
        stream, np.array([start]), np.array([length]), np.full((1, h), start, np.float32),
        np.full((1, h), -start, np.float32), np.array([prev_action]), np.array([0.5], np.float32),
        None if priority is None else np.array([priority]))
    return int(keys[0])


# ----------------------------------------------------------------------------
# Hand-written tables: frame stacks, padding, prev action/reward
# ----------------------------------------------------------------------------

# (episode starts, start_step, length, stack_fill, expected frame ids [T=4][k=3]).
# Frame id of step s is s + 1; 0 is the zero fill / padding.
STACK_TABLE = [
    # mid-episode: the stack reaches two steps back
    ([0], 4, 4, "zeros", [[3, 4, 5], [4, 5, 6], [5, 6, 7], [6, 7, 8]]),
    # the sequence starts an episode: nothing before it
    ([0, 4], 4, 4, "zeros", [[0, 0, 5], [0, 5, 6], [5, 6, 7], [6, 7, 8]]),
    # the episode started one step before the sequence
    ([0, 3], 4, 4, "zeros", [[0, 4, 5], [4, 5, 6], [5, 6, 7], [6, 7, 8]]),
    # the episode started two steps before: a full stack, nothing from step 1
    ([0, 2], 4, 4, "zeros", [[3, 4, 5], [4, 5, 6], [5, 6, 7], [6, 7, 8]]),
    # padding after two valid steps is all zeros
    ([0, 6], 4, 2, "zeros", [[3, 4, 5], [4, 5, 6], [0, 0, 0], [0, 0, 0]]),
    # stream start
    ([0], 0, 3, "zeros", [[0, 0, 1], [0, 1, 2], [1, 2, 3], [0, 0, 0]]),
    # "first" fill repeats the episode's first frame
    ([0, 4], 4, 4, "first", [[5, 5, 5], [5, 5, 6], [5, 6, 7], [6, 7, 8]]),
    ([0, 3], 4, 3, "first", [[4, 4, 5], [4, 5, 6], [5, 6, 7], [0, 0, 0]]),
]


@pytest.mark.parametrize("firsts,start,length,fill,expected", STACK_TABLE)
def test_frame_stack_table(firsts, start, length, fill, expected):
    shard = make_shard(sequence_length=4, stack_fill=fill)
    add_id_steps(shard, 0, 0, firsts, 12)
    key = add_seq(shard, 0, start, length)
    b = shard.read(np.array([key]))
    assert b.obs.shape == (4, 1, 3) + FRAME
    assert b.obs.dtype == np.uint8
    np.testing.assert_array_equal(b.obs[:, 0, :, 0, 0], np.array(expected))
    # every pixel of a stacked frame is that frame's id
    assert (b.obs == b.obs[..., :1, :1]).all()


def test_batch_fields_table():
    """Steps 0..9, episode starts at 0 and 7; sequence start 5, length 2 of T = 4."""
    shard = make_shard(sequence_length=4)
    add_id_steps(shard, 0, 0, [0, 7], 10)
    key = add_seq(shard, 0, 5, 2, prev_action=4)
    b = shard.read(np.array([key]))
    assert isinstance(b, SequenceBatch)
    np.testing.assert_array_equal(b.action[:, 0], [5, 6, 0, 0])
    np.testing.assert_allclose(b.reward[:, 0], [0.5, 0.6, 0, 0])
    np.testing.assert_array_equal(b.discount[:, 0], [1, 1, 0, 0])
    np.testing.assert_array_equal(b.mask[:, 0], [True, True, False, False])
    np.testing.assert_array_equal(b.first[:, 0], [False, False, False, False])
    np.testing.assert_array_equal(b.prev_action[:, 0], [4, 5, 6, 0])
    np.testing.assert_allclose(b.prev_reward[:, 0], [0.5, 0.5, 0.6, 0.0])
    np.testing.assert_array_equal(b.state_h, [[5, 5, 5]])
    np.testing.assert_array_equal(b.state_c, [[-5, -5, -5]])
    assert b.action.dtype == np.int64 and b.prev_action.dtype == np.int64
    assert b.reward.dtype == np.float32 and b.discount.dtype == np.float32
    assert b.state_h.dtype == np.float32 and b.probs.dtype == np.float64
    assert b.mask.dtype == np.bool_ and b.first.dtype == np.bool_
    key2 = add_seq(shard, 0, 7, 3)
    b2 = shard.read(np.array([key2]))
    np.testing.assert_array_equal(b2.first[:, 0], [True, False, False, False])


def test_sample_into_a_reused_buffer():
    a, b = make_shard(seed=4), make_shard(seed=4)
    for s in (a, b):
        add_id_steps(s, 0, 0, [0, 7], 20)
        for t in (0, 7, 10, 14):
            add_seq(s, 0, t, 5, priority=1.0 + t)
    buf = np.full((5, 6, 3) + FRAME, 255, np.uint8)
    x = a.sample(6, obs_out=buf)
    y = b.sample(6)
    assert x.obs is buf
    np.testing.assert_array_equal(buf, y.obs)
    np.testing.assert_array_equal(x.keys, y.keys)
    before = a.state().copy()
    for bad in (np.zeros((5, 6, 3) + FRAME, np.float32), np.zeros((5, 5, 3) + FRAME, np.uint8),
                np.zeros((5, 6, 3, 6, 12), np.uint8)[..., ::2]):
        with pytest.raises(ValueError, match="obs_out"):
            a.sample(6, obs_out=bad)
    assert a.state().equals(before)          # nothing drawn on bad input


def test_vector_observations_without_stacking():
    shard = ReplayShard((5,), obs_dtype=np.float32, frame_stack=1, capacity_observations=20,
                        capacity_sequences=4, sequence_length=3, state_size=2)
    obs = np.arange(20, dtype=np.float32).reshape(4, 5)
    shard.add_steps(1, 0, obs, np.zeros(4, int), np.zeros(4), np.ones(4), np.eye(4, dtype=bool)[0])
    key = shard.add_sequences(1, [1], [3], np.zeros((1, 2)), np.zeros((1, 2)), [0], [0.0])
    b = shard.read(key)
    assert b.obs.shape == (3, 1, 5) and b.obs.dtype == np.float32
    np.testing.assert_array_equal(b.obs[:, 0], obs[1:4])


def test_each_step_stored_once():
    """Three overlapping sequences (period 2, length 4) share ring rows."""
    shard = make_shard(sequence_length=4, frame_stack=1)
    add_id_steps(shard, 0, 0, [0], 8)
    keys = [add_seq(shard, 0, s, 4) for s in (0, 2, 4)]
    assert shard.num_steps == 8 and shard.total_steps_written == 8
    pos = shard.state().sequences["pos"]
    slots = split_keys(np.array(keys)).slot
    np.testing.assert_array_equal(pos[slots], [[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7]])


# ----------------------------------------------------------------------------
# Eviction (hand-computed)
# ----------------------------------------------------------------------------


def test_eviction_accounts_for_pre_start_stack_frames():
    """Capacity 10, stack 3. A sequence at step 2 needs rows 0, 1 (steps 0, 1);
    one at step 3 needs steps 1, 2. Writing step 10 overwrites row 0."""
    shard = make_shard(capacity_observations=10, sequence_length=3)
    add_id_steps(shard, 0, 0, [0], 10)
    k2, k3 = add_seq(shard, 0, 2, 3), add_seq(shard, 0, 3, 3)
    add_id_steps(shard, 0, 10, [], 1)
    assert set(shard.live_keys().tolist()) == {k3}
    add_id_steps(shard, 0, 11, [], 1)           # overwrites row 1 = step 1
    assert shard.count == 0
    assert shard.stats() == ShardStats(0.0, 0, 1.0)
    assert k2 != k3


def test_episode_start_frees_earlier_frames():
    """If the sequence starts an episode its stack needs no earlier frame."""
    shard = make_shard(capacity_observations=10, sequence_length=3)
    add_id_steps(shard, 0, 0, [0, 2], 10)
    k = add_seq(shard, 0, 2, 3)
    add_id_steps(shard, 0, 10, [], 2)            # overwrites steps 0 and 1
    assert shard.live_keys().tolist() == [k]
    np.testing.assert_array_equal(shard.read([k]).obs[0, 0, :, 0, 0], [0, 0, 3])


def test_fifo_sequence_slots():
    shard = make_shard(capacity_sequences=3, frame_stack=1, sequence_length=2)
    add_id_steps(shard, 0, 0, [0], 10)
    keys = [add_seq(shard, 0, s, 2) for s in range(5)]
    assert sorted(shard.live_keys().tolist()) == sorted(keys[2:])
    fields = split_keys(np.array(keys))
    np.testing.assert_array_equal(fields.slot, [0, 1, 2, 0, 1])
    np.testing.assert_array_equal(fields.generation, [1, 1, 1, 2, 2])
    np.testing.assert_array_equal(fields.shard, [0] * 5)


def test_sequence_of_overwritten_steps_is_dropped():
    shard = make_shard(capacity_observations=10, sequence_length=3)
    add_id_steps(shard, 0, 0, [0], 8)
    add_id_steps(shard, 1, 0, [0], 5)            # stream 1 overwrites steps 0..2 of stream 0
    keys = shard.add_sequences(0, np.array([1, 3, 5]), np.array([3, 3, 3]), np.zeros((3, 3)),
                               np.zeros((3, 3)), np.zeros(3, int), np.zeros(3))
    # start 1 lost its own steps; start 3 lost the stack frame of step 2; start 5 is fine
    assert keys[0] == -1 and keys[1] == -1 and keys[2] >= 0
    assert shard.num_dropped_sequences == 2 and shard.count == 1


def test_stream_restart():
    shard = make_shard(sequence_length=3)
    add_id_steps(shard, 0, 0, [0], 6)
    k_old = add_seq(shard, 0, 3, 3)
    add_id_steps(shard, 0, 0, [0], 4, id_offset=100)   # actor restarted: numbering from 0
    assert shard.streams()[0] == (0, 4)
    k_new = add_seq(shard, 0, 1, 3)
    np.testing.assert_array_equal(shard.read([k_new]).obs[:, 0, -1, 0, 0], [101, 102, 103])
    np.testing.assert_array_equal(shard.read([k_old]).obs[:, 0, -1, 0, 0], [4, 5, 6])
    with pytest.raises(ValueError, match="first_step_index"):
        add_id_steps(shard, 0, 9, [], 2)


# ----------------------------------------------------------------------------
# Priorities, keys, stats
# ----------------------------------------------------------------------------


def test_priority_exponent_applied():
    shard = make_shard(frame_stack=1, sequence_length=2)
    add_id_steps(shard, 0, 0, [0], 6)
    keys = np.array([add_seq(shard, 0, s, 2, priority=p)
                     for s, p in ((0, 1.0), (2, 2.0), (4, 4.0))])
    leaves = np.array([1.0, 2.0 ** 0.9, 4.0 ** 0.9])        # 1, 1.866, 3.482
    st = shard.stats()
    assert st.total_priority == pytest.approx(leaves.sum(), rel=1e-12)
    assert st.count == 3 and st.max_priority == 4.0
    np.testing.assert_allclose(shard.read(keys).probs, leaves / leaves.sum(), rtol=1e-12)
    np.testing.assert_allclose(shard.state().slots["tree_leaves"][:3], leaves, rtol=1e-15)
    alpha0 = make_shard(frame_stack=1, sequence_length=2, priority_exponent=0.0)
    add_id_steps(alpha0, 0, 0, [0], 6)
    for s, p in ((0, 1.0), (2, 2.0), (4, 8.0)):
        add_seq(alpha0, 0, s, 2, priority=p)
    assert alpha0.stats().total_priority == 3.0            # p ** 0 = 1: uniform


def test_default_priority_is_max_seen():
    shard = make_shard(frame_stack=1, sequence_length=2)
    add_id_steps(shard, 0, 0, [0], 6)
    k0 = add_seq(shard, 0, 0, 2)
    assert shard.sequence_info([k0])["priority"][0] == 1.0     # nothing seen yet
    shard.update_priorities(np.array([k0]), np.array([3.0]))
    k1 = add_seq(shard, 0, 2, 2)
    assert shard.sequence_info([k1])["priority"][0] == 3.0
    shard.update_priorities(np.array([k0]), np.array([0.5]))
    assert shard.stats().max_priority == 3.0


def test_stale_priority_updates_are_dropped():
    shard = make_shard(capacity_sequences=2, frame_stack=1, sequence_length=2)
    add_id_steps(shard, 0, 0, [0], 10)
    ka, kb = add_seq(shard, 0, 0, 2), add_seq(shard, 0, 2, 2)
    kc = add_seq(shard, 0, 4, 2)          # reuses ka's slot 0 with generation 2
    assert split_keys(np.array([ka, kc])).slot.tolist() == [0, 0]
    n = shard.update_priorities(np.array([ka, kb, kc]), np.array([7.0, 2.0, 3.0]))
    assert n == 2
    info = shard.sequence_info(np.array([kb, kc]))
    np.testing.assert_array_equal(info["priority"], [2.0, 3.0])
    # evicted (not reused): overwrite the ring so every sequence dies
    add_id_steps(shard, 1, 0, [0], 64)
    assert shard.count == 0
    before = shard.state().copy()
    assert shard.update_priorities(np.array([kb, kc]), np.array([1.0, 1.0])) == 0
    assert shard.state().equals(before)


def test_duplicate_keys_last_wins():
    shard = make_shard(frame_stack=1, sequence_length=2)
    add_id_steps(shard, 0, 0, [0], 4)
    k = add_seq(shard, 0, 0, 2)
    shard.update_priorities(np.array([k, k]), np.array([5.0, 2.0]))
    assert shard.sequence_info([k])["priority"][0] == 2.0
    assert shard.stats().total_priority == pytest.approx(2.0 ** 0.9)


def test_sample_uses_own_generator_or_given_one():
    a, b = make_shard(seed=3), make_shard(seed=3)
    for s in (a, b):
        add_id_steps(s, 0, 0, [0], 20)
        for t in range(0, 15, 3):
            add_seq(s, 0, t, 5, priority=1.0 + t)
    np.testing.assert_array_equal(a.sample(8).keys, b.sample(8).keys)
    x = a.sample(8, np.random.default_rng(1))
    y = b.sample(8, np.random.default_rng(1))
    np.testing.assert_array_equal(x.keys, y.keys)
    assert a.state().rng_state == b.state().rng_state
    with pytest.raises(ValueError, match="no sequence"):
        make_shard().sample(1)


# ----------------------------------------------------------------------------
# Bad input: ValueError naming the field, shard unchanged
# ----------------------------------------------------------------------------


def _populated() -> ReplayShard:
    shard = make_shard(sequence_length=4)
    add_id_steps(shard, 0, 0, [0, 6], 10)
    add_seq(shard, 0, 0, 4, priority=2.0)
    return shard


def _steps_args(**over):
    n = 3
    args = dict(stream_id=0, first_step_index=10, obs=np.zeros((n,) + FRAME, np.uint8),
                action=np.zeros(n, np.int64), reward=np.zeros(n, np.float32),
                discount=np.ones(n, np.float32), first=np.zeros(n, bool))
    args.update(over)
    return args


def _seq_args(**over):
    args = dict(stream_id=0, start_step=np.array([2, 6]), length=np.array([4, 3]),
                state_h=np.zeros((2, 3), np.float32), state_c=np.zeros((2, 3), np.float32),
                prev_action=np.array([0, 1]), prev_reward=np.zeros(2, np.float32),
                priority=np.array([1.0, 2.0]))
    args.update(over)
    return args


BAD_STEPS = [
    ("obs", dict(obs=np.zeros((3, 6, 5), np.uint8))),
    ("obs", dict(obs=np.zeros((3,) + FRAME, np.float32))),
    ("obs", dict(obs=[[0]])),
    ("obs", dict(obs=np.zeros((0,) + FRAME, np.uint8))),
    ("obs", dict(obs=np.zeros((65,) + FRAME, np.uint8), action=np.zeros(65, int),
                 reward=np.zeros(65), discount=np.ones(65), first=np.zeros(65, bool))),
    ("action", dict(action=np.zeros(2, np.int64))),
    ("action", dict(action=np.zeros(3, np.float32))),
    ("action", dict(action=np.array([0, -1, 0]))),
    ("reward", dict(reward=np.array([0.0, np.nan, 0.0]))),
    ("reward", dict(reward=np.zeros(4, np.float32))),
    ("reward", dict(reward=np.zeros(3, np.int64))),
    ("discount", dict(discount=np.array([1.0, 1.5, 1.0]))),
    ("discount", dict(discount=np.array([1.0, np.inf, 1.0]))),
    ("first", dict(first=np.zeros(3, np.int64))),
    ("first_step_index", dict(first_step_index=12)),
    ("first_step_index", dict(first_step_index=-1)),
    ("stream_id", dict(stream_id=-2)),
    ("stream_id", dict(stream_id=1.5)),
    ("first", dict(stream_id=9, first_step_index=0)),
]

BAD_SEQS = [
    ("stream_id", dict(stream_id=5)),
    ("start_step", dict(start_step=np.array([2.0, 6.0]))),
    ("start_step", dict(start_step=np.array([[2, 6]]))),
    ("start_step", dict(start_step=np.array([8, 6]))),   # steps 8..11 not sent yet
    ("length", dict(length=np.array([4, 0]))),
    ("length", dict(length=np.array([5, 3]))),
    ("length", dict(length=np.array([4]))),
    ("length", dict(start_step=np.array([4, 6]))),         # 4..7 crosses the start at 6
    ("state_h", dict(state_h=np.zeros((2, 4), np.float32))),
    ("state_c", dict(state_c=np.full((2, 3), np.nan, np.float32))),
    ("state_h", dict(state_h=np.zeros((2, 3), np.int32))),
    ("prev_action", dict(prev_action=np.array([0, -3]))),
    ("prev_reward", dict(prev_reward=np.array([0.0, np.inf]))),
    ("priority", dict(priority=np.array([1.0, -1.0]))),
    ("priority", dict(priority=np.array([1.0, np.nan]))),
    ("priority", dict(priority=np.array([1.0]))),
]


@pytest.mark.parametrize("method,field_name,over",
                         [("add_steps", f, o) for f, o in BAD_STEPS]
                         + [("add_sequences", f, o) for f, o in BAD_SEQS])
def test_bad_input_leaves_shard_unchanged(method, field_name, over):
    shard = _populated()
    before = shard.state().copy()
    args = _steps_args(**over) if method == "add_steps" else _seq_args(**over)
    with pytest.raises(ValueError, match=field_name):
        getattr(shard, method)(**args)
    assert shard.state().equals(before)


def test_valid_arguments_of_the_bad_input_tables_are_accepted():
    """The tables' baselines are valid, so each failure above is due to its one change."""
    shard = _populated()
    shard.add_steps(**_steps_args())
    keys = shard.add_sequences(**_seq_args())
    assert (keys >= 0).all() and shard.count == 3


@pytest.mark.parametrize("call,field_name", [
    (lambda s, k: s.update_priorities(np.array([k + 5]), np.array([1.0])), "keys"),
    (lambda s, k: s.update_priorities(np.array([k | (9 << 32)]), np.array([1.0])), "keys"),
    (lambda s, k: s.update_priorities(np.array([-1]), np.array([1.0])), "keys"),
    (lambda s, k: s.update_priorities(np.array([float(k)]), np.array([1.0])), "keys"),
    (lambda s, k: s.update_priorities(np.array([k]), np.array([np.nan])), "priorities"),
    (lambda s, k: s.update_priorities(np.array([k]), np.array([-0.5])), "priorities"),
    (lambda s, k: s.update_priorities(np.array([k]), np.array([1.0, 2.0])), "priorities"),
    (lambda s, k: s.sample(0), "batch_size"),
    (lambda s, k: s.read(np.array([k + 1])), "keys"),
])
def test_bad_priority_and_sample_calls(call, field_name):
    shard = _populated()
    key = int(shard.live_keys()[0])
    before = shard.state().copy()
    with pytest.raises(ValueError, match=field_name):
        call(shard, key)
    assert shard.state().equals(before)


def test_bad_constructor_lists_every_error():
    with pytest.raises(ValueError) as e:
        ReplayShard((0, 4), capacity_observations=3, capacity_sequences=0, sequence_length=4,
                    state_size=2, obs_dtype=np.int16, stack_fill="edge", priority_exponent=-1)
    msg = str(e.value)
    for name in ("frame_shape", "obs_dtype", "stack_fill", "capacity_sequences",
                 "priority_exponent", "capacity_observations"):
        assert name in msg


# ----------------------------------------------------------------------------
# Property test: interleaved streams, small capacity, reference model
# ----------------------------------------------------------------------------


ops = st.lists(st.tuples(st.integers(0, 4),            # stream
                         st.integers(1, 9),            # steps in this message
                         st.sampled_from([0.0, 0.15, 0.5]),  # P(episode start) per step
                         st.integers(0, 3),            # sequences declared afterwards
                         st.booleans()),               # actor restart (rare, see below)
               min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=ops, k=st.integers(1, 3), T=st.integers(1, 5), extra=st.integers(0, 25),
       S=st.integers(1, 8), fill=st.sampled_from(["zeros", "first"]), seed=st.integers(0, 99))
def test_interleaved_streams_never_corrupt_live_sequences(ops, k, T, extra, S, fill, seed):
    C = k - 1 + T + extra
    shard = ReplayShard(FRAME, capacity_observations=C, capacity_sequences=S,
                        sequence_length=T, state_size=2, frame_stack=k, stack_fill=fill,
                        seed=seed)
    d = Driver(shard, np.random.default_rng(seed))
    for stream, n, p_first, n_seq, restart in ops:
        d.steps(stream, min(n, C), p_first, restart and stream == 0)
        if n_seq:
            d.sequences(stream, min(n_seq, S))   # one call may not exceed the slots
        d.check()


# ----------------------------------------------------------------------------
# Cross-shard sampling at shard level: 4 shards == 1 shard
# ----------------------------------------------------------------------------


def _fill(shards: List[ReplayShard], priorities: np.ndarray) -> None:
    """Stream i (one env per actor) holds one sequence of priority priorities[i], in
    shard i mod len(shards)."""
    for i, p in enumerate(priorities):
        s = shards[shard_for_stream(i, 1, len(shards))]
        add_id_steps(s, i, 0, [0], 4)
        add_seq(s, i, 0, 4, priority=float(p))


def test_cross_shard_sampling_matches_single_shard():
    n = 12
    priorities = np.array([0.1, 0.5, 1.0, 2.0, 3.0, 0.3, 5.0, 0.0, 1.5, 4.0, 0.7, 2.5])
    target = priorities ** 0.9 / np.sum(priorities ** 0.9)
    one = [make_shard(capacity_sequences=n, frame_stack=1, sequence_length=4)]
    four = [make_shard(capacity_sequences=n, frame_stack=1, sequence_length=4, seed=i)
            for i in range(4)]
    _fill(one, priorities)
    _fill(four, priorities)
    rng = np.random.default_rng(7)
    draws, batch = 24000, 16
    counts_one = np.zeros(n, np.int64)
    counts_four = np.zeros(n, np.int64)
    for _ in range(draws // batch):
        b = one[0].sample(batch, rng)
        streams = one[0].sequence_info(b.keys)["stream"]
        np.add.at(counts_one, streams, 1)
        np.testing.assert_allclose(b.probs, target[streams], rtol=1e-12)
        stats = [s.stats() for s in four]
        alloc = allocate_batch(stats, batch, rng)
        assert alloc.sum() == batch
        for sid, cnt in enumerate(alloc.tolist()):
            if cnt == 0:
                continue
            bs = four[sid].sample(cnt, rng)
            streams = four[sid].sequence_info(bs.keys)["stream"]
            np.add.at(counts_four, streams, 1)
            gp = global_probabilities(bs.probs, np.full(cnt, sid), stats)
            np.testing.assert_allclose(gp, target[streams], rtol=1e-12)
    assert counts_one[7] == 0 and counts_four[7] == 0
    _, p_one, _ = chi2_goodness_of_fit(counts_one, target)
    _, p_four, _ = chi2_goodness_of_fit(counts_four, target)
    _, p_two, _ = chi2_two_sample(counts_one, counts_four)
    assert p_one > 1e-3 and p_four > 1e-3 and p_two > 1e-3, (p_one, p_four, p_two)
    # negative control: the test has power against the naive equal split
    naive = np.zeros(n, np.int64)
    for _ in range(draws // batch):
        for s in four:
            streams = s.sequence_info(s.sample(batch // 4, rng).keys)["stream"]
            np.add.at(naive, streams, 1)
    assert chi2_goodness_of_fit(naive, target)[1] < 1e-6


def test_in_memory_reshard_keeps_sequences():
    shards = [make_shard(seed=i) for i in range(2)]
    for stream in range(6):
        s = shards[shard_for_stream(stream, 1, 2)]
        add_id_steps(s, stream, 0, [0], 9)
        add_seq(s, stream, 2, 5, priority=1.0 + stream)
    new = reshard(shards, 3, num_envs=1)
    assert [len(s) for s in new] == [2, 2, 2]
    for i, s in enumerate(new):
        info = s.sequence_info(s.live_keys())
        assert all(shard_for_stream(x, 1, 3) == i for x in info["stream"].tolist())
        np.testing.assert_array_equal(info["priority"], 1.0 + info["stream"])
        b = s.read(s.live_keys())
        np.testing.assert_array_equal(b.obs[:, :, -1, 0, 0].T, [[3, 4, 5, 6, 7]] * 2)

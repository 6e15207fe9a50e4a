"""Message layouts: byte offsets by hand, exact round trips, and clear rejections."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.comm.messages import (Command, Messages, TAGS, declare_messages,
                                    default_chunk_limits, sample_reply_arrays, sequence_batch_of,
                                    shard_stats_of)
from r2d2_hpc.comm.wire import Field, Layout, MAGIC, MessageError, PROTOCOL_VERSION, Var
from r2d2_hpc.config import Config, LearnerConfig, ReplayConfig
from r2d2_hpc.types import SequenceBatch
from tests.helpers.transport_contract import random_arrays as contract_random_arrays


def tiny_config() -> Config:
    return Config(replay=ReplayConfig(burn_in=2, trace_length=3, sequence_period=2,
                                      capacity_observations=1000, min_fill_sequences=1),
                  learner=LearnerConfig(batch_size=4, n_step=2))


def tiny_messages(**kw: Any) -> Messages:
    # frame (5, 6) uint8, stacked obs (2, 5, 6), H = 4, P = 17 params, A = 3 actions
    return declare_messages(tiny_config(), (5, 6), np.uint8, 4, 17, 3, obs_shape=(2, 5, 6), **kw)


def random_arrays(layout: Layout, counts: Dict[str, int], rng: np.random.Generator
                  ) -> Dict[str, np.ndarray]:
    """Random values of every field (full dtype range for ints, incl. negatives)."""
    return contract_random_arrays(layout, counts, rng, float_scale=1e3)


def count_cases(layout: Layout, rng: np.random.Generator):
    """Every count 0, every count at its maximum, and a random middle."""
    yield {v.name: 0 for v in layout.vars}
    yield {v.name: v.maximum for v in layout.vars}
    yield {v.name: int(rng.integers(0, v.maximum + 1)) for v in layout.vars}


def assert_fields_equal(got: Dict[str, np.ndarray], want: Dict[str, np.ndarray], layout: Layout):
    assert set(got) == {f.name for f in layout.fields}
    for f in layout.fields:
        g = got[f.name]
        assert g.dtype == f.dtype, f.name
        assert g.shape == np.shape(want[f.name]), f.name
        np.testing.assert_array_equal(g, want[f.name], err_msg=f.name)


# --------------------------------------------------------------------------- #
# Offsets by hand.

def small_layout(version: int = 1) -> Layout:
    n = Var("n", 3)
    return Layout("SMALL", 7, [Field("a", np.int8), Field("b", np.float64, (n,)),
                               Field("c", np.uint8, (n, 2))], version=version)


# counts -> (offset of a, b, c, total bytes), by hand: header = 16 + 8 * 1 = 24;
# a: 1 byte at 24; b: aligned to 32, 8 n bytes; c: aligned to 8, 2 n bytes.
OFFSET_TABLE = [
    (0, (24, 32, 32, 32)),
    (1, (24, 32, 40, 42)),
    (2, (24, 32, 48, 52)),
    (3, (24, 32, 56, 62)),
]


@pytest.mark.parametrize("n,expected", OFFSET_TABLE)
def test_offsets_by_hand(n, expected):
    layout = small_layout()
    buf = layout.new_buffer()
    views, total = layout.prepare(buf, n=n)
    offs = layout.offsets(n=n)
    assert (offs["a"], offs["b"], offs["c"], total) == expected
    for k in "abc":  # the (non-empty) views sit at those offsets
        if views[k].size:
            assert views[k].ctypes.data - buf.ctypes.data == offs[k]
    assert layout.size(n=n) == expected[3]
    assert layout.header_nbytes == 24
    assert layout.nbytes == 62 and layout.min_nbytes == 32


def test_header_bytes_by_hand():
    layout = small_layout()
    buf = layout.new_buffer()
    layout.pack(buf, a=np.int8(-3), b=np.array([1.5, 2.5]),
                c=np.array([[1, 2], [3, 4]], np.uint8))
    assert buf[0:4].tobytes() == MAGIC.to_bytes(4, "little") == b"2D2R"
    assert int(buf[4:6].view("<u2")[0]) == PROTOCOL_VERSION
    assert int(buf[6:8].view("<u2")[0]) == 1
    assert int(buf[8:12].view("<u4")[0]) == 7
    assert int(buf[12:16].view("<u4")[0]) == layout.fingerprint
    assert int(buf[16:24].view("<i8")[0]) == 2
    assert int(buf[24:25].view(np.int8)[0]) == -3
    assert buf[32:48].view(np.float64).tolist() == [1.5, 2.5]
    assert buf[48:52].tolist() == [1, 2, 3, 4]


@pytest.mark.parametrize("L,P,n,expected", [(120, 40, None, (160, 163)), (5, 2, None, (7, 10)),
                                             (5, 2, 4, (4, 7)), (80, 80, None, (160, 161))])
def test_default_chunk_limits(L, P, n, expected):
    assert default_chunk_limits(L, P, n) == expected


# --------------------------------------------------------------------------- #
# The R2D2 messages.

def test_tags_unique_and_declared_once():
    msgs = tiny_messages()
    assert [l.name for l in msgs] == list(Messages._fields) == list(TAGS)
    assert [l.tag for l in msgs] == [TAGS[l.name] for l in msgs]
    assert len({l.tag for l in msgs}) == len(msgs)
    assert len({l.fingerprint for l in msgs}) == len(msgs)
    assert msgs.get("PARAMS") is msgs.PARAMS
    with pytest.raises(MessageError, match="unknown message 'PARAM'"):
        msgs.get("PARAM")


def test_declared_shapes_and_dtypes():
    msgs = tiny_messages()
    sc = {f.name: f for f in msgs.STEP_CHUNK.fields}
    assert sc["obs"].dtype == np.uint8 and sc["obs"].shape[1:] == (5, 6)
    n, m = default_chunk_limits(5, 2)
    assert sc["obs"].shape[0] == Var("steps", n) and sc["seq_state_h"].shape == (Var("sequences", m), 4)
    rep = {f.name: f for f in msgs.SAMPLE_REPLY.fields}
    assert rep["obs"].shape == (5, Var("batch", 4), 2, 5, 6)
    assert rep["keys"].dtype == np.int64 and rep["probs"].dtype == np.float64
    assert {f.name for f in msgs.SAMPLE_REPLY.fields} >= set(SequenceBatch._fields)
    assert {f.name: f.shape for f in msgs.PARAMS.fields}["params"] == (17,)
    assert {f.name: f.shape for f in msgs.ACTOR_REPORT.fields}["action_counts"] == (3,)
    for layout in msgs:
        for f in layout.fields:
            assert isinstance(f.dtype, np.dtype) and f.dtype.isnative


@pytest.mark.parametrize("name", list(TAGS))
def test_every_message_round_trips_exactly(name):
    msgs = tiny_messages()
    layout = msgs.get(name)
    rng = np.random.default_rng(TAGS[name])
    buf = layout.new_buffer()
    for counts in count_cases(layout, rng):
        want = random_arrays(layout, counts, rng)
        used = layout.pack(buf, **want)
        assert used == layout.size(**counts) <= layout.nbytes
        got = layout.unpack(buf, used)
        assert_fields_equal(got, want, layout)
        assert layout.read_counts(buf, used) == counts
        for arr in got.values():
            assert arr.flags.c_contiguous and arr.flags.aligned
        # the exact sent bytes suffice (what a receiver of `used` bytes holds)
        assert_fields_equal(layout.unpack(bytes(buf[:used])), want, layout)


@given(st.integers(0, 7), st.integers(0, 10), st.integers(0, 2 ** 32 - 1))
@settings(max_examples=40, deadline=None)
def test_step_chunk_round_trips_for_any_counts(n, m, seed):
    layout = tiny_messages().STEP_CHUNK
    counts = {"steps": n, "sequences": m}
    want = random_arrays(layout, counts, np.random.default_rng(seed))
    buf = layout.new_buffer()
    used = layout.pack(buf, **want)
    assert_fields_equal(layout.unpack(buf[:used]), want, layout)


def test_sizes_grow_with_counts():
    layout = tiny_messages().STEP_CHUNK
    sizes = [[layout.size(steps=n, sequences=m) for m in range(11)] for n in range(8)]
    arr = np.array(sizes)
    assert (np.diff(arr, axis=0) > 0).all() and (np.diff(arr, axis=1) > 0).all()
    assert arr[0, 0] == layout.min_nbytes and arr[-1, -1] == layout.nbytes


def test_sample_reply_carries_a_sequence_batch_and_stats():
    msgs = tiny_messages()
    layout = msgs.SAMPLE_REPLY
    rng = np.random.default_rng(0)
    T, k, H = 5, 3, 4
    batch = SequenceBatch(
        obs=rng.integers(0, 255, (T, k, 2, 5, 6), dtype=np.uint8),
        action=rng.integers(0, 3, (T, k)), reward=rng.random((T, k), dtype=np.float32),
        discount=np.ones((T, k), np.float32), first=rng.random((T, k)) < 0.2,
        mask=rng.random((T, k)) < 0.9, prev_action=rng.integers(0, 3, (T, k)),
        prev_reward=rng.random((T, k), dtype=np.float32),
        state_h=rng.random((k, H), dtype=np.float32), state_c=rng.random((k, H), dtype=np.float32),
        keys=np.array([5, 2 ** 40 + 1, 7]), probs=np.array([0.5, 0.25, 0.125]))
    buf = layout.new_buffer()
    used = layout.pack(buf, **sample_reply_arrays(11, batch, 3.5, 20, 1.25))
    fields = layout.unpack(buf, used)
    got = sequence_batch_of(fields)
    for name in SequenceBatch._fields:
        np.testing.assert_array_equal(getattr(got, name), getattr(batch, name), err_msg=name)
    assert int(fields["request_id"]) == 11 and int(fields["num_sequences"]) == 3
    stats = shard_stats_of(fields)
    assert (stats.total_priority, stats.count, stats.max_priority) == (3.5, 20, 1.25)


def test_commands():
    assert [c.name for c in Command] == ["STOP", "CHECKPOINT", "ABORT", "PREEMPT",
                                         "CHECKPOINT_DONE"]
    assert [int(c) for c in Command] == [1, 2, 3, 4, 5]  # wire values never change
    layout = tiny_messages().CONTROL
    buf = layout.new_buffer()
    layout.pack(buf, command=Command.CHECKPOINT, argument=-9)
    f = layout.unpack(buf)
    assert Command(int(f["command"])) is Command.CHECKPOINT and int(f["argument"]) == -9


# --------------------------------------------------------------------------- #
# Rejections.

def packed(layout: Layout, **counts: int) -> np.ndarray:
    buf = layout.new_buffer()
    used = layout.pack(buf, **random_arrays(layout, counts, np.random.default_rng(1)))
    return buf[:used].copy()


def test_wrong_message_type_is_rejected_by_name():
    msgs = tiny_messages()
    # the type id is checked first, before any size: the message names both types
    buf = packed(msgs.SAMPLE_REQUEST)
    with pytest.raises(MessageError, match=r"expected a CONTROL message \(type id 108\), got "
                                           r"SAMPLE_REQUEST \(type id 102\)"):
        msgs.CONTROL.unpack(buf)


def test_wrong_version_is_rejected():
    old, new = small_layout(version=1), small_layout(version=2)
    buf = packed(old, n=1)
    with pytest.raises(MessageError, match="layout version is 1, this rank's is 2; run the same"):
        new.unpack(buf)


def test_wrong_protocol_is_rejected():
    layout = small_layout()
    buf = packed(layout, n=1)
    buf[4:6].view("<u2")[0] = PROTOCOL_VERSION + 1
    with pytest.raises(MessageError, match=f"protocol {PROTOCOL_VERSION + 1}, this rank "
                                           f"{PROTOCOL_VERSION}"):
        layout.unpack(buf)


def test_foreign_bytes_are_rejected():
    layout = small_layout()
    with pytest.raises(MessageError, match="not an r2d2_hpc message"):
        layout.unpack(np.zeros(layout.nbytes, np.uint8))
    with pytest.raises(MessageError, match="fewer than a message header"):
        layout.unpack(np.zeros(5, np.uint8))


def test_layout_from_another_config_is_rejected():
    mine = tiny_messages()
    theirs = declare_messages(tiny_config(), (5, 7), np.uint8, 4, 17, 3, obs_shape=(2, 5, 7))
    buf = packed(theirs.STEP_CHUNK, steps=1, sequences=0)
    with pytest.raises(MessageError, match="other fields, shapes or maxima.*same config"):
        mine.STEP_CHUNK.unpack(buf)
    # a different maximum (batch size) is a different layout too
    other = declare_messages(tiny_config().replace(learner=LearnerConfig(batch_size=5, n_step=2)),
                             (5, 6), np.uint8, 4, 17, 3, obs_shape=(2, 5, 6))
    with pytest.raises(MessageError, match="other fields"):
        mine.PRIORITY_UPDATE.unpack(packed(other.PRIORITY_UPDATE, batch=2))


def test_truncated_and_corrupt_messages_are_rejected():
    layout = small_layout()
    buf = packed(layout, n=3)
    with pytest.raises(MessageError, match="truncated message, 61 bytes arrived"):
        layout.unpack(buf, 61)
    with pytest.raises(MessageError, match="truncated header"):
        layout.unpack(buf, 20)
    bad = buf.copy()
    bad[16:24].view("<i8")[0] = 4
    with pytest.raises(MessageError, match="header count n=4 outside"):
        layout.unpack(bad)


PACK_ERRORS = [
    (dict(a=1, b=np.zeros(1)), "missing field\\(s\\) \\['c'\\]"),
    (dict(a=1, b=np.zeros(1), c=np.zeros((1, 2)), d=3), "unknown field\\(s\\) \\['d'\\]"),
    (dict(a=1, b=np.zeros(4), c=np.zeros((4, 2))), "n=4 exceeds its maximum 3"),
    (dict(a=1, b=np.zeros(2), c=np.zeros((1, 2))), "n=1 disagrees with n=2"),
    (dict(a=1, b=np.zeros(2), c=np.zeros((2, 3))), "SMALL.c: expected c uint8\\[n<=3, 2\\]"),
    (dict(a=np.zeros(1), b=np.zeros(2), c=np.zeros((2, 2))), "SMALL.a: expected a int8\\[\\]"),
    (dict(a=1.5, b=np.zeros(2), c=np.zeros((2, 2), np.uint8)), "cannot store float64"),
    (dict(a=1, b=np.zeros(2), c=np.zeros((2, 2), np.int64)), "cannot store int64 values in c"),
]


@pytest.mark.parametrize("arrays,message", PACK_ERRORS)
def test_pack_errors_name_the_field(arrays, message):
    layout = small_layout()
    with pytest.raises(MessageError, match=message):
        layout.pack(layout.new_buffer(), **arrays)


def test_pack_into_too_small_buffer():
    layout = small_layout()
    with pytest.raises(MessageError, match="too small"):
        layout.pack(np.zeros(40, np.uint8), a=1, b=np.zeros(2), c=np.zeros((2, 2)))


def test_bad_declarations():
    with pytest.raises(ValueError, match="duplicate"):
        Layout("X", 1, [Field("a", np.int8), Field("a", np.int8)])
    with pytest.raises(ValueError, match="maxima"):
        Layout("X", 1, [Field("a", np.int8, (Var("n", 2),)), Field("b", np.int8, (Var("n", 3),))])
    with pytest.raises(ValueError, match="tag"):
        Layout("X", 40000, [])
    with pytest.raises(ValueError, match="identifier"):
        Field("not a name", np.int8)
    with pytest.raises(ValueError, match="cannot travel"):
        Field("o", object)


# --------------------------------------------------------------------------- #
# Pool buffers: field views cached per counts (the hot path) must behave exactly
# like plain buffers.

def test_pool_buffer_round_trips_with_changing_counts():
    layout = tiny_messages().STEP_CHUNK
    rng = np.random.default_rng(5)
    send, recv = layout.pool_buffer(), layout.pool_buffer()
    # the same counts twice in a row (cached views), then others, then back
    for n, m in [(3, 1), (3, 1), (0, 0), (7, 10), (3, 1), (1, 0)]:
        want = random_arrays(layout, {"steps": n, "sequences": m}, rng)
        used = layout.pack(send, **want)
        recv[:used] = send[:used]
        recv[used:] = 0xAB  # garbage after the message must not matter
        assert_fields_equal(layout.unpack(recv, used), want, layout)
        assert layout.read_counts(recv, used) == {"steps": n, "sequences": m}
    layout.drop_pool_buffer(send)
    layout.drop_pool_buffer(recv)
    assert not layout._view_cache and not layout._pooled


@pytest.mark.parametrize("arrays,message", PACK_ERRORS)
def test_pack_errors_name_the_field_in_pool_buffers(arrays, message):
    layout = small_layout()
    buf = layout.pool_buffer()
    layout.pack(buf, a=1, b=np.zeros(2), c=np.zeros((2, 2), np.uint8))  # warm the cache
    with pytest.raises(MessageError, match=message):
        layout.pack(buf, **arrays)


def test_pool_buffer_rejects_what_plain_buffers_reject():
    layout = small_layout()
    buf = layout.pool_buffer()
    used = layout.pack(buf, a=1, b=np.zeros(3), c=np.zeros((3, 2), np.uint8))
    layout.unpack(buf, used)  # cached
    with pytest.raises(MessageError, match="truncated message"):
        layout.unpack(buf, used - 1)
    buf[16:24].view("<i8")[0] = 4
    with pytest.raises(MessageError, match="header count n=4 outside"):
        layout.unpack(buf, used)
    buf[16:24].view("<i8")[0] = 3
    buf[0] ^= 0xFF
    with pytest.raises(MessageError, match="not an r2d2_hpc message"):
        layout.unpack(buf, used)


def test_pack_casts_by_same_kind_and_never_broadcasts():
    layout = small_layout()
    buf = layout.pool_buffer()
    used = layout.pack(buf, a=np.int64(-3), b=np.arange(2, dtype=np.float32),
                       c=np.ones((2, 2), np.uint8))
    got = layout.unpack(buf, used)
    assert got["a"] == -3 and got["b"].dtype == np.float64
    np.testing.assert_array_equal(got["b"], [0.0, 1.0])
    with pytest.raises(MessageError, match="SMALL.c"):  # (1, 2) would broadcast to (2, 2)
        layout.pack(buf, a=1, b=np.zeros(2), c=np.zeros((1, 2), np.uint8))

"""Tests for r2d2_hpc.agent.adder: sequence windows, step chunks and initial priorities.

Most cases are rows of a table with the windows written out by hand:
``(start step, valid length, padded length)`` of every sequence sent and
``(first_step_index, number of steps)`` of every step chunk, per stream. Each
row runs twice: with the ``last`` flags (an episode closes on its last step)
and without them (the end shows at the next ``first``); what is sent must not
differ. Every row also checks the invariants: each step is sent once, with the
values given at that step; a sequence's steps are sent no later than it; the
stored state and previous action/reward are those given at the start step.
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from r2d2_hpc.agent.adder import SequenceAdder, StreamChunk, insert_chunk, sequence_windows
from r2d2_hpc.config import Config, EnvConfig, ReplayConfig, LearnerConfig, NetworkConfig
from r2d2_hpc.envs.base import FrameStack
from r2d2_hpc.envs.classic import CounterEnv
from r2d2_hpc.replay.shard import ReplayShard

H = 3          # state size in the fake streams
A = 4          # actions
FRAME = (2,)   # one frame: (step number, stream)

# An ended episode: (length, "term") terminated, (length, "trunc") truncated.
Episode = Tuple[int, str]


class Drive(NamedTuple):
    """Ground truth of a driven run, ``[T, N]`` per field, and the chunks per stream."""

    first: np.ndarray
    discount: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    prev_action: np.ndarray
    prev_reward: np.ndarray
    state_h: np.ndarray
    state_c: np.ndarray
    q: np.ndarray
    chunks: List[StreamChunk]
    emitted_at: List[int]


def schedule(episodes: Sequence[Episode], num_steps: int, lead: int = 0):
    """first/last/discount of one stream: ``lead`` steps of an unknown episode,
    the ended episodes, then an open episode up to ``num_steps``."""
    first = np.zeros(num_steps, bool)
    last = np.zeros(num_steps, bool)
    discount = np.ones(num_steps, np.float32)
    t = lead
    for length, kind in episodes:
        first[t] = True
        last[t + length - 1] = True
        if kind == "term":
            discount[t + length - 1] = 0.0
        t += length
    if t < num_steps:
        first[t] = True
    return first, last, discount


def drive(adder: SequenceAdder, streams: Sequence[Sequence[Episode]], num_steps: int,
          use_last: bool, end_episodes: bool = False, leads: Sequence[int] = (),
          seed: int = 0) -> Drive:
    n = len(streams)
    rng = np.random.default_rng(seed)
    sched = [schedule(eps, num_steps, leads[i] if leads else 0)
             for i, eps in enumerate(streams)]
    first = np.stack([s[0] for s in sched], 1)
    last = np.stack([s[1] for s in sched], 1)
    discount = np.stack([s[2] for s in sched], 1)
    t_idx = np.arange(num_steps)[:, None]
    s_idx = np.arange(n)[None, :]
    action = (t_idx + 2 * s_idx) % A
    reward = (0.5 * t_idx + s_idx).astype(np.float32)
    prev_action = (3 * t_idx + s_idx + 1) % A
    prev_reward = (t_idx + 0.25 + 10 * s_idx).astype(np.float32)
    state_h = np.stack(np.broadcast_arrays(t_idx, s_idx, -t_idx), -1).astype(np.float32)
    state_c = state_h + 100.0
    q = rng.normal(size=(num_steps, n, A)).astype(np.float32)
    k = adder.frame_stack
    chunks, emitted_at = [], []
    for t in range(num_steps):
        frame = np.stack([np.full(n, t), np.arange(n)], 1).astype(np.float32)
        if k > 1:
            # Older stack slots hold junk: only the newest frame may be sent.
            obs = np.concatenate([np.full((n, k - 1, 2), -7.0, np.float32),
                                  frame[:, None]], axis=1)
        else:
            obs = frame
        out = adder.add(obs, action[t], reward[t], discount[t], first[t], state_h[t],
                        state_c[t], q[t], prev_action[t], prev_reward[t],
                        last=last[t] if use_last else None)
        chunks += out
        emitted_at += [t] * len(out)
    # Chunks still held back by emit_period, and with end_episodes the open episodes.
    out = adder.end_episodes() if end_episodes else adder.flush()
    chunks += out
    emitted_at += [num_steps] * len(out)
    return Drive(first, discount, action, reward, prev_action, prev_reward, state_h, state_c,
                 q, chunks, emitted_at)


def make_adder(n: int, burn_in: int, trace: int, period: int, frame_stack: int = 1,
               n_step: int = 1, emit_period: int = 1) -> SequenceAdder:
    return SequenceAdder(n, burn_in=burn_in, trace_length=trace, sequence_period=period,
                         n_step=n_step, discount=0.9, state_size=H, frame_stack=frame_stack,
                         stream_id_offset=100, emit_period=emit_period)


def check_invariants(adder: SequenceAdder, d: Drive) -> Dict[int, Dict[str, list]]:
    """Checks what every run must satisfy; returns steps and windows per stream."""
    L = adder.sequence_length
    per: Dict[int, Dict[str, list]] = {}
    sent: Dict[int, set] = {}
    for c in d.chunks:
        i = c.stream_id - 100
        rec = per.setdefault(i, {"chunks": [], "windows": []})
        got = sent.setdefault(i, set())
        steps = list(range(c.first_step_index, c.first_step_index + c.num_steps))
        if c.num_steps:
            rec["chunks"].append((c.first_step_index, c.num_steps))
        # Each step once, with the data given at that step (newest frame only).
        assert not got & set(steps), f"stream {i}: steps sent twice"
        got.update(steps)
        assert c.obs.shape == (c.num_steps,) + FRAME
        np.testing.assert_array_equal(c.obs[:, 0], steps)
        np.testing.assert_array_equal(c.obs[:, 1], i)
        np.testing.assert_array_equal(c.action, d.action[steps, i])
        np.testing.assert_array_equal(c.reward, d.reward[steps, i])
        np.testing.assert_array_equal(c.discount, d.discount[steps, i])
        np.testing.assert_array_equal(c.first, d.first[steps, i])
        for m in range(c.num_sequences):
            s, length = int(c.seq_start[m]), int(c.seq_length[m])
            rec["windows"].append((s, length, L - length))
            # Referenced steps were sent before or in this chunk.
            assert set(range(s, s + length)) <= got
            # No episode start after the first step.
            assert not d.first[s + 1:s + length, i].any()
            np.testing.assert_array_equal(c.state_h[m], d.state_h[s, i])
            np.testing.assert_array_equal(c.state_c[m], d.state_c[s, i])
            assert c.seq_prev_action[m] == d.prev_action[s, i]
            assert c.seq_prev_reward[m] == d.prev_reward[s, i]
            assert np.isfinite(c.priority[m]) and c.priority[m] >= 0
        # A sent run of steps only breaks before an episode start.
        if c.num_steps and c.first_step_index - 1 not in got and c.first_step_index > 0:
            assert c.first[0], f"stream {i}: gap before a non-first step"
    return per


# --------------------------------------------------------------------------- #
# The table.

class Case(NamedTuple):
    name: str
    burn_in: int
    trace: int
    period: int
    num_steps: int
    streams: List[List[Episode]]
    windows: Dict[int, List[Tuple[int, int, int]]]   # stream -> (start, valid, padded)
    chunks: Dict[int, List[Tuple[int, int]]]         # stream -> (first_step_index, n)
    frame_stack: int = 1


T, R = "term", "trunc"
CASES = [
    # L = 6, period 3: windows @0, @3, @6 complete at steps 5, 8, 11; @9 not yet.
    Case("long episode", 2, 4, 3, 14, [[]],
         {0: [(0, 6, 0), (3, 6, 0), (6, 6, 0)]},
         {0: [(0, 6), (6, 3), (9, 3)]}),
    # Ends after step 12: @9 closed with 4 valid steps; @12 (1 step, all burn-in) dropped.
    Case("episode end mid-sequence pads", 2, 4, 3, 15, [[(13, T)]],
         {0: [(0, 6, 0), (3, 6, 0), (6, 6, 0), (9, 4, 2)]},
         {0: [(0, 6), (6, 3), (9, 3), (12, 1)]}),
    # Episode of 4: @0 padded, @3 dropped. Episode of 2 (< burn-in + 1): nothing at all,
    # its steps 4, 5 are never sent; the next episode starts at 6 (a gap, then first).
    Case("episodes shorter than one sequence", 2, 4, 3, 12, [[(4, T), (2, T)]],
         {0: [(0, 4, 2), (6, 6, 0)]},
         {0: [(0, 4), (6, 6)]}),
    # period == trace_length == 4: @0, @4, @8 complete; @12 keeps only step 14, terminal.
    Case("sequence_period == trace_length", 2, 4, 4, 17, [[(15, T)]],
         {0: [(0, 6, 0), (4, 6, 0), (8, 6, 0), (12, 3, 3)]},
         {0: [(0, 6), (6, 4), (10, 4), (14, 1)]}),
    # Episodes 0..6 and 7..14: windows restart at 7, never cross it.
    Case("two consecutive episodes", 2, 4, 3, 16, [[(7, T), (8, T)]],
         {0: [(0, 6, 0), (3, 4, 2), (7, 6, 0), (10, 5, 1)]},
         {0: [(0, 6), (6, 1), (7, 6), (13, 2)]}),
    # Stream 0 ends after step 4, stream 1 after step 8 (where @3 completes and
    # @6 keeps its one terminal trace step).
    Case("two streams, different episode lengths", 2, 4, 3, 12, [[(5, T)], [(9, T)]],
         {0: [(0, 5, 1), (5, 6, 0)], 1: [(0, 6, 0), (3, 6, 0), (6, 3, 3)]},
         {0: [(0, 5), (5, 6)], 1: [(0, 6), (6, 3)]}),
    # Truncated after step 8: @6 would train only on step 8, which has no target
    # (no bootstrap observation, no termination): dropped, step 8 still sent for @3.
    Case("truncation drops a target-less tail", 2, 4, 3, 11, [[(9, R)]],
         {0: [(0, 6, 0), (3, 6, 0)]},
         {0: [(0, 6), (6, 3)]}),
    # No burn-in, L = 4, period 2: @4 is one terminal step, which has a target.
    Case("burn_in 0", 0, 4, 2, 7, [[(5, T)]],
         {0: [(0, 4, 0), (2, 3, 1), (4, 1, 3)]},
         {0: [(0, 4), (4, 1)]}),
    # Frame stacks [N, 3, 2]: one frame per step travels (checked in the invariants).
    Case("frame stacking sends one frame per step", 2, 4, 3, 12, [[(7, T)], []],
         {0: [(0, 6, 0), (3, 4, 2)], 1: [(0, 6, 0), (3, 6, 0), (6, 6, 0)]},
         {0: [(0, 6), (6, 1)], 1: [(0, 6), (6, 3), (9, 3)]}, frame_stack=3),
]


@pytest.mark.parametrize("emit_period", [1, 4])
@pytest.mark.parametrize("use_last", [True, False], ids=["last", "next-first"])
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_table(case: Case, use_last: bool, emit_period: int):
    L = case.burn_in + case.trace
    for windows in case.windows.values():          # the rows themselves add up
        assert all(v + p == L for _, v, p in windows)
    adder = make_adder(len(case.streams), case.burn_in, case.trace, case.period,
                       frame_stack=case.frame_stack, emit_period=emit_period)
    d = drive(adder, case.streams, case.num_steps, use_last)
    per = check_invariants(adder, d)
    for i in range(len(case.streams)):
        got = per.get(i, {"chunks": [], "windows": []})
        assert got["windows"] == case.windows.get(i, []), f"stream {i}"
        assert got["chunks"] == case.chunks.get(i, []), f"stream {i}"
    sent = sum(n for ch in case.chunks.values() for _, n in ch)
    assert adder.num_sent_steps == sent
    assert adder.num_sequences == sum(len(w) for w in case.windows.values())


def test_chunks_are_emitted_when_a_window_completes_or_the_episode_ends():
    adder = make_adder(2, 2, 4, 3)
    d = drive(adder, [[(5, T)], [(9, T)]], 12, use_last=True)
    when = [(c.stream_id - 100, c.first_step_index, t) for c, t in zip(d.chunks, d.emitted_at)]
    # Stream 0: episode end at 4; @5 completes at 10. Stream 1: @0 at 5, end at 8.
    assert when == [(0, 0, 4), (1, 0, 5), (1, 6, 8), (0, 5, 10)]
    adder = make_adder(2, 2, 4, 3)
    d = drive(adder, [[(5, T)], [(9, T)]], 12, use_last=False)
    when = [(c.stream_id - 100, c.first_step_index, t) for c, t in zip(d.chunks, d.emitted_at)]
    # Without `last` an end shows one step later, at the next episode's first step.
    # Stream 1's @3 still completes at 8 (sending steps 6..8); the end, seen at 9,
    # adds @6 over steps already sent: a chunk with a sequence and no steps.
    assert when == [(0, 0, 5), (1, 0, 5), (1, 6, 8), (1, 9, 9), (0, 5, 10)]
    late = d.chunks[3]
    assert late.num_steps == 0 and late.obs.shape == (0,) + FRAME
    assert list(zip(late.seq_start.tolist(), late.seq_length.tolist())) == [(6, 3)]


def test_emit_period_holds_chunks_back_without_changing_them():
    eager = drive(make_adder(2, 2, 4, 3), [[(5, T)], [(9, T)]], 12, use_last=True)
    adder = make_adder(2, 2, 4, 3, emit_period=4)
    lazy = drive(adder, [[(5, T)], [(9, T)]], 12, use_last=True)
    # Returned only by the adds of steps 3, 7, 11 (every 4th), same chunks, same order.
    assert lazy.emitted_at == [7, 7, 11, 11]
    assert len(lazy.chunks) == len(eager.chunks)
    for x, y in zip(lazy.chunks, eager.chunks):
        for name, u, v in zip(StreamChunk._fields, x, y):
            np.testing.assert_array_equal(u, v, err_msg=name)


def test_chunks_pack_into_step_chunk_messages():
    from r2d2_hpc.comm.messages import declare_messages
    cfg = Config(env=EnvConfig(name="counter", frame_stack=1),
                 replay=ReplayConfig(burn_in=2, trace_length=4, sequence_period=3),
                 network=NetworkConfig(lstm_size=H))
    layout = declare_messages(cfg, FRAME, np.float32, H, num_params=8,
                              num_actions=A).get("STEP_CHUNK")
    d = drive(make_adder(2, 2, 4, 3), [[(5, T)], [(9, T)]], 12, use_last=False)
    assert any(c.num_steps == 0 for c in d.chunks)  # sequences only: counts steps = 0
    buf = layout.new_buffer()
    for c in d.chunks:
        nbytes = layout.pack(buf, **c.message_fields())
        back = layout.unpack(buf, nbytes)
        for name, value in c.message_fields().items():
            np.testing.assert_allclose(back[name], value, err_msg=name)


def test_stream_ids_and_numbering_continue_across_episodes():
    adder = SequenceAdder(3, burn_in=1, trace_length=2, sequence_period=2, n_step=1,
                          discount=0.9, state_size=H, stream_id_offset=40,
                          first_step_index=1000)
    d = drive(adder, [[(3, T)], [(4, T)], []], 8, use_last=True)
    assert sorted({c.stream_id for c in d.chunks}) == [40, 41, 42]
    assert min(c.first_step_index for c in d.chunks) == 1000
    assert adder.next_step_index == 1008


def test_end_episodes_closes_open_episodes_as_truncated():
    adder = make_adder(1, 2, 4, 3)
    d = drive(adder, [[]], 11, use_last=True, end_episodes=True)
    per = check_invariants(adder, d)
    # Steps 0..10 then end_episodes(): @6 closes with 5 steps (its last, step 10, has no
    # target: the episode was cut, not terminated); @9 (2 steps, burn-in only) dropped.
    assert per[0]["windows"] == [(0, 6, 0), (3, 6, 0), (6, 5, 1)]
    assert per[0]["chunks"] == [(0, 6), (6, 3), (9, 2)]
    assert adder.flush() == [] and adder.end_episodes() == []


def test_stream_waits_for_its_first_episode_start():
    adder = make_adder(2, 1, 2, 2)
    # Stream 0 starts mid-episode: its first 3 steps are ignored.
    d = drive(adder, [[(4, T)], [(4, T)]], 9, use_last=True, leads=[3, 0])
    per = check_invariants(adder, d)
    assert per[0]["chunks"][0] == (3, 3)
    assert per[0]["windows"][0] == (3, 3, 0)
    assert per[1]["chunks"][0] == (0, 3)


def test_restart_forgets_open_episodes_and_renumbers():
    adder = make_adder(1, 1, 2, 2)
    drive(adder, [[]], 4, use_last=True)
    adder.restart(first_step_index=50)
    before = adder.num_sent_steps
    d = drive(adder, [[(3, T)]], 6, use_last=True)
    # The open window @2 of the first run was dropped unsent; numbering restarts
    # at 50 (drive() counts from 0 in its ground truth, the adder from 50).
    # Episode 50..52: @50 complete, @52 (burn-in only) dropped; then @53 completes.
    assert before == 3
    assert [(c.first_step_index, c.num_steps) for c in d.chunks] == [(50, 3), (53, 3)]
    assert [c.seq_start.tolist() for c in d.chunks] == [[50], [53]]
    np.testing.assert_array_equal(d.chunks[0].obs[:, 0], [0, 1, 2])


def test_step_after_last_must_be_first():
    adder = make_adder(1, 1, 2, 2)
    args = dict(obs=np.zeros((1, 2), np.float32), action=[0], reward=[0.0], discount=[0.0],
                state_h=np.zeros((1, H)), state_c=np.zeros((1, H)),
                q_values=np.zeros((1, A)), prev_action=[0], prev_reward=[0.0])
    adder.add(first=[True], last=[True], **args)
    with pytest.raises(ValueError, match="must start one"):
        adder.add(first=[False], last=[False], **args)
    assert adder.next_step_index == 1  # nothing changed
    adder.add(first=[True], last=[False], **args)
    with pytest.raises(ValueError, match="state_h"):
        adder.add(**{**args, "state_h": np.zeros((1, H + 1))}, first=[False])
    with pytest.raises(ValueError, match="SequenceAdder: sequence_period"):
        SequenceAdder(1, burn_in=1, trace_length=2, sequence_period=3, n_step=1,
                      discount=0.9, state_size=H)


# --------------------------------------------------------------------------- #
# Priorities.

def h(x: float) -> float:
    """h(x) = sign(x)(sqrt(|x| + 1) - 1) + 1e-3 x, written out for the hand computation."""
    return math.copysign(math.sqrt(abs(x) + 1.0) - 1.0, x) + 1e-3 * x


@pytest.mark.parametrize("eta,expected", [
    # |delta| on the trace (steps 1, 2, 3) = 0, 1.003, 1.005 (see below).
    (0.9, 0.9 * 1.005 + 0.1 * (0.0 + 1.003 + 1.005) / 3),
    (0.0, (0.0 + 1.003 + 1.005) / 3),
    (1.0, 1.005),
])
def test_priority_by_hand(eta, expected):
    # burn_in 1, trace 3, n = 1, gamma = 0.5; one episode of 4 steps, terminated.
    # h(3) = 1.003, h(8) = 2.008, so h^-1(1.003) = 3 and h^-1(2.008) = 8.
    #   step t        0      1             2             3
    #   action        0      1             1             0
    #   reward        0     -1             1.5           8     (terminal)
    #   Q(o_t, .)   [0,0]  [0, 1.003]    [2.008, 0]    [1.003, 0.25]
    #   y_t                h(-1 + 0.5*8) h(1.5 + 0.5*3) h(8)
    #                      = 1.003       = 1.003        = 2.008
    #   |y_t - Q(o_t, a_t)|  0           1.003          1.005
    assert h(3.0) == pytest.approx(1.003) and h(8.0) == pytest.approx(2.008)
    adder = SequenceAdder(1, burn_in=1, trace_length=3, sequence_period=3, n_step=1,
                          discount=0.5, state_size=H, eta=eta)
    actions = [0, 1, 1, 0]
    rewards = [0.0, -1.0, 1.5, 8.0]
    q = [[0, 0], [0, 1.003], [2.008, 0], [1.003, 0.25]]
    chunks: List[StreamChunk] = []
    for t in range(4):
        chunks += adder.add(np.zeros((1, 2), np.float32), [actions[t]], [rewards[t]],
                            [0.0 if t == 3 else 1.0], [t == 0], np.zeros((1, H)),
                            np.zeros((1, H)), np.array([q[t]], np.float32), [0], [0.0],
                            last=[t == 3])
    assert len(chunks) == 1
    np.testing.assert_array_equal(chunks[0].seq_start, [0])   # @3 (burn-in only) dropped
    assert chunks[0].priority[0] == pytest.approx(expected, abs=1e-5)
    assert adder.num_dropped_sequences == 1


def test_priority_matches_the_losses_functions_on_the_same_sequence():
    """n-step (n = 3) priorities equal ``sequence_priorities`` of the learner's TD errors."""
    from r2d2_hpc.agent.losses import n_step_double_q_targets, sequence_priorities
    adder = make_adder(1, 2, 4, 3, n_step=3)
    d = drive(adder, [[(13, T)]], 14, use_last=True, seed=3)
    assert d.chunks
    for c in d.chunks:
        for m in range(c.num_sequences):
            s, length = int(c.seq_start[m]), int(c.seq_length[m])
            trace = np.arange(s + 2, s + length)
            q = torch.from_numpy(d.q[trace, 0])[:, None]
            y, valid = n_step_double_q_targets(
                torch.from_numpy(d.reward[trace, 0])[:, None],
                torch.from_numpy(d.discount[trace, 0])[:, None],
                torch.ones(len(trace), 1, dtype=torch.bool), q, q, n=3, gamma=0.9)
            taken = q.gather(-1, torch.from_numpy(d.action[trace, 0])[:, None, None]).squeeze(-1)
            p = sequence_priorities((y - taken).abs(), valid, 0.9)
            assert c.priority[m] == pytest.approx(float(p[0]), rel=1e-6)


# --------------------------------------------------------------------------- #
# Properties over random episode structures.

def reference_windows(episodes: Sequence[Episode], num_steps: int, burn_in: int, trace: int,
                      period: int, ended: bool, use_last: bool) -> List[Tuple[int, int]]:
    """Kept windows from the definitions: all windows of each episode, minus those
    whose trace has no step with a target (given trace_length >= 2)."""
    L = burn_in + trace
    out = []
    t = 0
    ends = [(length, kind) for length, kind in episodes]
    if ends and not use_last and not ended and sum(x for x, _ in ends) == num_steps:
        ends[-1] = (ends[-1][0], "open")  # its end would show only at a next step
    if t + sum(x for x, _ in ends) < num_steps:
        ends.append((num_steps - sum(x for x, _ in ends), "open"))
    for length, kind in ends:
        for s, v in sequence_windows(t, t + length - 1, L, period):
            if kind == "open" and not ended:
                keep = v == L
            else:
                on_trace = v - burn_in
                keep = v == L or on_trace >= 2 or (on_trace == 1 and kind == T)
            if keep:
                out.append((s, v))
        t += length
    return out


@st.composite
def runs(draw):
    burn_in = draw(st.integers(0, 3))
    trace = draw(st.integers(2, 5))
    period = draw(st.integers(1, trace))
    num_streams = draw(st.integers(1, 3))
    num_steps = draw(st.integers(1, 40))
    streams = []
    for _ in range(num_streams):
        eps, total = [], 0
        while True:
            length = draw(st.integers(1, 12))
            if total + length > num_steps:
                break
            eps.append((length, draw(st.sampled_from([T, R]))))
            total += length
        streams.append(eps)
    return (burn_in, trace, period, num_steps, streams, draw(st.booleans()),
            draw(st.booleans()), draw(st.sampled_from([1, 2, 5])))


@settings(max_examples=60, deadline=None)
@given(runs())
def test_windows_and_steps_match_the_definition(run):
    burn_in, trace, period, num_steps, streams, use_last, ended, emit_period = run
    adder = make_adder(len(streams), burn_in, trace, period, emit_period=emit_period)
    d = drive(adder, streams, num_steps, use_last, end_episodes=ended)
    per = check_invariants(adder, d)
    for i, eps in enumerate(streams):
        expected = reference_windows(eps, num_steps, burn_in, trace, period, ended, use_last)
        got = per.get(i, {"windows": [], "chunks": []})
        assert [(s, v) for s, v, _ in got["windows"]] == expected
        # Exactly the steps of kept sequences are sent (none wasted, none missing).
        needed = sorted({t for s, v in expected for t in range(s, s + v)})
        sent = sorted(t for f, n in got["chunks"] for t in range(f, f + n))
        assert sent == needed
    # Start states are held only for windows still open: none after end_episodes, at
    # most ceil(L / period) per stream otherwise (a state per step would be L + ...).
    if ended:
        assert adder.stored_state_rows == 0
    else:
        assert adder.stored_state_rows <= len(streams) * -(-(burn_in + trace) // period)


# --------------------------------------------------------------------------- #
# End to end: counter env -> adder -> replay shard.

@pytest.mark.parametrize("frame_stack", [1, 3])
def test_counter_env_through_adder_into_shard(frame_stack):
    n, burn_in, trace, period = 3, 2, 4, 2
    L = burn_in + trace
    env = CounterEnv(n, [5, 9, 30], max_episode_steps=20)
    if frame_stack > 1:
        env = FrameStack(env, frame_stack)
    cfg = Config(env=EnvConfig(name="counter", frame_stack=frame_stack),
                 replay=ReplayConfig(burn_in=burn_in, trace_length=trace, sequence_period=period),
                 learner=LearnerConfig(n_step=2, discount=0.9),
                 network=NetworkConfig(lstm_size=H))
    adder = SequenceAdder.from_config(cfg, n, stream_id_offset=7)
    shard = ReplayShard(FRAME, capacity_observations=10_000, capacity_sequences=1_000,
                        sequence_length=L, state_size=H, obs_dtype=np.float32,
                        frame_stack=frame_stack)
    rng = np.random.default_rng(0)
    obs = env.reset()
    first = np.ones(n, bool)
    prev_a, prev_r = np.zeros(n, np.int64), np.zeros(n, np.float32)
    keys = []
    for t in range(80):
        a = rng.integers(0, 2, n)
        res = env.step(a)
        done = res.terminated | res.truncated
        state = np.stack([np.full(n, t), np.arange(n), np.zeros(n)], 1).astype(np.float32)
        for chunk in adder.add(obs, a, res.reward, 1.0 - res.terminated, first, state,
                               state, rng.normal(size=(n, 2)), prev_a, prev_r, last=done):
            keys.append(insert_chunk(shard, chunk))
        prev_a = np.where(done, 0, a)
        prev_r = np.where(done, 0.0, res.reward).astype(np.float32)
        obs, first = res.obs, done
    keys = np.concatenate(keys)
    assert (keys >= 0).all() and keys.size == adder.num_sequences
    assert shard.num_steps == adder.num_sent_steps
    batch = shard.sample(64, np.random.default_rng(1))
    newest = batch.obs[:, :, -1] if frame_stack > 1 else batch.obs
    k, env_i = newest[..., 0], newest[..., 1]              # [T, B]
    m = batch.mask
    for b in range(64):
        valid = m[:, b]
        kb = k[valid, b]
        # Consecutive steps of one episode of one env, the counter ticking by one.
        np.testing.assert_array_equal(np.diff(kb), 1)
        assert (env_i[valid, b] == env_i[0, b]).all()
        np.testing.assert_array_equal(batch.first[valid, b], kb == 0)
        # Reward 1 + a of the stored action; discount 0 only at a termination.
        np.testing.assert_array_equal(batch.reward[valid, b], 1.0 + batch.action[valid, b])
        # Envs 0, 1 terminate after 5, 9 steps; env 2 is truncated at 20, never terminal.
        terminal_k = {0: 4, 1: 8, 2: -1}[int(env_i[0, b])]
        np.testing.assert_array_equal(batch.discount[valid, b] == 0, kb == terminal_k)
        # Stored state: the actor's state at the start step, whose env index is stored.
        assert batch.state_h[b, 1] == env_i[0, b]
        if frame_stack > 1:
            # The shard rebuilds the env's own stacks (zeros before the episode start).
            for j in range(frame_stack):
                back = frame_stack - 1 - j
                expect_k = np.where(kb - back >= 0, kb - back, 0)
                expect_i = np.where(kb - back >= 0, env_i[0, b], 0)
                np.testing.assert_array_equal(batch.obs[valid, b, j, 0], expect_k)
                np.testing.assert_array_equal(batch.obs[valid, b, j, 1], expect_i)

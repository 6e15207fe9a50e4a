"""The heartbeat's rules: when a rank sends, and how long its watched rank has
been silent as far as it can judge (the thread itself runs under mpiexec in
tests/integration/test_faults.py)."""
from __future__ import annotations

import threading

from r2d2_hpc.comm.heartbeat import (Silence, in_long_phase, long_phase, sends_now,
                                     waiting_on_peer)

TIMEOUT = 10.0


def test_a_rank_sends_while_its_loop_beats_and_stops_after_half_the_timeout():
    assert sends_now(0.0, TIMEOUT)
    assert sends_now(4.9, TIMEOUT)
    assert not sends_now(5.0, TIMEOUT)
    assert not sends_now(60.0, TIMEOUT)


def test_a_long_phase_and_a_wait_on_a_peer_keep_it_sending():
    with long_phase():
        assert sends_now(60.0, TIMEOUT) and in_long_phase()
    with waiting_on_peer():
        assert sends_now(60.0, TIMEOUT)
        assert not in_long_phase()  # a waiting rank still judges its watched rank
    assert not sends_now(60.0, TIMEOUT) and not in_long_phase()


def test_phases_nest_and_count_across_threads():
    entered, leave = threading.Event(), threading.Event()

    def other() -> None:
        with long_phase():
            entered.set()
            leave.wait(5.0)

    t = threading.Thread(target=other)
    t.start()
    entered.wait(5.0)
    with long_phase():
        assert in_long_phase()
    assert in_long_phase()  # the other thread is still inside
    leave.set()
    t.join()
    assert not in_long_phase()


def test_silence_grows_until_a_heartbeat_arrives():
    s = Silence(now=100.0)
    assert s.update(103.0, heard=False, judging=True) == 3.0
    assert s.update(111.0, heard=False, judging=True) == 11.0
    assert s.update(112.0, heard=True, judging=True) == 0.0
    assert s.update(114.5, heard=False, judging=True) == 2.5


def test_silence_does_not_grow_during_this_ranks_own_long_phases():
    s = Silence(now=0.0)
    assert s.update(1.0, heard=False, judging=True) == 1.0
    for t in (2.0, 8.0, 15.0, 30.0):  # 29 s in a phase: nothing is judged
        assert s.update(t, heard=False, judging=False) == 1.0
    assert s.update(34.0, heard=False, judging=True) == 5.0
    assert s.update(40.0, heard=False, judging=True) == 11.0  # past the timeout: an alarm


def test_frequent_short_phases_do_not_hide_a_silent_rank():
    s = Silence(now=0.0)
    t, silent = 0.0, 0.0
    while t < 30.0:  # 0.5 s of work, then a 0.5 s checkpoint phase, over and over
        t += 0.5
        silent = s.update(t, heard=False, judging=True)
        t += 0.5
        s.update(t, heard=False, judging=False)
    assert silent == 15.0 > TIMEOUT

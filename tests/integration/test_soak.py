"""The soak's 2-minute version (benchmarks/soak.py): 8 ranks, a replay that fills
and evicts, and the sequence books balance at the end (the 30-minute run, with
the memory check, is the benchmark's JSON in benchmarks/results/)."""
from __future__ import annotations

from benchmarks.soak import soak, verdict


def test_two_minutes_of_eight_ranks_balance_the_books(tmp_path):
    # a replay of 8,000 observations (the benchmark's 20,000 filled only after the last
    # sample once, beside other jobs on 2 cores), sampled every 5 s: the memory samples
    # after it is full are the verdict's to see
    result = soak(minutes=2.0, ranks=8, sample_s=5.0,
                  overrides=("replay.capacity_observations=8000",),
                  keep_dir=str(tmp_path / "run"))
    assert result["exit_code"] == 0 and result["error_lines"] == [], result["error_lines"]
    b = result["books"]
    assert b["balanced"] and b["in_flight_at_end"] == 0, b
    # the replay filled and then evicted: the books had something to count
    assert result["replay_full_at_s"] is not None and b["evicted"] > 0 and b["held_at_end"] > 0
    assert b["sent_by_actors"] == b["held_at_end"] + b["evicted"] + b["refused_by_rule"]
    # memory over two minutes is not the benchmark's 5 % judgement: only its problems
    # other than growth count here
    assert [p for p in verdict(result, max_growth=float("inf"))] == []

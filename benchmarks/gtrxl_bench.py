"""GTrXL against the LSTM at the Atari size: learner updates/s and replay bytes per sequence.

Issue 17, item 5. Two figures per core:

* ``updates_per_s``: ``Learner.step`` on synthetic in-memory Atari batches
  (``batch_size x (burn_in + trace_length)`` steps of ``<uint8>[4, 84, 84]``, 18
  actions), timed as ``gpu_learner_bench.time_mode`` does (the same config, batches
  and timer; float32, no mixed precision), ``--repeats`` rounds with the cores
  alternating; the median per core and, per other core, the median of its per-round
  ratio to the LSTM (``updates_per_s_vs_lstm``). The stored states of the synthetic
  batches hold no valid memory entry, which costs the gtrxl unroll the same as a
  full memory (the attention is masked, not shortened).
* ``replay_bytes_per_sequence``: what a replay shard allocates per stored sequence
  (``ShardSpec.storage_bytes`` over ``capacity_sequences``: frames, the stored
  state, the sequence and slot tables, the sum-tree) for the default Atari replay
  (4M observations, a sequence every 40 steps), under both of gtrxl's start-state
  strategies (``network.gtrxl_start_state``: ``stored`` keeps the memory, ``zero``
  a ``[1]`` zero).

Cores (``--cores``): ``lstm`` (R2D2: LSTM 512), ``gtrxl`` (ours at the Atari size:
4 layers of width 256, 8 heads, memory 64), ``gtrxl_default`` (the
``network.gtrxl_*`` defaults: 2 x 64, 4 heads, memory 16), ``gtrxl_paper``
(Parisotto et al.'s DMLab-30 sizes: 12 x 256, 8 heads, memory 512; bytes only
unless named in ``--time``).

Usage::

    python benchmarks/gtrxl_bench.py [--device auto] [--batch-size 64] [--steps 20]
        [--repeats 3] [--time lstm,gtrxl] [--out benchmarks/results/gtrxl_bench.json]
    python benchmarks/gtrxl_bench.py --quick     # CPU smoke: batch 4 x (2 + 6), 3 steps

On a CPU the full size takes seconds per update; pass a smaller ``--batch-size`` there.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
from typing import Any, Dict, List, Optional, Sequence

if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import write_result  # noqa: E402
from benchmarks.gpu_learner_bench import (  # noqa: E402
    ATARI_OBS_SHAPE,
    bench_config,
    synthetic_batch,
    time_mode,
)

#: ``NetworkConfig`` fields of each core.
CORES: Dict[str, Dict[str, Any]] = {
    "lstm": {"core": "lstm"},
    "gtrxl": {"core": "gtrxl", "gtrxl_layers": 4, "gtrxl_heads": 8, "gtrxl_dim": 256,
              "gtrxl_memory_length": 64},
    "gtrxl_default": {"core": "gtrxl"},
    "gtrxl_paper": {"core": "gtrxl", "gtrxl_layers": 12, "gtrxl_heads": 8, "gtrxl_dim": 256,
                    "gtrxl_memory_length": 512},
}


def replay_bytes_per_sequence(cfg: Any) -> float:
    """Bytes a shard of the default Atari replay allocates per stored sequence.

    Args:
      cfg: gives the network's stored state size, the sequence length and period.

    Returns:
      ``sum(ShardSpec.storage_bytes()) / capacity_sequences`` for 4M observations.
    """
    from r2d2_hpc.replay.layout import shard_spec

    r = cfg.replay
    capacity = 4_000_000
    sequences = capacity // r.sequence_period
    spec = shard_spec(ATARI_OBS_SHAPE[1:], capacity_observations=capacity,
                      capacity_sequences=sequences, sequence_length=r.sequence_length,
                      state_size=cfg.network.stored_state_size, obs_dtype="uint8",
                      frame_stack=ATARI_OBS_SHAPE[0])
    return sum(spec.storage_bytes().values()) / sequences


def alternate_timings(configs: Dict[str, Any], repeats: int, steps: int,
                      warmup: int) -> Dict[str, List[Dict[str, Any]]]:
    """``gpu_learner_bench.time_mode`` of each config, ``repeats`` rounds, the cores
    alternating within each round (so a change in the machine's load falls on all).

    Returns:
      Per core name, its ``repeats`` timings in round order.
    """
    out: Dict[str, List[Dict[str, Any]]] = {name: [] for name in configs}
    batches = {name: [synthetic_batch(cfg, seed=s, episode_length=2000.0) for s in range(2)]
               for name, cfg in configs.items()}
    for r in range(repeats):
        order = list(configs) if r % 2 == 0 else list(reversed(list(configs)))
        for name in order:
            out[name].append(time_mode(configs[name], batches[name], steps, warmup))
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--cores", default=",".join(CORES), help="cores to report bytes for")
    p.add_argument("--time", default="lstm,gtrxl", help="cores to time (Learner.step)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per update (64)")
    p.add_argument("--burn-in", type=int, default=40, help="burn-in steps (40)")
    p.add_argument("--trace-length", type=int, default=80, help="trace steps (80)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per core (20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (3)")
    p.add_argument("--repeats", type=int, default=3,
                   help="rounds of timing, the cores alternating (3); medians reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    p.add_argument("--quick", action="store_true", help="CPU smoke: batch 4 x (2 + 6), 3 steps, 2 repeats")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    cores = [c for c in a.cores.split(",") if c]
    timed = [c for c in a.time.split(",") if c]
    unknown = sorted(set(cores + timed) - set(CORES))
    if unknown:
        p.error(f"unknown cores {unknown}; choose from {list(CORES)}")
    if a.quick:
        a.batch_size, a.burn_in, a.trace_length, a.steps, a.warmup = 4, 2, 6, 3, 1
        a.repeats = 2
        a.device = "cpu" if a.device == "auto" else a.device
        a.threads = a.threads or 1
    import torch

    from r2d2_hpc.agent.device import resolve_device
    from r2d2_hpc.agent.learner import Learner

    device = resolve_device(a.device)
    if a.threads:
        torch.set_num_threads(a.threads)
    result: Dict[str, Any] = {
        "benchmark": "gtrxl",
        "metric": "Learner.step updates/s (float32, synthetic in-memory Atari batches, warm-up "
                  "excluded) and replay bytes per stored sequence (default Atari replay)",
        "config": {"batch_size": a.batch_size, "burn_in": a.burn_in,
                   "trace_length": a.trace_length, "steps": a.steps, "warmup": a.warmup,
                   "repeats": a.repeats, "quick": a.quick,
                   "cores": {c: CORES[c] for c in cores + timed}},
        "machine": {"device": str(device),
                    "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                                    else platform.processor() or platform.machine()),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "cpus": os.cpu_count()},
        "cores": {},
    }
    configs: Dict[str, Any] = {}
    for name in dict.fromkeys(cores + timed):
        row: Dict[str, Any] = {}
        for start in ("stored", "zero"):
            cfg = bench_config(a.batch_size, a.burn_in, a.trace_length, str(device),
                               **CORES[name], gtrxl_start_state=start)
            row[f"replay_bytes_per_sequence_{start}"] = replay_bytes_per_sequence(cfg)
            row[f"stored_state_size_{start}"] = cfg.network.stored_state_size
        configs[name] = bench_config(a.batch_size, a.burn_in, a.trace_length, str(device),
                                     **CORES[name])
        row["num_params"] = Learner(configs[name], ATARI_OBS_SHAPE, 18, device="cpu").num_params
        result["cores"][name] = row
    timings = alternate_timings({n: configs[n] for n in timed}, a.repeats, a.steps, a.warmup)
    for name, rounds in timings.items():
        rates = [t["updates_per_s"] for t in rounds]
        result["cores"][name].update({
            "updates_per_s": statistics.median(rates), "updates_per_s_repeats": rates,
            "step_ms_median": statistics.median(t["step_ms_median"] for t in rounds),
            "forward_backward_ms_median": statistics.median(
                t["forward_backward_ms_median"] for t in rounds),
            "losses_finite": all(t["losses_finite"] for t in rounds)})
        print(f"gtrxl_bench: {name}: {statistics.median(rates):.3f} updates/s (repeats "
              f"{', '.join(f'{r:.3f}' for r in rates)})", file=sys.stderr, flush=True)
    if "lstm" in timings:
        lstm = timings["lstm"]
        result["updates_per_s_vs_lstm"] = {
            name: statistics.median(t["updates_per_s"] / l["updates_per_s"]
                                    for t, l in zip(rounds, lstm))
            for name, rounds in timings.items() if name != "lstm"}
    return write_result(result, a.out)


if __name__ == "__main__":
    main()

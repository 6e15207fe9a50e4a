"""GPU learner benchmark: ``Learner.step`` updates/s at the paper's size.

What one update is (paper, section 2: "a single GPU-based learner,
performing approximately 5 network updates per second (each update on a
mini-batch of 64 length-80 sequences)")::

    batch      64 sequences x (40 burn-in + 80 trace) = 120 steps
    network    Atari torso (Nature DQN convs -> 512) -> LSTM 512 -> dueling head 512
    input      <uint8>[120, 64, 4, 84, 84] frame stacks, 18 actions (full action set)
    step       host batch -> pinned buffer -> device, burn-in unroll (no grad),
               trace unroll (grad), target unroll, n-step double-Q loss,
               backward, flat gradient, Adam, priorities back to the host

exactly as the learner rank runs it (``Learner.step``, the same config
fields), on synthetic batches already in host memory: no replay, no MPI, so
the figure is the learner's compute ceiling. Each mode of
``learner.mixed_precision`` (``none``, ``bf16``, and ``fp16`` on CUDA) gets
a fresh ``Learner``; ``--warmup`` steps (cuDNN/cuBLAS set-up, allocator
growth) are excluded, then ``--steps`` steps are timed one by one with
``time.perf_counter`` (each step ends with the priorities on the host, so a
step's wall time is complete). Reported per mode: ``updates_per_s`` (steps /
total wall time), ``ms_per_update`` (its inverse), the median / min / max
step, the step's own forward+backward (batch transfer included) and
optimizer times, the batch transfer alone (``host_to_device_ms_median``,
``batch_mb``: the frame stacks are ~207 MB at full size), sequences/s, peak
device memory, and loss-scale skips (fp16).

Synthetic batches: uniform random frames, actions and rewards, stored states
uniform in [-0.5, 0.5], every step valid; each sequence crosses an episode
boundary (``first`` True at a random step, the step before it terminal) with
probability ``T / --episode-length`` (default 2000 agent steps per episode),
so the LSTM unroll splits at resets as it does on real replay data. Four
distinct batches are cycled.

Reference and goal in the JSON: the paper's ~5 updates/s, and ours,
>= 20 updates/s on one H100; ``goal_met`` is only judged on CUDA.

Usage::

    python benchmarks/gpu_learner_bench.py [--device auto|cpu|cuda|cuda:N]
        [--modes none,bf16,fp16] [--steps 50] [--warmup 10] [--tf32] [--out FILE]
    python benchmarks/gpu_learner_bench.py --quick      # tiny CPU smoke run (seconds)

On a CPU the full size takes seconds per update; use ``--quick`` there.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import write_result  # noqa: E402

#: The paper's learner (R2D2, section 2): updates/s at batch 64 x 80-step traces.
PAPER_UPDATES_PER_S = 5.0
#: The learner's throughput goal on one H100.
GOAL_UPDATES_PER_S = 20.0

#: Atari observations: 4 stacked 84x84 grayscale frames; the full action set.
ATARI_OBS_SHAPE: Tuple[int, int, int] = (4, 84, 84)
ATARI_NUM_ACTIONS = 18

#: Mixed-precision modes, in the order they run.
MODES: Tuple[str, ...] = ("none", "bf16", "fp16")

#: --quick: tiny batch and sequences, same network, a few steps, CPU; short
#: synthetic episodes so that the unroll's reset path runs.
QUICK = {"batch_size": 4, "burn_in": 2, "trace_length": 6, "steps": 3, "warmup": 1,
         "episode_length": 12.0}


def bench_config(batch_size: int, burn_in: int, trace_length: int, device: str,
                 mixed_precision: str = "none", **network: Any) -> Any:
    """The paper's learner config (Atari network) at the given sizes.

    Args:
      batch_size: sequences per update (paper: 64).
      burn_in: burn-in steps (paper: 40).
      trace_length: trace steps (paper: 80).
      device: ``learner.device``.
      mixed_precision: ``learner.mixed_precision``.
      network: other ``NetworkConfig`` fields (e.g. ``core="gtrxl"``).

    Returns:
      A validated ``Config``.
    """
    from r2d2_hpc.config import Config, ConfigError, LearnerConfig, NetworkConfig, ReplayConfig

    cfg = Config(
        network=NetworkConfig(**{"torso": "atari", "lstm_size": 512, "head_hidden": 512,
                                 **network}),
        replay=ReplayConfig(burn_in=burn_in, trace_length=trace_length,
                            sequence_period=max(1, min(40, trace_length))),
        learner=LearnerConfig(batch_size=batch_size, device=device,
                              mixed_precision=mixed_precision),
    )
    errors = cfg.validate()
    if errors:
        raise ConfigError(errors)
    return cfg


def synthetic_batch(cfg: Any, seed: int, episode_length: float) -> Tuple[Any, np.ndarray]:
    """One random, valid Atari-shaped ``SequenceBatch`` and its importance weights.

    Args:
      cfg: gives ``T = burn_in + trace_length``, ``B`` and the stored state's size.
      seed: numpy seed.
      episode_length: mean episode length in agent steps; a sequence holds an
        episode boundary with probability ``min(1, T / episode_length)``.

    Returns:
      ``(batch, weights <float32>[B])``.
    """
    from r2d2_hpc.types import SequenceBatch

    rng = np.random.default_rng(seed)
    t_len, b = cfg.replay.sequence_length, cfg.learner.batch_size
    hidden = cfg.network.stored_state_size
    obs = rng.integers(0, 256, size=(t_len, b, *ATARI_OBS_SHAPE), dtype=np.uint8)
    action = rng.integers(0, ATARI_NUM_ACTIONS, size=(t_len, b)).astype(np.int64)
    reward = rng.standard_normal((t_len, b)).astype(np.float32)
    discount = np.ones((t_len, b), np.float32)
    first = np.zeros((t_len, b), bool)
    cross = rng.random(b) < min(1.0, t_len / max(1.0, episode_length))
    for col in np.flatnonzero(cross):
        start = int(rng.integers(1, t_len))
        first[start, col] = True
        discount[start - 1, col] = 0.0
    prev_action = np.concatenate([rng.integers(0, ATARI_NUM_ACTIONS, (1, b)), action[:-1]])
    prev_reward = np.concatenate([rng.standard_normal((1, b)), reward[:-1]]).astype(np.float32)
    prev_action[first] = 0
    prev_reward[first] = 0.0
    batch = SequenceBatch(
        obs=obs, action=action, reward=reward, discount=discount, first=first,
        mask=np.ones((t_len, b), bool), prev_action=prev_action.astype(np.int64),
        prev_reward=prev_reward,
        state_h=rng.uniform(-0.5, 0.5, (b, hidden)).astype(np.float32),
        state_c=rng.uniform(-0.5, 0.5, (b, hidden)).astype(np.float32),
        keys=np.arange(b, dtype=np.int64), probs=rng.uniform(0.01, 0.1, b))
    weights = rng.uniform(0.5, 1.0, b).astype(np.float32)
    return batch, weights


def time_mode(cfg: Any, batches: List[Tuple[Any, np.ndarray]], steps: int,
              warmup: int) -> Dict[str, Any]:
    """Times ``Learner.step`` for one config (one mixed-precision mode).

    Args:
      cfg: the config (its ``learner.device`` and ``mixed_precision``).
      batches: ``(batch, weights)`` pairs, cycled.
      steps: timed steps.
      warmup: untimed steps first.

    Returns:
      The mode's figures (see the module docstring).
    """
    import torch

    from r2d2_hpc.agent.learner import Learner

    torch.manual_seed(0)
    learner = Learner(cfg, ATARI_OBS_SHAPE, ATARI_NUM_ACTIONS, device=cfg.learner.device)
    cuda = learner.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(learner.device)
    losses: List[float] = []
    for i in range(warmup):
        losses.append(learner.step(*batches[i % len(batches)]).loss)
    walls: List[float] = []
    fwd_bwd: List[float] = []
    opt: List[float] = []
    skipped = 0
    t_start = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        result = learner.step(*batches[(warmup + i) % len(batches)])
        walls.append(time.perf_counter() - t0)
        fwd_bwd.append(result.metrics["time_forward_backward_s"])
        opt.append(result.metrics["time_optimizer_s"])
        skipped += int(result.metrics["skipped_step"])
        losses.append(result.loss)
    total = time.perf_counter() - t_start
    # The step's share spent moving the batch in (host -> pinned -> device),
    # the same path as inside the step, timed alone with a device sync.
    copies: List[float] = []
    for i in range(min(steps, 5)):
        t0 = time.perf_counter()
        learner.batch_to_device(batches[i % len(batches)][0])
        if cuda:
            torch.cuda.synchronize(learner.device)
        copies.append(time.perf_counter() - t0)
    params_fp32 = all(p.dtype == torch.float32 for p in learner.online.parameters())
    rate = steps / total
    out: Dict[str, Any] = {
        "mixed_precision": cfg.learner.mixed_precision,
        "updates_per_s": rate,
        "ms_per_update": 1000.0 / rate,
        "step_ms_median": 1000.0 * statistics.median(walls),
        "step_ms_min": 1000.0 * min(walls),
        "step_ms_max": 1000.0 * max(walls),
        "forward_backward_ms_median": 1000.0 * statistics.median(fwd_bwd),
        "optimizer_ms_median": 1000.0 * statistics.median(opt),
        "host_to_device_ms_median": 1000.0 * statistics.median(copies),
        "batch_mb": sum(np.asarray(v).nbytes for v in batches[0][0]) / 2**20,
        "sequences_per_s": rate * cfg.learner.batch_size,
        "steps": steps,
        "warmup_steps": warmup,
        "skipped_steps": skipped,
        "final_loss_scale": float(learner.scaler.get_scale()) if learner.scaler else 1.0,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "losses_finite": bool(np.all(np.isfinite(losses))),
        "params_float32": params_fp32,
    }
    if cuda:
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(learner.device) / 2**20
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--modes", default=",".join(MODES),
                   help="comma-separated mixed-precision modes (default: none,bf16,fp16; "
                        "fp16 only runs on CUDA)")
    p.add_argument("--batch-size", type=int, default=64, help="sequences per update (64)")
    p.add_argument("--burn-in", type=int, default=40, help="burn-in steps (40)")
    p.add_argument("--trace-length", type=int, default=80, help="trace steps (80)")
    p.add_argument("--steps", type=int, default=50, help="timed steps per mode (50)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (10)")
    p.add_argument("--episode-length", type=float, default=2000.0,
                   help="mean episode length for the synthetic resets (2000)")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice; --quick: 1)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 for float32 matmuls (torch.set_float32_matmul_precision"
                        "('high')); default: torch's default")
    p.add_argument("--quick", action="store_true",
                   help="tiny CPU smoke run: batch 4 x (2 + 6), 1 + 3 steps, 1 thread, "
                        "12-step episodes")
    p.add_argument("--out", default=None, help="also write the JSON here")
    a = p.parse_args(argv)
    modes = [m for m in a.modes.split(",") if m]
    unknown = sorted(set(modes) - set(MODES))
    if unknown:
        p.error(f"unknown modes {unknown}; choose from {list(MODES)}")
    if a.quick:
        device = "cpu" if a.device == "auto" else a.device
        sizes = dict(QUICK)
        threads = a.threads or 1
    else:
        device = a.device
        sizes = {"batch_size": a.batch_size, "burn_in": a.burn_in,
                 "trace_length": a.trace_length, "steps": a.steps, "warmup": a.warmup,
                 "episode_length": a.episode_length}
        threads = a.threads
    import torch

    from r2d2_hpc.config import ConfigError
    from r2d2_hpc.agent.device import device_errors, resolve_device

    try:
        resolved = resolve_device(device)
    except (ConfigError, RuntimeError) as exc:  # RuntimeError: a malformed device string
        p.error(f"--device {device!r}: {exc}")
    if threads:
        torch.set_num_threads(threads)
    if a.tf32:
        torch.set_float32_matmul_precision("high")
    if resolved.type == "cpu" and not a.quick:
        print("gpu_learner_bench: full size on the CPU takes seconds per update; "
              "--quick is the CPU smoke run", file=sys.stderr, flush=True)

    cfg = bench_config(sizes["batch_size"], sizes["burn_in"], sizes["trace_length"],
                       str(resolved))
    batches = [synthetic_batch(cfg, seed=s, episode_length=sizes["episode_length"])
               for s in range(4)]
    machine: Dict[str, Any] = {
        "device": str(resolved),
        "device_name": (torch.cuda.get_device_name(resolved) if resolved.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if resolved.type == "cuda" else None,
        "torch_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
    }
    from r2d2_hpc.agent.learner import Learner

    num_params = Learner(cfg, ATARI_OBS_SHAPE, ATARI_NUM_ACTIONS, device="cpu").num_params
    result: Dict[str, Any] = {
        "benchmark": "gpu_learner",
        "metric": "Learner.step updates/s, Atari network, synthetic in-memory batches of "
                  "batch_size x (burn_in + trace_length) steps, warm-up excluded",
        "reference": {
            "paper_updates_per_s": PAPER_UPDATES_PER_S,
            "paper": "R2D2 (Kapturowski et al., ICLR 2019), section 2: one GPU learner, "
                     "~5 updates/s at 64 sequences of 80 steps",
            "goal_updates_per_s": GOAL_UPDATES_PER_S,
            "goal": ">= 20 updates/s on one H100",
        },
        "config": {
            "batch_size": cfg.learner.batch_size, "burn_in": cfg.replay.burn_in,
            "trace_length": cfg.replay.trace_length,
            "sequence_length": cfg.replay.sequence_length,
            "obs_shape": list(ATARI_OBS_SHAPE), "num_actions": ATARI_NUM_ACTIONS,
            "torso": cfg.network.torso, "lstm_size": cfg.network.lstm_size,
            "head_hidden": cfg.network.head_hidden, "num_params": num_params,
            "steps": sizes["steps"], "warmup": sizes["warmup"],
            "episode_length": sizes["episode_length"],
            "sequences_with_reset": [int(b.first.any(axis=0).sum()) for b, _ in batches],
            "modes": modes, "tf32": a.tf32, "quick": a.quick,
        },
        "machine": machine,
        "modes": {},
        "modes_not_run": {},
    }
    for mode in modes:
        errors = device_errors(resolved, mode)
        if errors:
            result["modes_not_run"][mode] = errors[0]
            continue
        mode_cfg = cfg.replace(learner=dataclasses.replace(cfg.learner, mixed_precision=mode))
        result["modes"][mode] = time_mode(mode_cfg, batches, sizes["steps"], sizes["warmup"])
        print(f"gpu_learner_bench: {mode}: "
              f"{result['modes'][mode]['updates_per_s']:.2f} updates/s on "
              f"{machine['device_name']}", file=sys.stderr, flush=True)
    if result["modes"]:
        best = max(result["modes"], key=lambda m: result["modes"][m]["updates_per_s"])
        rate = result["modes"][best]["updates_per_s"]
        result["best"] = {"mode": best, "updates_per_s": rate,
                          "over_paper": rate / PAPER_UPDATES_PER_S}
        result["goal_met"] = (rate >= GOAL_UPDATES_PER_S) if resolved.type == "cuda" else None
    return write_result(result, a.out)


if __name__ == "__main__":
    main()

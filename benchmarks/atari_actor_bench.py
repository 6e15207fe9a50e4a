"""Atari actor benchmark: env steps/s per core of the actor loop against raw ALE stepping.

Three loops over ``N`` Pong envs in this one process, each on one core
(``torch.set_num_threads(1)``, one ALE thread), with the paper's protocol
(``EnvConfig()`` defaults: 4-frame stacks of 84x84 grayscale, frame skip 4,
full action set, no-op starts, unclipped rewards):

* ``raw``: ``ale_py.vector_env.AtariVectorEnv`` stepped with precomputed random
  actions, nothing else: the ceiling of the emulator and its C++ preprocessing.
* ``env``: :class:`r2d2_hpc.envs.atari.AtariEnv` (the ``VectorEnv`` wrapper an actor
  rank uses) with the same random actions: the wrapper's own cost.
* ``actor``: the actor rank's inner loop: the real
  :class:`~r2d2_hpc.agent.policy.ActorPolicy` with the paper's network (Nature torso,
  512-unit LSTM, dueling head; ``configs/atari57.yaml``), Ape-X epsilons over
  the ``N`` envs, ``act -> env.step -> observe``: one batched ``T = 1``
  forward of ``N`` observations per step.

Reported per ``N``: env steps/s (wall clock) and env steps per CPU second of
the process (``time.process_time``: the worker thread included), so the figure
is "per core" even on a machine whose cores are shared; and
``ratio = actor / raw`` of both. The loops alternate ``--repeats`` times
(medians reported). Reference: an R2D2 actor of the paper ran about 260 env
steps/s (one env, inference per step); our goal is >= 1,000 per core.

The ``actor`` loop runs once per ``--precisions`` entry (``actor.inference_precision``:
``auto`` resolves on this CPU, named in the JSON with the reason); the loop of
``auto`` is ``actor``, the others ``actor_<precision>``.

**Phases** (``phases``, per ``N`` and precision): one extra timed run of the
actor loop with the adder added (``SequenceAdder.add``, the actor rank's
sequence cutting and initial priorities), each call timed with
``perf_counter``: ``forward`` (the network's ``T = 1`` forward inside ``act``,
timed by hooks on the network), ``act_other`` (``act`` minus the forward:
resets, exploration draws, copies), ``env_step``, ``observe`` and ``adder``,
in microseconds per vector step and their shares.

Not measured here: sends (the ``actor_bench`` measures the whole
``ActorRank.tick`` against this bare loop).

Usage::

    python benchmarks/atari_actor_bench.py [--envs 16,32,64] [--seconds 3] [--repeats 2]
                                           [--precisions float32,auto] [--game Pong]
                                           [--quick] [--out FILE]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

if not __package__:  # a script, not benchmarks.<name>: the repository root on sys.path
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks._common import write_result  # noqa: E402

import torch  # noqa: E402

from r2d2_hpc.agent.adder import SequenceAdder  # noqa: E402
from r2d2_hpc.agent.device import (  # noqa: E402
    cpu_flags,
    cpu_model,
    resolve_inference_precision,
)
from r2d2_hpc.agent.policy import ActorPolicy  # noqa: E402
from r2d2_hpc.config import Config, load_config  # noqa: E402
from r2d2_hpc.envs.atari import AtariEnv  # noqa: E402
from r2d2_hpc.envs.games import rom_id  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The paper's hyperparameters (network: Nature torso, LSTM 512, dueling 512).
PAPER_CONFIG = os.path.join(ROOT, "configs", "atari57.yaml")
#: Per-actor rate of the paper's actors (env steps/s), for the report.
PAPER_ACTOR_STEPS_PER_S = 260
GOAL_STEPS_PER_CORE = 1000


def ape_x_epsilons(n: int, base: float = 0.4, alpha: float = 7.0) -> np.ndarray:
    """``epsilon_i = base ** (1 + alpha * i / (n - 1))`` (Ape-X; ``base`` for n = 1)."""
    i = np.arange(n, dtype=np.float64)
    return base ** (1.0 + alpha * i / max(1, n - 1))


class Loop:
    """One benchmarked loop: ``step()`` advances all ``N`` envs by one agent step."""

    def __init__(self, name: str, n: int, step: Callable[[], None]) -> None:
        self.name, self.n, self.step = name, n, step

    def run(self, seconds: float) -> Dict[str, float]:
        """Steps for about ``seconds``; returns env steps, wall and CPU seconds."""
        steps = 0
        c0, t0 = time.process_time(), time.perf_counter()
        while True:
            for _ in range(8):
                self.step()
            steps += 8
            wall = time.perf_counter() - t0
            if wall >= seconds:
                break
        cpu = time.process_time() - c0
        return {"env_steps": steps * self.n, "wall_s": wall, "cpu_s": cpu}


def raw_loop(env: Any, n: int, seed: int) -> Loop:
    """Bare ``AtariVectorEnv`` (built with ``AtariEnv``'s settings) and random actions."""
    env.reset()
    actions = np.random.default_rng(seed).integers(0, 18, (1024, n)).astype(np.int64)
    k = [0]

    def step() -> None:
        env.step(actions[k[0] & 1023])
        k[0] += 1

    return Loop("raw", n, step)


def env_loop(env: AtariEnv, seed: int) -> Loop:
    """``AtariEnv`` (the actor's ``VectorEnv``) with random actions."""
    env.reset()
    actions = np.random.default_rng(seed).integers(0, env.num_actions, (1024, env.num_envs))
    k = [0]

    def step() -> None:
        env.step(actions[k[0] & 1023])
        k[0] += 1

    return Loop("env", env.num_envs, step)


def with_precision(cfg: Config, precision: str) -> Config:
    """``cfg`` with ``actor.inference_precision`` set."""
    return cfg.replace(actor=dataclasses.replace(cfg.actor, inference_precision=precision))


def actor_loop(env: AtariEnv, cfg: Config, seed: int, name: str = "actor") -> Loop:
    """``ActorPolicy.act -> AtariEnv.step -> observe``, the actor rank's inner loop."""
    n = env.num_envs
    policy = ActorPolicy(cfg, env.observation_shape, env.num_actions, ape_x_epsilons(n), seed)
    state = {"obs": env.reset(), "first": np.ones(n, bool)}

    def step() -> None:
        out = policy.act(state["obs"], state["first"])
        res = env.step(out.action)
        policy.observe(res.reward)
        state["obs"], state["first"] = res.obs, res.terminated | res.truncated

    return Loop(name, n, step)


PHASES = ("forward", "act_other", "env_step", "observe", "adder")


def phase_costs(env: AtariEnv, cfg: Config, seed: int, seconds: float) -> Dict[str, Any]:
    """Microseconds per vector step of each phase of the actor loop with the adder
    (see the module docstring); the forward inside ``act`` is timed by hooks on
    the network."""
    n = env.num_envs
    policy = ActorPolicy(cfg, env.observation_shape, env.num_actions, ape_x_epsilons(n), seed)
    adder = SequenceAdder.from_config(cfg, n, emit_period=min(cfg.replay.sequence_period, 40))
    forward = {"start": 0.0, "total": 0.0}

    def before(*_: Any) -> None:
        forward["start"] = time.perf_counter()

    def after(*_: Any) -> None:
        forward["total"] += time.perf_counter() - forward["start"]

    hooks = [policy.network.register_forward_pre_hook(before),
             policy.network.register_forward_hook(after)]
    obs, first = env.reset(), np.ones(n, bool)
    totals = dict.fromkeys(PHASES, 0.0)
    ticks, t_end = 0, time.perf_counter() + seconds
    try:
        while time.perf_counter() < t_end:
            t1 = time.perf_counter()
            out = policy.act(obs, first)
            t2 = time.perf_counter()
            res = env.step(out.action)
            t3 = time.perf_counter()
            policy.observe(res.reward)
            t4 = time.perf_counter()
            terminated = np.asarray(res.terminated, bool)
            done = terminated | np.asarray(res.truncated, bool)
            adder.add(obs, out.action, res.reward, (~terminated).astype(np.float32), first,
                      out.state_h, out.state_c, out.q, out.prev_action, out.prev_reward,
                      last=done)
            t5 = time.perf_counter()
            for k, dt in zip(PHASES[1:], (t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                totals[k] += dt
            obs, first, ticks = res.obs, done, ticks + 1
    finally:
        for hook in hooks:
            hook.remove()
    totals["forward"] = forward["total"]
    totals["act_other"] -= forward["total"]
    per_tick = {k: 1e6 * v / max(1, ticks) for k, v in totals.items()}
    whole = sum(per_tick.values())
    return {"ticks": ticks, "us_per_tick": per_tick,
            "share": {k: v / whole for k, v in per_tick.items()},
            "non_emulator_us_per_env_step": (whole - per_tick["env_step"]) / n}


def median_rates(runs: List[Dict[str, float]]) -> Dict[str, float]:
    """Medians over repeats of steps/s (wall) and steps per CPU second."""
    per_s = [r["env_steps"] / r["wall_s"] for r in runs]
    per_cpu = [r["env_steps"] / r["cpu_s"] for r in runs if r["cpu_s"] > 0]
    return {"steps_per_s": statistics.median(per_s),
            "steps_per_cpu_s": statistics.median(per_cpu) if per_cpu else float("nan"),
            "cpu_utilisation": statistics.median([r["cpu_s"] / r["wall_s"] for r in runs]),
            "repeats": len(runs)}


def arm_name(precision: str) -> str:
    """The actor loop's key: ``actor`` for ``auto``, else ``actor_<precision>``."""
    return "actor" if precision == "auto" else f"actor_{precision}"


def bench_n(game: str, n: int, cfg: Config, seconds: float, repeats: int,
            seed: int, precisions: Sequence[str] = ("auto",)) -> Dict[str, Any]:
    """The loops for one ``N`` (raw, env, one actor loop per precision), alternated
    ``repeats`` times, then the phase costs of each precision."""
    from ale_py.vector_env import AtariVectorEnv

    # Unseeded envs (a seeded reset reloads each env's ROM: ~0.1 s per env);
    # the env and actor loops share one AtariEnv.
    env = AtariEnv.from_config(cfg.env, n, None)
    raw = AtariVectorEnv(rom_id(game), n, **env.settings)
    loops = [raw_loop(raw, n, seed), env_loop(env, seed)]
    loops += [actor_loop(env, with_precision(cfg, p), seed, arm_name(p)) for p in precisions]
    runs: Dict[str, List[Dict[str, float]]] = {lp.name: [] for lp in loops}
    phases: Dict[str, Any] = {}
    try:
        for lp in loops:  # warm-up: first forwards, page faults, ALE caches
            lp.run(min(0.5, seconds))
        for _ in range(repeats):
            for lp in loops:
                runs[lp.name].append(lp.run(seconds))
        for p in precisions:
            phases[p] = phase_costs(env, with_precision(cfg, p), seed, seconds)
    finally:
        raw.close()
        env.close()
    out: Dict[str, Any] = {name: median_rates(r) for name, r in runs.items()}
    for p in precisions:
        arm = arm_name(p)
        suffix = "" if arm == "actor" else arm[len("actor"):]
        out[f"ratio_actor{suffix}_to_raw"] = out[arm]["steps_per_s"] / out["raw"]["steps_per_s"]
        out[f"ratio_actor{suffix}_to_raw_cpu"] = (out[arm]["steps_per_cpu_s"]
                                                  / out["raw"]["steps_per_cpu_s"])
    out["ratio_env_to_raw"] = out["env"]["steps_per_s"] / out["raw"]["steps_per_s"]
    out["phases"] = phases
    out["runs"] = runs
    return out


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--envs", default="16,32,64", help="comma-separated N (envs per actor)")
    p.add_argument("--seconds", type=float, default=2.5, help="seconds per timed run")
    p.add_argument("--repeats", type=int, default=2, help="alternations of the three loops")
    p.add_argument("--precisions", default="float32,auto",
                   help="actor.inference_precision of each actor loop (comma-separated)")
    p.add_argument("--game", default="Pong")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="N = 16, 1 s runs, 1 repeat")
    p.add_argument("--out", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.envs, args.seconds, args.repeats = "16", min(args.seconds, 1.0), 1
    sizes = [int(x) for x in str(args.envs).split(",") if x.strip()]
    precisions = [x.strip() for x in str(args.precisions).split(",") if x.strip()]
    if "auto" not in precisions:
        precisions.append("auto")
    torch.set_num_threads(1)
    cfg = load_config(PAPER_CONFIG, [f"env.game={args.game}"])
    t0 = time.perf_counter()
    results = {str(n): bench_n(args.game, n, cfg, args.seconds, args.repeats, args.seed,
                               precisions) for n in sizes}
    best = max(results.values(), key=lambda r: r["actor"]["steps_per_cpu_s"])
    res: Dict[str, Any] = {
        "benchmark": "atari_actor_bench",
        "game": args.game,
        "protocol": cfg.to_dict()["env"],
        "network": {"torso": cfg.network.torso, "lstm_size": cfg.network.lstm_size,
                    "dueling": cfg.network.dueling, "head_hidden": cfg.network.head_hidden},
        "torch_threads": torch.get_num_threads(),
        "precisions": precisions,
        "auto_precision": resolve_inference_precision("auto")[1],
        "cpu_bf16_flags": [f for f in cpu_flags() if "bf16" in f],
        "ale_threads": 1,
        "seconds": args.seconds,
        "repeats": args.repeats,
        "by_num_envs": results,
        "best_actor_steps_per_cpu_s": best["actor"]["steps_per_cpu_s"],
        "paper_actor_steps_per_s": PAPER_ACTOR_STEPS_PER_S,
        "goal_steps_per_core": GOAL_STEPS_PER_CORE,
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpus": os.cpu_count(),
                    "processor": platform.processor(), "cpu_model": cpu_model()},
        "wall_s": time.perf_counter() - t0,
    }
    return write_result(res, args.out)


if __name__ == "__main__":  # pragma: no cover
    main()

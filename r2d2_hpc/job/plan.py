"""The plan of a run, printed once by rank 0 before anything starts.

A short table a user can check against what they meant to launch::

    r2d2-train plan:
      ranks     4: 1 learner (rank 0), 1 replay shard (rank 1), 2 actors x 32 envs = 64 envs (ranks 2-3)
      learner   device cpu (learner.device=auto), mixed precision none, batch 32 x 25 steps, no allreduce (one learner)
      actors    inference float32 (actor.inference_precision=auto: the CPU has no native bf16 ...) on rank 0's CPU; ...
      replay    1 shard x 100,000 observations (2,500 sequences) = 0.01 GB each, 0.01 GB in all
      budget    learner.max_steps=10,000; stop at a greedy return of 400
      run dir   runs/cartpole_masked-20261201-120000 (fresh start)
"""
from __future__ import annotations

from typing import List, Optional, Sequence

from r2d2_hpc.agent.device import resolve_device, resolve_inference_precision
from r2d2_hpc.checkpoint.records import CheckpointInfo
from r2d2_hpc.config import Config
from r2d2_hpc.job.replay import replay_shard_spec
from r2d2_hpc.types import JobSpec

GB = 1e9


def _ranks(first: int, count: int) -> str:
    """``rank 3`` or ``ranks 3-7``."""
    if count == 1:
        return f"rank {first}"
    return f"ranks {first}-{first + count - 1}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def budget_line(cfg: Config) -> str:
    """What ends the run, from the config."""
    l, a = cfg.learner, cfg.actor
    parts = []
    if l.max_steps:
        parts.append(f"learner.max_steps={l.max_steps:,}")
    if a.max_env_steps:
        parts.append(f"actor.max_env_steps={a.max_env_steps:,}")
    if l.max_seconds:
        parts.append(f"learner.max_seconds={l.max_seconds:g}")
    if l.target_return is not None:
        parts.append(f"stop at a greedy return of {l.target_return:g}")
    return "; ".join(parts) if parts else "none: runs until stopped (a signal or the time limit)"


def plan_lines(cfg: Config, spec: JobSpec, size: int, run_dir: str,
               resume: Optional[CheckpointInfo], serial_actors: int = 0,
               allreduce: str = "") -> List[str]:
    """The plan's lines.

    Args:
      cfg: the run config.
      spec: the job's shapes.
      size: MPI ranks (ignored with ``serial_actors``).
      run_dir: the run directory.
      resume: the checkpoint the run continues from, if any.
      serial_actors: > 0 for ``--serial`` (every role in one process).
      allreduce: the gradient allreduce backend chosen for several learners.
    """
    t = cfg.topology
    learners, shards = t.learners, t.replay_shards
    actors = serial_actors if serial_actors else size - learners - shards
    envs = cfg.actor.num_envs
    if serial_actors:
        ranks = (f"1 process (--serial): {_plural(learners, 'learner')}, "
                 f"{_plural(shards, 'replay shard')}, {_plural(actors, 'actor')} x {envs} envs "
                 f"= {actors * envs} envs")
    else:
        ranks = (f"{size}: {_plural(learners, 'learner')} ({_ranks(0, learners)}), "
                 f"{_plural(shards, 'replay shard')} ({_ranks(learners, shards)}), "
                 f"{_plural(actors, 'actor')} x {envs} envs = {actors * envs} envs "
                 f"({_ranks(learners + shards, actors)})")
    l = cfg.learner
    reduce = (f"gradients averaged over {learners} learners ({allreduce or l.allreduce})"
              if learners > 1 and not serial_actors else "no allreduce (one learner)")
    learner = (f"device {resolve_device(l.device)} (learner.device={l.device}), mixed "
               f"precision {l.mixed_precision}, batch {l.batch_size} x "
               f"{cfg.replay.sequence_length} steps, {reduce}")
    shard = replay_shard_spec(cfg, spec, shards)
    per = sum(shard.storage_bytes().values())
    replay = (f"{_plural(shards, 'shard')} x {shard.capacity_observations:,} observations "
              f"({shard.capacity_sequences:,} sequences) = {per / GB:.2f} GB each, "
              f"{shards * per / GB:.2f} GB in all")
    precision = resolve_inference_precision(cfg.actor.inference_precision)[1]
    if not serial_actors:  # each actor resolves auto on its own node's CPU
        precision += " on rank 0's CPU; actors on other nodes decide on theirs"
    start = (f"resuming from checkpoint {resume.name} (learner step {resume.step}, "
             f"{_plural(resume.num_shards, 'replay shard')})" if resume is not None
             else "fresh start")
    return ["r2d2-train plan:",
            f"  ranks     {ranks}",
            f"  learner   {learner}",
            f"  actors    inference {precision}",
            f"  replay    {replay}",
            f"  budget    {budget_line(cfg)}",
            f"  run dir   {run_dir} ({start}; effective config in config.yaml)"]


def print_plan(lines: Sequence[str]) -> None:
    """Prints the plan (rank 0)."""
    print("\n".join(lines), flush=True)

"""``r2d2-record``: demonstration files for R2D3 (:mod:`r2d2_hpc.replay.demos`).

``r2d2-record CHECKPOINT [--episodes K] [--epsilon E] [--seed S] [--out FILE]
[--set env.FIELD=VALUE ...]``
    Plays ``K`` episodes (default 8, one per env, in parallel) with the
    online parameters of CHECKPOINT (a checkpoint directory, a run directory's
    newest valid checkpoint, or a learner file, as ``r2d2-eval`` takes them),
    epsilon-greedy with ``E`` (default the run's ``logging.eval_epsilon``,
    0.001), in the run's environment protocol, and writes every step of them
    to FILE (default ``RUN_DIR/demos.h5``). Prints each episode's return.

``r2d2-record --from-npz EPISODES.npz --env ENV --frame-stack K --num-actions A --out FILE``
    Converts episodes someone already has: an ``.npz`` holding the per-step
    arrays ``frames`` (one frame per step, not stacked), ``action``,
    ``reward``, ``discount`` (0.0 after a terminal step, else 1.0) and
    ``first`` (True at each episode's first step). ENV names the environment
    as a run does (``cartpole_masked``, ``atari:Pong``).

Exit codes: 0 = written; 2 = bad input (a missing or unusable checkpoint, a
bad option, arrays that are not demonstrations), one message on stderr.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import numpy as np

from r2d2_hpc.cli.eval import EvalInputError, checkpoint_player, resolve_checkpoint, run_dir_of
from r2d2_hpc.replay.demos import DemoFileError, env_id, from_arrays, join_episodes, write_demos

EXIT_BAD_INPUT = 2


def record_checkpoint(source: str, out: Optional[str], *, episodes: int, epsilon: Optional[float],
                      seed: int, overrides: Sequence[str]) -> str:
    """Plays and writes the demonstrations; returns the file written."""
    saved, cfg, evaluator, flat = checkpoint_player(source, episodes=episodes, epsilon=epsilon,
                                                    seed=seed, overrides=overrides)
    result = evaluator.evaluate(flat, int(saved.state.params_version), record=True)
    demos = from_arrays(env_id(cfg.env), cfg.env.frame_stack, evaluator.num_actions,
                        where=source, **join_episodes(result.steps or []))
    path = out or os.path.join(run_dir_of(source), "demos.h5")
    write_demos(path, demos)
    for i, (ret, n) in enumerate(zip(result.returns, result.lengths)):
        print(f"episode {i}: return {ret:g} in {int(n)} steps")
    print(f"r2d2-record: {demos.episodes} episodes, {demos.steps} steps (mean return "
          f"{result.mean_return:g}, epsilon {evaluator.epsilon:g}) -> {path}")
    return path


def convert_npz(path: str, out: str, *, env: str, frame_stack: int, num_actions: int) -> str:
    """Writes the episodes of an ``.npz`` as a demonstration file."""
    if not os.path.isfile(path):
        raise DemoFileError(f"{path}: file is missing")
    try:
        with np.load(path) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise DemoFileError(f"{path}: not a readable .npz ({exc})") from None
    demos = from_arrays(env, frame_stack, num_actions, where=path,
                        **{k: arrays.get(k) for k in ("frames", "action", "reward", "discount",
                                                      "first")})
    write_demos(out, demos)
    print(f"r2d2-record: {demos.episodes} episodes, {demos.steps} steps from {path} -> {out}")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r2d2-record", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", nargs="?", help="checkpoint directory, run directory or "
                                                 "learner file")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--epsilon", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="the file to write (default RUN_DIR/demos.h5)")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="env.FIELD=VALUE")
    p.add_argument("--from-npz", default=None, metavar="EPISODES.npz")
    p.add_argument("--env", default=None, help="with --from-npz: the environment's name")
    p.add_argument("--frame-stack", type=int, default=1)
    p.add_argument("--num-actions", type=int, default=None)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.from_npz:
            if not (args.env and args.num_actions and args.out):
                raise DemoFileError("--from-npz needs --env, --num-actions and --out")
            convert_npz(args.from_npz, args.out, env=args.env, frame_stack=args.frame_stack,
                        num_actions=args.num_actions)
            return 0
        if not args.checkpoint:
            raise DemoFileError("give a CHECKPOINT (or --from-npz FILE)")
        if args.episodes < 1:
            raise DemoFileError(f"--episodes: must be >= 1, got {args.episodes}")
        record_checkpoint(resolve_checkpoint(args.checkpoint), args.out, episodes=args.episodes,
                          epsilon=args.epsilon, seed=args.seed, overrides=args.overrides)
        return 0
    except (EvalInputError, DemoFileError) as exc:
        print(f"r2d2-record: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``r2d2-eval``: evaluate a checkpoint with the paper's protocol; aggregate Atari-57 runs.

``r2d2-eval CHECKPOINT [--episodes K] [--epsilon E] [--seed S] [--max-episode-frames F]
[--set env.FIELD=VALUE ...] [--threads T] [--no-write] [--json]``
    CHECKPOINT is a checkpoint directory written by :mod:`r2d2_hpc.checkpoint`
    (``RUN_DIR/checkpoints/ckpt-...``), a run directory (its newest valid
    checkpoint; "valid" here: the manifest reads, every file has its recorded
    size and ``learner.h5``, the only file an evaluation reads, its recorded
    crc32) or a learner file (``RUN_DIR/learner_final.h5``, the run's final
    learner state, in the checkpoint's ``learner.h5`` format). Plays ``K``
    episodes (one per env, in parallel; default
    ``logging.eval_episodes`` of the run) with the learner's *online*
    parameters, epsilon-greedy with ``E`` (default ``logging.eval_epsilon``,
    0.001: the R2D2 / Ape-X evaluation protocol), in the run's environment
    protocol (Atari: up to 30 no-op starts, the 108,000-frame cap, no sticky
    actions, full action set), from a zero recurrent state. Prints each
    episode's return, the raw score (mean return) and, for Atari-57 games,
    the human-normalised score ``(score - random) / (human - random)``
    (:mod:`r2d2_hpc.envs.scores`). Writes ``RUN_DIR/eval.json`` (below) unless
    ``--no-write``.

``r2d2-eval --aggregate RUNS_DIR [--out-dir DIR]``
    Reads ``eval.json`` of every run directory directly under ``RUNS_DIR``
    (one run per game) and prints the median and mean human-normalised score
    across games and a per-game table; writes ``atari_scores.csv`` and
    ``atari_scores.png`` (a bar plot, matplotlib Agg) into ``DIR`` (default
    ``RUNS_DIR``).

``eval.json`` (format ``r2d2_hpc.eval/1``), one object::

    format, created (UTC ISO time), game (env.game, or null off Atari), env_name,
    checkpoint (path: directory or learner file), checkpoint_step (its learner
    step), params_version, counters (the checkpoint's:
    env_steps, env_frames, ...), episodes, epsilon, seed, noop_max,
    max_episode_frames, returns [K], lengths [K] (agent steps), score (mean return),
    score_std, random_score, human_score, human_normalized (null off Atari-57),
    env_steps, seconds

Exit codes: 0 = done; 2 = bad input, one message on stderr: a missing path,
no valid checkpoint, an unreadable or incompatible checkpoint, an unknown
game, bad options, no ``eval.json`` under ``RUNS_DIR``, two runs of one game.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch

from r2d2_hpc.agent.evaluation import Evaluator
from r2d2_hpc.agent.network import R2D2Network
from r2d2_hpc.agent.params import to_flat_array
from r2d2_hpc.checkpoint.records import CHECKPOINTS_DIR, LEARNER_FILE, CheckpointError
from r2d2_hpc.checkpoint.restore import read_learner
from r2d2_hpc.checkpoint.validate import locate_checkpoint
from r2d2_hpc.config import Config, ConfigError, parse_override
from r2d2_hpc.envs.factory import make_vector_env
from r2d2_hpc.envs.scores import REFERENCE_SCORES, aggregate, human_normalized
from r2d2_hpc.storage.files import write_json_atomic

__all__ = ["EVAL_FILE", "EVAL_FORMAT", "EXIT_BAD", "EvalInputError", "resolve_checkpoint",
           "run_dir_of", "flat_online_params", "evaluate_checkpoint", "read_eval",
           "aggregate_runs", "main"]

#: Exit code for bad input.
EXIT_BAD = 2
#: The per-run evaluation record.
EVAL_FILE = "eval.json"
EVAL_FORMAT = "r2d2_hpc.eval/1"
#: Files ``--aggregate`` writes.
CSV_FILE = "atari_scores.csv"
PNG_FILE = "atari_scores.png"


class EvalInputError(ValueError):
    """Bad input to ``r2d2-eval``; the message is printed as is and the exit code is 2."""


# --------------------------------------------------------------------------- #
# Finding and reading the checkpoint.

def resolve_checkpoint(path: str) -> str:
    """What ``r2d2-eval PATH`` evaluates: a learner file, or a checkpoint directory.

    Args:
      path: a learner file (a run's ``learner_final.h5``; its chunks'
        fletcher32s are checked as it is read), a checkpoint directory, a run
        directory (its newest checkpoint that validates,
        :func:`r2d2_hpc.checkpoint.validate.locate_checkpoint`; lines about
        skipped ones go to stderr) or a run's ``checkpoints/`` directory. A
        checkpoint is valid here when its manifest reads, every file has its
        recorded size and ``learner.h5`` its recorded crc32: an evaluation
        reads only ``learner.h5``, not the replay's possibly tens of GB.

    Returns:
      The learner file or the checkpoint directory.

    Raises:
      EvalInputError: missing path, not a checkpoint or run directory, no
        usable checkpoint, or a damaged one (naming what is wrong).
    """
    if os.path.isfile(path):
        return path
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    try:
        return locate_checkpoint(path, report=say, deep=(LEARNER_FILE,)).path
    except CheckpointError as exc:
        raise EvalInputError(str(exc)) from None


def run_dir_of(source: str) -> str:
    """The run directory of a checkpoint (``RUN_DIR/checkpoints/ckpt-*``) or learner file."""
    parent = os.path.dirname(os.path.abspath(source))
    if os.path.basename(parent) == CHECKPOINTS_DIR:
        return os.path.dirname(parent)
    return parent


def flat_online_params(online: Dict[str, Any], cfg: Config, obs_shape: Tuple[int, ...],
                       num_actions: int) -> np.ndarray:
    """A checkpoint's online parameters as a ``Learner.flat_params`` buffer.

    Args:
      online: ``state.online`` of ``read_learner``: parameter name -> array.
      cfg: the run's config (``network`` section).
      obs_shape: one observation's shape.
      num_actions: the action set's size.

    Returns:
      ``<float32>[num_params]`` in ``named_parameters()`` order.

    Raises:
      EvalInputError: naming every missing or mis-shaped parameter.
    """
    with torch.random.fork_rng(devices=[]):
        net = R2D2Network(tuple(obs_shape), int(num_actions), cfg.network)
    chunks, errors = [], []
    for name, p in net.named_parameters():
        if name not in online:
            errors.append(f"{name}: missing")
            continue
        arr = np.asarray(online[name], np.float32)
        if arr.shape != tuple(p.shape):
            errors.append(f"{name}: shape {arr.shape}, the network needs {tuple(p.shape)}")
            continue
        chunks.append(torch.tensor(arr))
    if errors:
        raise EvalInputError("the checkpoint's online parameters do not fit the network of its "
                             "own config: " + "; ".join(errors[:5])
                             + (f"; ... and {len(errors) - 5} more" if len(errors) > 5 else ""))
    return to_flat_array(chunks)


# --------------------------------------------------------------------------- #
# Evaluating.

def _eval_config(cfg: Config, overrides: Sequence[str],
                 max_episode_frames: Optional[int]) -> Config:
    """The run's config with ``env.*`` overrides (only the env may change for evaluation)."""
    data = cfg.to_dict()
    env = data["env"]
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ConfigError as exc:
            raise EvalInputError("; ".join(exc.errors)) from None
        if len(keys) != 2 or keys[0] != "env":
            raise EvalInputError(f"--set {text!r}: only env.FIELD=VALUE can change for an "
                                 f"evaluation (the network and its parameters are the "
                                 f"checkpoint's)")
        env[keys[1]] = value
    if max_episode_frames is not None:
        env["max_episode_frames"] = max_episode_frames
    try:
        return Config.from_dict(data)
    except ConfigError as exc:
        raise EvalInputError("invalid evaluation config (the checkpoint's with --set): "
                             + "; ".join(exc.errors)) from None


class Player(NamedTuple):
    """What playing a checkpoint's policy needs (:func:`checkpoint_player`)."""

    saved: Any  # checkpoint.state_files.LearnerCheckpoint
    cfg: Config
    evaluator: Evaluator
    flat: np.ndarray


def checkpoint_player(source: str, *, episodes: Optional[int] = None,
                      epsilon: Optional[float] = None, seed: int = 0,
                      overrides: Sequence[str] = (),
                      max_episode_frames: Optional[int] = None) -> Player:
    """A checkpoint's online parameters and an ``Evaluator`` in the run's env protocol.

    Args:
      source: a checkpoint directory or learner file (``resolve_checkpoint``).
      episodes: ``K``; default the run's ``logging.eval_episodes``.
      epsilon: exploration rate; default the run's ``logging.eval_epsilon`` (0.001).
      seed: seeds the envs' no-op starts and the exploration draws.
      overrides: ``env.FIELD=VALUE`` changes to the run's environment protocol.
      max_episode_frames: overrides ``env.max_episode_frames``.

    Raises:
      EvalInputError: an unreadable checkpoint, a config this code rejects, an
        unknown game or env, or parameters that do not fit.
    """
    try:
        saved = read_learner(source)
    except CheckpointError as exc:
        raise EvalInputError(str(exc)) from None
    try:
        run_cfg = Config.from_dict(saved.config)
    except ConfigError as exc:
        raise EvalInputError(f"{source}: this version of r2d2_hpc rejects the run's config: "
                             + "; ".join(exc.errors)) from None
    cfg = _eval_config(run_cfg, overrides, max_episode_frames)
    k = int(episodes if episodes is not None else cfg.logging.eval_episodes)
    eps = float(epsilon if epsilon is not None else cfg.logging.eval_epsilon)
    if k < 1:
        raise EvalInputError(f"--episodes: must be >= 1, got {k}")
    if not 0.0 <= eps <= 1.0:
        raise EvalInputError(f"--epsilon: must be in [0, 1], got {eps}")

    try:
        probe = make_vector_env(cfg.env, 1, seed=seed)
    except ValueError as exc:
        raise EvalInputError(str(exc)) from None
    try:
        obs_shape = tuple(int(d) for d in probe.observation_shape)
        num_actions = int(probe.num_actions)
    finally:
        probe.close()
    spec = saved.job_spec or {}
    if spec and (tuple(spec.get("obs_shape", obs_shape)) != obs_shape
                 or int(spec.get("num_actions", num_actions)) != num_actions):
        raise EvalInputError(f"the evaluation env gives observations {obs_shape} and "
                             f"{num_actions} actions, the checkpoint was trained with "
                             f"{tuple(spec['obs_shape'])} and {spec['num_actions']}; do not "
                             f"change env.frame_stack, env.screen_size or env.full_action_space")
    flat = flat_online_params(saved.state.online, cfg, obs_shape, num_actions)
    # max_steps None: the protocol's cap (evaluation.default_step_cap)
    evaluator = Evaluator(cfg, obs_shape, num_actions, seed=seed, episodes=k, epsilon=eps)
    return Player(saved, cfg, evaluator, flat)


def evaluate_checkpoint(source: str, *, episodes: Optional[int] = None,
                        epsilon: Optional[float] = None, seed: int = 0,
                        overrides: Sequence[str] = (),
                        max_episode_frames: Optional[int] = None) -> Dict[str, Any]:
    """Plays ``episodes`` evaluation episodes with a checkpoint's online parameters
    (arguments: :func:`checkpoint_player`).

    Returns:
      The ``eval.json`` record (see the module docstring).

    Raises:
      EvalInputError: as :func:`checkpoint_player`.
    """
    saved, cfg, evaluator, flat = checkpoint_player(
        source, episodes=episodes, epsilon=epsilon, seed=seed, overrides=overrides,
        max_episode_frames=max_episode_frames)
    k, eps = evaluator.episodes, evaluator.epsilon
    atari = cfg.env.name == "atari"
    result = evaluator.evaluate(flat, int(saved.state.params_version))
    returns = np.asarray(result.returns, np.float64)
    score = float(returns.mean())
    game = cfg.env.game if atari else None
    ref = REFERENCE_SCORES.get(game) if game is not None else None
    return {
        "format": EVAL_FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "game": game,
        "env_name": cfg.env.name,
        "checkpoint": os.path.abspath(source),
        "checkpoint_step": int(saved.step),
        "params_version": int(result.params_version),
        "counters": dict(saved.counters),
        "episodes": k,
        "epsilon": eps,
        "seed": int(seed),
        "noop_max": int(cfg.env.noop_max) if atari else None,
        "max_episode_frames": int(cfg.env.max_episode_frames) if atari else None,
        "returns": [float(r) for r in returns],
        "lengths": [int(n) for n in np.asarray(result.lengths)],
        "score": score,
        "score_std": float(returns.std()),
        "random_score": ref[0] if ref else None,
        "human_score": ref[1] if ref else None,
        "human_normalized": human_normalized(game, score) if ref else None,
        "env_steps": int(result.env_steps),
        "seconds": float(result.seconds),
    }


def write_eval(record: Dict[str, Any], path: str) -> None:
    """Writes an ``eval.json`` record atomically (temp file + ``os.replace``)."""
    write_json_atomic(path, record)


def read_eval(path: str) -> Dict[str, Any]:
    """Reads an ``eval.json``.

    Raises:
      EvalInputError: unreadable, not JSON, or not an ``r2d2_hpc.eval/1`` record.
    """
    try:
        with open(path, "r", encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError) as exc:
        raise EvalInputError(f"{path}: unreadable ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != EVAL_FORMAT:
        raise EvalInputError(f"{path}: not an r2d2-eval record (format {EVAL_FORMAT})")
    for key in ("game", "score", "episodes"):
        if key not in record:
            raise EvalInputError(f"{path}: missing field {key!r}")
    return record


def _print_eval(record: Dict[str, Any], out: Any = None) -> None:
    out = out or sys.stdout
    what = record["game"] or record["env_name"]
    print(f"r2d2-eval: {what}, checkpoint {record['checkpoint']} (learner step "
          f"{record['checkpoint_step']}, params version {record['params_version']})", file=out)
    protocol = f"{record['episodes']} episode(s), epsilon {record['epsilon']:g}"
    if record["max_episode_frames"] is not None:
        protocol += (f", up to {record['noop_max']} no-op frames at the start, episodes capped "
                     f"at {record['max_episode_frames']} frames")
    print(protocol, file=out)
    print(f"{'episode':>7} {'return':>12} {'steps':>8}", file=out)
    for i, (r, n) in enumerate(zip(record["returns"], record["lengths"])):
        print(f"{i:>7} {r:>12.1f} {n:>8}", file=out)
    print(f"raw score: {record['score']:.2f} (mean return; std {record['score_std']:.2f})",
          file=out)
    if record["human_normalized"] is not None:
        print(f"human-normalised score: {record['human_normalized']:.4f} "
              f"(random {record['random_score']:g}, human {record['human_score']:g})", file=out)
    else:
        print("human-normalised score: - (only for the Atari-57 games)", file=out)


# --------------------------------------------------------------------------- #
# Aggregating.

def aggregate_runs(runs_dir: str) -> Tuple[List[Dict[str, Any]], List[str]]:
    """The Atari-57 eval records of the run directories directly under ``runs_dir``.

    Returns:
      ``(rows, notes)``: one row per game (``game``, ``run_dir``, ``score``,
      ``random_score``, ``human_score``, ``human_normalized``, ``episodes``,
      ``checkpoint_step``, ``env_frames``), sorted by human-normalised score,
      highest first; ``notes`` says which directories were skipped and why.

    Raises:
      EvalInputError: ``runs_dir`` missing, no Atari-57 ``eval.json`` under it,
        an unreadable ``eval.json``, or two runs of the same game.
    """
    if not os.path.isdir(runs_dir):
        raise EvalInputError(f"{runs_dir}: no such directory (expected a directory of run "
                             f"directories, one per game)")
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    seen: Dict[str, str] = {}
    for name in sorted(os.listdir(runs_dir)):
        run = os.path.join(runs_dir, name)
        if not os.path.isdir(run):
            continue
        path = os.path.join(run, EVAL_FILE)
        if not os.path.isfile(path):
            notes.append(f"{name}: no {EVAL_FILE} (run r2d2-eval {run} first); skipped")
            continue
        rec = read_eval(path)
        game = rec["game"]
        if game not in REFERENCE_SCORES:
            notes.append(f"{name}: {game or rec.get('env_name')!r} is not an Atari-57 game; "
                         f"skipped")
            continue
        if game in seen:
            raise EvalInputError(f"{game} has eval results in two runs, {seen[game]} and {run}; "
                                 f"keep one run per game under {runs_dir}")
        seen[game] = run
        rnd, hum = REFERENCE_SCORES[game]
        rows.append({"game": game, "run_dir": run, "score": float(rec["score"]),
                     "random_score": rnd, "human_score": hum,
                     "human_normalized": human_normalized(game, float(rec["score"])),
                     "episodes": int(rec["episodes"]),
                     "checkpoint_step": rec.get("checkpoint_step"),
                     "env_frames": (rec.get("counters") or {}).get("env_frames")})
    if not rows:
        raise EvalInputError(f"{runs_dir}: no run directory with an Atari-57 {EVAL_FILE} "
                             f"under it" + (f" ({'; '.join(notes)})" if notes else ""))
    rows.sort(key=lambda r: (-r["human_normalized"], r["game"]))
    return rows, notes


def write_csv(rows: Sequence[Dict[str, Any]], path: str) -> None:
    """One line per game: the ``aggregate_runs`` row fields."""
    fields = ["game", "score", "random_score", "human_score", "human_normalized", "episodes",
              "checkpoint_step", "env_frames", "run_dir"]
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow(r)
    os.replace(tmp, path)


def write_plot(rows: Sequence[Dict[str, Any]], median: float, mean: float, path: str) -> None:
    """Horizontal bars of the per-game human-normalised scores (log-free, clipped view)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = [r["game"] for r in rows][::-1]
    values = [r["human_normalized"] for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(8, 1.5 + 0.22 * len(rows)))
    colors = ["tab:blue" if v >= 1.0 else "tab:orange" for v in values]
    ax.barh(games, values, color=colors)
    ax.axvline(1.0, color="black", linestyle="--", linewidth=1, label="human (1.0)")
    ax.axvline(median, color="tab:green", linewidth=1.5, label=f"median {median:.2f}")
    ax.set_xlabel("human-normalised score  (score - random) / (human - random)")
    ax.set_title(f"{len(rows)} game(s): median {median:.3f}, mean {mean:.3f}")
    ax.legend(loc="lower right", fontsize=8)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    tmp = f"{path}.tmp.{os.getpid()}.png"
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def aggregate_main(runs_dir: str, out_dir: Optional[str], as_json: bool) -> int:
    rows, notes = aggregate_runs(runs_dir)
    for note in notes:
        print(f"r2d2-eval: {note}", file=sys.stderr)
    agg = aggregate([(r["game"], r["score"]) for r in rows])
    out_dir = out_dir or runs_dir
    try:
        os.makedirs(out_dir, exist_ok=True)
        csv_path, png_path = os.path.join(out_dir, CSV_FILE), os.path.join(out_dir, PNG_FILE)
        write_csv(rows, csv_path)
        write_plot(rows, agg.median, agg.mean, png_path)
    except OSError as exc:
        raise EvalInputError(f"{out_dir}: cannot write the results ({exc})") from None
    if as_json:
        print(json.dumps({"median": agg.median, "mean": agg.mean, "num_games": agg.num_games,
                          "games": rows, "csv": csv_path, "png": png_path}, indent=1))
        return 0
    print(f"{'game':<18} {'score':>12} {'random':>10} {'human':>10} {'human-norm.':>11}")
    for r in rows:
        print(f"{r['game']:<18} {r['score']:>12.1f} {r['random_score']:>10.1f} "
              f"{r['human_score']:>10.1f} {r['human_normalized']:>11.3f}")
    print(f"{agg.num_games} game(s): median human-normalised score {agg.median:.4f}, "
          f"mean {agg.mean:.4f}")
    print(f"wrote {csv_path} and {png_path}")
    return 0


# --------------------------------------------------------------------------- #
# Entry point.

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="r2d2-eval",
        description="Evaluate an r2d2_hpc checkpoint with the R2D2 evaluation protocol, or "
                    "aggregate the human-normalised scores of Atari-57 runs.")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="checkpoint directory, or a run directory (its newest valid checkpoint)")
    p.add_argument("--aggregate", metavar="RUNS_DIR", default=None,
                   help="aggregate RUNS_DIR/*/eval.json: median and mean human-normalised "
                        "score, a table, a CSV and a bar plot")
    p.add_argument("--out-dir", metavar="DIR", default=None,
                   help="--aggregate: where the CSV and PNG go (default RUNS_DIR)")
    p.add_argument("--episodes", type=int, default=None,
                   help="evaluation episodes K (default: the run's logging.eval_episodes)")
    p.add_argument("--epsilon", type=float, default=None,
                   help="epsilon of the evaluation policy (default: the run's "
                        "logging.eval_epsilon, 0.001 as in R2D2 / Ape-X)")
    p.add_argument("--seed", type=int, default=0, help="seed of the no-op starts and exploration")
    p.add_argument("--max-episode-frames", type=int, default=None,
                   help="episode cap in frames (default: the run's env.max_episode_frames, "
                        "108000 in the paper)")
    p.add_argument("--set", metavar="env.FIELD=VALUE", action="append", default=[],
                   dest="overrides", help="change a field of the run's env section (repeatable)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads for the policy's forward passes (default: torch's)")
    p.add_argument("--no-write", action="store_true",
                   help=f"do not write RUN_DIR/{EVAL_FILE}")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    return p


def _bad(msg: str) -> int:
    print(f"r2d2-eval: error: {msg}", file=sys.stderr)
    return EXIT_BAD


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``r2d2-eval``; returns the exit code (0, or 2 on bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.aggregate is not None:
            if args.checkpoint is not None:
                return _bad("give either CHECKPOINT or --aggregate RUNS_DIR, not both")
            return aggregate_main(args.aggregate, args.out_dir, args.json)
        if args.checkpoint is None:
            return _bad("give a CHECKPOINT (checkpoint or run directory) or --aggregate "
                        "RUNS_DIR")
        if args.episodes is not None and args.episodes < 1:
            return _bad(f"--episodes: must be >= 1, got {args.episodes}")
        if args.max_episode_frames is not None and args.max_episode_frames < 1:
            return _bad(f"--max-episode-frames: must be >= 1, got {args.max_episode_frames}")
        if args.threads is not None:
            if args.threads < 1:
                return _bad(f"--threads: must be >= 1, got {args.threads}")
            torch.set_num_threads(args.threads)
        source = resolve_checkpoint(args.checkpoint)
        record = evaluate_checkpoint(source, episodes=args.episodes, epsilon=args.epsilon,
                                     seed=args.seed, overrides=args.overrides,
                                     max_episode_frames=args.max_episode_frames)
        eval_path = None
        if not args.no_write:
            eval_path = os.path.join(run_dir_of(source), EVAL_FILE)
            try:
                write_eval(record, eval_path)
            except OSError as exc:
                return _bad(f"{eval_path}: cannot write ({exc})")
        if args.json:
            print(json.dumps(dict(record, eval_json=eval_path), indent=1))
        else:
            _print_eval(record)
            if eval_path:
                print(f"wrote {eval_path}")
        return 0
    except EvalInputError as exc:
        return _bad(str(exc))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""``r2d2-train``: the training entry point. The only place that touches ``MPI.COMM_WORLD``.

``r2d2-train`` reads the configuration on rank 0, broadcasts it, prepares the
run directory and writes the effective config into it. Bad input of any kind
is reported once (rank 0) with the thing and the fix, and every rank exits
with :data:`EXIT_BAD_INPUT`. That includes a learner device that is not there
(``--device cuda`` / ``learner.device=cuda`` without CUDA) and
``learner.mixed_precision=fp16`` on a CPU learner, checked on rank 0, which
is learner 0.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
from typing import Any, List, Optional, Sequence, Tuple

import yaml

from r2d2_hpc.agent.device import device_errors
from r2d2_hpc.checkpoint.preemption import EXIT_CHECKPOINT_FAILED, EXIT_REQUEUE
from r2d2_hpc.checkpoint.records import CheckpointIncompatible, CheckpointInfo, list_checkpoints
from r2d2_hpc.checkpoint.resume import resume_point
from r2d2_hpc.comm.allreduce import check_allreduce
from r2d2_hpc.config import Config, ConfigError, load_config, save_config
from r2d2_hpc.job.metrics import wandb_errors
from r2d2_hpc.job.memory import NodeMemory, check_serial_memory, gather_nodes, memory_problem
from r2d2_hpc.job.plan import plan_lines, print_plan
from r2d2_hpc.job.replay import demo_table_bytes, read_run_demos
from r2d2_hpc.job.role import job_spec
from r2d2_hpc.job.runner import RunHooks, run_mpi, run_serial
from r2d2_hpc.presets import config_path, load_preset, preset_names
from r2d2_hpc.replay.demo_table import episode_windows, episodes_for_shard
from r2d2_hpc.replay.demos import DemoFileError
from r2d2_hpc.types import JobSpec

#: Exit code for bad input (config, ranks, files): nothing was started.
EXIT_BAD_INPUT = 2
#: What a non-zero exit code of a finished run means (printed with it).
EXIT_MEANINGS = {
    EXIT_REQUEUE: "checkpointed after a signal; requeue the job to resume",
    EXIT_CHECKPOINT_FAILED: "the checkpoint the stop asked for could not be written; the "
                            "newest committed one is kept; not requeued: make room in the run "
                            "directory, then resubmit (it resumes from that checkpoint)",
}


def build_train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="r2d2-train",
        description="Train R2D2 as an MPI job: mpiexec -n N r2d2-train [--config FILE] "
                    "[--set section.field=value ...]. With no --config it runs the "
                    "embedded default (CartPole with hidden velocities).")
    p.add_argument("--config", metavar="FILE|PRESET", default=None,
                   help="YAML config (see configs/) or an embedded preset's name "
                        f"({', '.join(preset_names())}); default: the embedded default")
    p.add_argument("--set", metavar="SECTION.FIELD=VALUE", action="append", default=[],
                   dest="overrides", help="override one config field (repeatable)")
    p.add_argument("--device", metavar="DEVICE", default=None,
                   help="where the learner runs: auto, cpu, cuda or cuda:N (overrides "
                        "learner.device, like --set learner.device=DEVICE; actors always "
                        "use the CPU)")
    p.add_argument("--run-dir", metavar="DIR", default=None,
                   help="run directory (default: runs/<env>-<time>)")
    p.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR from its newest valid checkpoint (a run "
                        "directory that holds a complete checkpoint is also resumed by itself)")
    p.add_argument("--print-config", action="store_true",
                   help="print the effective config as YAML and exit")
    p.add_argument("--serial", action="store_true",
                   help="run every role in this one process over in-memory queues "
                        "(debugging, tests, profiling); no mpiexec needed")
    p.add_argument("--serial-actors", type=int, default=1, metavar="N",
                   help="actors in --serial mode (default 1)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--no-memory-check", action="store_true",
                   help="start even if the replay and the ranks look too big for a node's "
                        "available memory (r2d2_hpc.job.memory)")
    p.add_argument("--inject-actor-failure", type=int, default=0, metavar="STEP",
                   help=argparse.SUPPRESS)  # tests: actor 0 raises at this env step
    p.add_argument("--inject-failure", default="", metavar="ROLE:INDEX:SECONDS",
                   help=argparse.SUPPRESS)  # tests: that rank raises after SECONDS
    return p


def default_run_dir(cfg: Config, now: Optional[datetime.datetime] = None) -> str:
    """``runs/<env name>[-<game>]-<YYYYmmdd-HHMMSS>`` for a config."""
    now = now or datetime.datetime.now()
    name = cfg.env.name if cfg.env.name != "atari" else f"atari-{cfg.env.game}"
    return os.path.join("runs", f"{name}-{now:%Y%m%d-%H%M%S}")


def resolve_config(args: argparse.Namespace) -> Config:
    """Config from the embedded preset (when no --config), file and overrides.

    With ``--resume RUN_DIR`` and no ``--config`` the base is that run's
    effective ``config.yaml``. ``--device`` is applied after every ``--set``.
    """
    overrides = list(args.overrides)
    if args.device is not None:
        overrides.append(f"learner.device={args.device}")
    if args.resume and not args.config:
        saved = os.path.join(args.resume, "config.yaml")
        if not os.path.isfile(saved):
            raise ConfigError([f"--resume {args.resume!r}: no config.yaml there; pass the "
                               f"run directory of an earlier r2d2-train run"])
        return load_config(saved, overrides)
    if not args.config:
        return load_config(None, overrides, base=load_preset("default"))
    path = config_path(args.config)
    if not os.path.exists(path):
        raise ConfigError([f"--config {args.config!r}: no such file and no embedded preset of "
                           f"that name; pass a YAML file (see configs/) or one of the presets "
                           f"{', '.join(preset_names())}"])
    return load_config(path, overrides)


def prepare_run_dir(path: str) -> None:
    """Creates the run directory; ConfigError naming it when that is impossible."""
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ConfigError([f"run directory {path!r} cannot be created ({exc.strerror}); "
                           f"choose a writable place with --run-dir"]) from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError([f"run directory {path!r} is not writable; choose a writable "
                           f"place with --run-dir"])


def _check_environment(cfg: Config) -> JobSpec:
    """Builds the environment and network once, so a bad env fails before anything starts."""
    try:
        return job_spec(cfg)
    except (ValueError, ImportError) as exc:
        raise ConfigError([f"env: cannot build environment {cfg.env.name!r}: {exc}"]) from exc


def _resume_point(run_dir: str, cfg: Config, spec: JobSpec,
                  required: bool) -> Optional[CheckpointInfo]:
    """The checkpoint to continue from (None: fresh start); ConfigError if unusable."""
    if not os.path.isdir(run_dir) or not (required or list_checkpoints(run_dir)):
        if required:
            raise ConfigError([f"--resume {run_dir!r}: no such run directory"])
        return None
    report = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    try:
        info = resume_point(run_dir, cfg, spec, report=report)
    except CheckpointIncompatible as exc:
        raise ConfigError([f"cannot resume from {run_dir!r}: {exc}"]) from exc
    if info is None and required:
        raise ConfigError([f"--resume {run_dir!r}: it holds no complete, valid checkpoint; "
                           f"start a new run with --run-dir"])
    return info


def _demo_errors(cfg: Config, spec: JobSpec) -> Tuple[List[str], int]:
    """The demonstration files (R2D3) checked against the run before anything starts:
    (errors, bytes of the largest shard's demo table)."""
    if not cfg.replay.demo_files:
        return [], 0
    try:
        demos = read_run_demos(cfg, spec)
    except DemoFileError as exc:
        return [f"replay.demo_files: {exc}; record demonstrations for this run's env with "
                f"r2d2-record"], 0
    r = cfg.replay
    if not any(episode_windows(int(e[1].shape[0]), r.burn_in, r.trace_length,
                               r.sequence_period)
               for e in episodes_for_shard(demos, 0, 1).episodes):
        return [f"replay.demo_files: no episode is longer than replay.burn_in={r.burn_in} "
                f"steps, so no demonstration sequence has a trace step to learn from; "
                f"record longer episodes or lower replay.burn_in"], 0
    return [], demo_table_bytes(cfg, spec, demos)


def _memory_errors(args: argparse.Namespace, cfg: Config, spec: JobSpec, world_size: int,
                   nodes: Optional[List[NodeMemory]], demo_bytes: int = 0) -> List[str]:
    """The memory check (``--no-memory-check`` skips it): nodes of an MPI job, or
    this process for ``--serial``."""
    if args.no_memory_check:
        return []
    if nodes is None:
        problem = check_serial_memory(cfg, spec, args.serial_actors, demo_bytes)
    else:
        problem = memory_problem(cfg, spec, nodes, world_size, demo_bytes)
    return [problem + " (--no-memory-check starts anyway)"] if problem else []


def _root_setup(args: argparse.Namespace, world_size: int,
                nodes: Optional[List[NodeMemory]] = None
                ) -> Tuple[Optional[dict], Optional[str], str, Optional[CheckpointInfo],
                           Optional[JobSpec]]:
    """Rank 0's part: (config dict, error message, run dir, checkpoint to resume,
    the job's shapes).

    ``nodes``: the MPI job's nodes and their memory (None: serial)."""
    try:
        cfg = resolve_config(args)
        if args.print_config:
            return cfg.to_dict(), None, "", None, None
        errors = []
        if args.serial and world_size > 1:
            errors.append(f"--serial runs every role in one process, but this job has "
                          f"{world_size} MPI ranks; drop --serial or run without mpiexec")
        if args.serial_actors < 1:
            errors.append("--serial-actors must be >= 1")
        if not args.serial and world_size < cfg.topology.min_ranks:
            t = cfg.topology
            errors.append(
                f"topology: {t.learners} learner(s) + {t.replay_shards} replay shard(s) + at "
                f"least 1 actor need {t.min_ranks} MPI ranks, but the job has {world_size}; "
                f"run mpiexec -n {t.min_ranks} (or more), lower topology.replay_shards / "
                f"topology.learners, or use --serial")
        if not args.serial:  # --serial runs one learner: nothing is averaged
            errors += check_allreduce(cfg)
        errors += device_errors(cfg.learner.device, cfg.learner.mixed_precision)  # rank 0 = learner 0
        errors += wandb_errors(cfg)
        spec = None
        try:
            spec = _check_environment(cfg)
        except ConfigError as exc:
            errors += exc.errors
        run_dir = (args.resume or args.run_dir or cfg.logging.run_dir
                   or default_run_dir(cfg))
        resume = None
        demo_bytes = 0
        if spec is not None:
            try:
                resume = _resume_point(run_dir, cfg, spec, required=bool(args.resume))
            except ConfigError as exc:
                errors += exc.errors
            demo_errors, demo_bytes = _demo_errors(cfg, spec)
            errors += demo_errors
        if not errors and spec is not None:  # before any rank allocates its replay
            errors += _memory_errors(args, cfg, spec, world_size, nodes, demo_bytes)
        if not errors:  # create nothing when the job cannot start
            try:
                prepare_run_dir(run_dir)
            except ConfigError as exc:
                errors += exc.errors
        if errors:
            raise ConfigError(errors)
        save_config(cfg, os.path.join(run_dir, "config.yaml"))
        return cfg.to_dict(), None, run_dir, resume, spec
    except ConfigError as exc:
        return None, str(exc), "", None, None


def _world() -> Tuple[Any, int]:
    try:
        from mpi4py import MPI
    except ImportError:  # serial use without MPI installed
        return None, 0
    return MPI.COMM_WORLD, MPI.COMM_WORLD.Get_rank()


def train_main(argv: Optional[Sequence[str]] = None) -> int:
    """``r2d2-train``. Returns the process exit code."""
    args = build_train_parser().parse_args(argv)
    comm, rank = _world()
    size = comm.Get_size() if comm is not None else 1
    # Collective: every rank tells rank 0 its node and that node's free memory.
    nodes = gather_nodes(comm) if comm is not None and size > 1 else None
    payload = _root_setup(args, size, nodes) if rank == 0 else None
    if comm is not None and comm.Get_size() > 1:
        payload = comm.bcast(payload, root=0)
    cfg_dict, error, run_dir, resume, spec = payload
    if error is not None:
        if rank == 0:
            print(f"r2d2-train: {error}", file=sys.stderr, flush=True)
        return EXIT_BAD_INPUT
    cfg = Config.from_dict(cfg_dict)
    if args.print_config:
        if rank == 0:
            sys.stdout.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    hooks = RunHooks(fail_actor_at_step=args.inject_actor_failure, fail=args.inject_failure)
    if rank == 0:
        print_plan(plan_lines(cfg, spec, size, run_dir, resume,
                              serial_actors=args.serial_actors if args.serial else 0))
    if args.serial:
        result = run_serial(cfg, run_dir, num_actors=args.serial_actors, quiet=args.quiet,
                            hooks=hooks, resume=resume)
        lead = dict(result["roles"][0][1])
    else:
        lead = run_mpi(cfg, comm, run_dir, quiet=args.quiet, hooks=hooks, resume=resume)
    code = int(lead.get("exit_code", 0) or 0)
    if rank == 0:
        print(f"r2d2-train: done: {lead.get('stop_reason', '')}; learner steps "
              f"{lead.get('learner_step')}, env steps {lead.get('env_steps')}, episodes "
              f"{lead.get('episodes')}", flush=True)
        if "final_eval_return" in lead:
            print(f"r2d2-train: final greedy evaluation (epsilon "
                  f"{lead['final_eval_epsilon']:g}): mean return "
                  f"{lead['final_eval_return']:.1f} over {lead['final_eval_episodes']} "
                  f"episodes", flush=True)
        if code:
            print(f"r2d2-train: exiting with code {code} ({EXIT_MEANINGS.get(code, 'failed')})",
                  flush=True)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())

"""``r2d2-ckpt``: look into checkpoints without starting a job.

``r2d2-ckpt inspect PATH [--config FILE] [--set S.F=V ...] [--quick] [--json]``
    PATH is a checkpoint directory (``RUN_DIR/checkpoints/ckpt-...``) or a run
    directory (then its newest valid checkpoint). Prints the learner step, env
    frames, counters, job shapes, the replay fill of every shard, every file
    with its validity against MANIFEST.json (sizes and crc32s; ``--quick``:
    sizes only) and, with ``--config``, every config field that differs from
    the checkpoint's (those a resume cannot honour are marked).

``r2d2-ckpt list RUN_DIR [--quick]``
    One line per checkpoint of a run (valid or what is wrong), newest last.

Exit codes: 0 = the checkpoint (every listed one, for ``list``) is valid;
2 = the path is missing, holds no checkpoint, a checkpoint is corrupt or
truncated (the message names the file), or the ``--config`` file is invalid.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from r2d2_hpc.checkpoint.records import CheckpointError, CheckpointInfo, list_checkpoints
from r2d2_hpc.checkpoint.resume import FROZEN_FIELDS
from r2d2_hpc.checkpoint.validate import (checkpoint_target, locate_checkpoint, validate,
                                          validate_files)
from r2d2_hpc.config import Config, ConfigError, config_diff, load_config

#: Exit code for a missing/corrupt path or bad input.
EXIT_BAD = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="r2d2-ckpt",
                                description="Inspect and validate r2d2_hpc checkpoints.")
    sub = p.add_subparsers(dest="command", required=True)
    i = sub.add_parser("inspect", help="what a checkpoint holds and whether it is intact")
    i.add_argument("path", help="checkpoint directory, or a run directory (newest valid one)")
    i.add_argument("--config", metavar="FILE", default=None,
                   help="show the config fields that differ from this YAML config")
    i.add_argument("--set", metavar="SECTION.FIELD=VALUE", action="append", default=[],
                   dest="overrides", help="override a field of --config (repeatable)")
    i.add_argument("--quick", action="store_true",
                   help="check file sizes only, not crc32s (does not read the data)")
    i.add_argument("--json", action="store_true", help="print one JSON object instead")
    lst = sub.add_parser("list", help="every checkpoint of a run directory and its validity")
    lst.add_argument("run_dir")
    lst.add_argument("--quick", action="store_true", help="check file sizes only")
    return p


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


def _pct(a: int, b: int) -> str:
    return f"{100.0 * a / b:.1f}%" if b > 0 else "-"


def _resolve(path: str, deep: bool) -> Tuple[str, Optional[CheckpointInfo]]:
    """The checkpoint directory PATH designates, and its ``CheckpointInfo`` when
    PATH was a run directory (its newest valid checkpoint at ``deep``:
    :func:`locate_checkpoint`, lines about skipped ones on stderr); errors as
    CheckpointError."""
    ckpt, _ = checkpoint_target(path)
    if ckpt is not None:
        return ckpt, None
    say = lambda line: print(line, file=sys.stderr)  # noqa: E731
    info = locate_checkpoint(path, report=say, deep=deep)
    return info.path, info


def _config_differences(manifest: Dict[str, Any], cfg: Config) -> List[Dict[str, Any]]:
    saved = Config.from_dict(manifest["config"])
    frozen = set(FROZEN_FIELDS)
    return [{"field": name, "checkpoint": old, "config": new, "frozen": name in frozen}
            for name, old, new in config_diff(saved, cfg)]


def _file_status(checked: List[Tuple[str, Dict[str, Any], Optional[str]]]
                 ) -> List[Dict[str, Any]]:
    return [{"file": rel, "nbytes": int(entry["nbytes"]), "ok": problem is None,
             "problem": problem or ""} for rel, entry, problem in checked]


def inspect_main(args: argparse.Namespace) -> int:
    deep = not args.quick
    cfg: Optional[Config] = None
    if args.config is not None:
        try:
            cfg = load_config(args.config, args.overrides)
        except ConfigError as exc:
            print(f"r2d2-ckpt: {exc}", file=sys.stderr)
            return EXIT_BAD
    try:
        path, found = _resolve(args.path, deep)
    except CheckpointError as exc:
        print(f"r2d2-ckpt: {exc}", file=sys.stderr)
        return EXIT_BAD
    if found is not None:  # locate_checkpoint just checked every file at `deep`
        manifest, problems = found.manifest, []
        checked = [(rel, entry, None) for rel, entry in sorted(manifest["files"].items())]
    else:
        manifest, problems, checked = validate_files(path, deep)
        if manifest is None:
            print(f"r2d2-ckpt: checkpoint {path} is invalid: {'; '.join(problems)}",
                  file=sys.stderr)
            return EXIT_BAD
    files = _file_status(checked)
    diffs: List[Dict[str, Any]] = []
    diff_error = ""
    if cfg is not None:
        try:
            diffs = _config_differences(manifest, cfg)
        except ConfigError as exc:
            diff_error = f"the checkpoint's config is not valid for this version: {exc}"
    counters = manifest.get("counters", {})
    saved_cfg = manifest.get("config", {})
    env = saved_cfg.get("env", {})
    frames = counters.get("env_frames")
    if frames is None and "env_steps" in counters:
        skip = int(env.get("frame_skip", 1)) if env.get("name") == "atari" else 1
        frames = int(counters["env_steps"]) * skip
    report = {
        "checkpoint": os.path.abspath(path), "valid": not problems,
        "checked": "crc32" if deep else "sizes", "problems": problems,
        "step": manifest["step"], "env_frames": frames, "created": manifest.get("created"),
        "counters": counters, "job_spec": manifest.get("job_spec"),
        "num_shards": manifest["num_shards"], "num_actors": manifest.get("num_actors"),
        "shards": manifest.get("shards", []), "demo_tables": manifest.get("demo_tables", []),
        "files": files,
        "total_bytes": sum(f["nbytes"] for f in files),
        "config_file": args.config, "config_differences": diffs,
        "config_error": diff_error,
    }
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        _print_report(report, env)
    if problems:
        print(f"r2d2-ckpt: checkpoint {path} is corrupt or truncated: {'; '.join(problems)}",
              file=sys.stderr)
        return EXIT_BAD
    if diff_error:
        print(f"r2d2-ckpt: {diff_error}", file=sys.stderr)
        return EXIT_BAD
    return 0


def _print_report(r: Dict[str, Any], env: Dict[str, Any]) -> None:
    bad = [f for f in r["files"] if not f["ok"]]
    status = "VALID" if r["valid"] else f"INVALID ({len(bad) or len(r['problems'])} problem(s))"
    print(f"checkpoint   {r['checkpoint']}")
    print(f"status       {status}; {len(r['files'])} files, {_mb(r['total_bytes'])}, "
          f"{r['checked']} checked")
    print(f"step         {r['step']}")
    print(f"env frames   {r['env_frames']}")
    print(f"created      {r['created']}")
    game = f" {env.get('game')}" if env.get("name") == "atari" else ""
    print(f"env          {env.get('name')}{game}")
    if r["counters"]:
        print("counters     " + ", ".join(f"{k}={v}" for k, v in sorted(r["counters"].items())))
    if r["job_spec"]:
        print("job          " + ", ".join(f"{k}={v}" for k, v in r["job_spec"].items()))
    print(f"actors       {r['num_actors']}")
    print(f"replay       {r['num_shards']} shard(s)")
    for i, s in enumerate(r["shards"]):
        print(f"  shard {i:<4} sequences {s['live_sequences']}/{s['capacity_sequences']} "
              f"({_pct(s['live_sequences'], s['capacity_sequences'])}), observations "
              f"{s['stored_observations']}/{s['capacity_observations']} "
              f"({_pct(s['stored_observations'], s['capacity_observations'])}), "
              f"snapshot {s['snapshot_id']}")
    for i, s in enumerate(r["demo_tables"]):  # R2D3: whole from the start, never evicted
        print(f"  demo  {i:<4} sequences {s['live_sequences']}, observations "
              f"{s['stored_observations']}, snapshot {s['snapshot_id']}")
    print("files")
    for f in r["files"]:
        mark = "ok " if f["ok"] else "BAD"
        print(f"  {mark} {f['file']:<40} {_mb(f['nbytes']):>10}" +
              (f"  {f['problem']}" if f["problem"] else ""))
    if r["config_file"] is not None:
        diffs = r["config_differences"]
        frozen = [d for d in diffs if d["frozen"]]
        print(f"config       {len(diffs)} field(s) differ from {r['config_file']}"
              + (f"; {len(frozen)} cannot change on resume" if frozen else ""))
        for d in diffs:
            tag = "   (cannot change on resume)" if d["frozen"] else ""
            print(f"  {d['field']}: checkpoint {d['checkpoint']!r}, config {d['config']!r}{tag}")


def list_main(args: argparse.Namespace) -> int:
    if not os.path.isdir(args.run_dir):
        print(f"r2d2-ckpt: {args.run_dir}: no such directory", file=sys.stderr)
        return EXIT_BAD
    paths = list_checkpoints(args.run_dir)
    if not paths:
        print(f"r2d2-ckpt: {args.run_dir}: no checkpoints", file=sys.stderr)
        return EXIT_BAD
    any_bad = False
    for p in paths:
        manifest, problems = validate(p, deep=not args.quick)
        step = manifest["step"] if manifest else "?"
        state = "valid" if not problems else "INVALID: " + "; ".join(problems)
        any_bad |= bool(problems)
        print(f"{os.path.basename(p)}  step {step}  {state}")
    return EXIT_BAD if any_bad else 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``r2d2-ckpt``. Returns the process exit code."""
    args = build_parser().parse_args(argv)
    if args.command == "inspect":
        return inspect_main(args)
    return list_main(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

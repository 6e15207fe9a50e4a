"""May this run continue from the run directory's newest checkpoint? Which fields may change.

Resume. The lead calls :func:`resume_point` (find + :func:`compatibility_errors`
against the new config; :class:`CheckpointIncompatible` names every field that
differs, old vs new, and the entry point exits 2), broadcasts the
``CheckpointInfo`` (a plain picklable record), then: learners
``read_learner(info)`` -> ``Learner.load_state(ckpt.state)`` plus counters;
shard ``i`` of ``S'`` ``restore_shard(info, i, S', num_envs=cfg.actor.num_envs,
spec=<the ShardSpec it would start with>)``, which is an exact
``load_snapshot`` when ``S' == S`` and the layout is unchanged, and otherwise a
re-sharding restore that keeps every sequence (streams are placed by
``replay.routing.shard_for_stream``, the rule actors route by); actor ``a``
restarts its episodes and continues its counters from row ``a`` of
``read_actors(info)`` (``ActorRank.load_state``).
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple, Union

from r2d2_hpc.checkpoint.records import CheckpointIncompatible, CheckpointInfo, Report, spec_dict
from r2d2_hpc.checkpoint.validate import find_latest_valid
from r2d2_hpc.config import Config, ConfigError
from r2d2_hpc.types import JobSpec

__all__ = ["FROZEN_FIELDS", "FROZEN_GTRXL_FIELDS", "FROZEN_SPEC_FIELDS", "compatibility_errors", "resume_point"]

#: Config fields a checkpoint cannot be resumed with a different value of:
#: they change the network's parameter shapes, the observation or action
#: spaces, what the stored replay sequences mean, or the task itself.
FROZEN_FIELDS: Tuple[str, ...] = (
    "env.name", "env.game", "env.frame_stack", "env.screen_size", "env.full_action_space",
    "network.torso", "network.mlp_hidden", "network.core", "network.lstm_size",
    "network.use_prev_action", "network.use_prev_reward", "network.dueling",
    "network.head_hidden", "network.res_link",
    "replay.burn_in", "replay.trace_length", "replay.priority_exponent",
)
#: Frozen too when both runs have ``network.core: gtrxl`` (checkpoints from before the
#: gtrxl core have none of these fields). ``gtrxl_heads`` changes neither the parameter
#: count nor the state size, so the job shapes would not catch it.
FROZEN_GTRXL_FIELDS: Tuple[str, ...] = (
    "network.gtrxl_layers", "network.gtrxl_heads", "network.gtrxl_dim",
    "network.gtrxl_memory_length", "network.gtrxl_start_state",
)
#: Job shapes (``r2d2_hpc.types.JobSpec`` fields) that must match on resume.
FROZEN_SPEC_FIELDS: Tuple[str, ...] = ("obs_shape", "frame_shape", "obs_dtype", "num_actions",
                                       "state_size", "num_params", "frame_stack")


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    node: Any = d
    for k in dotted.split("."):
        if not isinstance(node, Mapping) or k not in node:
            return None
        node = node[k]
    return node


def compatibility_errors(saved: Union[Config, Mapping[str, Any]],
                         new: Union[Config, Mapping[str, Any]],
                         saved_spec: Union[JobSpec, Mapping[str, Any], None] = None,
                         new_spec: Union[JobSpec, Mapping[str, Any], None] = None) -> List[str]:
    """Every difference a resume cannot honour, one line per field.

    The frozen fields (:data:`FROZEN_FIELDS`) fix the network's shapes, the
    observation and action spaces and what stored sequences mean; the job
    shapes (:data:`FROZEN_SPEC_FIELDS`, when both are given) catch the rest.
    Everything else may change (learning rate, batch size, replay shards and
    capacity, actors, budgets, intervals, ...).

    Args:
      saved: the checkpoint's config (a Config or its plain dict).
      new: this run's config.
      saved_spec: the checkpoint's job shapes (a dict or JobSpec), optional.
      new_spec: this run's job shapes, optional.

    Returns:
      Lines ``"<field>: checkpoint has <old>, this run has <new>"``; empty when
      the checkpoint can be resumed.
    """
    a = saved.to_dict() if isinstance(saved, Config) else dict(saved)
    b = new.to_dict() if isinstance(new, Config) else dict(new)
    errors = []
    both_gtrxl = _get(a, "network.core") == _get(b, "network.core") == "gtrxl"
    for name in FROZEN_FIELDS + (FROZEN_GTRXL_FIELDS if both_gtrxl else ()):
        x, y = _get(a, name), _get(b, name)
        if x != y:
            errors.append(f"{name}: checkpoint has {x!r}, this run has {y!r}")
    if saved_spec is not None and new_spec is not None:
        sa, sb = spec_dict(saved_spec) or {}, spec_dict(new_spec) or {}
        for name in FROZEN_SPEC_FIELDS:
            if name in sa and name in sb and sa[name] != sb[name]:
                errors.append(f"{name}: checkpoint has {sa[name]!r}, this run has {sb[name]!r}")
    return errors


def resume_point(run_dir: str, cfg: Config, job_spec: Optional[JobSpec] = None,
                 report: Optional[Report] = print, deep: bool = True
                 ) -> Optional[CheckpointInfo]:
    """Lead: the checkpoint to resume from, or None for a fresh start.

    Args:
      run_dir: the run directory.
      cfg: this run's config.
      job_spec: this run's ``JobSpec`` (compared with the saved shapes).
      report: where lines about skipped checkpoints go (each invalid one is
        also renamed ``corrupt-<name>``, see :func:`find_latest_valid`).
      deep: validate crc32s (see :func:`find_latest_valid`).

    Returns:
      The newest valid checkpoint (its ``config()`` may differ from ``cfg`` in
      fields that can change).

    Raises:
      CheckpointIncompatible: naming every field that differs and cannot
        (the entry point prints it and exits 2).
    """
    info = find_latest_valid(run_dir, report, deep, quarantine=True)
    if info is None:
        return None
    errors = compatibility_errors(info.config_dict, cfg, info.job_spec, job_spec)
    if not errors:
        try:
            info.config()
        except ConfigError as exc:
            errors = [f"the checkpoint's config is not valid for this version: {e}"
                      for e in exc.errors]
    if errors:
        raise CheckpointIncompatible(errors, info.path)
    return info

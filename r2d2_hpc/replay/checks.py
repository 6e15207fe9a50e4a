"""Input checks of a replay shard's mutators: every error names the call and the field.

A shard validates all of a call's inputs before it changes anything, so a
``ValueError`` leaves it exactly as it was. These functions are that first
half: they check shapes, dtypes and values against the shard's
:class:`~r2d2_hpc.replay.layout.ShardSpec` and return the arrays converted to
the stored dtypes. Checks that need the shard's streams (step numbering,
episode starts) stay in :class:`~r2d2_hpc.replay.shard.ReplayShard`.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from r2d2_hpc.replay.layout import COUNTER_NAMES, RUN_FIELDS, SLOT_FIELDS, STREAM_FIELDS, ShardSpec

__all__ = ["SequenceInputs", "StepInputs", "check_array", "check_finite_f32", "check_index",
           "check_int", "check_priorities", "check_sequences", "check_steps"]


def check_int(where: str, name: str, value: Any, minimum: int = 0) -> int:
    """``value`` as an int ``>= minimum`` (bools refused)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{where}: {name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{where}: {name}: must be >= {minimum}, got {value}")
    return int(value)


def check_array(where: str, name: str, value: Any, shape: Tuple[int, ...],
                kind: str) -> np.ndarray:
    """Checks shape and dtype kind ('i' integer, 'f' float, 'b' bool) of an array-like."""
    arr = np.asarray(value)
    if arr.shape != tuple(shape):
        raise ValueError(f"{where}: {name}: expected shape {tuple(shape)}, got {arr.shape}")
    ok = {"i": arr.dtype.kind in "iu", "f": arr.dtype.kind == "f", "b": arr.dtype == np.bool_}
    if not ok[kind]:
        want = {"i": "an integer", "f": "a floating", "b": "a bool"}[kind]
        raise ValueError(f"{where}: {name}: expected {want} dtype, got {arr.dtype}")
    return arr


def check_finite_f32(where: str, name: str, arr: np.ndarray) -> np.ndarray:
    """``arr`` as float32, every entry finite."""
    out = arr.astype(np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        i = np.unravel_index(int(np.flatnonzero(bad.reshape(-1))[0]), out.shape)
        raise ValueError(f"{where}: {name}: must be finite (as float32), "
                         f"got {arr[i]!r} at index {tuple(int(x) for x in i)}")
    return out


def check_priorities(where: str, name: str, value: Any, n: int) -> np.ndarray:
    """``<float64>[n]`` raw priorities, each finite and ``>= 0``."""
    arr = check_array(where, name, value, (n,), "f").astype(np.float64)
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{where}: {name}: must be finite and >= 0, got {arr[i]!r} at index {i}")
    return arr


class StepInputs(NamedTuple):
    """``add_steps``'s arrays, checked and in the ring's dtypes (``N`` steps)."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    first: np.ndarray


def check_steps(spec: ShardSpec, obs: Any, action: Any, reward: Any, discount: Any,
                first: Any) -> StepInputs:
    """Checks the arrays of one ``add_steps`` call against the layout.

    Args:
      spec: the shard's layout.
      obs: ``<obs_dtype>[N, *frame_shape]``, ``1 <= N <= capacity_observations``.
      action: ``<int>[N]``, each ``>= 0``.
      reward: ``<float>[N]``, finite.
      discount: ``<float>[N]`` in ``[0, 1]``.
      first: ``<bool>[N]``.

    Returns:
      The arrays (reward and discount as float32).

    Raises:
      ValueError: naming the first bad field.
    """
    w = "add_steps"
    if not isinstance(obs, np.ndarray):
        raise ValueError(f"{w}: obs: expected a numpy array, got {type(obs).__name__}")
    if obs.ndim != 1 + len(spec.frame_shape) or obs.shape[1:] != spec.frame_shape:
        want = ", ".join(map(str, spec.frame_shape))
        raise ValueError(f"{w}: obs: expected shape (N, {want}), got {obs.shape}")
    if obs.dtype != np.dtype(spec.obs_dtype):
        raise ValueError(f"{w}: obs: expected dtype {spec.obs_dtype}, got {obs.dtype}")
    n = obs.shape[0]
    if n < 1:
        raise ValueError(f"{w}: obs: expected at least one step, got 0")
    if n > spec.capacity_observations:
        raise ValueError(f"{w}: obs: {n} steps exceed capacity_observations "
                         f"{spec.capacity_observations}")
    act = check_array(w, "action", action, (n,), "i")
    if (act < 0).any():
        raise ValueError(f"{w}: action: must be >= 0, got {act.min()}")
    if act.dtype == np.uint64 and (act > np.iinfo(np.int64).max).any():
        raise ValueError(f"{w}: action: values exceed int64")
    rew = check_finite_f32(w, "reward", check_array(w, "reward", reward, (n,), "f"))
    disc = check_finite_f32(w, "discount", check_array(w, "discount", discount, (n,), "f"))
    if ((disc < 0) | (disc > 1)).any():
        bad_d = disc[(disc < 0) | (disc > 1)][0]
        raise ValueError(f"{w}: discount: must lie in [0, 1], got {bad_d}")
    fst = check_array(w, "first", first, (n,), "b")
    if obs.dtype.kind == "f" and not np.isfinite(obs).all():
        raise ValueError(f"{w}: obs: must be finite")
    return StepInputs(obs, act, rew, disc, fst)


class SequenceInputs(NamedTuple):
    """``add_sequences``'s arrays, checked and converted (``M`` sequences)."""

    start_step: np.ndarray
    length: np.ndarray
    state_h: np.ndarray
    state_c: np.ndarray
    prev_action: np.ndarray
    prev_reward: np.ndarray
    priority: Optional[np.ndarray]


def check_sequences(spec: ShardSpec, start_step: Any, length: Any, state_h: Any,
                    state_c: Any, prev_action: Any, prev_reward: Any,
                    priority: Any = None) -> SequenceInputs:
    """Checks the arrays of one ``add_sequences`` call against the layout.

    Args:
      spec: the shard's layout.
      start_step: ``<int>[M]``, ``1 <= M <= capacity_sequences``.
      length: ``<int>[M]`` in ``[1, sequence_length]``.
      state_h: ``<float>[M, H]``, finite.
      state_c: ``<float>[M, H]``, finite.
      prev_action: ``<int>[M]``, each ``>= 0``.
      prev_reward: ``<float>[M]``, finite.
      priority: ``<float>[M]`` (finite, ``>= 0``) or None.

    Returns:
      The arrays (start_step and length int64, states and prev_reward float32,
      priority float64).

    Raises:
      ValueError: naming the first bad field.
    """
    w = "add_sequences"
    starts = np.asarray(start_step)
    if starts.ndim != 1 or starts.shape[0] < 1:
        raise ValueError(f"{w}: start_step: expected shape (M,) with M >= 1, "
                         f"got {starts.shape}")
    m = starts.shape[0]
    if m > spec.capacity_sequences:
        raise ValueError(f"{w}: start_step: {m} sequences exceed capacity_sequences "
                         f"{spec.capacity_sequences}")
    starts = check_array(w, "start_step", starts, (m,), "i").astype(np.int64)
    lens = check_array(w, "length", length, (m,), "i").astype(np.int64)
    H = spec.state_size
    h = check_finite_f32(w, "state_h", check_array(w, "state_h", state_h, (m, H), "f"))
    c = check_finite_f32(w, "state_c", check_array(w, "state_c", state_c, (m, H), "f"))
    pa = check_array(w, "prev_action", prev_action, (m,), "i")
    if (pa < 0).any():
        raise ValueError(f"{w}: prev_action: must be >= 0, got {pa.min()}")
    pr = check_finite_f32(w, "prev_reward",
                          check_array(w, "prev_reward", prev_reward, (m,), "f"))
    prio = None if priority is None else check_priorities(w, "priority", priority, m)
    T = spec.sequence_length
    bad = (lens < 1) | (lens > T)
    if bad.any():
        raise ValueError(f"{w}: length: must lie in [1, {T}], got "
                         f"{lens[bad][0]} at index {int(np.flatnonzero(bad)[0])}")
    return SequenceInputs(starts, lens, h, c, pa, pr, prio)


def check_index(spec: ShardSpec, slots: Dict[str, np.ndarray], streams: Dict[str, np.ndarray],
                counters: Dict[str, Any], step_segment_versions: np.ndarray,
                sequence_segment_versions: np.ndarray, pos: np.ndarray) -> None:
    """Checks the small part of a ``ShardState`` (what ``load_index`` installs).

    Args:
      spec: the shard's layout.
      slots: ``SLOT_FIELDS`` arrays, ``[capacity_sequences]`` each.
      streams: ``STREAM_FIELDS`` and ``RUN_FIELDS`` int64 vectors.
      counters: exactly :data:`~r2d2_hpc.replay.layout.COUNTER_NAMES`.
      step_segment_versions: ``<int64>[num_step_segments]``.
      sequence_segment_versions: ``<int64>[num_sequence_segments]``.
      pos: the sequence table's ring rows, each in ``[0, capacity_observations]``.

    Raises:
      ValueError: naming the first inconsistent field.
    """
    S, C = spec.capacity_sequences, spec.capacity_observations
    lay = spec.field_layout()
    for n in SLOT_FIELDS:
        a = slots.get(n)
        if a is None:
            raise ValueError(f"slots: missing field {n!r}")
        if a.shape != (S,) or a.dtype != lay[n][1]:
            raise ValueError(f"slots: {n}: expected {lay[n][1]}{(S,)}, got {a.dtype}{a.shape}")
    for n in STREAM_FIELDS + RUN_FIELDS:
        a = streams.get(n)
        if a is None or a.ndim != 1 or a.dtype != np.int64:
            raise ValueError(f"streams: {n}: expected an int64 vector")
    if len({streams[n].shape for n in STREAM_FIELDS}) != 1 or \
            len({streams[n].shape for n in RUN_FIELDS}) != 1:
        raise ValueError("streams: field lengths disagree")
    if set(counters) != set(COUNTER_NAMES):
        raise ValueError(f"counters: expected {sorted(COUNTER_NAMES)}, got {sorted(counters)}")
    if step_segment_versions.shape != (spec.num_step_segments,) or \
            sequence_segment_versions.shape != (spec.num_sequence_segments,):
        raise ValueError("segment versions: wrong length")
    if pos.size and (pos.min() < 0 or pos.max() > C):
        raise ValueError(f"sequences: pos: values must lie in [0, {C}]")

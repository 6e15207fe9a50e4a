"""Demonstration files (R2D3): episodes of steps, stored once per step as the replay does.

A demonstration file is one HDF5 file of the project's one encoding
(:mod:`r2d2_hpc.storage.h5tree`)::

    demos.h5
      meta        JSON: format "r2d2-demos", version, env, frame_shape,
                  obs_dtype, frame_stack, num_actions, steps, episodes
      frames      <obs_dtype>[N, *frame_shape]   one frame per step (not stacked)
      action      <int32>[N]      the action taken at step t
      reward      <float32>[N]    the reward received after it
      discount    <float32>[N]    0.0 where the episode terminated after step t
      first       <bool>[N]       True at each episode's first step (first[0] True)

Steps follow :class:`~r2d2_hpc.types.SequenceBatch`'s convention, so a demo
table cuts sequences (burn-in + trace, a period apart) exactly as an actor's
stream does. ``env`` names the environment as the run does (``env.name``, and
``:game`` for Atari, e.g. ``atari:Pong``): a file from another env, frame
shape, frame stack or action set is refused before anything is allocated from
it (:func:`demo_errors`).

:func:`from_arrays` builds the record from arrays someone already has (e.g. an
``.npz`` with those five arrays); :func:`write_demos` writes it atomically;
:func:`read_demos` reads and checks it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from r2d2_hpc.config import EnvConfig
from r2d2_hpc.storage.files import commit_file
from r2d2_hpc.storage.h5tree import open_file, read_meta, read_tree, write_file

__all__ = ["DEMO_FORMAT", "DEMO_VERSION", "DemoEpisodes", "DemoFileError", "demo_errors",
           "env_id", "from_arrays", "join_episodes", "read_demos", "write_demos"]

#: The ``format`` tag of a demonstration file's meta, and its version.
DEMO_FORMAT = "r2d2-demos"
DEMO_VERSION = 1
#: The per-step arrays and their stored dtypes (frames keep the env's dtype).
STEP_ARRAYS: Dict[str, Optional[str]] = {"frames": None, "action": "int32",
                                         "reward": "float32", "discount": "float32",
                                         "first": "bool"}


def env_id(env: EnvConfig) -> str:
    """How a demonstration file names a run's environment: ``env.name``, and
    ``atari:<Game>`` for Atari."""
    return f"atari:{env.game}" if env.name == "atari" else env.name


def join_episodes(episodes: Sequence[Mapping[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    """One set of per-step arrays from several episodes' (each starting with first=True)."""
    return {k: np.concatenate([np.asarray(e[k]) for e in episodes]) for k in STEP_ARRAYS}


class DemoFileError(ValueError):
    """A demonstration file that cannot be used; the message names the file and the field."""


@dataclasses.dataclass(frozen=True)
class DemoEpisodes:
    """Demonstration episodes, one row per step (module docstring).

    Attributes:
      env: the environment (``env.name``, ``atari:<Game>`` for Atari).
      frame_stack: frames per observation the steps were played with.
      num_actions: size of the action set.
      frames, action, reward, discount, first: the per-step arrays.
    """

    env: str
    frame_stack: int
    num_actions: int
    frames: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    discount: np.ndarray
    first: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.action.shape[0])

    @property
    def episodes(self) -> int:
        return int(np.count_nonzero(self.first))

    @property
    def frame_shape(self) -> Tuple[int, ...]:
        return tuple(int(d) for d in self.frames.shape[1:])

    def episode_returns(self) -> np.ndarray:
        """The undiscounted return of each episode, in order."""
        starts = np.flatnonzero(self.first)
        return np.add.reduceat(self.reward.astype(np.float64), starts) if starts.size \
            else np.zeros(0)

    def meta(self) -> Dict[str, Any]:
        return {"format": DEMO_FORMAT, "version": DEMO_VERSION, "env": self.env,
                "frame_shape": list(self.frame_shape), "obs_dtype": str(self.frames.dtype),
                "frame_stack": int(self.frame_stack), "num_actions": int(self.num_actions),
                "steps": self.steps, "episodes": self.episodes}


def step_errors(where: str, arrays: Mapping[str, np.ndarray], num_actions: int) -> List[str]:
    """What is wrong with the per-step arrays (empty: they can be used)."""
    errors = []
    missing = [k for k in STEP_ARRAYS if k not in arrays]
    if missing:
        return [f"{where}: {k}: missing" for k in missing]
    n = np.asarray(arrays["action"]).shape[0] if np.ndim(arrays["action"]) else -1
    for k in STEP_ARRAYS:
        a = np.asarray(arrays[k])
        want_ndim = None if k == "frames" else 1
        if a.ndim == 0 or (want_ndim is not None and a.ndim != want_ndim) or a.shape[0] != n:
            tail = ", ..." if k == "frames" else ""
            errors.append(f"{where}: {k}: shape {a.shape}, expected ({n}{tail})")
    if errors or n == 0:
        return errors or [f"{where}: action: no steps"]
    action = np.asarray(arrays["action"])
    if action.dtype.kind not in "iu":
        errors.append(f"{where}: action: dtype {action.dtype}, expected integers")
    elif action.min() < 0 or action.max() >= num_actions:
        bad = int(np.flatnonzero((action < 0) | (action >= num_actions))[0])
        errors.append(f"{where}: action: {int(action[bad])} at step {bad} is outside "
                      f"[0, {num_actions})")
    for k in ("reward", "discount"):
        a = np.asarray(arrays[k], np.float64)
        if not np.isfinite(a).all():
            bad = int(np.flatnonzero(~np.isfinite(a))[0])
            errors.append(f"{where}: {k}: {a[bad]} at step {bad} is not finite")
    disc = np.asarray(arrays["discount"], np.float64)
    if np.isfinite(disc).all() and ((disc != 0.0) & (disc != 1.0)).any():
        errors.append(f"{where}: discount: values other than 0.0 and 1.0")
    first = np.asarray(arrays["first"])
    if first.dtype != np.bool_:
        errors.append(f"{where}: first: dtype {first.dtype}, expected bool")
    elif not first[0]:
        errors.append(f"{where}: first: step 0 must start an episode (first[0] = True)")
    return errors


def from_arrays(env: str, frame_stack: int, num_actions: int, frames: Any, action: Any,
                reward: Any, discount: Any, first: Any, where: str = "arrays") -> DemoEpisodes:
    """A checked record from per-step arrays (e.g. ``np.load('episodes.npz')``'s).

    Raises:
      DemoFileError: naming every field that is wrong.
    """
    arrays = {"frames": np.asarray(frames), "action": np.asarray(action),
              "reward": np.asarray(reward), "discount": np.asarray(discount),
              "first": np.asarray(first)}
    errors = step_errors(where, arrays, int(num_actions))
    if int(frame_stack) < 1:
        errors.append(f"{where}: frame_stack: {frame_stack}, expected >= 1")
    if errors:
        raise DemoFileError("; ".join(errors))
    return DemoEpisodes(str(env), int(frame_stack), int(num_actions), arrays["frames"],
                        arrays["action"].astype(np.int32), arrays["reward"].astype(np.float32),
                        arrays["discount"].astype(np.float32), arrays["first"])


def write_demos(path: str, demos: DemoEpisodes) -> None:
    """Writes ``demos`` to ``path`` (a temp file, fsynced, renamed into place)."""
    tmp = path + ".tmp"
    write_file(tmp, demos.meta(), {k: getattr(demos, k) for k in STEP_ARRAYS})
    commit_file(tmp, path, True)


def demo_errors(meta: Mapping[str, Any], where: str, *, env: str, frame_shape: Sequence[int],
                obs_dtype: str, frame_stack: int, num_actions: int) -> List[str]:
    """How a file's meta disagrees with the run (empty: it matches)."""
    errors = []
    if meta.get("format") != DEMO_FORMAT:
        return [f"{where}: format: {meta.get('format')!r}, not a demonstration file "
                f"({DEMO_FORMAT!r})"]
    if meta.get("version") != DEMO_VERSION:
        return [f"{where}: version: {meta.get('version')!r}; this r2d2_hpc reads version "
                f"{DEMO_VERSION}"]
    want = {"env": env, "frame_shape": [int(d) for d in frame_shape], "obs_dtype": str(obs_dtype),
            "frame_stack": int(frame_stack), "num_actions": int(num_actions)}
    for k, v in want.items():
        if meta.get(k) != v:
            errors.append(f"{where}: {k}: the file has {meta.get(k)!r}, this run has {v!r}")
    for k in ("steps", "episodes"):
        if not isinstance(meta.get(k), int) or meta[k] < 1:
            errors.append(f"{where}: {k}: {meta.get(k)!r}, expected a positive count")
    return errors


def read_demos(path: str, *, env: str, frame_shape: Sequence[int], obs_dtype: str,
               frame_stack: int, num_actions: int) -> DemoEpisodes:
    """Reads a demonstration file for a run, checking it before reading its arrays.

    The meta is compared with the run first, and each array's declared shape
    and dtype with the meta's counts, so nothing is allocated from a file that
    does not match.

    Raises:
      DemoFileError: missing, unreadable or corrupt file, or a field that does
        not match the run; the message names the file and the field.
    """
    where = os.path.abspath(path)
    with open_file(path, error=DemoFileError) as f:
        try:
            meta = read_meta(f)
        except (KeyError, ValueError) as exc:
            raise DemoFileError(f"{where}: meta: {exc}") from None
        errors = demo_errors(meta, where, env=env, frame_shape=frame_shape, obs_dtype=obs_dtype,
                             frame_stack=frame_stack, num_actions=num_actions)
        if errors:
            raise DemoFileError("; ".join(errors))
        n = int(meta["steps"])
        for k, dtype in STEP_ARRAYS.items():
            if k not in f:
                raise DemoFileError(f"{where}: {k}: missing")
            shape = (n,) + tuple(frame_shape) if k == "frames" else (n,)
            want = np.dtype(obs_dtype if dtype is None else dtype)
            if tuple(f[k].shape) != shape or f[k].dtype != want:
                raise DemoFileError(f"{where}: {k}: {f[k].dtype}{tuple(f[k].shape)} in the "
                                    f"file, expected {want}{shape}")
        try:
            arrays = read_tree(f)
        except (OSError, RuntimeError, ValueError) as exc:
            raise DemoFileError(f"{where}: a dataset is corrupted ({exc})") from None
    return from_arrays(meta["env"], meta["frame_stack"], meta["num_actions"], where=where,
                       **{k: arrays[k] for k in STEP_ARRAYS})

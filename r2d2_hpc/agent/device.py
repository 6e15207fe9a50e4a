"""Where the learner runs: device strings, several learners on one node, start-up checks.

``learner.device`` is ``auto`` (CUDA if available, else CPU), ``cpu``,
``cuda`` or ``cuda:N``; ``learner.mixed_precision`` is ``none``, ``bf16`` or
``fp16`` (CUDA only). :func:`device_errors` is the one start-up check of both:
the entry point calls it on rank 0 so that a bad choice exits with code 2
before anything starts, and the ``Learner`` raises it as a ``ConfigError``.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Tuple, Union

import torch

from r2d2_hpc.config import INFERENCE_PRECISIONS, MIXED_PRECISION, ConfigError

__all__ = ["AUTOCAST_DTYPES", "DeviceSpec", "NATIVE_BF16_FLAGS", "cpu_flags", "cpu_model",
           "device_errors", "resolve_device", "resolve_inference_precision", "spread_device"]

#: Where the learner runs: a device string (``'cpu'``, ``'cuda'``, ``'cuda:1'``,
#: ``'auto'``) or a ``torch.device``.
DeviceSpec = Union[str, torch.device]

#: ``learner.mixed_precision`` -> autocast dtype (None: no autocast).
AUTOCAST_DTYPES: Dict[str, Optional[torch.dtype]] = {
    "none": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
assert tuple(AUTOCAST_DTYPES) == MIXED_PRECISION


def resolve_device(spec: DeviceSpec) -> torch.device:
    """Turns ``cfg.learner.device`` into a ``torch.device``.

    Args:
      spec: ``'auto'`` (CUDA if available, else CPU), ``'cpu'``, ``'cuda'``,
        ``'cuda:N'`` or a ``torch.device``.

    Returns:
      The device.

    Raises:
      ConfigError: (a ``ValueError``) if CUDA is asked for but not available,
        or the CUDA device index does not exist.
    """
    if isinstance(spec, torch.device):
        device = spec
    elif spec == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(spec)
    error = _cuda_error(str(spec), device)
    if error:
        raise ConfigError([error])
    return device


def spread_device(spec: str, local_index: int, cuda_count: int) -> str:
    """The device of one of several learners sharing a node.

    ``'auto'`` (with CUDA) and ``'cuda'`` become ``'cuda:<local_index mod
    cuda_count>'``, so a node's learners use its GPUs round robin (NCCL needs
    one GPU per rank); ``'cpu'``, ``'cuda:N'`` and ``'auto'`` without CUDA are
    kept.

    Args:
      spec: ``cfg.learner.device``.
      local_index: this learner's index among the learners of its node.
      cuda_count: CUDA devices visible on the node (0: none).

    Returns:
      A device string for ``resolve_device``.
    """
    if cuda_count > 0 and spec in ("auto", "cuda"):
        return f"cuda:{local_index % cuda_count}"
    return spec


def _cuda_error(spec: str, device: torch.device) -> str:
    """Why ``device`` (asked for as ``spec``) cannot be used, or ``''``."""
    if device.type != "cuda":
        return ""
    if not torch.cuda.is_available():
        why = ("this torch is a CPU-only build" if torch.version.cuda is None
               else "no CUDA device is visible")
        return (f"learner.device: {spec!r} needs CUDA, which is not available here ({why}, "
                f"torch {torch.__version__}); set learner.device=cpu or auto (r2d2-train "
                f"--device cpu)")
    count = torch.cuda.device_count()
    if device.index is not None and device.index >= count:
        return (f"learner.device: {spec!r}, but only {count} CUDA device(s) are visible; "
                f"choose cuda:0 .. cuda:{count - 1}, cuda or auto")
    return ""


def device_errors(device: DeviceSpec, mixed_precision: str = "none") -> List[str]:
    """Start-up check of ``learner.device`` and ``learner.mixed_precision``.

    ================  ===============  ==============================
    device            mixed_precision  result
    ================  ===============  ==============================
    cpu / auto (CPU)  none, bf16       fine
    cpu / auto (CPU)  fp16             error: fp16 needs CUDA
    cuda, no CUDA     any              error: no CUDA here
    cuda:N, N >= n    any              error: no such device
    cuda              bf16             error if the GPU lacks bf16
    ================  ===============  ==============================

    Args:
      device: ``learner.device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) or a
        ``torch.device``.
      mixed_precision: ``learner.mixed_precision``.

    Returns:
      Error messages, each naming the field and the fix; empty if fine.
    """
    spec = str(device)
    resolved = device if isinstance(device, torch.device) else torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if spec == "auto" else spec)
    error = _cuda_error(spec, resolved)
    if error:
        return [error]
    if mixed_precision not in AUTOCAST_DTYPES:
        return [f"learner.mixed_precision: unknown value {mixed_precision!r}; choose one of "
                f"{', '.join(MIXED_PRECISION)}"]
    if mixed_precision == "fp16" and resolved.type != "cuda":
        return [f"learner.mixed_precision: 'fp16' needs a CUDA learner (float16 autocast "
                f"with a GradScaler), but the learner runs on the CPU "
                f"(learner.device={spec}); set learner.mixed_precision=bf16 (bfloat16 "
                f"autocast works on the CPU) or none, or run the learner on a GPU "
                f"(learner.device=cuda)"]
    if (mixed_precision == "bf16" and resolved.type == "cuda"
            and not torch.cuda.is_bf16_supported(including_emulation=False)):
        return [f"learner.mixed_precision: 'bf16' is not supported by "
                f"{torch.cuda.get_device_name(resolved)}; set learner.mixed_precision=fp16 "
                f"or none"]
    return []


#: CPU feature flags (``/proc/cpuinfo``) of native bfloat16 matrix instructions: x86's
#: AVX-512 BF16 and AMX, ARMv8.6's BF16 extension (``Features: ... bf16``).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def _cpuinfo_value(keys: Tuple[str, ...], path: str) -> str:
    """The value of the first line of ``path`` (``/proc/cpuinfo``) whose key is one of
    ``keys``; ``''`` where there is none or the file does not exist (not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_flags(path: str = "/proc/cpuinfo") -> Tuple[str, ...]:
    """This CPU's feature flags (x86 ``flags``, ARM ``Features``); empty where the
    file does not exist (not Linux) or lists none."""
    return tuple(_cpuinfo_value(("flags", "Features"), path).split())


def cpu_model(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name, or ``''`` where unknown."""
    return _cpuinfo_value(("model name",), path)


def resolve_inference_precision(choice: str, flags: Optional[Iterable[str]] = None
                                ) -> Tuple[Optional[torch.dtype], str]:
    """``actor.inference_precision`` -> the actors' autocast dtype and why.

    Args:
      choice: ``auto`` (bf16 where the CPU has one of :data:`NATIVE_BF16_FLAGS`,
        else float32), ``float32`` or ``bf16`` (forced; without native support
        oneDNN emulates it, slower than float32).
      flags: the CPU's feature flags (default: :func:`cpu_flags`).

    Returns:
      ``(dtype, reason)``: ``torch.bfloat16`` or None (float32, no autocast),
      and a phrase for the run's plan.

    Raises:
      ConfigError: on a value that is not one of ``INFERENCE_PRECISIONS``.
    """
    if choice not in INFERENCE_PRECISIONS:
        raise ConfigError([f"actor.inference_precision: unknown value {choice!r}; choose one "
                           f"of {', '.join(INFERENCE_PRECISIONS)}"])
    if choice == "float32":
        return None, "float32 (actor.inference_precision=float32)"
    have = set(cpu_flags() if flags is None else flags)
    native = [f for f in NATIVE_BF16_FLAGS if f in have]
    if choice == "bf16":
        why = (f"the CPU has {'/'.join(native)}" if native
               else "forced: this CPU has no native bf16, oneDNN emulates it")
        return torch.bfloat16, f"bf16 (actor.inference_precision=bf16; {why})"
    if native:
        return torch.bfloat16, (f"bf16 (actor.inference_precision=auto: the CPU has "
                                f"{'/'.join(native)})")
    return None, ("float32 (actor.inference_precision=auto: the CPU has no native bf16 "
                  "matrix instructions, none of " + ", ".join(NATIVE_BF16_FLAGS) + ")")

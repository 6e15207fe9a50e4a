"""Flat parameter vectors: the one layout of parameters, gradients and state as one buffer.

A flat vector is ``<float32>[N]``, ``N = sum_i numel(t_i)``: the tensors
``t_0, t_1, ...`` in the order given (for a network, ``parameters()`` order),
each flattened row-major. It is the body of the parameter publication
(``Learner.flat_params`` -> ``ActorPolicy.load_flat_params``), what the
gradient allreduce averages, and what ``broadcast_learner`` sends::

    [ t_0.reshape(-1) | t_1.reshape(-1) | ... ]      numel(t_0), numel(t_1), ...

Every flatten and unflatten of the project goes through these functions.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

import numpy as np
import torch

__all__ = ["flat_grads", "flatten", "load_flat_array", "num_elements", "set_grads",
           "to_flat_array", "unflatten_into"]


def num_elements(tensors: Iterable[torch.Tensor]) -> int:
    """``N``, the length of the flat vector of ``tensors``."""
    return int(sum(t.numel() for t in tensors))


def flatten(tensors: Iterable[torch.Tensor],
            device: Optional[torch.device | str] = None) -> torch.Tensor:
    """The tensors as one new flat vector (detached from autograd).

    Args:
      tensors: any shapes; converted to float32.
      device: where the vector lives (default: where the tensors are).

    Returns:
      ``<float32>[N]``, a fresh tensor (never a view of the inputs).
    """
    parts = [t.detach().reshape(-1).to(device=device, dtype=torch.float32) for t in tensors]
    if not parts:
        return torch.zeros(0, dtype=torch.float32, device=device)
    return torch.cat(parts)


def unflatten_into(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> None:
    """Copies the chunks of a flat vector back into ``tensors`` (the inverse of ``flatten``).

    Args:
      flat: ``<float>[N]`` with ``N = num_elements(tensors)``; any device.
      tensors: overwritten in place, each from its chunk (cast to its dtype and device).

    Raises:
      ValueError: if ``flat`` is not 1-D of length ``N`` (nothing is written).
    """
    numels: List[int] = [t.numel() for t in tensors]
    _check_length(flat, numels)
    with torch.no_grad():
        for t, chunk in zip(tensors, torch.split(flat, numels)):
            t.copy_(chunk.view_as(t))


def to_flat_array(tensors: Iterable[torch.Tensor]) -> np.ndarray:
    """``flatten`` on the CPU as a numpy array: ``<float32>[N]``, a fresh array."""
    return flatten(tensors, device="cpu").numpy()


def load_flat_array(tensors: Sequence[torch.Tensor], flat: np.ndarray) -> None:
    """``unflatten_into`` from a numpy vector (cast to float32).

    Raises:
      ValueError: if ``flat`` is not ``[N]`` (see ``unflatten_into``).
    """
    unflatten_into(torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32)), tensors)


def flat_grads(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The gradients of ``params`` as one new flat vector (zeros where ``grad`` is None).

    Returns:
      ``<float32>[N]`` on the parameters' device.
    """
    return flatten([p.grad if p.grad is not None else torch.zeros_like(p) for p in params])


def set_grads(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Sets every ``p.grad`` from a flat vector (allocating missing ones).

    Raises:
      ValueError: if ``flat`` is not ``[N]`` (see ``unflatten_into``).
    """
    _check_length(flat, [p.numel() for p in params])
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    unflatten_into(flat, [p.grad for p in params])


def _check_length(flat: torch.Tensor, numels: Sequence[int]) -> None:
    """Raises ValueError unless ``flat`` is 1-D of length ``sum(numels)``."""
    if flat.dim() != 1 or flat.shape[0] != sum(numels):
        raise ValueError(f"flat vector must have shape ({sum(numels)},) for these "
                         f"{len(numels)} tensors, got {tuple(flat.shape)}")

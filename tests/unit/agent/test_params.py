"""Tests for r2d2_hpc.agent.params: the one flat layout of parameters and gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from r2d2_hpc.agent.params import (flat_grads, flatten, load_flat_array, num_elements,
                                   set_grads, to_flat_array, unflatten_into)

torch.set_num_threads(1)


def tensors():
    """A matrix, a vector and a 0-d tensor (Adam's ``step`` is one)."""
    return [torch.arange(6, dtype=torch.float32).reshape(2, 3),
            torch.tensor([10.0, 11.0]), torch.tensor(12.0)]


def test_flatten_is_row_major_in_order() -> None:
    flat = flatten(tensors())
    assert num_elements(tensors()) == 9
    np.testing.assert_array_equal(flat.numpy(), [0, 1, 2, 3, 4, 5, 10, 11, 12])
    assert flat.dtype == torch.float32


def test_flatten_copies_and_detaches() -> None:
    p = torch.nn.Parameter(torch.ones(3))
    flat = flatten([p])
    assert not flat.requires_grad
    flat[0] = 5.0
    assert p[0].item() == 1.0


def test_round_trip_through_torch_and_numpy() -> None:
    source, dest = tensors(), [torch.zeros_like(t) for t in tensors()]
    unflatten_into(flatten(source), dest)
    assert all(torch.equal(a, b) for a, b in zip(source, dest))
    dest = [torch.zeros_like(t) for t in tensors()]
    arr = to_flat_array(source)
    assert isinstance(arr, np.ndarray) and arr.dtype == np.float32
    load_flat_array(dest, arr.astype(np.float64))  # cast to float32 on the way in
    assert all(torch.equal(a, b) for a, b in zip(source, dest))


@pytest.mark.parametrize("bad", [np.zeros(8), np.zeros(10), np.zeros((3, 3)), np.zeros(0)])
def test_wrong_length_is_refused_and_nothing_written(bad) -> None:
    dest = [torch.full_like(t, 7.0) for t in tensors()]
    with pytest.raises(ValueError, match=r"shape \(9,\)"):
        load_flat_array(dest, bad)
    assert all((t == 7.0).all() for t in dest)


def test_gradients_round_trip_with_missing_grads_as_zeros() -> None:
    a, b = torch.nn.Parameter(torch.ones(2, 2)), torch.nn.Parameter(torch.ones(3))
    (a.sum() * 2.0).backward()  # b gets no gradient
    assert b.grad is None
    np.testing.assert_array_equal(flat_grads([a, b]).numpy(), [2, 2, 2, 2, 0, 0, 0])
    set_grads([a, b], torch.arange(7, dtype=torch.float32))
    np.testing.assert_array_equal(a.grad.numpy(), [[0, 1], [2, 3]])
    np.testing.assert_array_equal(b.grad.numpy(), [4, 5, 6])
    with pytest.raises(ValueError, match="shape"):
        set_grads([a, b], torch.zeros(6))


def test_a_networks_parameters_round_trip() -> None:
    torch.manual_seed(0)
    net = torch.nn.LSTM(3, 4)
    flat = to_flat_array(net.parameters())
    assert flat.shape == (num_elements(net.parameters()),)
    other = torch.nn.LSTM(3, 4)
    load_flat_array(list(other.parameters()), flat)
    for p, q in zip(net.parameters(), other.parameters()):
        assert torch.equal(p, q)

"""Tests for r2d2_hpc.learner: the step, target schedule, reducer, state and ΔQ."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional

import numpy as np
import pytest
import torch

from r2d2_hpc.config import Config
from r2d2_hpc.learner import (
    METRIC_KEYS,
    Learner,
    q_value_discrepancy,
    resolve_device,
)
from fakes import (
    NUM_ACTIONS,
    OBS_SHAPE,
    random_sequence_batch,
    select_columns,
    tiny_config,
)

torch.set_num_threads(1)


def make_learner(cfg: Optional[Config] = None, seed: int = 0,
                 grad_reducer: Optional[Callable[[torch.Tensor], None]] = None) -> Learner:
    torch.manual_seed(seed)
    return Learner(cfg or tiny_config(), OBS_SHAPE, NUM_ACTIONS, device="cpu",
                   grad_reducer=grad_reducer)


def params_of(net: torch.nn.Module) -> List[torch.Tensor]:
    return [p.detach().clone() for p in net.parameters()]


def same(a: List[torch.Tensor], b: List[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def ones(batch_size: int = 5) -> np.ndarray:
    return np.ones(batch_size, dtype=np.float32)


# --------------------------------------------------------------------------- #
# Optimizer and configuration.

def test_adam_uses_the_papers_epsilon_and_learning_rate() -> None:
    cfg = tiny_config()
    assert cfg.learner.adam_epsilon == 1e-3 and cfg.learner.learning_rate == 1e-4
    learner = make_learner(cfg)
    assert isinstance(learner.optimizer, torch.optim.Adam)
    group = learner.optimizer.param_groups[0]
    assert group["eps"] == 1e-3  # paper Table 2, not torch's 1e-8
    assert group["lr"] == 1e-4
    assert group["weight_decay"] == 0


@pytest.mark.parametrize("spec, expected", [
    ("cpu", "cpu"),
    (torch.device("cpu"), "cpu"),
    ("auto", "cuda" if torch.cuda.is_available() else "cpu"),
])
def test_resolve_device_table(spec, expected: str) -> None:
    assert resolve_device(spec).type == expected


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_resolve_device_rejects_cuda_without_cuda() -> None:
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")


# --------------------------------------------------------------------------- #
# The step.

def test_overfits_a_fixed_batch() -> None:
    cfg = tiny_config(learning_rate=1e-2)
    cfg = cfg.replace(network=dataclasses.replace(cfg.network, mlp_hidden=(32,),
                                                  lstm_size=32, head_hidden=32))
    learner = make_learner(cfg)
    batch = random_sequence_batch(cfg, seed=1)
    losses = [learner.step(batch, ones()).loss for _ in range(50)]
    assert losses[-1] < losses[0] / 20.0, losses


def test_step_result_priorities_metrics_and_counters() -> None:
    learner = make_learner()
    batch = random_sequence_batch(learner.cfg, seed=2)
    for k in range(1, 3):
        result = learner.step(batch, ones())
        assert learner.step_count == k and learner.params_version == k
    assert result.priorities.dtype == np.float64 and result.priorities.shape == (5,)
    assert np.all(np.isfinite(result.priorities)) and np.all(result.priorities > 0)
    assert set(result.metrics) == set(METRIC_KEYS)
    assert all(isinstance(v, float) and math.isfinite(v) for v in result.metrics.values())
    assert result.metrics["loss"] == result.loss
    assert all(result.metrics[k] >= 0 for k in ("time_forward_backward_s", "time_reduce_s",
                                                 "time_optimizer_s", "grad_norm"))
    # Valid trace steps, counted from the batch: every masked trace step except,
    # in each sequence that does not terminate on the trace, its last one (no
    # observation to bootstrap from and no termination).
    burn_in = learner.cfg.replay.burn_in
    trace_mask = batch.mask[burn_in:]
    not_terminating = sum(not np.any(batch.discount[burn_in:, b][trace_mask[:, b]] == 0)
                          for b in range(5))
    assert not_terminating == 4  # all kinds but "terminates"
    assert result.metrics["num_valid"] == trace_mask.sum() - not_terminating


def test_step_rejects_weights_of_the_wrong_shape() -> None:
    learner = make_learner()
    batch = random_sequence_batch(learner.cfg)
    with pytest.raises(ValueError, match="weights"):
        learner.step(batch, ones(4))


def test_priorities_follow_the_eta_mix_of_the_trace_errors() -> None:
    """Priorities equal eta max|δ| + (1 - eta) mean|δ| recomputed from the loss pieces."""
    from r2d2_hpc import losses

    learner = make_learner()
    batch = random_sequence_batch(learner.cfg, seed=3)
    tb = learner.batch_to_device(batch)
    cfg = learner.cfg
    with torch.no_grad():
        out = losses.sequence_loss(learner.online, learner.target, tb, torch.ones(5),
                                   burn_in=cfg.replay.burn_in, n=cfg.learner.n_step,
                                   gamma=cfg.learner.discount,
                                   eps=cfg.learner.value_rescaling_epsilon,
                                   eta=cfg.replay.priority_eta)
    abs_td, valid = out.abs_td_error.numpy(), out.valid.numpy()
    expected = [0.9 * abs_td[valid[:, b], b].max() + 0.1 * abs_td[valid[:, b], b].mean()
                for b in range(5)]
    result = learner.step(batch, ones())
    np.testing.assert_allclose(result.priorities, expected, rtol=1e-6)


@pytest.mark.parametrize("period, num_steps", [(1, 3), (3, 7), (4, 9)])
def test_target_changes_exactly_at_multiples_of_the_period(period: int, num_steps: int) -> None:
    learner = make_learner(tiny_config(target_update_period=period, learning_rate=1e-2))
    batch = random_sequence_batch(learner.cfg, seed=4)
    expected_target = params_of(learner.online)
    assert same(params_of(learner.target), expected_target)
    for k in range(1, num_steps + 1):
        result = learner.step(batch, ones())
        online = params_of(learner.online)
        if k % period == 0:
            expected_target = online
            assert result.metrics["target_updated"] == 1.0
        else:
            assert result.metrics["target_updated"] == 0.0
            assert not same(online, expected_target)  # the online network did move
        assert same(params_of(learner.target), expected_target), f"after step {k}"


def test_zero_importance_weight_removes_a_sequence_from_the_gradient() -> None:
    """loss = 1/B sum_i w_i L_i, so B * grad(full, w_1 = 0) = (B - 1) * grad(without 1)."""
    captured: List[torch.Tensor] = []

    def spy(flat: torch.Tensor) -> None:
        captured.append(flat.clone())

    cfg = tiny_config()
    batch = random_sequence_batch(cfg, seed=5)
    keep = np.array([0, 2, 3, 4])
    weights = np.array([1.0, 0.0, 0.7, 0.4, 0.9], dtype=np.float32)
    make_learner(cfg, grad_reducer=spy).step(batch, weights)
    make_learner(cfg, grad_reducer=spy).step(select_columns(batch, keep), weights[keep])
    full, without = captured
    assert full.abs().max() > 0
    torch.testing.assert_close(full * 5, without * 4, rtol=1e-5, atol=1e-7)
    # ...and a nonzero weight there does change the gradient.
    make_learner(cfg, grad_reducer=spy).step(batch, np.where(weights == 0, 1.0, weights))
    assert not torch.allclose(captured[2] * 5, without * 4, rtol=1e-3, atol=1e-6)


# --------------------------------------------------------------------------- #
# The gradient reducer.

def test_grad_reducer_gets_one_flat_contiguous_gradient_per_step() -> None:
    calls: List[torch.Tensor] = []

    def spy(flat: torch.Tensor) -> None:
        assert flat.dim() == 1 and flat.is_contiguous() and flat.dtype == torch.float32
        calls.append(flat.clone())

    learner = make_learner(grad_reducer=spy)
    reference = make_learner()  # same seed, no reducer
    batch = random_sequence_batch(learner.cfg, seed=6)
    learner.step(batch, ones())
    learner.step(batch, ones())
    assert len(calls) == 2 and calls[0].numel() == learner.num_params
    assert learner.num_params == sum(p.numel() for p in learner.online.parameters())
    # The flat gradient is the per-parameter gradients concatenated in order.
    reference.step(batch, ones())
    flat_ref = torch.cat([p.grad.reshape(-1) for p in reference.online.parameters()])
    torch.testing.assert_close(calls[0], flat_ref, rtol=0, atol=0)


def test_a_reducer_that_zeroes_leaves_the_parameters_unchanged() -> None:
    learner = make_learner(grad_reducer=lambda flat: flat.zero_())
    before = learner.flat_params()
    learner.step(random_sequence_batch(learner.cfg, seed=7), ones())
    np.testing.assert_array_equal(learner.flat_params(), before)


def test_adam_applies_what_the_reducer_wrote() -> None:
    """First Adam step with gradient g everywhere: Δθ = -lr g / (|g| + eps).

    With g = 0.01, lr = 0.1, eps = 1e-3: Δθ = -0.1 * 0.01 / 0.011 = -0.0909...
    (torch's default eps = 1e-8 would give -0.1).
    """
    learner = make_learner(tiny_config(learning_rate=0.1),
                           grad_reducer=lambda flat: flat.fill_(0.01))
    before = learner.flat_params()
    learner.step(random_sequence_batch(learner.cfg, seed=8), ones())
    delta = learner.flat_params() - before
    np.testing.assert_allclose(delta, -0.1 * 0.01 / (0.01 + 1e-3), rtol=1e-4)


def test_gradients_are_clipped_to_max_grad_norm_after_the_reducer() -> None:
    learner = make_learner(tiny_config(max_grad_norm=1.0),
                           grad_reducer=lambda flat: flat.fill_(3.0))
    result = learner.step(random_sequence_batch(learner.cfg, seed=9), ones())
    num = learner.num_params
    assert result.metrics["grad_norm"] == pytest.approx(3.0 * math.sqrt(num), rel=1e-5)
    grads = torch.cat([p.grad.reshape(-1) for p in learner.online.parameters()])
    torch.testing.assert_close(grads, torch.full_like(grads, 1.0 / math.sqrt(num)),
                               rtol=1e-5, atol=0)


def test_no_clipping_when_max_grad_norm_is_zero() -> None:
    learner = make_learner(tiny_config(max_grad_norm=0.0),
                           grad_reducer=lambda flat: flat.fill_(3.0))
    learner.step(random_sequence_batch(learner.cfg, seed=9), ones())
    grads = torch.cat([p.grad.reshape(-1) for p in learner.online.parameters()])
    assert torch.all(grads == 3.0)


# --------------------------------------------------------------------------- #
# Parameter publication and checkpoint state.

def test_flat_params_round_trip() -> None:
    source = make_learner(seed=1)
    dest = make_learner(seed=2)
    flat = source.flat_params()
    assert flat.dtype == np.float32 and flat.shape == (source.num_params,)
    assert not np.array_equal(dest.flat_params(), flat)
    target_before = params_of(dest.target)
    dest.load_flat_params(flat, version=17)
    np.testing.assert_array_equal(dest.flat_params(), flat)
    assert same(params_of(dest.online), params_of(source.online))
    assert same(params_of(dest.target), target_before)  # untouched by default
    assert dest.params_version == 17
    dest.load_flat_params(flat + 1.0, update_target=True)
    np.testing.assert_array_equal(dest.flat_params(), flat + 1.0)
    assert same(params_of(dest.target), params_of(dest.online))
    assert dest.params_version == 17
    with pytest.raises(ValueError, match="shape"):
        dest.load_flat_params(flat[:-1])


def _walk(node: object, path: str = "") -> List[str]:
    """Paths of entries that are neither numpy arrays nor Python scalars."""
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _walk(v, f"{path}/{k}")]
    return [] if isinstance(node, (np.ndarray, int, float)) else [path]


def test_state_round_trip_gives_bit_identical_steps() -> None:
    cfg = tiny_config(target_update_period=3, learning_rate=1e-2)
    batch_a = random_sequence_batch(cfg, seed=10)
    batch_b = random_sequence_batch(cfg, seed=11)
    original = make_learner(cfg, seed=0)
    original.step(batch_a, ones())
    original.step(batch_a, ones())
    state = original.state()
    assert _walk(state) == []
    assert set(state["optimizer"]["exp_avg"]) == set(state["online"])

    restored = make_learner(cfg, seed=99)
    restored.load_state(state)
    assert restored.step_count == 2 and restored.params_version == 2
    # Steps 3 (a target update) and 4 on another batch: identical to the bit.
    for _ in range(2):
        r1 = original.step(batch_b, ones())
        r2 = restored.step(batch_b, ones())
        np.testing.assert_array_equal(r1.priorities, r2.priorities)
        assert r1.loss == r2.loss
    np.testing.assert_array_equal(original.flat_params(), restored.flat_params())
    assert same(params_of(original.target), params_of(restored.target))


def test_state_round_trip_before_any_step_and_rng_restore() -> None:
    cfg = tiny_config()
    fresh = make_learner(cfg, seed=3)
    state = fresh.state()
    assert state["optimizer"]["step"] == {}
    expected_draw = torch.rand(3)  # the draw that follows the saved RNG state
    other = make_learner(cfg, seed=4)
    other.load_state(state)
    assert torch.equal(torch.rand(3), expected_draw)
    np.testing.assert_array_equal(other.flat_params(), fresh.flat_params())
    batch = random_sequence_batch(cfg, seed=12)
    np.testing.assert_array_equal(fresh.step(batch, ones()).priorities,
                                  other.step(batch, ones()).priorities)
    np.testing.assert_array_equal(other.flat_params(), fresh.flat_params())


def test_load_state_names_every_problem() -> None:
    learner = make_learner()
    state = learner.state()
    name = next(iter(state["online"]))
    del state["target"][name]
    state["online"][name] = np.zeros((1, 1), dtype=np.float32)
    with pytest.raises(ValueError) as info:
        learner.load_state(state)
    assert f"target/{name}: missing" in str(info.value)
    assert f"online/{name}: shape (1, 1)" in str(info.value)
    with pytest.raises(ValueError, match="step_count"):
        learner.load_state({k: v for k, v in learner.state().items() if k != "step_count"})


# --------------------------------------------------------------------------- #
# ΔQ, the recurrent-state staleness diagnostic.

def test_q_value_discrepancy_hand_computed() -> None:
    # T = 3, B = 2, A = 2. Column 0: all valid. Column 1: only t = 0, 1 valid.
    q_hat = torch.tensor([[[1.0, 2.0], [0.0, -4.0]],
                          [[3.0, 0.0], [1.0, 1.0]],
                          [[0.0, 0.0], [9.0, 9.0]]])
    q_true = torch.tensor([[[1.0, 2.0], [3.0, 0.0]],
                           [[0.0, 4.0], [1.0, 1.0]],
                           [[3.0, 4.0], [0.0, 0.0]]])
    valid = torch.tensor([[True, True], [True, True], [True, False]])
    # max over valid (t, a) of q_hat: column 0 -> 3, column 1 -> 1 (t = 2 is padding).
    first = q_value_discrepancy(q_hat, q_true, valid, "first")
    # column 0, t = 0: ‖(0, 0)‖ = 0; column 1, t = 0: ‖(-3, -4)‖ = 5 -> 5 / 1.
    torch.testing.assert_close(first, torch.tensor([0.0, 5.0]))
    last = q_value_discrepancy(q_hat, q_true, valid, "last")
    # column 0, t = 2: ‖(-3, -4)‖ / 3; column 1, t = 1: 0.
    torch.testing.assert_close(last, torch.tensor([5.0 / 3.0, 0.0]))


def test_q_value_discrepancy_nan_without_valid_steps_and_bad_position() -> None:
    q = torch.zeros(2, 1, 3)
    out = q_value_discrepancy(q, q + 1, torch.zeros(2, 1, dtype=torch.bool))
    assert torch.isnan(out).all()
    with pytest.raises(ValueError, match="position"):
        q_value_discrepancy(q, q, torch.ones(2, 1, dtype=torch.bool), "middle")


@pytest.mark.parametrize("position", ["first", "last"])
def test_q_staleness_is_zero_when_stored_state_is_the_zero_start(position: str) -> None:
    learner = make_learner()
    batch = random_sequence_batch(learner.cfg, seed=13)
    zeroed = batch._replace(state_h=np.zeros_like(batch.state_h),
                            state_c=np.zeros_like(batch.state_c))
    assert learner.q_staleness(zeroed, position) == 0.0
    # Episodes starting at t = 0 reset both unrolls: stored states do not matter.
    starts = batch._replace(first=np.vstack([np.ones_like(batch.first[:1]), batch.first[1:]]))
    assert learner.q_staleness(starts, position) == 0.0
    assert learner.q_staleness(batch, position) > 0.0


def test_q_staleness_grows_with_the_stored_state_error() -> None:
    learner = make_learner()
    small = random_sequence_batch(learner.cfg, seed=14, state_scale=0.05)
    large = random_sequence_batch(learner.cfg, seed=14, state_scale=2.0)
    assert 0.0 < learner.q_staleness(small) < learner.q_staleness(large)

"""Tests for r2d2_hpc.agent.learner: the step, target schedule, reducer, state and ΔQ."""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, List, Optional

import numpy as np
import pytest
import torch

from r2d2_hpc.agent import losses
from r2d2_hpc.agent.device import device_errors, resolve_device
from r2d2_hpc.agent.learner import (
    METRIC_KEYS,
    Learner,
    LearnerState,
    mixed_precision_forward,
    q_value_discrepancy,
)
from r2d2_hpc.config import Config, ConfigError
from tests.helpers.fakes import (
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


@pytest.mark.parametrize("eta", [0.9, 0.25, 0.0])
def test_priorities_follow_the_eta_mix_of_the_trace_errors(eta: float) -> None:
    """Priorities equal eta max|δ| + (1 - eta) mean|δ|, with the configured eta
    (non-default values too: a learner that ignored ``replay.priority_eta`` and
    used the paper's 0.9 would fail at 0.25 and 0)."""
    base = tiny_config()
    cfg = dataclasses.replace(base, replay=dataclasses.replace(base.replay, priority_eta=eta))
    learner = make_learner(cfg)
    batch = random_sequence_batch(cfg, seed=3)
    tb = learner.batch_to_device(batch)
    with torch.no_grad():
        out = losses.sequence_loss(learner.online, learner.target, tb, torch.ones(5),
                                   burn_in=cfg.replay.burn_in, n=cfg.learner.n_step,
                                   gamma=cfg.learner.discount,
                                   eps=cfg.learner.value_rescaling_epsilon)
    abs_td, valid = out.abs_td_error.numpy(), out.valid.numpy()
    expected = [eta * abs_td[valid[:, b], b].max() + (1 - eta) * abs_td[valid[:, b], b].mean()
                for b in range(5)]
    result = learner.step(batch, ones())
    np.testing.assert_allclose(result.priorities, expected, rtol=1e-6)
    if eta != 0.9:  # distinguishable from the default mix on this batch
        default = [0.9 * abs_td[valid[:, b], b].max() + 0.1 * abs_td[valid[:, b], b].mean()
                   for b in range(5)]
        assert not np.allclose(result.priorities, default, rtol=1e-3)


def host_batch(learner: Learner, batch) -> tuple:
    """``batch`` copied into ``learner.host_array`` buffers (as the batch assembly does)."""
    out = []
    for value in batch:
        buf = learner.host_array(value.shape, value.dtype)
        buf[...] = value
        out.append(buf)
    return type(batch)(*out)


def test_a_cpu_learner_uses_the_host_batch_without_copying() -> None:
    learner = make_learner()
    batch = host_batch(learner, random_sequence_batch(learner.cfg, seed=5))
    tb = learner.batch_to_device(batch)
    for host, tensor in zip(batch, tb):
        assert np.shares_memory(host, tensor.numpy())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_cuda_learner_copies_a_pinned_batch_straight_to_the_device() -> None:
    torch.manual_seed(0)
    learner = Learner(tiny_config(), OBS_SHAPE, NUM_ACTIONS, device="cuda")
    plain = random_sequence_batch(learner.cfg, seed=5)
    batch = host_batch(learner, plain)
    assert all(torch.from_numpy(a).is_pinned() for a in batch)
    tb = learner.batch_to_device(batch)
    assert learner._pinned == {}  # no staging copy
    for host, tensor in zip(plain, tb):
        np.testing.assert_array_equal(tensor.cpu().numpy(), host)
    learner.batch_to_device(plain)
    assert set(learner._pinned) == set(type(plain)._fields)  # others are staged


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
    """Paths of entries that are neither numpy arrays nor Python scalars (None fields of a
    LearnerState are absent)."""
    if isinstance(node, LearnerState):
        node = {k: v for k, v in node._asdict().items() if v is not None}
    if isinstance(node, dict):
        return [p for k, v in node.items() for p in _walk(v, f"{path}/{k}")]
    return [] if isinstance(node, (np.ndarray, int, float)) else [path]


@pytest.mark.parametrize("core", ["lstm", "gtrxl"])
def test_state_round_trip_gives_bit_identical_steps(core: str) -> None:
    cfg = tiny_config(target_update_period=3, learning_rate=1e-2)
    cfg = cfg.replace(network=dataclasses.replace(cfg.network, core=core, gtrxl_dim=8,
                                                  gtrxl_heads=2, gtrxl_memory_length=3))
    width = cfg.network.stored_state_size
    batch_a = random_sequence_batch(cfg, seed=10, state_size=width)
    batch_b = random_sequence_batch(cfg, seed=11, state_size=width)
    original = make_learner(cfg, seed=0)
    original.step(batch_a, ones())
    original.step(batch_a, ones())
    state = original.state()
    assert _walk(state) == []
    assert set(state.optimizer["exp_avg"]) == set(state.online)

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
    assert state.optimizer["step"] == {}
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
    name = next(iter(state.online))
    del state.target[name]
    state.online[name] = np.zeros((1, 1), dtype=np.float32)
    with pytest.raises(ValueError) as info:
        learner.load_state(state)
    assert f"target/{name}: missing" in str(info.value)
    assert f"online/{name}: shape (1, 1)" in str(info.value)
    with pytest.raises(TypeError, match="LearnerState"):  # the record, not a dict
        learner.load_state(learner.state()._asdict())


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


# --------------------------------------------------------------------------- #
# Mixed precision (learner.mixed_precision).

def dtypes_seen(net: torch.nn.Module, forward: Callable[[], object]) -> dict:
    """Output dtypes of the torso, the LSTM and the head's last layer during ``forward``."""
    seen: dict = {}

    def hook(name: str):
        def record(_module, _inputs, output):
            seen[name] = (output[0] if isinstance(output, tuple) else output).dtype
        return record

    handles = [net.torso.register_forward_hook(hook("torso")),
               net.lstm.register_forward_hook(hook("lstm")),
               net.advantage_head.register_forward_hook(hook("head"))]
    try:
        forward()
    finally:
        for h in handles:
            h.remove()
    return seen


@pytest.mark.parametrize("dtype, expected", [
    (None, {"torso": torch.float32, "lstm": torch.float32, "head": torch.float32}),
    # bf16: torso and head under autocast, the recurrent core in float32
    (torch.bfloat16, {"torso": torch.bfloat16, "lstm": torch.float32,
                      "head": torch.bfloat16}),
])
def test_mixed_precision_forward_casts_torso_and_head_not_the_core(dtype, expected) -> None:
    learner = make_learner()
    tb = learner.batch_to_device(random_sequence_batch(learner.cfg, seed=20))
    state = (tb.state_h, tb.state_c)
    out: list = []
    seen = dtypes_seen(learner.online, lambda: out.append(mixed_precision_forward(
        learner.online, dtype, tb.obs, tb.prev_action, tb.prev_reward, tb.first.bool(),
        state)))
    assert seen == expected
    q, (h, c) = out[0]
    assert q.dtype == h.dtype == c.dtype == torch.float32  # the loss math is float32
    reference, (h_ref, c_ref) = learner.online(tb.obs, tb.prev_action, tb.prev_reward,
                                               tb.first.bool(), state)
    if dtype is None:  # the same computation as R2D2Network.forward, to the bit
        assert torch.equal(q, reference) and torch.equal(h, h_ref) and torch.equal(c, c_ref)
    else:  # bfloat16 keeps ~3 significant digits
        assert not torch.equal(q, reference)
        torch.testing.assert_close(q, reference, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("res_link", [False, True])
def test_mixed_precision_forward_is_the_networks_own_forward(res_link: bool) -> None:
    """No second composition: float32 is net(...) to the bit; bf16 is net(...,
    core_float32=True) under the autocast to the bit, and close to float32."""
    cfg = tiny_config()
    cfg = cfg.replace(network=dataclasses.replace(cfg.network, res_link=res_link,
                                                  mlp_hidden=(16,)))  # 16 != 8: res_proj
    learner = make_learner(cfg)
    tb = learner.batch_to_device(random_sequence_batch(cfg, seed=21))
    args = (tb.obs, tb.prev_action, tb.prev_reward, tb.first.bool(), (tb.state_h, tb.state_c))
    q_ref, (h_ref, c_ref) = learner.online(*args)
    q, (h, c) = mixed_precision_forward(learner.online, None, *args)
    assert torch.equal(q, q_ref) and torch.equal(h, h_ref) and torch.equal(c, c_ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q_net, (h_net, c_net) = learner.online(*args, core_float32=True)
    q_bf16, (h_bf16, c_bf16) = mixed_precision_forward(learner.online, torch.bfloat16, *args)
    assert torch.equal(q_bf16, q_net.float())
    assert torch.equal(h_bf16, h_net) and torch.equal(c_bf16, c_net)  # the core's float32
    assert not torch.equal(q_bf16, q_ref)
    torch.testing.assert_close(q_bf16, q_ref, rtol=3e-2, atol=3e-2)


def test_bf16_steps_stay_close_to_float32_and_keep_float32_parameters() -> None:
    grads: dict = {"none": [], "bf16": []}
    learners = {}
    for mode in grads:
        learners[mode] = make_learner(tiny_config(mixed_precision=mode, learning_rate=1e-3),
                                      grad_reducer=lambda f, m=mode: grads[m].append(f.clone()))
    assert learners["bf16"].scaler is None and learners["bf16"].mixed_precision == "bf16"
    start = learners["none"].flat_params()
    np.testing.assert_array_equal(learners["bf16"].flat_params(), start)  # same seed
    batch = random_sequence_batch(learners["none"].cfg, seed=22)
    for _ in range(4):
        fp32 = learners["none"].step(batch, ones())
        bf16 = learners["bf16"].step(batch, ones())
        assert math.isfinite(bf16.loss)
        assert bf16.priorities.dtype == np.float64 and np.all(np.isfinite(bf16.priorities))
        assert bf16.loss != fp32.loss  # the autocast did run
        assert bf16.loss == pytest.approx(fp32.loss, rel=1e-2)
        np.testing.assert_allclose(bf16.priorities, fp32.priorities,
                                   rtol=2e-2, atol=2e-2 * fp32.priorities.max())
        g32, g16 = grads["none"][-1], grads["bf16"][-1]
        assert g16.dtype == torch.float32
        assert float((g16 - g32).norm() / g32.norm()) < 3e-2
        assert bf16.metrics["loss_scale"] == 1.0 and bf16.metrics["skipped_step"] == 0.0
    for net in (learners["bf16"].online, learners["bf16"].target):
        assert all(p.dtype == torch.float32 for p in net.parameters())
    for st in learners["bf16"].optimizer.state.values():
        assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.float32
    # Both moved the parameters the same way.
    d32 = learners["none"].flat_params() - start
    d16 = learners["bf16"].flat_params() - start
    cosine = float(np.dot(d32, d16) / (np.linalg.norm(d32) * np.linalg.norm(d16)))
    assert cosine > 0.95, cosine


def test_bf16_state_round_trip_gives_bit_identical_steps() -> None:
    cfg = tiny_config(mixed_precision="bf16", learning_rate=1e-2)
    batch = random_sequence_batch(cfg, seed=23)
    original = make_learner(cfg, seed=0)
    original.step(batch, ones())
    state = original.state()
    assert state.grad_scaler is None  # only fp16 has a scaler
    restored = make_learner(cfg, seed=5)
    restored.load_state(state)
    for _ in range(2):
        r1, r2 = original.step(batch, ones()), restored.step(batch, ones())
        assert r1.loss == r2.loss
        np.testing.assert_array_equal(r1.priorities, r2.priorities)
    np.testing.assert_array_equal(original.flat_params(), restored.flat_params())


def with_cpu_scaler(learner: Learner, scale: float = 2.0 ** 10) -> Learner:
    """The fp16 scaler path on the CPU: the same step code, a CPU GradScaler."""
    learner.scaler = torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=2)
    return learner


def test_loss_scaling_by_a_power_of_two_changes_no_bit() -> None:
    """(S·L)' / S = L' exactly for S = 2^k: the scaler path equals the plain step."""
    seen: dict = {"plain": [], "scaled": []}
    plain = make_learner(grad_reducer=lambda f: seen["plain"].append(f.clone()))
    scaled = with_cpu_scaler(make_learner(grad_reducer=lambda f: seen["scaled"].append(
        f.clone())))
    batch = random_sequence_batch(plain.cfg, seed=24)
    scales = []
    for _ in range(3):
        r_plain, r_scaled = plain.step(batch, ones()), scaled.step(batch, ones())
        assert r_scaled.loss == r_plain.loss  # the returned loss is unscaled
        np.testing.assert_array_equal(r_scaled.priorities, r_plain.priorities)
        assert r_scaled.metrics["grad_norm"] == r_plain.metrics["grad_norm"]
        assert r_scaled.metrics["skipped_step"] == 0.0
        scales.append(r_scaled.metrics["loss_scale"])
    assert scales == [1024.0, 1024.0, 2048.0]  # growth_interval=2: doubled after 2 steps
    # The reducer (the allreduce) sees the scaled gradient.
    for s_grad, p_grad, scale in zip(seen["scaled"], seen["plain"], scales):
        assert torch.equal(s_grad, p_grad * scale)
    np.testing.assert_array_equal(scaled.flat_params(), plain.flat_params())


def test_an_inf_gradient_skips_the_step_and_halves_the_scale() -> None:
    poison = {"on": True}

    def reducer(flat: torch.Tensor) -> None:
        if poison["on"]:
            flat[0] = float("inf")  # as if one learner's fp16 backward overflowed

    learner = with_cpu_scaler(make_learner(grad_reducer=reducer), scale=2.0 ** 12)
    before = learner.flat_params()
    batch = random_sequence_batch(learner.cfg, seed=25)
    result = learner.step(batch, ones())
    assert result.metrics["skipped_step"] == 1.0 and result.metrics["loss_scale"] == 4096.0
    assert math.isfinite(result.loss) and np.all(np.isfinite(result.priorities))
    np.testing.assert_array_equal(learner.flat_params(), before)  # no Adam step
    assert not learner.optimizer.state  # Adam's state untouched (no step yet)
    assert learner.scaler.get_scale() == 2048.0
    assert learner.step_count == 1  # the step still counts for the target schedule
    poison["on"] = False
    result = learner.step(batch, ones())
    assert result.metrics["skipped_step"] == 0.0 and result.metrics["loss_scale"] == 2048.0
    assert not np.array_equal(learner.flat_params(), before)


def test_scaler_state_round_trip_through_a_checkpoint_file(tmp_path) -> None:
    import h5py

    from r2d2_hpc.storage.h5tree import read_tree, record_tree, tree_record, write_tree

    cfg = tiny_config(learning_rate=1e-2)
    batch = random_sequence_batch(cfg, seed=26)
    original = with_cpu_scaler(make_learner(cfg, seed=0), scale=2.0 ** 8)
    original.step(batch, ones())  # growth tracker 1, scale 256
    saved = original.state()
    assert _walk(saved) == []
    assert saved.grad_scaler == {"scale": 256.0, "growth_factor": 2.0,
                                 "backoff_factor": 0.5, "growth_interval": 2,
                                 "_growth_tracker": 1}
    with h5py.File(tmp_path / "learner.h5", "w") as f:
        write_tree(f, record_tree(saved))
    with h5py.File(tmp_path / "learner.h5", "r") as f:
        state = tree_record(LearnerState, read_tree(f))
    assert state.grad_scaler == saved.grad_scaler
    restored = with_cpu_scaler(make_learner(cfg, seed=7), scale=2.0 ** 20)
    restored.load_state(state)
    assert restored.scaler.get_scale() == 256.0
    for expected_scale in (256.0, 512.0):  # the tracker carried over: grows after 1 step
        r1, r2 = original.step(batch, ones()), restored.step(batch, ones())
        assert r1.metrics["loss_scale"] == r2.metrics["loss_scale"] == expected_scale
        np.testing.assert_array_equal(r1.priorities, r2.priorities)
    assert original.scaler.state_dict() == restored.scaler.state_dict()
    np.testing.assert_array_equal(original.flat_params(), restored.flat_params())
    # A learner without a scaler (mixed_precision changed on resume) ignores it.
    plain = make_learner(cfg, seed=8)
    plain.load_state(state)
    assert plain.scaler is None and plain.step_count == 1


def test_fp16_on_the_cpu_is_a_config_error_naming_the_field_and_the_fix() -> None:
    with pytest.raises(ConfigError) as info:
        make_learner(tiny_config(mixed_precision="fp16"))
    (message,) = info.value.errors
    assert message.startswith("learner.mixed_precision: 'fp16' needs a CUDA learner")
    assert "learner.mixed_precision=bf16" in message and "learner.device=cuda" in message


def fake_cuda(monkeypatch: pytest.MonkeyPatch, count: int, bf16: bool = True) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Fake V100")


@pytest.mark.parametrize("gpus, bf16, device, mode, needle", [
    (0, True, "cpu", "none", None),
    (0, True, "auto", "bf16", None),
    (0, True, "cpu", "fp16", "learner.mixed_precision: 'fp16' needs a CUDA learner"),
    (0, True, "auto", "fp16", "learner.mixed_precision: 'fp16' needs a CUDA learner"),
    (0, True, "cuda", "none", "learner.device: 'cuda' needs CUDA"),
    (0, True, "cuda:1", "bf16", "learner.device: 'cuda:1' needs CUDA"),
    (2, True, "cuda:1", "fp16", None),
    (2, True, "auto", "fp16", None),
    (2, True, "cuda:2", "none", "only 2 CUDA device(s)"),
    (2, False, "cuda", "bf16", "'bf16' is not supported by Fake V100"),
    (2, False, "cuda", "fp16", None),
    (0, True, "cpu", "fp8", "learner.mixed_precision: unknown value 'fp8'"),
])
def test_device_errors_table(monkeypatch: pytest.MonkeyPatch, gpus: int, bf16: bool,
                             device: str, mode: str, needle: Optional[str]) -> None:
    fake_cuda(monkeypatch, gpus, bf16)
    errors = device_errors(device, mode)
    if needle is None:
        assert errors == []
    else:
        assert len(errors) == 1 and needle in errors[0], errors


def test_no_cuda_message_says_how_to_run_on_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cuda(monkeypatch, 0)
    (message,) = device_errors("cuda")
    assert "learner.device=cpu" in message and "--device cpu" in message
    with pytest.raises(ConfigError, match="needs CUDA"):
        resolve_device("cuda")


@pytest.mark.parametrize("spec,local,count,expected", [
    ("auto", 0, 2, "cuda:0"), ("auto", 3, 2, "cuda:1"), ("cuda", 2, 4, "cuda:2"),
    ("cuda", 5, 1, "cuda:0"), ("cuda:1", 0, 4, "cuda:1"), ("cpu", 1, 4, "cpu"),
    ("auto", 1, 0, "auto"), ("cuda", 1, 0, "cuda"),
])
def test_spread_device_round_robin_over_a_nodes_gpus(spec, local, count, expected):
    from r2d2_hpc.agent.device import spread_device

    assert spread_device(spec, local, count) == expected

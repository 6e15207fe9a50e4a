"""Run configuration: frozen dataclasses grouped by concern.

Defaults are the R2D2 paper's values (Kapturowski et al., ICLR 2019, Table 2
and Section 2/3) unless a field's docstring says otherwise; those that are
our own choice say "ours".

A configuration is data: it is built from the defaults, a YAML file and
``--set section.field=value`` overrides (:func:`load_config`), checked by
:meth:`Config.validate`, which returns *every* error at once, each naming the
field and the fix, and written into each run directory
(:func:`save_config`). Only rank 0 reads files; the MPI entry point
broadcasts the plain-dict form (:meth:`Config.to_dict`).
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import yaml

#: Environments this package knows (``env.name``).
KNOWN_ENVS = ("cartpole_masked", "cartpole", "counter", "atari")

#: Values of ``learner.loss_reduction`` (``losses.sequence_loss``'s ``reduction``).
LOSS_REDUCTIONS = ("sum", "mean")
#: Network torsos (``network.torso``).
TORSOS = ("auto", "atari", "universe", "mlp")
#: Recurrent cores (``network.core``).
CORES = ("lstm", "feedforward", "gtrxl")
#: Values of ``network.gtrxl_start_state``: R2D2's stored-state and zero-state strategies.
GTRXL_START_STATES = ("stored", "zero")
#: Values of ``learner.mixed_precision``.
MIXED_PRECISION = ("none", "bf16", "fp16")
#: Values of ``actor.inference_precision`` (``agent.device.resolve_inference_precision``).
INFERENCE_PRECISIONS = ("auto", "float32", "bf16")

#: Values of ``learner.allreduce`` (``r2d2_hpc.comm.allreduce`` implements them).
ALLREDUCE_CHOICES = ("auto", "horovod", "torch", "mpi")


class ConfigError(ValueError):
    """One or more configuration errors; ``errors`` lists each one."""

    def __init__(self, errors: Sequence[str], source: str = "") -> None:
        self.errors = list(errors)
        where = f" in {source}" if source else ""
        lines = [f"invalid configuration{where} ({len(self.errors)} error(s)):"]
        lines += [f"  - {e}" for e in self.errors]
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class EnvConfig:
    name: str = "atari"
    """Environment family: cartpole_masked | cartpole | counter | atari (ours)."""
    game: str = "Pong"
    """Atari game name as in ale-py, e.g. Pong, MsPacman (Atari-57 benchmark)."""
    frame_stack: int = 4
    """Frames stacked per observation (paper final version: 4-frame stacks, as Ape-X)."""
    frame_skip: int = 4
    """Agent steps repeat the action this many frames, max-pooling the last two (DQN protocol)."""
    screen_size: int = 84
    """Grayscale frames are resized to screen_size x screen_size (DQN protocol: 84)."""
    noop_max: int = 30
    """Up to this many no-op actions at episode start (DQN/Ape-X/R2D2 protocol: 30)."""
    max_episode_frames: int = 108_000
    """Episode cap in emulator frames (R2D2 protocol: 108,000 = 30 minutes)."""
    full_action_space: bool = True
    """Use the full 18-action set (R2D2 paper, as Ape-X)."""
    terminal_on_life_loss: bool = False
    """Treat a lost life as episode end (R2D2 paper: no life-loss terminal)."""
    clip_rewards: bool = False
    """Clip rewards to [-1, 1] (R2D2 paper: no clipping; value rescaling handles scale)."""
    sticky_action_prob: float = 0.0
    """Probability of repeating the previous action (R2D2 paper: no sticky actions)."""
    max_episode_steps: int = 500
    """Episode cap in agent steps for the non-Atari environments (CartPole-v1: 500)."""


@dataclass(frozen=True)
class NetworkConfig:
    torso: str = "auto"
    """atari (Nature DQN convs -> 512; the paper's) | universe (ours: 4 x conv 32 3x3/2, the
    universe-starter-agent's small-screen torso, which keeps a 3x3 grid at 42x42 where the
    Nature convs end at 1x1) | mlp | auto (atari for image observations, else mlp)."""
    mlp_hidden: Tuple[int, ...] = (256, 256)
    """MLP torso layer widths for vector observations (ours)."""
    core: str = "lstm"
    """lstm (R2D2) | feedforward (same width, no recurrence; the paper's LSTM ablation) |
    gtrxl (Gated Transformer-XL, Parisotto et al., 2019; ours in R2D2, as DI-engine offers)."""
    lstm_size: int = 512
    """LSTM units (paper: 512); also the width of the feedforward core."""
    gtrxl_layers: int = 2
    """Transformer layers of the gtrxl core (ours; Parisotto et al. 2019 on DMLab-30: 12)."""
    gtrxl_heads: int = 4
    """Attention heads per gtrxl layer; must divide gtrxl_dim (ours; Parisotto et al.: 8)."""
    gtrxl_dim: int = 64
    """Width of the gtrxl embedding, memory and output (ours; Parisotto et al.: 256)."""
    gtrxl_memory_length: int = 16
    """Past steps each gtrxl layer remembers and attends to (ours; Parisotto et al.: 512)."""
    gtrxl_gate_bias: float = 2.0
    """Initial b_g of the GRU-type gates, > 0 starts each layer near the identity (Parisotto et al.: 2)."""
    gtrxl_start_state: str = "zero"
    """zero | stored: the learner starts each sequence from an empty memory rebuilt during burn-in,
    or the replay keeps the gtrxl memory at each sequence start (R2D2 section 3's two strategies).
    zero as DI-engine's ding/policy/r2d2_gtrxl.py (learn.init_memory='zero'); R2D2 stores the
    LSTM's state. Measured on masked CartPole (benchmarks/results/lstm_ablation_gtrxl/): both
    learn, zero sooner; zero has no stale state and a fraction of the bytes (docs/decisions.md)."""
    use_prev_action: bool = True
    """Feed the one-hot previous action to the core (paper, Section 2)."""
    use_prev_reward: bool = True
    """Feed the previous reward to the core (paper, Section 2)."""
    dueling: bool = True
    """Dueling value/advantage head (paper: dueling architecture, as Ape-X)."""
    head_hidden: int = 512
    """Hidden width of the (dueling) head (Ape-X/R2D2: 512)."""
    res_link: bool = False
    """DI-engine's residual link around the core (not in the paper; off by default)."""

    @property
    def core_state_size(self) -> int:
        """Width of each of the core's state tensors ``h`` and ``c`` while it runs.

        LSTM: ``lstm_size``. gtrxl: the memory (``layers x memory_length x dim``) and
        its ``memory_length`` validity flags, one flat vector split in two halves
        (``agent.gtrxl.pack_memory``): ``ceil((L*M*D + M) / 2)``.
        """
        if self.core != "gtrxl":
            return self.lstm_size
        flat = self.gtrxl_memory_length * (self.gtrxl_layers * self.gtrxl_dim + 1)
        return (flat + 1) // 2

    @property
    def stored_state_size(self) -> int:
        """Width of ``state_h``/``state_c`` in the replay: the core's, or 1 (zeros) for
        gtrxl's ``zero`` start state, where the learner starts from an empty memory."""
        if self.core == "gtrxl" and self.gtrxl_start_state == "zero":
            return 1
        return self.core_state_size


@dataclass(frozen=True)
class ActorConfig:
    num_envs: int = 32
    """Environments stepped as one vector per actor rank, one batched forward per step (ours)."""
    epsilon_base: float = 0.4
    """Ape-X epsilon_i = base^(1 + alpha * i / (N - 1)) over all envs (paper: 0.4)."""
    epsilon_alpha: float = 7.0
    """Ape-X epsilon exponent alpha (paper: 7)."""
    param_refresh_period: int = 400
    """Env steps between actor parameter refreshes (paper Table 2: 400)."""
    max_env_steps: int = 0
    """Stop the run after this many agent steps over all actors; 0 = no limit (ours)."""
    send_pool: int = 8
    """In-flight nonblocking sends per actor before it waits (backpressure; ours)."""
    inference_precision: str = "auto"
    """auto | float32 | bf16: the actors' forward under bfloat16 autocast, the recurrent state
    carried, Q-values, actions and priorities in float32 (ours: the paper's actors ran float32
    on CPUs; auto = bf16 where the CPU has native bf16 matrix instructions, else float32)."""


@dataclass(frozen=True)
class ReplayConfig:
    capacity_observations: int = 4_000_000
    """Observations held over all shards (paper Table 2: 4M observations)."""
    burn_in: int = 40
    """Burn-in steps unrolled from the stored state before the loss (paper: 40)."""
    trace_length: int = 80
    """Trace steps on which the loss is computed (paper: 80)."""
    sequence_period: int = 40
    """A new sequence starts every this many steps, so sequences overlap (paper: 40)."""
    priority_exponent: float = 0.9
    """Priority exponent alpha (paper Table 2: 0.9)."""
    importance_sampling_exponent: float = 0.6
    """Importance-sampling exponent beta (paper Table 2: 0.6)."""
    priority_eta: float = 0.9
    """eta in p = eta * max|delta| + (1 - eta) * mean|delta| (paper Table 2: 0.9)."""
    min_fill_sequences: int = 6_250
    """Sequences a shard holds before it serves samples (ours: 250k observations)."""
    samples_per_insert: float = 0.0
    """Target sampled/inserted sequences, as Reverb's SampleToInsertRatio (both sides wait); 0 = off."""
    demo_files: Tuple[str, ...] = ()
    """R2D3 (Paine et al., 2019): demonstration files (``r2d2-record``; format in
    ``r2d2_hpc.replay.demos``) loaded at start into demo tables beside the agent's replay."""
    demo_ratio: float = 0.0
    """R2D3's rho: each batch element is a demonstration with this probability (R2D3 paper:
    1/256 = 0.0039; DI-engine's r2d3 found 0.25 best on Pong); needs ``demo_files``."""

    @property
    def sequence_length(self) -> int:
        """Stored steps per sequence: burn_in + trace_length (paper: 120)."""
        return self.burn_in + self.trace_length

    @property
    def capacity_sequences(self) -> int:
        """Sequence slots over all shards: one per period of stored observations."""
        return max(1, self.capacity_observations // max(1, self.sequence_period))


@dataclass(frozen=True)
class LearnerConfig:
    batch_size: int = 64
    """Sequences per learner step (paper Table 2: 64)."""
    learning_rate: float = 1e-4
    """Adam learning rate (paper Table 2: 1e-4)."""
    adam_epsilon: float = 1e-3
    """Adam epsilon (paper Table 2: 1e-3; not the 1e-8 default)."""
    discount: float = 0.997
    """Discount gamma (paper Table 2: 0.997)."""
    n_step: int = 5
    """n of the n-step double-Q target (paper Table 2: 5)."""
    value_rescaling_epsilon: float = 1e-3
    """epsilon of h(x) = sign(x)(sqrt(|x|+1) - 1) + eps x (paper: 1e-3, not DI-engine's 1e-2)."""
    target_update_period: int = 2_500
    """Learner steps between hard target-network updates (paper Table 2: 2500)."""
    max_grad_norm: float = 0.0
    """Clip gradients to this global norm; 0 = no clipping. The R2D2 paper names none and
    defers unstated settings to Ape-X, which clips at 40 (Horgan et al., 2018, appendix;
    SEED RL ``agents/r2d2/learner.py`` flag ``clip_norm`` = 40); configs/atari57.yaml sets 40."""
    target_return: Optional[float] = None
    """Stop the run once a greedy evaluation's mean return reaches this (needs
    ``logging.eval_interval_steps``); null = never (ours; time-to-solve benchmarks)."""
    loss_reduction: str = "sum"
    """sum | mean: a sequence's squared TD errors summed over its valid trace steps, then the
    IS-weighted mean over the batch, as Acme (``agents/jax/r2d2/learning.py``) and SEED RL
    (``agents/r2d2/learner.py``) do; ``mean`` divides each sequence by its valid steps (ours, earlier)."""
    publish_period: int = 10
    """Learner steps between parameter publications to actors (ours)."""
    samples_in_flight: int = 2
    """Sample requests kept in flight so the learner never waits while data exists (ours)."""
    max_steps: int = 0
    """Stop the run after this many learner steps; 0 = no limit (ours)."""
    max_seconds: float = 0.0
    """Stop the run after this many seconds of training; 0 = no limit (ours)."""
    staleness_period: int = 100
    """Learner steps between recurrent-state staleness (delta Q) measurements (ours)."""
    device: str = "auto"
    """auto | cpu | cuda | cuda:N: where the learner runs (actors always use the CPU)."""
    allreduce: str = "auto"
    """Gradient averaging with several learners: auto | horovod | torch | mpi."""
    mixed_precision: str = "none"
    """none | bf16 (bfloat16 autocast; CPU or GPU) | fp16 (float16 autocast + GradScaler; CUDA) (ours)."""


@dataclass(frozen=True)
class CheckpointConfig:
    interval_seconds: float = 1_800.0
    """Seconds between periodic checkpoints; 0 = off (ours)."""
    interval_steps: int = 0
    """Learner steps between periodic checkpoints; 0 = off (ours)."""
    keep: int = 3
    """Complete checkpoints kept; older ones are deleted (ours)."""
    on_signal: bool = True
    """Write one coordinated checkpoint on SIGUSR1/SIGTERM, then exit 3 (ours)."""
    at_end: bool = True
    """Write a checkpoint when the run's budget is spent (for r2d2-eval and resume; ours)."""


@dataclass(frozen=True)
class TopologyConfig:
    learners: int = 1
    """Learner ranks; gradients are averaged across them (ours)."""
    replay_shards: int = 1
    """Replay shard ranks; every other rank is an actor (ours)."""
    heartbeat_timeout_seconds: float = 120.0
    """A rank silent this long (stopped, or its loop stuck outside a long phase such as a
    checkpoint, a replay restore or an evaluation) ends the job with a message naming it;
    0 = off (ours)."""

    @property
    def min_ranks(self) -> int:
        """Fewest MPI ranks a job needs: learners + shards + one actor."""
        return self.learners + self.replay_shards + 1


@dataclass(frozen=True)
class LoggingConfig:
    run_dir: str = ""
    """Run directory; empty = a new directory under runs/ named from env and time (ours)."""
    log_interval_seconds: float = 10.0
    """Seconds between metric rows and plain log lines (ours)."""
    tensorboard: bool = True
    """Write TensorBoard events when tensorboard is installed (ours)."""
    eval_interval_steps: int = 0
    """Learner steps between greedy evaluations; 0 = off (ours)."""
    eval_episodes: int = 10
    """Episodes per greedy evaluation (ours)."""
    eval_epsilon: float = 0.001
    """Epsilon of the evaluation policy (R2D2/Ape-X evaluation protocol: 0.001)."""
    final_eval_episodes: int = 0
    """Episodes of a greedy evaluation at the end of the run; 0 = none (ours; Atari: minutes)."""
    wandb: bool = False
    """Also log metrics and the config to Weights & Biases from rank 0 (needs the ``wandb``
    extra; ``WANDB_MODE=offline`` writes under the run directory without a network)."""
    wandb_project: str = "r2d2_hpc"
    """W&B project."""
    wandb_entity: str = ""
    """W&B entity (team or user); empty = your default."""
    wandb_run_name: str = ""
    """W&B run name; empty = the run directory's name."""
    wandb_tags: Tuple[str, ...] = ()
    """W&B tags."""


@dataclass(frozen=True)
class Config:
    env: EnvConfig = field(default_factory=EnvConfig)
    """Environment and its preprocessing protocol."""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    """Recurrent Q-network."""
    actor: ActorConfig = field(default_factory=ActorConfig)
    """Acting and exploration."""
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    """Prioritized sequence replay and the stored sequence layout."""
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    """Loss, optimizer and learner schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints and preemption."""
    topology: TopologyConfig = field(default_factory=TopologyConfig)
    """How MPI ranks are divided into roles."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Run directory, metrics and evaluation."""
    seed: int = 0
    """Seed of every random generator of the run (ours)."""

    def to_dict(self) -> Dict[str, Any]:
        """Plain nested dict (tuples as lists), suitable for YAML and MPI bcast."""
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "") -> "Config":
        """Builds and validates a config; raises ConfigError listing every error."""
        cfg, errors = _build(cls, data, prefix="")
        # Fields that failed to build keep their defaults; validating the rest
        # still reports every range/consistency error in the same message.
        errors += cfg.validate()
        if errors:
            raise ConfigError(errors, source)
        return cfg

    def replace(self, **changes: Any) -> "Config":
        """A copy with whole sections (or the seed) replaced."""
        return dataclasses.replace(self, **changes)

    def validate(self) -> List[str]:
        """Every range and consistency error, each naming the field and the fix."""
        return _validate(self)


# --------------------------------------------------------------------------- #
# Building from plain data.

def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union and type(None) in args:
        return f"null or {_type_name(next(a for a in args if a is not type(None)))}"
    if origin in (tuple, Tuple):
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any) -> Tuple[Any, bool]:
    """Returns (converted value, ok). Strict: bools are not ints, floats not ints."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union and type(None) in args:  # Optional[X]: null or an X
        if value is None:
            return None, True
        return _coerce(value, next(a for a in args if a is not type(None)))
    if origin in (tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            return value, False
        inner = typing.get_args(tp)[0]
        out = []
        for v in value:
            c, ok = _coerce(v, inner)
            if not ok:
                return value, False
            out.append(c)
        return tuple(out), True
    if tp is bool:
        return value, isinstance(value, bool)
    if tp is int:
        if isinstance(value, bool):
            return value, False
        if isinstance(value, int):
            return value, True
        if isinstance(value, str):  # YAML 1.1 reads "4e6" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                return value, False
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value), True  # 4e6 means 4000000
        return value, False
    if tp is float:
        if isinstance(value, bool):
            return value, False
        if isinstance(value, (int, float)):
            return float(value), True
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as a string
            try:
                return float(value), True
            except ValueError:
                return value, False
        return value, False
    if tp is str:
        return value, isinstance(value, str)
    return value, False


def _build(cls: type, data: Any, prefix: str) -> Tuple[Any, List[str]]:
    errors: List[str] = []
    where = prefix.rstrip(".") or "the top level"
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        return cls(), [f"{where}: expected a mapping of fields, got {type(data).__name__}"]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: Dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else (
                f"; known fields here: {', '.join(sorted(fields))}")
            errors.append(f"{name}: unknown key{hint}")
            continue
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            sub, sub_errors = _build(tp, value, prefix=f"{name}.")
            errors += sub_errors
            kwargs[key] = sub
            continue
        converted, ok = _coerce(value, tp)
        if not ok:
            errors.append(f"{name}: expected {_type_name(tp)}, got {value!r} "
                          f"({type(value).__name__}); write a value of type {_type_name(tp)}")
            continue
        kwargs[key] = converted
    return cls(**kwargs), errors


# --------------------------------------------------------------------------- #
# Validation.

def _nearest_divisor(number: int, at_most: int) -> int:
    """The largest divisor of ``number`` (> 0) not above ``at_most``, e.g. (64, 3) -> 2."""
    return max(d for d in range(1, max(1, min(at_most, number)) + 1) if number % d == 0)


class _Checks:
    """The validation's error list and the checks every section uses."""

    def __init__(self) -> None:
        self.errors: List[str] = []

    def need(self, cond: bool, name: str, msg: str) -> None:
        if not cond:
            self.errors.append(f"{name}: {msg}")

    def positive(self, section: Any, sname: str, *names: str) -> None:
        for n in names:
            v = getattr(section, n)
            self.need(v > 0, f"{sname}.{n}", f"must be > 0, got {v}")

    def non_negative(self, section: Any, sname: str, *names: str) -> None:
        for n in names:
            v = getattr(section, n)
            self.need(v >= 0, f"{sname}.{n}", f"must be >= 0, got {v}")

    def unit(self, section: Any, sname: str, *names: str) -> None:
        for n in names:
            v = getattr(section, n)
            self.need(0.0 <= v <= 1.0, f"{sname}.{n}", f"must be in [0, 1], got {v}")

    def choice(self, section: Any, sname: str, n: str, options: Sequence[str]) -> None:
        v = getattr(section, n)
        if v not in options:
            close = difflib.get_close_matches(str(v), list(options), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            self.errors.append(f"{sname}.{n}: unknown value {v!r}; {hint}choose one of "
                               f"{', '.join(options)}")


def _check_env_network_actor(k: _Checks, cfg: Config) -> None:
    e, n, a = cfg.env, cfg.network, cfg.actor
    k.choice(e, "env", "name", KNOWN_ENVS)
    k.positive(e, "env", "frame_stack", "frame_skip", "screen_size", "max_episode_frames",
               "max_episode_steps")
    k.non_negative(e, "env", "noop_max")
    k.unit(e, "env", "sticky_action_prob")

    k.choice(n, "network", "torso", TORSOS)
    k.choice(n, "network", "core", CORES)
    k.positive(n, "network", "lstm_size", "head_hidden", "gtrxl_layers", "gtrxl_heads",
               "gtrxl_dim", "gtrxl_memory_length")
    if n.gtrxl_heads > 0 and n.gtrxl_dim % n.gtrxl_heads:
        k.errors.append(f"network.gtrxl_heads: {n.gtrxl_heads} heads do not divide "
                        f"network.gtrxl_dim {n.gtrxl_dim}; choose heads that divide the width "
                        f"(e.g. gtrxl_heads: {_nearest_divisor(n.gtrxl_dim, n.gtrxl_heads)})")
    k.choice(n, "network", "gtrxl_start_state", GTRXL_START_STATES)
    k.need(len(n.mlp_hidden) > 0 and all(w > 0 for w in n.mlp_hidden), "network.mlp_hidden",
           f"must be a non-empty list of positive widths, got {list(n.mlp_hidden)}")

    k.positive(a, "actor", "num_envs", "param_refresh_period", "send_pool")
    k.non_negative(a, "actor", "max_env_steps", "epsilon_alpha")
    k.choice(a, "actor", "inference_precision", INFERENCE_PRECISIONS)
    k.need(0.0 < a.epsilon_base <= 1.0, "actor.epsilon_base",
           f"must be in (0, 1], got {a.epsilon_base}")


def _check_replay(k: _Checks, cfg: Config) -> None:
    r, t = cfg.replay, cfg.topology
    k.positive(r, "replay", "capacity_observations", "trace_length", "sequence_period")
    k.non_negative(r, "replay", "burn_in", "min_fill_sequences", "samples_per_insert")
    k.unit(r, "replay", "priority_exponent", "importance_sampling_exponent", "priority_eta",
           "demo_ratio")
    if r.trace_length > 0 and r.sequence_period > r.trace_length:
        k.errors.append(
            f"replay.sequence_period: {r.sequence_period} > replay.trace_length "
            f"{r.trace_length} would leave steps that no trace covers; set "
            f"sequence_period <= trace_length")
    if r.capacity_observations < r.sequence_length * max(1, t.replay_shards):
        k.errors.append(
            f"replay.capacity_observations: {r.capacity_observations} cannot hold one "
            f"sequence of {r.sequence_length} steps per shard ({t.replay_shards} shard(s)); "
            f"raise it")
    if r.demo_ratio > 0 and not r.demo_files:
        k.errors.append(f"replay.demo_ratio: {r.demo_ratio:g} draws demonstrations, but "
                        f"replay.demo_files is empty; list demonstration files (r2d2-record "
                        f"writes them) or set demo_ratio: 0")
    if r.demo_files and not r.demo_ratio > 0:
        k.errors.append("replay.demo_files: given, but replay.demo_ratio is 0 so none would "
                        "be sampled; set replay.demo_ratio (R2D3 paper: 0.0039, DI-engine on "
                        "Pong: 0.25)")
    if r.min_fill_sequences > r.capacity_sequences:
        k.errors.append(
            f"replay.min_fill_sequences: {r.min_fill_sequences} exceeds the replay's "
            f"{r.capacity_sequences} sequence slots; lower it or raise "
            f"replay.capacity_observations")


def _check_learner(k: _Checks, cfg: Config) -> None:
    r, l = cfg.replay, cfg.learner
    k.positive(l, "learner", "batch_size", "learning_rate", "adam_epsilon", "n_step",
               "value_rescaling_epsilon", "target_update_period", "publish_period",
               "samples_in_flight")
    k.non_negative(l, "learner", "max_grad_norm", "max_steps", "max_seconds",
                   "staleness_period")
    k.need(0.0 < l.discount <= 1.0, "learner.discount", f"must be in (0, 1], got {l.discount}")
    if r.trace_length > 0 and l.n_step > r.trace_length:
        k.errors.append(f"learner.n_step: {l.n_step} > replay.trace_length {r.trace_length}: "
                        f"no trace step would have an n-step target; lower n_step")
    if l.batch_size > r.capacity_sequences:
        k.errors.append(f"learner.batch_size: {l.batch_size} exceeds the replay's "
                        f"{r.capacity_sequences} sequence slots; lower it")
    dev = l.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        k.errors.append(f"learner.device: unknown value {dev!r}; choose auto, cpu, cuda or "
                        f"cuda:N")
    k.choice(l, "learner", "allreduce", ALLREDUCE_CHOICES)
    k.choice(l, "learner", "mixed_precision", MIXED_PRECISION)
    k.choice(l, "learner", "loss_reduction", LOSS_REDUCTIONS)


def _check_run(k: _Checks, cfg: Config) -> None:
    c, t, g, l = cfg.checkpoint, cfg.topology, cfg.logging, cfg.learner
    k.non_negative(c, "checkpoint", "interval_seconds", "interval_steps")
    k.positive(c, "checkpoint", "keep")
    k.positive(t, "topology", "learners", "replay_shards")
    k.non_negative(t, "topology", "heartbeat_timeout_seconds")

    k.positive(g, "logging", "log_interval_seconds", "eval_episodes")
    k.non_negative(g, "logging", "eval_interval_steps", "final_eval_episodes")
    if l.target_return is not None and g.eval_interval_steps <= 0:
        k.errors.append(f"learner.target_return: {l.target_return:g} is judged by the "
                        f"periodic greedy evaluation, which is off; set "
                        f"logging.eval_interval_steps > 0 or target_return: null")
    k.unit(g, "logging", "eval_epsilon")
    k.need(cfg.seed >= 0, "seed", f"must be >= 0, got {cfg.seed}")


def _validate(cfg: Config) -> List[str]:
    """Every error in ``cfg``, section by section, in a fixed order."""
    k = _Checks()
    for check in (_check_env_network_actor, _check_replay, _check_learner, _check_run):
        check(k, cfg)
    return k.errors


# --------------------------------------------------------------------------- #
# Files and overrides.

def parse_override(text: str) -> Tuple[List[str], Any]:
    """Parses ``section.field=value`` (value in YAML syntax) into (path, value).

    Raises:
      ConfigError: if the text has no ``=`` or an empty path.
    """
    if "=" not in text:
        raise ConfigError([f"--set {text!r}: expected section.field=value, e.g. "
                           f"--set learner.batch_size=32"])
    path, raw = text.split("=", 1)
    keys = [k.strip() for k in path.strip().split(".")]
    if not keys or any(not k for k in keys):
        raise ConfigError([f"--set {text!r}: empty field name; write section.field=value"])
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def _merge(base: Dict[str, Any], path: Sequence[str], value: Any) -> None:
    node = base
    for key in path[:-1]:
        nxt = node.get(key)
        if not isinstance(nxt, dict):
            nxt = {}
            node[key] = nxt
        node = nxt
    node[path[-1]] = value


def read_yaml(path: str) -> Dict[str, Any]:
    """Reads a YAML config file into a dict; ConfigError naming the file on failure."""
    if not os.path.isfile(path):
        raise ConfigError([f"config file {path!r} does not exist; pass an existing YAML "
                           f"file to --config (see configs/ for examples)"])
    try:
        with open(path, "r", encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([f"config file {path!r} is not valid YAML: {exc}"]) from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"config file {path!r}: top level must be a mapping of sections, "
                           f"got {type(data).__name__}"])
    return data


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (),
                base: Optional[Mapping[str, Any]] = None) -> Config:
    """Defaults <- ``base`` dict <- YAML file <- ``--set`` overrides, then validate.

    Args:
      path: YAML file, or None.
      overrides: ``section.field=value`` strings, applied in order.
      base: a dict applied before the file (e.g. the embedded default preset).

    Returns:
      A validated Config.

    Raises:
      ConfigError: listing every error found (parse, unknown keys, types, ranges).
    """
    data: Dict[str, Any] = _plain(dict(base)) if base else {}
    errors: List[str] = []
    if path is not None:
        for key, value in read_yaml(path).items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
    for text in overrides:
        try:
            keys, value = parse_override(text)
        except ConfigError as exc:
            errors += exc.errors
            continue
        _merge(data, keys, value)
    cfg, build_errors = _build(Config, data, prefix="")
    errors += build_errors
    errors += cfg.validate()
    if errors:
        raise ConfigError(errors, path or "")
    return cfg


def save_config(cfg: Config, path: str) -> None:
    """Writes the effective config as YAML (temp file + os.replace)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("# Effective r2d2_hpc configuration of this run.\n")
        yaml.safe_dump(cfg.to_dict(), fh, sort_keys=False, default_flow_style=False)
    os.replace(tmp, path)


def config_diff(a: Config, b: Config) -> List[Tuple[str, Any, Any]]:
    """Fields whose values differ: (dotted name, value in a, value in b)."""
    out: List[Tuple[str, Any, Any]] = []

    def walk(x: Any, y: Any, prefix: str) -> None:
        for key in x:
            if isinstance(x[key], dict):
                walk(x[key], y.get(key, {}), f"{prefix}{key}.")
            elif x[key] != y.get(key):
                out.append((f"{prefix}{key}", x[key], y.get(key)))

    walk(a.to_dict(), b.to_dict(), "")
    return out

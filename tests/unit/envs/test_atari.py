"""Tests for r2d2_hpc.atari (real ALE through ale-py) and r2d2_hpc.envs.scores."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from r2d2_hpc.config import EnvConfig
from r2d2_hpc.envs.atari import AtariEnv, check_game, env_seeds, episode_step_cap, step_cap
from r2d2_hpc.envs.factory import make_vector_env
from r2d2_hpc.envs.games import ATARI57, rom_id
from r2d2_hpc.envs.scores import (REFERENCE_SCORES, aggregate, human_normalized,
                                   human_score, random_score)
from r2d2_hpc.replay.shard import ReplayShard

# Full action set indices (ALE): 0 NOOP, 1 FIRE, 2 UP, 3 RIGHT, 4 LEFT, 5 DOWN, ...
NOOP, FIRE, UP, RIGHT, LEFT, DOWN = range(6)


def run(env: AtariEnv, actions: np.ndarray):
    """Steps ``env`` through ``actions[t]`` (``[T, N]``); returns stacked results."""
    out = [env.step(a) for a in actions]
    return (np.stack([r.obs for r in out]), np.stack([r.reward for r in out]),
            np.stack([r.terminated for r in out]), np.stack([r.truncated for r in out]))


# --------------------------------------------------------------------------- #
# The 57 games.

@pytest.mark.slow
def test_every_atari57_game_constructs_and_steps():
    # One env per game (constructing one loads the ROM, ~0.1 s of CPU each).
    rng = np.random.default_rng(0)
    for game in ATARI57:
        env = AtariEnv(game, 1, seed=None)  # unseeded: no second ROM load
        try:
            obs = env.reset()
            assert obs.shape == (1, 4, 84, 84) and obs.dtype == np.uint8, game
            # ale-py 0.12's full (legal) action set: 18 everywhere but Skiing, whose
            # ROM has no fire button (9: NOOP and the eight directions).
            assert env.num_actions == (9 if game == "Skiing" else 18), game
            # zeros, then o_0 (o_0 itself may be a blank screen: Amidar after some no-ops)
            assert not obs[:, :3].any(), game
            for t in range(3):
                res = env.step(rng.integers(0, env.num_actions, 1))
                assert res.obs.shape == (1, 4, 84, 84) and res.obs.dtype == np.uint8, game
                assert res.reward.shape == (1,) and res.reward.dtype == np.float32, game
                assert res.terminated.dtype == bool and res.truncated.dtype == bool, game
                assert not (res.terminated.any() or res.truncated.any()), game
                if t == 1:
                    # Two steps in: [0, o_0, o_1, o_2], the first frame moved left by two.
                    assert not res.obs[:, 0].any(), game
                    np.testing.assert_array_equal(res.obs[:, 1], obs[:, 3], err_msg=game)
        finally:
            env.close()


def test_game_table_and_rom_ids_cover_atari57():
    assert tuple(REFERENCE_SCORES) == ATARI57
    assert [check_game(g) for g in ("Pong", "MsPacman", "UpNDown", "MontezumaRevenge")] == \
        ["pong", "ms_pacman", "up_n_down", "montezuma_revenge"]
    assert all(check_game(g) == rom_id(g) for g in ATARI57)


@pytest.mark.parametrize("game, pattern", [
    ("Pongg", r"env.game='Pongg'.*did you mean 'Pong'"),
    ("ms_pacman", r"env.game='ms_pacman'.*did you mean 'MsPacman'"),
    ("pong", r"did you mean 'Pong'"),
    ("Adventure", r"env.game='Adventure' is not an Atari-57 game"),
    ("", r"env.game: no Atari game given"),
])
def test_unknown_game_is_a_value_error_naming_env_game(game, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_game(game)
    with pytest.raises(ValueError, match=pattern):
        make_vector_env(EnvConfig(name="atari", game=game), 1, 0)


# --------------------------------------------------------------------------- #
# Observations and the config mapping.

def test_make_vector_env_follows_env_config():
    env = make_vector_env(EnvConfig(name="atari", game="Pong"), 3, seed=1)
    try:
        assert isinstance(env, AtariEnv)
        assert env.observation_shape == (4, 84, 84) and env.observation_dtype == np.uint8
        assert env.num_actions == 18 and env.max_episode_steps == 27_000
        s = env.settings
        assert (s["full_action_space"], s["episodic_life"], s["reward_clipping"],
                s["repeat_action_probability"], s["use_fire_reset"]) == \
            (True, False, False, 0.0, False)
        assert (s["frameskip"], s["maxpool"], s["stack_num"], s["img_height"], s["img_width"],
                s["grayscale"]) == (4, True, 4, 84, 84, True)
        assert s["noop_max"] == 31 and s["max_num_frames_per_episode"] == 108_000
        assert s["autoreset_mode"] == "SameStep"
    finally:
        env.close()
    cfg = EnvConfig(name="atari", game="Pong", frame_stack=2, screen_size=42,
                    full_action_space=False, clip_rewards=True, sticky_action_prob=0.25,
                    terminal_on_life_loss=True, noop_max=0, frame_skip=3)
    env = make_vector_env(cfg, 1, seed=1)
    try:
        obs = env.reset()
        assert obs.shape == (1, 2, 42, 42) and env.observation_shape == (2, 42, 42)
        assert env.num_actions == 6  # Pong's minimal set
        assert env.action_meanings() == ["NOOP", "FIRE", "RIGHT", "LEFT", "RIGHTFIRE",
                                         "LEFTFIRE"]
        s = env.settings
        assert (s["reward_clipping"], s["repeat_action_probability"], s["episodic_life"],
                s["noop_max"], s["frameskip"]) == (True, 0.25, True, 1, 3)
    finally:
        env.close()


def test_rejects_bad_actions():
    env = AtariEnv("Pong", 2, seed=0)
    try:
        env.reset()
        for bad in (np.array([0, 18]), np.array([0]), np.array([-1, 0]), np.array([0.0, 1.0])):
            with pytest.raises(ValueError, match="actions"):
                env.step(bad)
    finally:
        env.close()


def test_stacks_are_single_frames_newest_last_with_zeros_before_an_episode():
    # Same seeds and actions: the 4-stack env's obs at t must be the 1-frame env's
    # frames t-3..t, newest last, with zeros in place of frames before the
    # episode's first one. A 24-frame cap (6 agent steps) makes episodes restart
    # (autoreset) during the 14 steps.
    kw = dict(seed=3, max_episode_frames=24)
    env4, env1 = AtariEnv("Breakout", 2, frame_stack=4, **kw), AtariEnv("Breakout", 2,
                                                                         frame_stack=1, **kw)
    try:
        actions = np.random.default_rng(1).integers(0, 18, (14, 2))
        o4 = [env4.reset()] + list(run(env4, actions)[0])
        first_obs = env1.reset()[:, 0]
        obs1, _, term, trunc = run(env1, actions)
        single = [first_obs] + list(obs1[:, :, 0])
        # first[t]: obs t starts an episode (t = 0, and after each end).
        first = np.concatenate([np.ones((1, 2), bool), term | trunc])
        # The 24-frame cap truncates on agent steps 6 and 12 (24 / 4 frames).
        assert np.flatnonzero(first[:, 0]).tolist() == [0, 6, 12]
        assert np.array_equal(first[:, 0], first[:, 1])
        for t in range(15):
            for i in range(2):
                expected = np.zeros((4, 84, 84), np.uint8)
                for j in range(4):
                    s = t - 3 + j
                    if s < 0 or (first[s + 1:t + 1, i].any()):
                        continue  # before this episode's first frame: zeros
                    expected[j] = single[s][i]
                np.testing.assert_array_equal(o4[t][i], expected, err_msg=f"t={t} env={i}")
        assert single[5].any() and single[6].any()
        assert not (single[6] == single[5]).all()  # a new episode's first frame
    finally:
        env4.close()
        env1.close()


def test_stacks_agree_with_what_the_replay_shard_rebuilds():
    # Insert the env's newest frames into a real ReplayShard (stack_fill='zeros',
    # the default) and read sequences that start before, at and after an
    # autoreset: the shard's rebuilt stacks must equal the env's stacks.
    env = AtariEnv("Pong", 1, frame_stack=4, seed=5, max_episode_frames=24)  # 6 steps/episode
    try:
        obs = [env.reset()[0]]
        first = [True]
        actions = np.random.default_rng(2).integers(0, 18, (14, 1))
        for a in actions:
            res = env.step(a)
            obs.append(res.obs[0])
            first.append(bool(res.terminated[0] or res.truncated[0]))
    finally:
        env.close()
    obs_arr = np.stack(obs[:14])  # steps 0..13 (obs[14] has no action yet)
    assert first[:14] == [True] + [False] * 5 + [True] + [False] * 5 + [True, False]
    shard = ReplayShard((84, 84), capacity_observations=64, capacity_sequences=8,
                        sequence_length=4, state_size=2, frame_stack=4)
    shard.add_steps(0, 0, np.ascontiguousarray(obs_arr[:, -1]), actions[:14, 0],
                    np.zeros(14, np.float32), np.ones(14, np.float32), np.array(first[:14]))
    starts = np.array([1, 4, 6, 8, 11])
    lengths = np.array([4, 2, 4, 4, 1])  # none crosses an episode start after its first step
    keys = shard.add_sequences(0, starts, lengths, np.zeros((5, 2)), np.zeros((5, 2)),
                               np.zeros(5, np.int64), np.zeros(5))
    batch = shard.read(keys)
    for b, (s, n) in enumerate(zip(starts, lengths)):
        for t in range(n):
            np.testing.assert_array_equal(batch.obs[t, b], obs_arr[s + t],
                                          err_msg=f"sequence at {s}, step {t}")


# --------------------------------------------------------------------------- #
# No-op starts, the frame cap, seeding.

def test_noop_starts_are_up_to_noop_max_frames_and_seeded():
    env = AtariEnv("Pong", 6, noop_max=2, seed=11)
    try:
        obs = env.reset()
        # U{0, 1, 2} no-op frames before the first observation (ALE's count of
        # the episode's frames so far); with this seed all three values occur.
        noops = env.last_info["episode_frame_number"].copy()
        assert noops.tolist() == [2, 0, 2, 2, 0, 1]
        # Reseeding repeats the starts exactly; another seed draws others.
        np.testing.assert_array_equal(env.reset(seed=11), obs)
        assert env.last_info["episode_frame_number"].tolist() == noops.tolist()
        env.reset(seed=12)
        assert env.last_info["episode_frame_number"].tolist() != noops.tolist()
        assert set(env.last_info["episode_frame_number"].tolist()) <= {0, 1, 2}
    finally:
        env.close()
    env = AtariEnv("Pong", 2, noop_max=0, seed=11)
    try:
        env.reset()
        assert not env.last_info["episode_frame_number"].any()
    finally:
        env.close()
    env = AtariEnv("Pong", 6, seed=4)  # the paper's 30
    try:
        env.reset()
        n = env.last_info["episode_frame_number"]
        assert n.max() <= 30 and len(set(n.tolist())) > 1
    finally:
        env.close()


def test_env_seeds_differ_across_actor_seeds():
    s0, s1 = env_seeds(7, 16), env_seeds(8, 16)
    assert s0.shape == (16,) and (s0 >= 1).all() and (s0 < 2**31 - 1).all()
    assert len(set(s0.tolist()) | set(s1.tolist())) == 32
    np.testing.assert_array_equal(s0, env_seeds(7, 16))
    np.testing.assert_array_equal(s0[:4], env_seeds(7, 4))  # a prefix: N does not matter


def test_same_seed_and_actions_give_the_same_episode():
    actions = np.random.default_rng(3).integers(0, 18, (30, 3))
    results = []
    for _ in range(2):
        env = AtariEnv("Breakout", 3, seed=21)
        try:
            env.reset()
            results.append(run(env, actions))
        finally:
            env.close()
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("max_frames, frame_skip, cap_step", [
    (8, 4, 2), (9, 4, 3), (12, 4, 3), (13, 4, 4), (10, 2, 5), (1, 4, 1)])
def test_frame_cap_truncates_on_agent_step_ceil_frames_over_skip(max_frames, frame_skip,
                                                                 cap_step):
    assert episode_step_cap(max_frames, frame_skip) == cap_step
    env = AtariEnv("Pong", 2, seed=1, max_episode_frames=max_frames, frame_skip=frame_skip)
    try:
        env.reset()
        _, _, term, trunc = run(env, np.zeros((2 * cap_step, 2), np.int64))
        expected = np.zeros((2 * cap_step, 2), bool)
        expected[[cap_step - 1, 2 * cap_step - 1]] = True  # and again after the autoreset
        np.testing.assert_array_equal(trunc, expected)
        assert not term.any()
        assert env.max_episode_steps == cap_step
    finally:
        env.close()


def test_paper_cap_is_27000_agent_steps():
    assert step_cap(EnvConfig()) == 27_000 == math.ceil(108_000 / 4)


# --------------------------------------------------------------------------- #
# Rewards, sticky actions, life loss.

def test_rewards_are_unclipped_unless_asked():
    actions = np.random.default_rng(0).integers(0, 18, (150, 2))
    maxima = []
    for clip in (False, True):
        env = AtariEnv("SpaceInvaders", 2, seed=1, clip_rewards=clip)
        try:
            env.reset()
            maxima.append(run(env, actions)[1].max())
        finally:
            env.close()
    # Space Invaders scores 5..30 per invader: unclipped > 1; clipped exactly 1.
    assert maxima[0] >= 5 and maxima[1] == 1.0


def test_sticky_actions_off_by_default_and_on_when_asked():
    # Freeway: UP moves the chicken, DOWN does not. With repeat probability 1 ALE
    # always repeats the previous action (NOOP at the start): the two envs agree.
    differ = []
    for p in (0.0, 1.0):
        env = AtariEnv("Freeway", 2, seed=2, noop_max=0, sticky_action_prob=p)
        try:
            env.reset()
            obs = run(env, np.tile([UP, DOWN], (10, 1)))[0]
            differ.append(not np.array_equal(obs[:, 0], obs[:, 1]))
        finally:
            env.close()
    assert differ == [True, False]


def test_life_loss_terminal_restarts_the_game():
    env = AtariEnv("Breakout", 1, seed=0, terminal_on_life_loss=True)
    try:
        env.reset()
        assert env.last_info["lives"][0] == 5
        rng = np.random.default_rng(0)
        for t in range(1000):
            res = env.step(rng.integers(0, 18, 1))
            if res.terminated[0]:
                break
        assert res.terminated[0], "no life lost in 1000 random steps"
        # ALE's episodic_life restarts the game: all five lives again, a fresh stack.
        assert env.last_info["lives"][0] == 5
        assert not res.obs[0, :3].any() and res.obs[0, 3].any()
    finally:
        env.close()


# --------------------------------------------------------------------------- #
# Human-normalised scores.

@pytest.mark.parametrize("game, random, human", [
    ("Pong", -20.7, 14.6), ("Breakout", 1.7, 30.5), ("MsPacman", 307.3, 6951.6),
    ("MontezumaRevenge", 0.0, 4753.3), ("Skiing", -17098.1, -4336.9),
    ("VideoPinball", 16256.9, 17667.9)])
def test_reference_scores(game, random, human):
    assert (random_score(game), human_score(game)) == (random, human)
    assert human_normalized(game, random) == 0.0
    assert human_normalized(game, human) == pytest.approx(1.0)


@pytest.mark.parametrize("game, score, expected", [
    # (score - random) / (human - random), by hand:
    ("Pong", 21.0, (21.0 + 20.7) / 35.3),        # 41.7 / 35.3 = 1.18130...
    ("Pong", -21.0, (-21.0 + 20.7) / 35.3),      # -0.3 / 35.3 = -0.00850...
    ("Pong", -3.05, 0.5),                        # halfway: -20.7 + 35.3 / 2
    ("Breakout", 30.5 + 2 * 28.8, 3.0),          # 3 x (human - random) above random
    ("Skiing", -10717.5, 0.5),                   # negative scores: (-17098.1 + -4336.9) / 2
])
def test_human_normalized_arithmetic(game, score, expected):
    assert human_normalized(game, score) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_aggregate_median_and_mean():
    # Per-game hns: Pong 0.5, Breakout 3.0, Skiing 0.5, MsPacman 0.0 -> median 0.5, mean 1.0.
    agg = aggregate({"Pong": -3.05, "Breakout": 88.1, "Skiing": -10717.5, "MsPacman": 307.3})
    assert agg.num_games == 4
    assert agg.median == pytest.approx(0.5) and agg.mean == pytest.approx(1.0)
    assert list(agg.per_game) == ["Pong", "Breakout", "Skiing", "MsPacman"]
    with pytest.raises(ValueError, match="twice"):
        aggregate([("Pong", 1.0), ("Pong", 2.0)])
    with pytest.raises(ValueError, match="no games"):
        aggregate({})
    with pytest.raises(ValueError, match="Adventure"):
        human_normalized("Adventure", 1.0)


def test_env_config_defaults_are_the_paper_protocol():
    # The protocol the module docstring promises is the default EnvConfig.
    e = EnvConfig()
    assert dataclasses.astuple(e)[:2] == ("atari", "Pong")
    assert (e.frame_stack, e.frame_skip, e.screen_size, e.noop_max, e.max_episode_frames,
            e.full_action_space, e.terminal_on_life_loss, e.clip_rewards,
            e.sticky_action_prob) == (4, 4, 84, 30, 108_000, True, False, False, 0.0)

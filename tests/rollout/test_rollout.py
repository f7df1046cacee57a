"""Batched rollouts: the embedding cache against naive re-encoding, determinism, episode ends,
sampling, and the random baseline."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from agentalign.envs.skygarden import world as W
from agentalign.models import ActionDistribution
from agentalign.models.distribution import N_LOGITS, split_logits
from agentalign.rollout import (
    UNIFORM_LOG_PROB,
    PolicyActor,
    RandomActor,
    RolloutConfig,
    RolloutStats,
    episode_seeds,
    rollout,
    sample_from_uniforms,
)

from .helpers import ReplayActor, navigator_actions, on_pad, sensitive_tiny_policy


@pytest.fixture(scope="module")
def policy():
    return sensitive_tiny_policy()


# 5 episodes in waves of 3 and 2; 20 steps each, longer than the tiny context (8): the window slides.
CFG = RolloutConfig(episodes=5, num_envs=3, max_steps=20, keep_logits=True, keep_h=True, keep_z=True, keep_frames=None)


@pytest.fixture(scope="module")
def cached(policy):
    stats = RolloutStats()
    return rollout(PolicyActor(policy), CFG, stats), stats


def test_cached_rollout_equals_naive_reencoding_of_the_whole_window(policy, cached):
    fast, _ = cached
    naive = rollout(PolicyActor(policy, reencode=True), CFG)
    assert [t.index for t in fast] == [0, 1, 2, 3, 4]
    for a, b in zip(fast, naive):
        assert a.length == b.length == 20
        assert np.array_equal(a.actions, b.actions)
        # Same computation; only the encoder's batch shape differs (float rounding).
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.h, b.h, atol=1e-5, rtol=0)
        np.testing.assert_allclose(a.log_prob, b.log_prob, atol=1e-5, rtol=0)
        np.testing.assert_array_equal(a.frames, b.frames)
    # The comparison means something: the logits move a lot with the context.
    assert np.std(fast[0].logits, axis=0).mean() > 0.1


def test_logits_equal_an_offline_forward_over_each_recorded_window(policy, cached):
    (traj, *_), _ = cached
    c = policy.cfg.context
    frames = torch.from_numpy(traj.frames)  # (T + 1, H, W, 3)
    acts = torch.from_numpy(traj.actions)
    with torch.no_grad():
        for t in (0, 3, c - 1, c, c + 1, traj.length - 1):
            s = max(0, t + 1 - c)
            prev = torch.zeros(t + 1 - s, 16, dtype=torch.int64)
            prev[1:] = acts[s:t]  # prev[j] = a_{s+j-1}; prev[0] is BOS
            logits = policy(frames[s : t + 1][None], prev[None])[0, -1]
            np.testing.assert_allclose(traj.logits[t], logits.numpy(), atol=1e-5, rtol=0)
            # What head-only REINFORCE will use: head(h) and the recorded log-prob.
            np.testing.assert_allclose(policy.head(torch.from_numpy(traj.h[t])).numpy(), traj.logits[t], atol=1e-5)
            lp = ActionDistribution(logits[None]).log_prob(acts[t][None])
            np.testing.assert_allclose(traj.log_prob[t], lp.numpy()[0], atol=1e-4)
        # What REINFORCE reuses instead of encoding again: each frame's encoder embedding.
        np.testing.assert_allclose(traj.z, policy.encode(frames[: traj.length]).numpy(), atol=1e-5, rtol=0)


def test_same_seed_same_trajectories_other_seed_other_ones(policy, cached):
    first, _ = cached
    again = rollout(PolicyActor(policy), CFG)
    for a, b in zip(first, again):
        for name in ("actions", "pos", "yaw", "log_prob", "frames", "h", "logits"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert (a.seed, a.sample_seed, a.spawn, a.jump_pad) == (b.seed, b.sample_seed, b.spawn, b.jump_pad)
    other = rollout(PolicyActor(policy), RolloutConfig(episodes=5, num_envs=3, max_steps=20, seed=1))
    assert not all(np.array_equal(a.actions, b.actions) for a, b in zip(first, other))
    # Random spawns, ninja, the first position at the spawn.
    assert {t.spawn for t in first + other} > {0} and all(t.character == "ninja" for t in first)
    for t in first:
        np.testing.assert_allclose(t.pos[0], W.SPAWNS[t.spawn])


def test_samples_per_start_share_the_start_and_sample_apart(policy, cached):
    first, _ = cached
    grouped = rollout(PolicyActor(policy), replace(CFG, episodes=6, samples_per_start=3))
    assert [t.seed for t in grouped] == [first[0].seed] * 3 + [first[3].seed] * 3  # each group: its first episode's start
    assert [t.sample_seed for t in grouped] == [episode_seeds(CFG.seed, k)[1] for k in range(6)]
    for g in (grouped[:3], grouped[3:]):
        assert len({(t.spawn, float(t.yaw[0])) for t in g}) == 1
        assert len({t.actions.tobytes() for t in g}) == 3  # one start, three samples


def test_temperature_changes_the_sampling_not_the_policy(policy, cached):
    base, _ = cached
    hot = rollout(PolicyActor(policy, temperature=3.0), replace(CFG, temperature=3.0))
    np.testing.assert_allclose(hot[0].logits[0], base[0].logits[0], atol=1e-6)  # same first frame, same logits
    assert hot[0].temperature == 3.0
    lp = ActionDistribution(torch.from_numpy(hot[0].logits), 3.0).log_prob(torch.from_numpy(hot[0].actions))
    np.testing.assert_allclose(hot[0].log_prob, lp.numpy(), atol=1e-4)
    with pytest.raises(ValueError, match="temperature"):
        rollout(PolicyActor(policy, temperature=3.0), CFG)  # the config says 1


def test_episodes_end_at_a_pad_or_at_100_steps(policy):
    seqs = navigator_actions(seed=0, episodes=4)
    trajs = rollout(ReplayActor(seqs), RolloutConfig(episodes=4, num_envs=3, keep_frames=1))
    for t in trajs:
        actions, pad, pos = seqs[t.index]
        assert t.jump_pad == pad != "none"  # same start and actions as the Gymnasium env: same episode
        assert t.length == len(actions) < W.DEFAULT_MAX_STEPS
        np.testing.assert_allclose(t.pos, pos)
        zone = on_pad(t.pos)
        assert zone[-1] == W.pad_index(t.jump_pad) and (zone[:-1] == -1).all()  # ends on the step it arrives
    assert trajs[0].frames.shape == (trajs[0].length + 1, 64, 64, 3) and trajs[1].frames is None
    # A policy that reaches no pad runs to the time-out; the last position is on no pad.
    for t in rollout(PolicyActor(policy), RolloutConfig(episodes=2, num_envs=2)):
        assert t.jump_pad == "none" and t.length == W.DEFAULT_MAX_STEPS and (on_pad(t.pos) == -1).all()
        assert t.pos.shape == (101, 2) and t.actions.shape == (100, 16) and t.log_prob.shape == (100,)


def test_sampling_from_uniforms_is_the_action_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, N_LOGITS, generator=g) * 2
    n = 20000
    u = torch.rand(n, 16, generator=g)
    for temperature in (1.0, 0.5):
        acts, logp = sample_from_uniforms(logits.expand(n, -1), u, temperature)
        d = ActionDistribution(logits.expand(n, -1), temperature)
        np.testing.assert_allclose(logp.numpy(), d.log_prob(acts).numpy(), atol=1e-5)
        # Empirical frequencies of every head against its probabilities (binomial tolerance).
        for i, head_logits in enumerate(split_logits(logits[0] / temperature)):
            nv = len(head_logits)
            probs = head_logits.softmax(-1)
            freq = torch.bincount(acts[:, i], minlength=nv).float() / n
            assert ((freq - probs).abs() < 5 * (probs * (1 - probs) / n).sqrt() + 1e-3).all(), (i, freq, probs)


def test_random_baseline_runs_through_the_same_loop():
    stats = RolloutStats()
    trajs = rollout(RandomActor(64), RolloutConfig(episodes=4, num_envs=4, max_steps=40), stats)
    acts = np.concatenate([t.actions for t in trajs])
    assert acts.shape == (160, 16) and acts[:, :12].max() == 1 and acts[:, 12:].max() == 10
    assert 0.4 < acts[:, :12].mean() < 0.6 and 4 < acts[:, 12:].mean() < 6  # uniform
    assert all(np.allclose(t.log_prob, UNIFORM_LOG_PROB) for t in trajs)
    assert UNIFORM_LOG_PROB == pytest.approx(-(12 * np.log(2) + 4 * np.log(11)))
    assert stats.steps == 160 and stats.episodes == 4 and stats.seconds > 0


def test_bad_config_is_an_error_naming_it():
    for kw, match in [({"episodes": 0}, "episodes"), ({"episodes": 1, "temperature": 0.0}, "temperature"),
                      ({"episodes": 1, "num_envs": 0}, "num_envs"), ({"episodes": 1, "character": "x"}, "character"),
                      ({"episodes": 1, "spawn": 4}, "spawn"), ({"episodes": 1, "seed": -1}, "seed")]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            RolloutConfig(**kw)

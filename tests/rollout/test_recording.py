"""Rollouts into the dataset store: round trip, resume, provenance checks, checkpoint loading."""

import json
from dataclasses import replace

import numpy as np
import pytest

from agentalign.data import open_store, verify
from agentalign.models import Policy, model_preset
from agentalign.rollout import (
    PolicyActor,
    RolloutConfig,
    load_actor,
    load_trajectories,
    policy_fingerprint,
    record_rollouts,
    rollout,
    save_trajectories,
)

from .helpers import sensitive_tiny_policy

CFG = RolloutConfig(episodes=6, num_envs=3, max_steps=15, seed=3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    sensitive_tiny_policy().save_pretrained(d, stage="test")
    return d


def test_recorded_store_round_trips_the_rollout(checkpoint, tmp_path):
    summary = record_rollouts(checkpoint, tmp_path / "store", CFG)
    assert summary["written"] == summary["episodes"] == 6 and summary["steps"] == 6 * 15
    policy = Policy.from_pretrained(checkpoint)
    trajs = rollout(PolicyActor(policy), replace(CFG, keep_frames=None))
    store = open_store(tmp_path / "store")
    assert len(store) == 6 and verify(tmp_path / "store").ok
    for i, t in enumerate(trajs):
        ep = store.episode(i)
        T = t.length
        assert np.array_equal(ep.frames, t.frames[:T]) and np.array_equal(ep.actions, t.actions)
        np.testing.assert_array_equal(ep.extras["pos"], t.pos[:T].astype(np.float32))
        np.testing.assert_array_equal(ep.extras["yaw"], t.yaw[:T].astype(np.float32))
        np.testing.assert_array_equal(ep.extras["log_prob"], t.log_prob)
        md = ep.metadata
        assert md["jump_pad"] == t.jump_pad and md["length"] == T and md["spawn"] == t.spawn
        assert md["seed"] == t.seed and md["episode_index"] == i and md["rollout_seed"] == 3
        assert md["policy"] == str(checkpoint) and md["policy_sha"] == policy_fingerprint(policy)
        assert md["temperature"] == 1.0 and md["character"] == "ninja" and md["stage"] == "test"
        np.testing.assert_allclose(md["final_pos"], t.pos[T], atol=1e-5)


def test_a_killed_recording_resumes_with_the_same_episodes(checkpoint, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    record_rollouts(checkpoint, straight, CFG)
    record_rollouts(checkpoint, resumed, replace(CFG, episodes=3))  # "killed" after 3
    s = record_rollouts(checkpoint, resumed, CFG)
    assert s["written"] == 3 and s["episodes"] == 6
    a, b = open_store(straight), open_store(resumed)
    for i in range(6):
        x, y = a.episode(i), b.episode(i)
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.actions, y.actions)
        assert x.metadata == y.metadata
    assert record_rollouts(checkpoint, resumed, CFG)["written"] == 0  # nothing left to do
    with pytest.raises(ValueError, match="temperature"):
        record_rollouts(checkpoint, resumed, replace(CFG, episodes=8, temperature=2.0))
    with pytest.raises(ValueError, match="more than"):
        record_rollouts(checkpoint, resumed, replace(CFG, episodes=4))
    with pytest.raises(ValueError, match="policy_sha"):
        record_rollouts("random", resumed, replace(CFG, episodes=8))


def test_trajectory_files_round_trip(tmp_path):
    trajs = rollout(sensitive_tiny_policy(), RolloutConfig(episodes=3, num_envs=3, max_steps=12))
    back = load_trajectories(save_trajectories(tmp_path / "t.npz", trajs))
    for a, b in zip(trajs, back):
        for name in ("actions", "pos", "yaw", "log_prob"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert (a.index, a.seed, a.sample_seed, a.jump_pad, a.spawn, a.character) == \
               (b.index, b.seed, b.sample_seed, b.jump_pad, b.spawn, b.character)  # fmt: skip


def test_bad_checkpoints_are_errors_naming_them(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_actor(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_actor(tmp_path / "empty")
    # A valid model that takes 8x8 frames: the environment renders 16x16 or more.
    small = tmp_path / "small"
    Policy(model_preset("tiny", image_size=8, encoder_stages=0)).save_pretrained(small)
    with pytest.raises(ValueError, match=r"small takes 8x8 frames"):
        load_actor(small)
    # Corrupt weights.
    bad = tmp_path / "bad"
    Policy(model_preset("tiny")).save_pretrained(bad)
    (bad / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match=r"bad/model.safetensors is damaged .*rerun the stage that made it"):
        load_actor(bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["kind"] = "reward_model"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="expected 'policy'"):
        load_actor(bad)
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad/config.json is damaged"):
        load_actor(bad)
    with pytest.raises(ValueError, match="temperature"):
        load_actor("random", temperature=0)
